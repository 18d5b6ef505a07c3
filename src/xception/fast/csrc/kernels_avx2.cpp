// The kernels for CPUs with AVX2 and FMA: 8 floats per register, 6×16 tiles of C.
// Standard headers come before the target pragma: their inline functions must not be compiled for an
// instruction set the CPU may lack (the linker keeps one copy of each).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "api.h"
#if XC_X86
#pragma GCC target("avx2,fma,bmi2")
#include <immintrin.h>

#define ISA_NS xc_avx2

namespace {
using V = __m256;
constexpr int LANES = 8;
constexpr int MR = 6;    // 12 accumulators of 16 registers
constexpr int NV = 2;    // NR = 16 columns
constexpr int KC = 256;  // a 256×16 panel of B is 16 KB: it stays in L1

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
}  // namespace

#include "kernels.h"
#endif  // XC_X86
