// The kernels for CPUs with AVX2 and FMA: 8 floats per register, 6×16 tiles of C.
// Standard headers come before the target pragma: their inline functions must not be compiled for an
// instruction set the CPU may lack (the linker keeps one copy of each).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "api.h"
#if XC_X86
#include "simd_avx2.h"

#define ISA_NS xc_avx2

namespace {
constexpr int MR = 6;    // 12 accumulators of 16 registers
constexpr int NV = 2;    // NR = 16 columns
#ifndef XC_KC
#define XC_KC 768  // -DXC_KC=N for A/B builds
#endif
// Depth of B's panels: the whole K of every layer up to the middle flow's 728 in one pass, so that C is stored
// once. B's panels stream from L2 past the MR-row slice of A (up to 18 KB, in L1); measured 1–2 % faster than
// 256 on Zen 3 (benchmarks/NOTES.md).
constexpr int KC = XC_KC;
// 8 panels of B (128 KB, in L2) per pass of A's slices: measured 5–6 % faster on the whole network than all
// panels per slice (AMD Zen 3, benchmarks/NOTES.md), most in the exit flow, whose 12.6 MB of weights
// otherwise came from L3 once per 6 rows.
constexpr int GROUP = 8;
}  // namespace

#include "kernels.h"
#endif  // XC_X86
