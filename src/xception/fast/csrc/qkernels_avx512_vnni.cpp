// The int8 kernels for CPUs with AVX-512 VNNI: A as uint8 quads, B as int8 quads, vpdpbusd into int32.
//
// vpdpbusd adds four u8 × s8 products to an int32 lane with no intermediate saturation (unlike vpmaddubsw),
// so it is exact for any 8-bit weights: 32 multiply-adds in one instruction on 256-bit registers, against
// three instructions for the byte quads of AVX2. The prologues and the epilogue are the AVX2 ones
// (simd_avx2.h); AVX-512VL gives the dot loop 32 vector registers, so the tile is 8 rows × 16 columns.
// The module checks these kernels against the int16 pairs once per process before any layer runs on them
// (module.cpp, vnni_agrees). Standard headers come before the target pragmas (see simd_avx2.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "api.h"
#if XC_X86
#include "simd_avx2.h"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")

#define QISA_NS xc_q_vnni
#include "qdot_tile.h"

namespace {
using AType = std::uint8_t;
using BType = std::int8_t;
constexpr int KG = 4;    // k quads
constexpr int QMR = 8;   // 16 accumulators of the 32 registers, 2 for B, 1 for A's broadcast quad
constexpr int QNR = 16;  // two registers of 8 int32 columns

struct VnniStep {
    static constexpr int words = 1;
    __m256i operator()(__m256i c, const __m256i* av, const __m256i* bv) const {
        return _mm256_dpbusd_epi32(c, av[0], bv[0]);
    }
};

// acc[R × 16] = A[R × 4·groups] · B-panel, int32: a row's quad broadcast to every lane, lane j of B holding
// column j's quad.
using QStep = VnniStep;
}  // namespace

#include "qkernels.h"
#endif  // XC_X86
