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
constexpr int KC = 256;  // a 256×16 panel of B is 16 KB: it stays in L1
}  // namespace

#include "kernels.h"
#endif  // XC_X86
