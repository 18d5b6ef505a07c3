// The int8 kernels for CPUs with AVX-512 VNNI: A as uint8 quads, B as int8 quads, vpdpbusd into int32.
//
// vpdpbusd adds four u8 × s8 products to an int32 lane with no intermediate saturation (unlike vpmaddubsw),
// so it is exact for any 8-bit weights: 64 multiply-adds in one instruction on 512-bit registers, against
// three instructions for 32 in the byte quads of AVX2. The prologues and the epilogue run on 16-lane registers
// too (simd_avx512.h). The tile is 12 rows × 32 columns: 24 accumulators of the 32 registers.
// The module checks these kernels against the int16 pairs once per process before any layer runs on them
// (module.cpp, vnni_agrees). Standard headers come before the target pragmas (see simd_avx512.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "api.h"
#if XC_X86
#include "simd_avx512.h"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")

#define QISA_NS xc_q_vnni
namespace {
using AType = std::uint8_t;
using BType = std::int8_t;
constexpr int KG = 4;    // k quads

#ifndef XC_VNNI_MR
#define XC_VNNI_MR 12  // -DXC_VNNI_MR=N for A/B builds: 8, 12 and 14 measured (benchmarks/NOTES.md)
#endif
constexpr int QMR = XC_VNNI_MR;  // 2 accumulators a row of the 32 registers, 2 for B, 1 for A's broadcast quad
constexpr int QNR = 32;          // two registers of 16 int32 columns
#ifndef XC_VNNI_AHEAD
#define XC_VNNI_AHEAD 4  // how many k quads ahead B's lines are fetched (-DXC_VNNI_AHEAD=N for A/B builds)
#endif

struct QStep {};

// acc[R × 32] = A[R × 4·groups] · B-panel, int32: a row's quad broadcast to every lane, lane j of B holding
// column j's quad. 64 multiply-adds an instruction: half the instructions of the 256-bit tile for the same work.
template <int R, typename A, typename B>
inline void dot_tile(int groups, const A* __restrict a, long lda, const B* __restrict b, std::int32_t* __restrict acc,
                     QStep) {
    __m512i c[R][2];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) c[i][0] = c[i][1] = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int g = 0; g < groups; ++g) {
        const __m512i b0 = _mm512_loadu_si512(b + g * 128), b1 = _mm512_loadu_si512(b + g * 128 + 64);
        _mm_prefetch(reinterpret_cast<const char*>(b + (g + XC_VNNI_AHEAD) * 128), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(b + (g + XC_VNNI_AHEAD) * 128 + 64), _MM_HINT_T0);
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            std::int32_t word;
            std::memcpy(&word, a + i * lda + 4 * g, sizeof(word));
            const __m512i av = _mm512_set1_epi32(word);
            c[i][0] = _mm512_dpbusd_epi32(c[i][0], av, b0);
            c[i][1] = _mm512_dpbusd_epi32(c[i][1], av, b1);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
        _mm512_store_si512(acc + i * 32, c[i][0]);
        _mm512_store_si512(acc + i * 32 + 16, c[i][1]);
    }
}
}  // namespace

#include "qkernels.h"
#endif  // XC_X86
