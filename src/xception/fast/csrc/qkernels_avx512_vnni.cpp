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
#include "slide.h"

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

// start + A[R × 4·groups] · B-panel, int32, finished from the registers or stored in acc[R × 32]: a row's quad
// broadcast to every lane, lane j of B holding column j's quad. 64 multiply-adds an instruction: half the instructions of the 256-bit tile for the
// same work.
template <int R, typename A, typename B, typename Finish>
inline void dot_tile(int groups, const A* __restrict a, long lda, const B* __restrict b,
                     const std::int32_t* __restrict start, std::int32_t* __restrict acc, const Finish* finish,
                     void* out, QStep) {
    __m512i c[R][2];
    const __m512i s0 = _mm512_loadu_si512(start), s1 = _mm512_loadu_si512(start + 16);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) c[i][0] = s0, c[i][1] = s1;
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
    if (finish) {  // the epilogue on the registers (qkernels.h, WholeTile), constant row indices (unroll.h)
        unrolled<R>([&](int i) XC_INLINE { (*finish)(out, i, c[i][0], c[i][1]); });
        return;
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
        _mm512_store_si512(acc + i * 32, c[i][0]);
        _mm512_store_si512(acc + i * 32 + 16, c[i][1]);
    }
}

// The depthwise step on vpdpbusd too (qkernels.h, slide_quads): a column of a 3×3 window, 16 channels of its
// three rows, becomes one quad a channel (top, middle, bottom, 0), which the window's column of int8 taps
// multiplies in one instruction. The quads are built with byte shuffles of each row's 16 codes broadcast to
// the four 128-bit lanes: byte 4j + p of lane L takes channel 4L + j.
#ifndef XC_QDW_QUADS
#define XC_QDW_QUADS 1  // -DXC_QDW_QUADS=0: the float32 depthwise step instead (A/B builds)
#endif
#define XC_DEPTHWISE_DOT XC_QDW_QUADS
constexpr __mmask64 kQuadByte[3] = {0x1111111111111111ull, 0x2222222222222222ull, 0x4444444444444444ull};

struct alignas(64) QuadIndex {
    std::int8_t byte[64];
};
constexpr QuadIndex kQuadIndex = [] {
    QuadIndex q{};
    for (int b = 0; b < 64; ++b) q.byte[b] = std::int8_t(4 * (b / 16) + (b % 16) / 4);
    return q;
}();

inline __m512i broadcast_codes(const std::uint8_t* p) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// The zero point's code in the first three bytes of every quad: the padding's column.
inline __m512i zero_quads(int zero) { return _mm512_set1_epi32(zero * 0x010101); }

// The quads of 16 channels from their top, middle and bottom codes; a row outside the image (Outside: 1 the
// top, 2 the bottom) is the padding's.
template <int Outside>
XC_INLINE inline __m512i column_quads(const std::uint8_t* top, const std::uint8_t* mid, const std::uint8_t* bottom,
                                      __m512i padding) {
    const __m512i index = _mm512_load_si512(kQuadIndex.byte);
    __m512i x = Outside & 1 ? _mm512_maskz_mov_epi8(kQuadByte[0], padding)
                            : _mm512_maskz_shuffle_epi8(kQuadByte[0], broadcast_codes(top), index);
    x = _mm512_mask_shuffle_epi8(x, kQuadByte[1], broadcast_codes(mid), index);
    return Outside & 2 ? _mm512_mask_mov_epi8(x, kQuadByte[2], padding)
                       : _mm512_mask_shuffle_epi8(x, kQuadByte[2], broadcast_codes(bottom), index);
}

// A k×k window of at most 64 bytes (the stem's first conv: 3 rows of 9) into one register, a masked load a row,
// then its lda bytes stored at once, zero past the window: the per-byte copies and the fill of the generic
// path cost more than the dot loop on so short a depth. Masked-off bytes are never read.
#ifndef XC_QGATHER
#define XC_QGATHER 1  // -DXC_QGATHER=0: the window copied row by row (A/B builds)
#endif
#define XC_WINDOW_GATHER XC_QGATHER
XC_INLINE inline void gather_window(std::uint8_t* dst, const std::uint8_t* src, long down, int row_bytes, int k,
                                    int lda) {
    const __mmask64 row = row_bytes >= 64 ? ~__mmask64(0) : (__mmask64(1) << row_bytes) - 1;
    __m512i x = _mm512_setzero_si512();
    for (int dy = 0; dy < k; ++dy)
        x = _mm512_mask_loadu_epi8(x, row << (dy * row_bytes), src + dy * (down - row_bytes));
    _mm512_mask_storeu_epi8(dst, lda >= 64 ? ~__mmask64(0) : (__mmask64(1) << lda) - 1, x);
}

inline __m512i vq_max(__m512i a, __m512i b) { return _mm512_max_epu8(a, b); }
inline __m512i vi_dot_quads(__m512i acc, __m512i codes, __m512i taps) { return _mm512_dpbusd_epi32(acc, codes, taps); }
}  // namespace

#include "qkernels.h"
#endif  // XC_X86
