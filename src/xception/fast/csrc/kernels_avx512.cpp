// The kernels for CPUs with AVX-512 (F, BW, DQ, VL): 16 floats per register, 14×32 tiles of C.
// Standard headers come before the target pragma: their inline functions must not be compiled for an
// instruction set the CPU may lack (the linker keeps one copy of each).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "api.h"
#if XC_X86
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma,avx2,bmi2")
#include <immintrin.h>

#define ISA_NS xc_avx512

namespace {
using V = __m512;
constexpr int LANES = 16;
#ifndef XC_MR
#define XC_MR 14
#endif
#ifndef XC_NV
#define XC_NV 2
#endif
#ifndef XC_KC
#define XC_KC 256
#endif
constexpr int MR = XC_MR;   // 28 accumulators of 32 registers
constexpr int NV = XC_NV;    // NR = 32 columns
constexpr int KC = XC_KC;  // a 256×32 panel of B is 32 KB: it stays in L1
constexpr int GROUP = 0;   // all panels of B pass each slice of A (panel groups are measured on AVX2 only)

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
// bfloat16 ↔ float32: widening is exact (the upper 16 bits); narrowing rounds to nearest even.
inline V vload_bf16_n(const std::uint16_t* p, int n) {
    const __m256i h = n >= 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(mask_n(n), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void vstore_bf16_n(std::uint16_t* p, V x, int n) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb)), 16);
    const __m256i h = _mm512_cvtepi32_epi16(r);
    if (n >= 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
    else _mm256_mask_storeu_epi16(p, mask_n(n), h);
}
}  // namespace

#include "kernels.h"
#endif  // XC_X86
