// AVX-512 (F, BW, DQ, VL): the vector type and operations the kernels are written in (kernels.h for float32,
// qkernels.h for int8), as simd_avx2.h gives them for AVX2: 16 floats (or 16 int32) per register, and masked
// loads and stores for the tails, which never touch memory past them.
// Included after the standard headers: their inline functions must not be compiled for an instruction set
// the CPU may lack (the linker keeps one copy of each).
#pragma once
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma,avx2,bmi2")
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics start their results from a self-initialised "undefined" register, which it then
// reports as maybe uninitialised wherever they inline (GCC bug 105593, fixed in GCC 13): not a defect here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {
using V = __m512;
constexpr int LANES = 16;

inline __mmask16 mask_n(int n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); }
inline V vzero() { return _mm512_setzero_ps(); }
inline V vneg_inf() { return _mm512_set1_ps(-__builtin_inff()); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline V vloadu(const float* p) { return _mm512_loadu_ps(p); }
inline V vload_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask_n(n), p); }
inline void vstoreu(float* p, V x) { _mm512_storeu_ps(p, x); }
inline void vstore_n(float* p, V x, int n) { _mm512_mask_storeu_ps(p, mask_n(n), x); }
inline V vset1(float x) { return _mm512_set1_ps(x); }
inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
inline V vmaxv(V a, V b) { return _mm512_max_ps(a, b); }
inline V vmin(V a, V b) { return _mm512_min_ps(a, b); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
// bfloat16 ↔ float32: widening is exact (the upper 16 bits); narrowing rounds to nearest even.
inline V vload_bf16_n(const std::uint16_t* p, int n) {
    const __m256i h = n >= 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(mask_n(n), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
// (XC_CVTNE: the build has AVX-512 BF16, whose vcvtneps2bf16 does the same in one instruction, but for inputs
// below 2^-126, which it takes as zero.)
inline void vstore_bf16_n(std::uint16_t* p, V x, int n) {
#if XC_CVTNE
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
#else
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb)), 16);
    const __m256i h = _mm512_cvtepi32_epi16(r);
#endif
    if (n >= 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    else _mm256_mask_storeu_epi16(p, mask_n(n), h);
}
// int32 vectors, and uint8 codes widened to / narrowed from them (the int8 kernels' epilogue).
using VI = __m512i;
inline VI vi_set1(int x) { return _mm512_set1_epi32(x); }
inline VI vi_add(VI a, VI b) { return _mm512_add_epi32(a, b); }
inline VI vi_sub(VI a, VI b) { return _mm512_sub_epi32(a, b); }
inline VI vi_loadu(const std::int32_t* p) { return _mm512_loadu_si512(p); }
inline V vi_to_float(VI x) { return _mm512_cvtepi32_ps(x); }     // rounds to nearest even, as torch does
inline VI v_round_to_int(V x) { return _mm512_cvtps_epi32(x); }  // the default rounding mode: half to even
inline VI v_trunc_to_int(V x) { return _mm512_cvttps_epi32(x); }
inline VI vi_max(VI a, VI b) { return _mm512_max_epi32(a, b); }
// n ≤ 16 uint8 codes → int32 lanes (zeros past n).
inline VI vi_load_u8_n(const std::uint8_t* p, int n) {
    const __m128i b = n >= 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)) : _mm_maskz_loadu_epi8(mask_n(n), p);
    return _mm512_cvtepu8_epi32(b);
}
// int32 lanes already in [0, 255] → n ≤ 16 uint8 codes (vpmovdb keeps each lane's low byte).
inline void vi_store_u8_n(std::uint8_t* p, VI x, int n) {
    if (n >= 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(x));
    else _mm512_mask_cvtepi32_storeu_epi8(p, mask_n(n), x);
}
// Two vectors of int32 lanes → 32 uint8 codes, a's then b's, each saturated to [0, 255] and at least `lowest`.
inline void vi_store_u8_2_sat(std::uint8_t* p, VI a, VI b, int lowest) {
    // The packs work within 128-bit lanes: lane L ends as the bytes (a[4L..4L+3], b[4L..4L+3], 0 × 8); the dword
    // permutation gathers a's four words, then b's.
    const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(a, b), _mm512_setzero_si512());
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i codes = _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, bytes));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_max_epu8(codes, _mm256_set1_epi8(char(lowest))));
}
// int32 lanes already in [0, 255] → n ≤ 16 int16 values.
inline void vi_store_i16_n(std::int16_t* p, VI x, int n) {
    if (n >= 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(x));
    else _mm512_mask_cvtepi32_storeu_epi16(p, mask_n(n), x);
}
// 64 uint8 codes as bytes (the int8 max-pool: the byte-wise max is the max of the codes).
using VB = __m512i;
constexpr int BYTES = 64;
inline VB vb_loadu(const std::uint8_t* p) { return _mm512_loadu_si512(p); }
inline VB vb_max(VB a, VB b) { return _mm512_max_epu8(a, b); }
inline VB vb_set1(std::uint8_t x) { return _mm512_set1_epi8(char(x)); }
inline void vb_storeu(std::uint8_t* p, VB x) { _mm512_storeu_si512(p, x); }
}  // namespace
