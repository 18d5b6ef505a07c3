// The int8 kernels for CPUs with AVX2, for layers whose weights fit 7 bits: A as uint8 quads, B as int8
// quads, vpmaddubsw then vpmaddwd into int32.
//
// vpmaddubsw adds two u8 × s8 products in int16 with saturation; with |w[k]| + |w[k+1]| ≤ 128 for every
// pair (always so for weights in [−64, 64], as `xception quantize --weight-bits 7` makes them) the sum stays
// within 255·128 < 32767, so it is exact. vpmaddwd by ones then adds pairs of those into int32: 32
// multiply-adds in three instructions (with the add), against 16 in two for int16 pairs (measured 1.38×
// on Zen 3). Standard headers come before the target pragma (see simd_avx2.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "api.h"
#if XC_X86
#include "simd_avx2.h"

#define QISA_NS xc_q_avx2_s7
#include "qdot_tile.h"

namespace {
using AType = std::uint8_t;
using BType = std::int8_t;
constexpr int KG = 4;    // k quads
constexpr int QMR = 4;   // 8 accumulators: measured fastest on Zen 3 with 2 × 16 and 4 × 8 columns
constexpr int QNR = 16;  // two registers of 8 int32 columns

struct QuadStep {
    static constexpr int words = 1;
    __m256i operator()(__m256i c, const __m256i* av, const __m256i* bv) const {
        return _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(av[0], bv[0]), _mm256_set1_epi16(1)));
    }
};

// acc[R × 16] = A[R × 4·groups] · B-panel, int32. A row's quad (a[4g] … a[4g+3]) is broadcast to every lane;
// lane j of B holds column j's quad: vpmaddubsw gives the two pair sums in int16, vpmaddwd by ones their sum.
using QStep = QuadStep;
}  // namespace

#include "qkernels.h"
#endif  // XC_X86
