// AVX2 + FMA: the vector type and operations the kernels are written in (kernels.h for float32,
// qkernels.h for int8): 8 floats (or 8 int32) per register.
// Included after the standard headers: their inline functions must not be compiled for an instruction set
// the CPU may lack (the linker keeps one copy of each).
#pragma once
#pragma GCC target("avx2,fma,bmi2")
#include <immintrin.h>

namespace {
using V = __m256;
constexpr int LANES = 8;

inline __m256i mask_n(int n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes);
}
inline V vzero() { return _mm256_setzero_ps(); }
inline V vneg_inf() { return _mm256_set1_ps(-__builtin_inff()); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline V vloadu(const float* p) { return _mm256_loadu_ps(p); }
inline V vload_n(const float* p, int n) { return n <= 0 ? vzero() : _mm256_maskload_ps(p, mask_n(n)); }
inline void vstoreu(float* p, V x) { _mm256_storeu_ps(p, x); }
inline void vstore_n(float* p, V x, int n) { if (n > 0) _mm256_maskstore_ps(p, mask_n(n), x); }
inline V vset1(float x) { return _mm256_set1_ps(x); }
inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
inline V vmaxv(V a, V b) { return _mm256_max_ps(a, b); }
// bfloat16 ↔ float32: widening is exact (the upper 16 bits); narrowing rounds to nearest even.
inline V vload_bf16_n(const std::uint16_t* p, int n) {
    __m128i h;
    if (n >= 8) {
        h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    } else {
        std::uint16_t part[8] = {};
        std::memcpy(part, p, sizeof(std::uint16_t) * std::max(n, 0));
        h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(part));
    }
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline void vstore_bf16_n(std::uint16_t* p, V x, int n) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)), 16);
    const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    if (n >= 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
    } else if (n > 0) {
        std::uint16_t part[8];
        _mm_storeu_si128(reinterpret_cast<__m128i*>(part), h);
        std::memcpy(p, part, sizeof(std::uint16_t) * n);
    }
}
// int32 vectors, and uint8 codes widened to / narrowed from them (the int8 kernels' epilogue).
using VI = __m256i;
inline VI vi_set1(int x) { return _mm256_set1_epi32(x); }
inline VI vi_add(VI a, VI b) { return _mm256_add_epi32(a, b); }
inline VI vi_sub(VI a, VI b) { return _mm256_sub_epi32(a, b); }
inline VI vi_loadu(const std::int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline V vi_to_float(VI x) { return _mm256_cvtepi32_ps(x); }          // rounds to nearest even, as torch does
inline VI v_round_to_int(V x) { return _mm256_cvtps_epi32(x); }       // the default rounding mode: half to even
inline VI v_trunc_to_int(V x) { return _mm256_cvttps_epi32(x); }
inline V vmin(V a, V b) { return _mm256_min_ps(a, b); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline VI vi_max(VI a, VI b) { return _mm256_max_epi32(a, b); }
// n ≤ 8 uint8 codes → int32 lanes (zeros past n).
inline VI vi_load_u8_n(const std::uint8_t* p, int n) {
    if (n >= 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    long long bits = 0;
    std::memcpy(&bits, p, std::size_t(std::max(n, 0)));
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bits));
}
// int32 lanes already in [0, 255] → n ≤ 8 uint8 codes.
inline void vi_store_u8_n(std::uint8_t* p, VI x, int n) {
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    const __m128i b = _mm_packus_epi16(w, w);
    if (n >= 8) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p), b);
        return;
    }
    const long long bits = _mm_cvtsi128_si64(b);
    std::memcpy(p, &bits, std::size_t(std::max(n, 0)));
}
// Two vectors of int32 lanes → 16 uint8 codes, a's then b's, each saturated to [0, 255] and at least `lowest`.
inline void vi_store_u8_2_sat(std::uint8_t* p, VI a, VI b, int lowest) {
    // packus works within 128-bit halves: (a0–3 b0–3 | a4–7 b4–7) as uint16, put in order by 64-bit quarters.
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
    const __m128i codes = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_max_epu8(codes, _mm_set1_epi8(char(lowest))));
}
// int32 lanes already in [0, 255] → n ≤ 8 int16 values.
inline void vi_store_i16_n(std::int16_t* p, VI x, int n) {
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    if (n >= 8) _mm_storeu_si128(reinterpret_cast<__m128i*>(p), w);
    else {
        std::int16_t part[8];
        _mm_storeu_si128(reinterpret_cast<__m128i*>(part), w);
        std::memcpy(p, part, sizeof(std::int16_t) * std::size_t(std::max(n, 0)));
    }
}
// 32 uint8 codes as bytes (the int8 max-pool: the byte-wise max is the max of the codes).
using VB = __m256i;
constexpr int BYTES = 32;
inline VB vb_loadu(const std::uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline VB vb_max(VB a, VB b) { return _mm256_max_epu8(a, b); }
inline VB vb_set1(std::uint8_t x) { return _mm256_set1_epi8(char(x)); }
inline void vb_storeu(std::uint8_t* p, VB x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), x); }
}  // namespace
