// The bfloat16 kernels for CPUs with AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake and later): bfloat16
// activations and weights, the GEMM on vdpbf16ps (two products a lane, summed in float32), the depthwise step and
// the epilogue in float32 on the way, each result rounded to bfloat16 once. The tiles and blocking of the AVX-512
// float32 kernels (14×32 tiles of C), but each conv's whole depth in one pass of B: C is stored once.
// Standard headers come before the target pragma (see simd_avx512.h).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "api.h"
#if XC_X86
#define XC_CVTNE 1  // simd_avx512.h: round to bfloat16 with vcvtneps2bf16
#pragma GCC target("avx512bf16")
#include "simd_avx512.h"

#define ISA_NS xc_avx512_bf16
#define XC_BF16 1

namespace {
constexpr int MR = 14;  // 28 accumulators of 32 registers
constexpr int NV = 2;   // NR = 32 columns
constexpr int KC = 768;  // unused: the bf16 GEMM takes the whole depth at once
constexpr int GROUP = 4;  // 4 panels of B (128 columns) per pass of A's slices, as in float32
}  // namespace

#include "kernels.h"
#endif  // XC_X86
