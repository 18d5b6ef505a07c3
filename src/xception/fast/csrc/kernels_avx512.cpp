// The kernels for CPUs with AVX-512 (F, BW, DQ, VL): 16 floats per register, 14×32 tiles of C.
// Standard headers come before the target pragma (see simd_avx512.h).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "api.h"
#if XC_X86
#include "simd_avx512.h"

#define ISA_NS xc_avx512

namespace {
#ifndef XC_MR
#define XC_MR 14
#endif
#ifndef XC_NV
#define XC_NV 2
#endif
#ifndef XC_KC
#define XC_KC 768  // -DXC_KC=N for A/B builds
#endif
constexpr int MR = XC_MR;   // 28 accumulators of 32 registers
constexpr int NV = XC_NV;    // NR = 32 columns
// As on AVX2 (kernels_avx2.cpp): B's panels as deep as the middle flow's 728 channels, so that C is stored once,
// streaming from L2 past the MR-row slice of A in L1; and 4 panels of B (128 columns, 384 KB at that depth) per
// pass of A's slices. Measured together 4 % faster on the whole network than 256-deep panels all passing each
// slice (AMD Zen 4, benchmarks/NOTES.md), most in the middle and exit flows.
constexpr int KC = XC_KC;
constexpr int GROUP = 4;
}  // namespace

#include "kernels.h"
#endif  // XC_X86
