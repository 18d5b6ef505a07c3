// The int8 kernels for CPUs with AVX2: A as int16 pairs, B as int16 pairs, vpmaddwd into int32.
//
// AVX2 has no exact u8 × s8 dot: vpmaddubsw adds two products in int16 with saturation, and 2·255·127 >
// 32767. Widened to int16, vpmaddwd adds the two products in int32, exactly: 16 multiply-adds per
// instruction, twice the float32 FMA's 8. Standard headers come before the target pragma (see simd_avx2.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "api.h"
#if XC_X86
#include "simd_avx2.h"

#define QISA_NS xc_q_avx2
#include "qdot_tile.h"

namespace {
using AType = std::int16_t;
using BType = std::int16_t;
constexpr int KG = 2;    // k pairs
constexpr int QMR = 4;   // 8 accumulators: measured fastest on Zen 3 of 2–6 rows × 16–32 columns
constexpr int QNR = 16;  // two registers of 8 int32 columns

struct PairStep {
    static constexpr int words = 1;
    __m256i operator()(__m256i c, const __m256i* av, const __m256i* bv) const {
        return _mm256_add_epi32(c, _mm256_madd_epi16(av[0], bv[0]));
    }
};

// acc[R × 16] = A[R × 2·groups] · B-panel, int32. A row's pair (a[2g], a[2g+1]) is broadcast to every lane;
// lane j of B holds column j's pair, so vpmaddwd gives a[2g]·b[2g][j] + a[2g+1]·b[2g+1][j] per lane.
using QStep = PairStep;
}  // namespace

#include "qkernels.h"
#endif  // XC_X86
