// The int8 kernels for CPUs with AVX2, for networks whose activations are 7-bit codes (0 … 127) and whose
// layer's weights fit 7 bits: A as uint8 octets, B as int8 octets, two vpmaddubsw added in int16, then
// vpmaddwd into int32.
//
// With a ≤ 127 and |w[k]| + |w[k+1]| ≤ 128 for every pair, each vpmaddubsw pair sum is at most 127·128 =
// 16256 in magnitude, so two of them add to at most 32512 < 32767: exact in int16. One vpmaddwd by ones then
// widens 64 multiply-adds per register pair, where the byte quads (qkernels_avx2_s7.cpp) spend one per 32:
// three multiplying instructions for 64, against four. Standard headers come before the target pragma (see
// simd_avx2.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "api.h"
#if XC_X86
#include "simd_avx2.h"

#define QISA_NS xc_q_avx2_s7a7
#include "qdot_tile.h"

namespace {
using AType = std::uint8_t;
using BType = std::int8_t;
constexpr int KG = 8;    // k octets: two words of four
constexpr int QMR = 4;   // 8 accumulators, 4 registers of B
constexpr int QNR = 16;  // two registers of 8 int32 columns

struct OctetStep {
    static constexpr int words = 2;
    __m256i operator()(__m256i c, const __m256i* av, const __m256i* bv) const {
        const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(av[0], bv[0]), _mm256_maddubs_epi16(av[1], bv[1]));
        return _mm256_add_epi32(c, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }
};

// acc[R × 16] = A[R × 8·groups] · B-panel, int32. A row's two quads are broadcast to every lane; lane j of
// each of B's two words holds column j's quad.
using QStep = OctetStep;
}  // namespace

#include "qkernels.h"
#endif  // XC_X86
