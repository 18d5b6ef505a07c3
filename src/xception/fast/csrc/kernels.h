// The CPU kernels of the fast path, written once for any SIMD width.
//
// Included by kernels_avx512.cpp and kernels_avx2.cpp, each of which first defines the vector type and
// its handful of operations (V, LANES, MR, NV, KC, GROUP, vzero, vload, vloadu, vload_n, vstore_n, vset1,
// vfma, vadd, vmax, vmaxv, vneg_inf, and the bfloat16 loads and stores) and compiles this file for its
// instruction set; and by kernels_avx512_bf16.cpp (XC_BF16), whose activations are bfloat16 and whose GEMM
// multiplies bfloat16 pairs (vdpbf16ps), float32 sums, with the same prologues and blocking.
//
// Every convolution of the network is one GEMM, C[M×N] = A[M×K] · B[K×N] over NHWC tensors (a row of A
// or C is one pixel, its columns are channels), with a prologue that produces the rows of A and an
// epilogue that finishes the rows of C:
//   * prologue: the input itself (1×1 conv), a depthwise k×k conv computed on the fly (a separable
//     conv: its output never goes to memory), every s-th pixel (strided 1×1 conv), or k×k patches
//     (a plain conv, "im2col" one block of rows at a time);
//   * epilogue: bias, residual add, ReLU, written once.
// The GEMM is blocked the usual way: a block of MC rows of A (computed by the prologue into a buffer
// that stays in L2), K in chunks of KC so that an MR-row slice of A stays in L1 while B's KC×NR panels
// stream past it from L2, and an MR×NR tile of C held in registers while the k loop runs.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "api.h"
#include "slide.h"

namespace {

constexpr int NR = NV * LANES;  // columns of C per register tile
constexpr int PREFETCH = 16;    // how many k steps ahead B is prefetched (measured best of 4–32)

// ---- activations: float32, or bfloat16 in the bf16 build --------------------------------------------------
// The prologues are written once for both: a tensor's elements load as float32 vectors (bfloat16 widens
// exactly) and are stored as the tensor holds them (bfloat16 rounds to nearest even).
inline V vld(const float* p) { return vloadu(p); }
inline V vld_n(const float* p, int n) { return vload_n(p, n); }
inline void vst(float* p, V x) { vstoreu(p, x); }
inline void vst_n(float* p, V x, int n) { vstore_n(p, x, n); }
inline V vld(const std::uint16_t* p) { return vload_bf16_n(p, LANES); }
inline V vld_n(const std::uint16_t* p, int n) { return vload_bf16_n(p, n); }
inline void vst(std::uint16_t* p, V x) { vstore_bf16_n(p, x, LANES); }
inline void vst_n(std::uint16_t* p, V x, int n) { vstore_bf16_n(p, x, n); }

// ---- the register tile ------------------------------------------------------------------------------

// C[MR×NR] (+)= A[MR×kc] · B[kc×NR]. `first`: start from the bias (or zero) instead of C; `last`: add
// the residual, apply the ReLU. Columns past `n_valid` are computed (B is zero-padded) but not stored.
// With segs > 1, A is `segs` pieces of kc columns, seg_step floats apart (a window's rows read in place), and
// B their segs·kc rows: the tile stays in registers across them.
template <int R, int KS = 1>
inline void tile(int kc, const float* __restrict a, long lda, const float* __restrict b, float* __restrict c,
                 long ldc, int n_valid, bool first, bool last, const float* __restrict bias,
                 const float* __restrict res, long ldr, bool relu, int segs = 1, long seg_step = 0) {
    V acc[R][NV];
    const bool full = n_valid >= NR;
    if (!first) {  // the partial sums come back from L2: ask for them before the loop needs them
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    }
    if (first) {
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            V b0 = bias ? vload(bias + v * LANES) : vzero();
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i) acc[i][v] = b0;
        }
    } else {
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v)
                acc[i][v] = full ? vloadu(c + i * ldc + v * LANES) : vload_n(c + i * ldc + v * LANES, n_valid - v * LANES);
    }
    for (int s = 0; s < segs; ++s) {
        const float* as = a + s * seg_step;
        const float* bs = b + long(s) * kc * NR;
#pragma GCC unroll 2
        for (int k = 0; k < kc; ++k) {
            V bv[NV];
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) bv[v] = vload(bs + k * NR + v * LANES);
            // B streams from L2 (the MR rows of A stay in L1): fetch its lines ahead of use, a line per 16 floats.
#pragma GCC unroll 8
            for (int v = 0; v < NR; v += 16)
                _mm_prefetch(reinterpret_cast<const char*>(bs + (k + PREFETCH) * NR + v), _MM_HINT_T0);
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i) {
                V av = vset1(as[i * lda + k * KS]);
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v) acc[i][v] = vfma(av, bv[v], acc[i][v]);
            }
        }
    }
    if (last) {
        if (res) {
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v)
                    acc[i][v] = vadd(acc[i][v], full ? vloadu(res + i * ldr + v * LANES)
                                                     : vload_n(res + i * ldr + v * LANES, n_valid - v * LANES));
        }
        if (relu) {
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v) acc[i][v] = vmax(acc[i][v], vzero());
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            if (full) vstoreu(c + i * ldc + v * LANES, acc[i][v]);
            else vstore_n(c + i * ldc + v * LANES, acc[i][v], n_valid - v * LANES);
        }
}

template <int R>
void tile_rows(int rows, int kc, const float* a, long lda, const float* b, float* c, long ldc, int n_valid,
               bool first, bool last, const float* bias, const float* res, long ldr, bool relu, int segs = 1,
               long seg_step = 0) {
    if constexpr (R == 0) {
        (void)rows; (void)kc; (void)a; (void)lda; (void)b; (void)c; (void)ldc; (void)n_valid;
        (void)first; (void)last; (void)bias; (void)res; (void)ldr; (void)relu; (void)segs; (void)seg_step;
    } else {
        if (rows == R) tile<R>(kc, a, lda, b, c, ldc, n_valid, first, last, bias, res, ldr, relu, segs, seg_step);
        else tile_rows<R - 1>(rows, kc, a, lda, b, c, ldc, n_valid, first, last, bias, res, ldr, relu, segs, seg_step);
    }
}

// ---- prologues: the rows of A -------------------------------------------------------------------------

struct Geometry {  // where output pixel m of the GEMM reads its input window
    int h, w, c, oh, ow, k, stride, dilation, pad_top, pad_left;
};

// Depthwise 3×3 conv of `count` consecutive output pixels of one output row, all channels, into
// out[count × ldo], channel vector by channel vector. At stride 1 the three taps of a row overlap: DW_GROUP
// outputs read DW_GROUP + 2 input vectors per row once (and apply the input ReLU once to each) instead of
// three times. Pixels near the border, and strided or dilated windows, take the checked path.
constexpr int DW_GROUP = LANES == 16 ? 8 : 4;
#ifndef XC_DWSLIDE
#define XC_DWSLIDE 1  // -DXC_DWSLIDE=0: stride-1 runs take the grouped path below (A/B builds)
#endif

template <typename T, bool ReluIn>
inline V dw_pixel(const T* const rows[3], const bool row_ok[3], const Geometry& g, int ox, int ch, int left,
                  const float* __restrict w, V acc) {
    const int c = g.c, d = g.dilation, ix0 = ox * g.stride - g.pad_left;
    const bool full = left >= LANES;
    for (int dy = 0; dy < 3; ++dy) {
        if (!row_ok[dy]) continue;
        for (int dx = 0; dx < 3; ++dx) {
            const int ix = ix0 + dx * d;
            if (ix < 0 || ix >= g.w) continue;
            const T* src = rows[dy] + long(ix) * c + ch;
            const float* wt = w + long(dy * 3 + dx) * c + ch;
            V x = full ? vld(src) : vld_n(src, left);
            if constexpr (ReluIn) x = vmax(x, vzero());
            acc = vfma(x, full ? vloadu(wt) : vload_n(wt, left), acc);
        }
    }
    return acc;
}

// A run of a 3×3, stride-1 conv's output row whose windows reach at most one pixel past the border, where the
// padding is a real zero (Outside: 1 the row above the image, 2 the one below), one vector of channels, its
// window slid along the row (slide.h) with the nine taps in registers.
template <typename T, bool ReluIn, bool Full, int Outside>
void depthwise3_slide(const T* __restrict mid, long down, const Geometry& g, int ix0, int count, int ch,
                      const float* __restrict w, V b0, bool relu_mid, T* __restrict out, long ldo) {
    const int c = g.c, left = Full ? LANES : c - ch;
    V wt[9];
    for (int t = 0; t < 9; ++t) wt[t] = Full ? vloadu(w + long(t) * c + ch) : vload_n(w + long(t) * c + ch, left);
    V x0, x1, x2;
    auto load = [&](const T* p) XC_INLINE {
        V x = Full ? vld(p) : vld_n(p, left);
        if constexpr (ReluIn) x = vmax(x, vzero());
        return x;
    };
    auto inside = [&](int i) XC_INLINE {  // column i of the run, at input column ix0 + i inside the image
        const T* q = mid + (long(ix0) + i) * c + ch;
        x0 = Outside & 1 ? vzero() : load(q - down);
        x1 = load(q);
        x2 = Outside & 2 ? vzero() : load(q + down);
    };
    auto column = [&](int i) XC_INLINE {  // any column: the first and the last may lie on the padding
        const int ix = ix0 + i;
        if (ix >= 0 && ix < g.w) inside(i);
        else x0 = x1 = x2 = vzero();
    };
    auto dot = [&](V acc, int dx) XC_INLINE {  // acc + the column times the window's column dx
        acc = vfma(x0, wt[dx], acc);
        acc = vfma(x1, wt[3 + dx], acc);
        return vfma(x2, wt[6 + dx], acc);
    };
    auto emit = [&](int i, V acc) XC_INLINE {
        if (relu_mid) acc = vmax(acc, vzero());
        T* dst = out + i * ldo + ch;
        if (Full) vst(dst, acc); else vst_n(dst, acc, left);
    };
    slide_window(count, b0, column, inside, dot, emit);
}

template <typename T, bool ReluIn, bool Full>
void depthwise3_slide_any(int outside, const T* mid, long down, const Geometry& g, int ix0, int count, int ch,
                          const float* w, V b0, bool relu_mid, T* out, long ldo) {
    switch (outside) {
    case 0: depthwise3_slide<T, ReluIn, Full, 0>(mid, down, g, ix0, count, ch, w, b0, relu_mid, out, ldo); break;
    case 1: depthwise3_slide<T, ReluIn, Full, 1>(mid, down, g, ix0, count, ch, w, b0, relu_mid, out, ldo); break;
    case 2: depthwise3_slide<T, ReluIn, Full, 2>(mid, down, g, ix0, count, ch, w, b0, relu_mid, out, ldo); break;
    default: depthwise3_slide<T, ReluIn, Full, 3>(mid, down, g, ix0, count, ch, w, b0, relu_mid, out, ldo); break;
    }
}

template <typename T, bool ReluIn>
void depthwise3_run(const T* __restrict img, const Geometry& g, int oy, int ox0, int count,
                    const float* __restrict w, const float* __restrict bias, bool relu_mid, T* __restrict out,
                    long ldo) {
    const int c = g.c, s = g.stride, d = g.dilation;
    const int iy0 = oy * s - g.pad_top;
    const int ix_first = ox0 - g.pad_left, ix_last = ox0 + count - 1 - g.pad_left;  // at stride 1
    if (XC_DWSLIDE && s == 1 && d == 1 && iy0 >= -1 && iy0 + 2 <= g.h && ix_first >= -1 && ix_last + 2 <= g.w) {
        const long down = long(g.w) * c;
        const T* mid = img + long(iy0 + 1) * down;  // the windows' middle row: always inside
        const int outside = (iy0 < 0 ? 1 : 0) | (iy0 + 2 >= g.h ? 2 : 0);
        int ch = 0;
        for (; ch + LANES <= c; ch += LANES) {
            const V b0 = bias ? vloadu(bias + ch) : vzero();
            depthwise3_slide_any<T, ReluIn, true>(outside, mid, down, g, ix_first, count, ch, w, b0, relu_mid, out, ldo);
        }
        if (ch < c) {
            const V b0 = bias ? vload_n(bias + ch, c - ch) : vzero();
            depthwise3_slide_any<T, ReluIn, false>(outside, mid, down, g, ix_first, count, ch, w, b0, relu_mid, out, ldo);
        }
        return;
    }
    bool row_ok[3];
    const T* rows[3];
    for (int dy = 0; dy < 3; ++dy) {
        const int iy = iy0 + dy * d;
        row_ok[dy] = iy >= 0 && iy < g.h;
        rows[dy] = img + long(row_ok[dy] ? iy : 0) * g.w * c;
    }
    // Output columns [lo, hi] whose three input columns all lie inside the image, for the grouped path.
    const bool grouped = row_ok[0] && row_ok[1] && row_ok[2] && s == 1 && d == 1;
    const int lo = std::max(ox0, g.pad_left), hi = std::min(ox0 + count - 1, g.w - 3 + g.pad_left);
    for (int ch = 0; ch < c; ch += LANES) {
        const int left = c - ch;
        const bool full = left >= LANES;
        const V b0 = bias ? (full ? vloadu(bias + ch) : vload_n(bias + ch, left)) : vzero();
        auto finish = [&](int ox, V acc) {
            if (relu_mid) acc = vmax(acc, vzero());
            T* dst = out + (ox - ox0) * ldo + ch;
            if (full) vst(dst, acc); else vst_n(dst, acc, left);
        };
        int ox = ox0;
        if (grouped && full) {
            for (; ox < lo; ++ox) finish(ox, dw_pixel<T, ReluIn>(rows, row_ok, g, ox, ch, left, w, b0));
            for (; ox + DW_GROUP - 1 <= hi; ox += DW_GROUP) {
                V acc[DW_GROUP];
#pragma GCC unroll 8
                for (int p = 0; p < DW_GROUP; ++p) acc[p] = b0;
#pragma GCC unroll 3
                for (int dy = 0; dy < 3; ++dy) {
                    const T* src = rows[dy] + long(ox - g.pad_left) * c + ch;
                    V x[DW_GROUP + 2];
#pragma GCC unroll 10
                    for (int j = 0; j < DW_GROUP + 2; ++j) {
                        x[j] = vld(src + long(j) * c);
                        if constexpr (ReluIn) x[j] = vmax(x[j], vzero());
                    }
#pragma GCC unroll 3
                    for (int dx = 0; dx < 3; ++dx) {
                        const V wt = vloadu(w + long(dy * 3 + dx) * c + ch);
#pragma GCC unroll 8
                        for (int p = 0; p < DW_GROUP; ++p) acc[p] = vfma(x[p + dx], wt, acc[p]);
                    }
                }
#pragma GCC unroll 8
                for (int p = 0; p < DW_GROUP; ++p) finish(ox + p, acc[p]);
            }
        }
        for (; ox < ox0 + count; ++ox) finish(ox, dw_pixel<T, ReluIn>(rows, row_ok, g, ox, ch, left, w, b0));
    }
}

// Any k×k (the checked path only): for kernel sizes other than 3.
template <typename T>
void depthwise_any_run(const T* __restrict img, const Geometry& g, int oy, int ox0, int count, bool relu_in,
                       const float* __restrict w, const float* __restrict bias, bool relu_mid, T* __restrict out,
                       long ldo) {
    const int c = g.c, kk = g.k;
    for (int p = 0; p < count; ++p) {
        const int iy0 = oy * g.stride - g.pad_top, ix0 = (ox0 + p) * g.stride - g.pad_left;
        for (int ch = 0; ch < c; ch += LANES) {
            const int left = c - ch;
            V acc = bias ? (left >= LANES ? vloadu(bias + ch) : vload_n(bias + ch, left)) : vzero();
            for (int dy = 0; dy < kk; ++dy) {
                const int iy = iy0 + dy * g.dilation;
                if (iy < 0 || iy >= g.h) continue;
                for (int dx = 0; dx < kk; ++dx) {
                    const int ix = ix0 + dx * g.dilation;
                    if (ix < 0 || ix >= g.w) continue;
                    const T* src = img + (long(iy) * g.w + ix) * c + ch;
                    const float* wt = w + long(dy * kk + dx) * c + ch;
                    V x = left >= LANES ? vld(src) : vld_n(src, left);
                    if (relu_in) x = vmax(x, vzero());
                    acc = vfma(x, left >= LANES ? vloadu(wt) : vload_n(wt, left), acc);
                }
            }
            if (relu_mid) acc = vmax(acc, vzero());
            T* dst = out + p * ldo + ch;
            if (left >= LANES) vst(dst, acc); else vst_n(dst, acc, left);
        }
    }
}

// The row stride of A where the kernels write A themselves: k elements (bfloat16: rounded up to whole pairs), and
// one cache line more when rows that far apart would fall in the same few L1 sets (2 KB multiples: the exit flow's
// 1,024 and 1,536 float32 channels), where the MR rows a tile reads at once would evict each other (L1 holds 8
// lines a set; XC_ASTRIDE=0: never padded).
#ifndef XC_ASTRIDE
#define XC_ASTRIDE 1
#endif
template <typename T>
inline long a_stride(int k) {
    const long n = sizeof(T) == 2 ? (k + 1) / 2 * 2 : k;
    return XC_ASTRIDE && n * long(sizeof(T)) % 2048 == 0 ? n + 64 / long(sizeof(T)) : n;
}

// A bfloat16 row of odd length ends in half a pair: its other half must be a real zero (B's is).
template <typename T>
inline void zero_pair_tails(T* a, long lda, int rows, int k) {
    if (sizeof(T) == 2 && k % 2)
        for (int r = 0; r < rows; ++r) a[r * lda + k] = 0;
}

// Depthwise k×k conv (+ bias, + ReLU) of output pixels [m0, m0 + rows), all channels, into a[rows × lda],
// one output row's run of pixels at a time.
template <typename T>
void depthwise_rows(const T* __restrict in, const Geometry& g, long m0, int rows, const float* __restrict w,
                    const float* __restrict bias, bool relu_in, bool relu_mid, T* __restrict a, long lda) {
    const long plane = long(g.oh) * g.ow;
    for (int r = 0; r < rows;) {
        const long m = m0 + r;
        const long n = m / plane;
        const int oy = int((m % plane) / g.ow), ox = int(m % g.ow);
        const int count = std::min(rows - r, g.ow - ox);
        const T* img = in + n * long(g.h) * g.w * g.c;
        T* out = a + long(r) * lda;
        if (g.k != 3) depthwise_any_run(img, g, oy, ox, count, relu_in, w, bias, relu_mid, out, lda);
        else if (relu_in) depthwise3_run<T, true>(img, g, oy, ox, count, w, bias, relu_mid, out, lda);
        else depthwise3_run<T, false>(img, g, oy, ox, count, w, bias, relu_mid, out, lda);
        r += count;
    }
}

// k×k patches of output pixels [m0, m0 + rows): row r holds the window in (dy, dx, channel) order, zeros
// outside the image (a plain conv's zero padding).
// Copy n elements (with the ReLU when asked): short spans inline, since most patches are a few channels wide.
template <typename T>
inline void copy_span(T* __restrict dst, const T* __restrict src, long n, bool relu) {
    if (!relu && n >= 64) {
        std::memcpy(dst, src, sizeof(T) * n);
        return;
    }
    long i = 0;
    for (; i + LANES <= n; i += LANES) {
        V x = vld(src + i);
        vst(dst + i, relu ? vmax(x, vzero()) : x);
    }
    if (i < n) {
        V x = vld_n(src + i, int(n - i));
        vst_n(dst + i, relu ? vmax(x, vzero()) : x, int(n - i));
    }
}

// Rows lda elements apart, k·k·c of them written (a bfloat16 row's half pair past them: zero_pair_tails).
template <typename T>
void patch_rows(const T* __restrict in, const Geometry& g, long m0, int rows, bool relu_in, T* __restrict a,
                long lda) {
    const int c = g.c, kk = g.k;
    const long plane = long(g.oh) * g.ow;
    for (int r = 0; r < rows; ++r) {
        const long m = m0 + r;
        const long n = m / plane;
        const int oy = int((m % plane) / g.ow), ox = int(m % g.ow);
        const int iy0 = oy * g.stride - g.pad_top, ix0 = ox * g.stride - g.pad_left;
        const T* img = in + n * long(g.h) * g.w * c;
        T* out = a + r * lda;
        // Inside the image, the k taps of one row (dilation 1) are k·c contiguous floats of NHWC: one copy.
        const bool whole_rows = g.dilation == 1 && ix0 >= 0 && ix0 + kk <= g.w;
        for (int dy = 0; dy < kk; ++dy) {
            const int iy = iy0 + dy * g.dilation;
            T* dst_row = out + dy * kk * long(c);
            if (iy < 0 || iy >= g.h) {
                std::memset(dst_row, 0, sizeof(T) * kk * c);
                continue;
            }
            const T* src_row = img + long(iy) * g.w * c;
            if (whole_rows) {
                copy_span(dst_row, src_row + long(ix0) * c, long(kk) * c, relu_in);
                continue;
            }
            for (int dx = 0; dx < kk; ++dx) {
                const int ix = ix0 + dx * g.dilation;
                T* dst = dst_row + dx * long(c);
                if (ix < 0 || ix >= g.w) std::memset(dst, 0, sizeof(T) * c);
                else copy_span(dst, src_row + long(ix) * c, c, relu_in);
            }
        }
    }
}

// A tile of output pixels on one output row whose windows all lie inside the image needs no patches when the
// input is read as it is (no ReLU) and a window row's taps touch (dilation 1): row dy of pixel i's window is
// the k·c contiguous floats at window + dy·w·c + i·stride·c, so the tile reads A from the input in place, one
// window row at a time (the same products in the same order: the same bits). Returns the first pixel's
// window, or null when the tile takes patches.
#ifndef XC_WINDOWS
#define XC_WINDOWS 1  // A/B builds: -DXC_WINDOWS=0: patches always; 2: strided 1×1 convs read in place too
#endif
template <typename T>
inline const T* tile_window(const T* in, const Geometry& g, long m, int rows) {
    const long plane = long(g.oh) * g.ow, n = m / plane;
    const int oy = int((m % plane) / g.ow), ox = int(m % g.ow);
    const int iy0 = oy * g.stride - g.pad_top, ix0 = ox * g.stride - g.pad_left;
    if (ox + rows > g.ow || iy0 < 0 || iy0 + g.k > g.h || ix0 < 0 || ix0 + (rows - 1) * g.stride + g.k > g.w)
        return nullptr;
    return in + ((n * g.h + iy0) * long(g.w) + ix0) * g.c;
}

// ---- one convolution ------------------------------------------------------------------------------------

// Output channels are taken in groups of GROUP panels of NR (0: all of them; the ISA's file sets GROUP, and
// -DXC_GROUP=N overrides it for A/B builds). Within a group the k loop runs over the whole depth, each MR-row
// slice of A stays in L1 while the group's kc×NR panels of B (in L2) pass it, and the group's columns of C
// stay hot across the k chunks; so a pixel block needs L2 for its rows of A and the group's columns of C only,
// and B is read from L3 once per block rather than once per MR rows of it. Every order adds each output's
// products in the same k order: the bits do not change.
#ifdef XC_GROUP
constexpr int PANEL_GROUP = XC_GROUP;
#else
constexpr int PANEL_GROUP = GROUP;
#endif

struct Task {
    long m0;
    int rows, n0, n1;  // output pixels [m0, m0 + rows), output channels [n0, n1)
    long next_m0;
    int next_rows;     // the block this thread most likely runs next (0 rows: none)
};

// The next block's input window, residual and output rows, fetched a few cache lines per register tile while
// this block's GEMM runs, so that its prologue and its stores find them in cache: inside the network the
// previous layers have pushed them out to L3 or memory.
#ifndef XC_AHEAD
#define XC_AHEAD 1  // -DXC_AHEAD=0: no look-ahead; 2: k×k patches too (A/B builds)
#endif
// The output's lines are fetched as for reading (T1), not for writing: `prefetchw` held up the tile loop that issues
// it (Zen 4: a fifth of the 147² separable conv's samples on the instructions after it) and the pass ran 1.4–2.2 %
// slower with it (benchmarks/NOTES.md).
#ifndef XC_AHEAD_OUT
#define XC_AHEAD_OUT 1  // -DXC_AHEAD_OUT=2: fetched for writing (prefetchw); 0: not fetched (A/B builds)
#endif

class Ahead {
public:
    // [next_m0, next_m0 + next_rows): the next block's output pixels; `steps`: the register tiles to spread over.
    // `T`: the activations' element type.
    template <typename T>
    Ahead(const xc_conv* op, const T* input, const T* output, long next_m0, int next_rows, long steps) {
        if (!XC_AHEAD || next_rows <= 0 || (op->kernel > 1 && op->kind == XC_PATCHES && XC_AHEAD < 2)) return;
        // Input rows from the first output pixel's window top to the last one's bottom (all images between).
        const long plane = long(op->oh) * op->ow, m_last = next_m0 + next_rows - 1;
        const long n_first = next_m0 / plane, n_last = m_last / plane;
        const int oy_first = int((next_m0 % plane) / op->ow), oy_last = int((m_last % plane) / op->ow);
        const int iy_first = std::max(0, oy_first * op->stride - op->pad_top);
        const int iy_last = std::min(op->h - 1, oy_last * op->stride - op->pad_top + (op->kernel - 1) * op->dilation);
        const long row = long(op->w) * op->c;
        const long begin = (n_first * op->h + iy_first) * row, end = (n_last * op->h + iy_last + 1) * row;
        add(input + begin, end - begin);
        const long outputs = long(next_rows) * op->cout;
        if (op->residual) add(reinterpret_cast<const T*>(op->residual) + next_m0 * long(op->cout), outputs);
        writes_ = regions_;
        if (XC_AHEAD_OUT) add(output + next_m0 * long(op->cout), outputs);
        long lines = 0;
        for (int r = 0; r < regions_; ++r) lines += lines_[r];
        per_step_ = (lines + steps - 1) / std::max(steps, 1L);
    }

    void step() {
        for (long i = 0; i < per_step_ && region_ < regions_; ++i) {
            const char* p = start_[region_] + at_ * 64;
            if (region_ < writes_ || XC_AHEAD_OUT == 1) _mm_prefetch(p, _MM_HINT_T1);
            else asm volatile("prefetchw %0" : : "m"(*p));
            if (++at_ == lines_[region_]) at_ = 0, ++region_;
        }
    }

private:
    template <typename T>
    void add(const T* p, long elems) {
        if (elems <= 0) return;
        start_[regions_] = reinterpret_cast<const char*>(p);
        lines_[regions_++] = (elems * long(sizeof(T)) + 63) / 64;
    }

    const char* start_[3] = {};
    long lines_[3] = {};
    int regions_ = 0, writes_ = 0, region_ = 0;
    long per_step_ = 0, at_ = 0;
};


#ifndef XC_SEGS
#define XC_SEGS 1  // -DXC_SEGS=0: a window read in place takes one tile call per window row (A/B builds)
#endif

#if XC_BF16
// ---- the bfloat16 register tile (the bf16 build) ----------------------------------------------------------

#ifndef XC_BF16_PAIRS
#define XC_BF16_PAIRS 1  // -DXC_BF16_PAIRS=0: each vector of C rounded and stored on its own (A/B builds)
#endif

// C[R×NR] = bias + A[R×2kp] · B[2kp×NR], A and B in bfloat16 pairs: one vdpbf16ps adds, in each float32 lane,
// the products of a pair of A's columns with the same pair of B's rows. Then + residual, ReLU, and C rounded to
// bfloat16. The whole depth in one call (C is stored once, rounded once); with segs > 1, A is `segs` pieces of
// kp pairs, seg_step pairs apart, as in tile().
template <int R>
inline void tile_bf16(int kp, const std::uint32_t* __restrict a, long lda, const std::uint32_t* __restrict b,
                      std::uint16_t* __restrict c, long ldc, int n_valid, const float* __restrict bias,
                      const std::uint16_t* __restrict res, long ldr, bool relu, int segs, long seg_step) {
    V acc[R][NV];
    const bool full = n_valid >= NR;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
        const V b0 = bias ? vload(bias + v * LANES) : vzero();
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) acc[i][v] = b0;
    }
    for (int s = 0; s < segs; ++s) {
        const std::uint32_t* as = a + s * seg_step;
        const std::uint32_t* bs = b + long(s) * kp * NR;
#pragma GCC unroll 2
        for (int k = 0; k < kp; ++k) {
            __m512bh bv[NV];
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(bs + k * NR + v * LANES);
#pragma GCC unroll 8
            for (int v = 0; v < NR; v += 16)
                _mm_prefetch(reinterpret_cast<const char*>(bs + (k + PREFETCH) * NR + v), _MM_HINT_T0);
#pragma GCC unroll 16
            for (int i = 0; i < R; ++i) {
                const __m512bh av = (__m512bh)_mm512_set1_epi32(int(as[i * lda + k]));
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
            }
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            const int left = n_valid - v * LANES;
            if (res) acc[i][v] = vadd(acc[i][v], full ? vld(res + i * ldr + v * LANES)
                                                      : vld_n(res + i * ldr + v * LANES, left));
            if (relu) acc[i][v] = vmax(acc[i][v], vzero());
        }
        if (XC_BF16_PAIRS && NV == 2 && full) {  // a row's two vectors rounded by one instruction, one store
            const __m512bh h = _mm512_cvtne2ps_pbh(acc[i][NV - 1], acc[i][0]);  // the second operand: the low half
            _mm512_storeu_si512(c + i * ldc, (__m512i)h);
            continue;
        }
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            if (full) vst(c + i * ldc + v * LANES, acc[i][v]);
            else vst_n(c + i * ldc + v * LANES, acc[i][v], n_valid - v * LANES);
        }
    }
}

template <int R>
void tile_rows_bf16(int rows, int kp, const std::uint32_t* a, long lda, const std::uint32_t* b, std::uint16_t* c,
                    long ldc, int n_valid, const float* bias, const std::uint16_t* res, long ldr, bool relu, int segs,
                    long seg_step) {
    if constexpr (R == 0) {
        (void)rows; (void)kp; (void)a; (void)lda; (void)b; (void)c; (void)ldc; (void)n_valid; (void)bias;
        (void)res; (void)ldr; (void)relu; (void)segs; (void)seg_step;
    } else {
        if (rows == R) tile_bf16<R>(kp, a, lda, b, c, ldc, n_valid, bias, res, ldr, relu, segs, seg_step);
        else tile_rows_bf16<R - 1>(rows, kp, a, lda, b, c, ldc, n_valid, bias, res, ldr, relu, segs, seg_step);
    }
}
#endif  // XC_BF16

// One task of a convolution: the prologue's rows of A for its block of pixels, then the GEMM over its output
// channels. T: float (float32 activations and A), or std::uint16_t (the bf16 build: bfloat16 activations, A and
// B in bfloat16 pairs, B packed by xc_pack_weights_bf16 as one block of the whole depth).
template <typename T>
void run_gemm_block(const xc_conv* op, const T* in, T* out, const Task& t, T* abuf) {
    constexpr bool bf16 = sizeof(T) == 2;
    const int kdim = op->k_dim, n_out = op->cout;
    const T* a;
    long lda;
    Geometry g{op->h, op->w, op->c, op->oh, op->ow, op->kernel, op->stride, op->dilation, op->pad_top,
               op->pad_left};
    // bfloat16 pairs read in place must start on a pair: an even number of channels
    const bool pairs_ok = !bf16 || op->c % 2 == 0;
    const bool in_place = op->kind == XC_PATCHES && !op->relu_in && op->dilation == 1 && pairs_ok &&
                          (op->kernel > 1 ? XC_WINDOWS >= 1 : XC_WINDOWS >= 2);
    switch (op->kind) {
    case XC_POINTWISE:
        if (!op->relu_in && pairs_ok) {
            a = in + t.m0 * long(op->c);
            lda = op->c;
            break;
        }
        lda = a_stride<T>(op->c);
        for (int r = 0; r < t.rows; ++r) copy_span(abuf + r * lda, in + (t.m0 + r) * long(op->c), op->c, op->relu_in);
        zero_pair_tails(abuf, lda, t.rows, op->c);
        a = abuf;
        break;
    case XC_SEPARABLE:
        lda = a_stride<T>(op->c);
        depthwise_rows(in, g, t.m0, t.rows, op->dw_weight, op->dw_bias, op->relu_in, op->relu_mid, abuf, lda);
        zero_pair_tails(abuf, lda, t.rows, op->c);
        a = abuf;
        break;
    default:  // XC_PATCHES (a strided 1×1 conv is a 1×1 "patch")
        lda = bf16 ? (kdim + 1) / 2 * 2 : kdim;
        if (!in_place) patch_rows(in, g, t.m0, t.rows, op->relu_in, abuf, lda);
        else  // patches for the tiles that cannot read their windows in place only
            for (int i = 0; i < t.rows; i += MR) {
                const int rows = std::min(MR, t.rows - i);
                if (!tile_window(in, g, t.m0 + i, rows)) patch_rows(in, g, t.m0 + i, rows, false, abuf + i * lda, lda);
            }
        zero_pair_tails(abuf, lda, t.rows, kdim);
        a = abuf;
        break;
    }
    const long win_row = long(g.k) * g.c, win_lda = long(g.stride) * g.c, img_row = long(g.w) * g.c;
    const long ldc = n_out, n_padded = long(op->cout + NR - 1) / NR * NR;
    const int group_cols = PANEL_GROUP > 0 ? PANEL_GROUP * NR : int(n_padded);
    const int k_block = bf16 ? kdim : KC;  // bfloat16: the whole depth in one pass, C rounded once
    const long tiles = long((t.rows + MR - 1) / MR) * ((kdim + k_block - 1) / k_block) * ((t.n1 - t.n0 + NR - 1) / NR);
    const T* residual = reinterpret_cast<const T*>(op->residual);
    Ahead ahead(op, in, out, t.next_m0, t.next_rows, tiles);
    for (int g0 = t.n0; g0 < t.n1; g0 += group_cols) {
        const int g1 = std::min(t.n1, g0 + group_cols);
        for (int k0 = 0; k0 < kdim; k0 += k_block) {
            const int kc = std::min(k_block, kdim - k0);
            const bool first = k0 == 0, last = k0 + kc >= kdim;
            const float* b_block = op->packed + long(k0) * n_padded;
            for (int i = 0; i < t.rows; i += MR) {
                const int rows = std::min(MR, t.rows - i);
                const T* window = in_place ? tile_window(in, g, t.m0 + i, rows) : nullptr;
                for (int n0 = g0; n0 < g1; n0 += NR) {
                    const int n_valid = std::min(NR, n_out - n0);
                    T* c = out + (t.m0 + i) * ldc + n0;
                    const T* res = residual ? residual + (t.m0 + i) * ldc + n0 : nullptr;
                    const float* bias = op->bias ? op->bias + n0 : nullptr;
                    const bool relu = op->relu_out != 0;
                    ahead.step();
                    if constexpr (bf16) {  // A, windows and B in pairs (every offset below is even)
#if XC_BF16
                        const int kp = (kdim + 1) / 2;
                        const auto* b_panel = reinterpret_cast<const std::uint32_t*>(op->packed) + long(n0) * kp;
                        const auto* a_pairs = reinterpret_cast<const std::uint32_t*>(window ? window : a + i * lda);
                        if (!window) tile_rows_bf16<MR>(rows, kp, a_pairs, lda / 2, b_panel, c, ldc, n_valid, bias, res, ldc,
                                                        relu, 1, 0);
                        else tile_rows_bf16<MR>(rows, int(win_row / 2), a_pairs, win_lda / 2, b_panel, c, ldc, n_valid,
                                                bias, res, ldc, relu, g.k, img_row / 2);
#endif
                    } else {
                        const float* b_panel = b_block + long(n0) * kc;
                        if (!window) {
                            tile_rows<MR>(rows, kc, a + long(i) * lda + k0, lda, b_panel, c, ldc, n_valid, first, last,
                                          bias, res, ldc, relu);
                            continue;
                        }
                        // The chunk's k range, window row by window row: whole rows in one call, the tile in registers.
                        if (XC_SEGS && k0 % win_row == 0 && kc % win_row == 0) {
                            tile_rows<MR>(rows, int(win_row), window + k0 / win_row * img_row, win_lda, b_panel, c, ldc,
                                          n_valid, first, last, bias, res, ldc, relu, int(kc / win_row), img_row);
                            continue;
                        }
                        for (long s = k0; s < k0 + kc;) {
                            const long dy = s / win_row, e = std::min((dy + 1) * win_row, long(k0 + kc));
                            tile_rows<MR>(rows, int(e - s), window + dy * img_row + (s - dy * win_row), win_lda,
                                          b_panel + (s - k0) * NR, c, ldc, n_valid, s == 0, e == kdim, bias, res, ldc,
                                          relu);
                            s = e;
                        }
                    }
                }
            }
        }
    }
}

// Loads and stores of n elements (at most LANES used) of a float32 or bfloat16 tensor, as float32 vectors.
template <typename T>
inline V load_elems(const T* p, int n) { return n >= LANES ? vld(p) : vld_n(p, n); }
template <typename T>
inline void store_elems(T* p, V x, int n) {
    if (n >= LANES) vst(p, x);
    else vst_n(p, x, n);
}

// k×k max-pool over NHWC rows [row0, row1) of all images (flattened n·oh), + an optional residual, in
// float32 or bfloat16 (T = uint16_t: the max is exact, the residual sum is rounded once).
template <typename T>
void maxpool_rows(const xc_pool* op, const T* __restrict in, T* __restrict out, long row0, long row1) {
    const int c = op->c, k = std::min(op->kernel, 7);
    const T* residual = static_cast<const T*>(op->residual);
    for (long row = row0; row < row1; ++row) {
        const long n = row / op->oh;
        const int oy = int(row % op->oh);
        const T* img = in + n * long(op->h) * op->w * c;
        for (int ox = 0; ox < op->ow; ++ox) {
            T* dst = out + (row * op->ow + ox) * c;
            const T* res = residual ? residual + (row * op->ow + ox) * c : nullptr;
            const int iy0 = oy * op->stride - op->pad_top, ix0 = ox * op->stride - op->pad_left;
            // The window's pixels inside the image, found once for all channels (padding never wins).
            long offs[49];
            int taps = 0;
            for (int dy = 0; dy < k; ++dy) {
                const int iy = iy0 + dy;
                if (iy < 0 || iy >= op->h) continue;
                for (int dx = 0; dx < k; ++dx) {
                    const int ix = ix0 + dx;
                    if (ix >= 0 && ix < op->w) offs[taps++] = (long(iy) * op->w + ix) * c;
                }
            }
            for (int ch = 0; ch < c; ch += LANES) {
                const int left = c - ch;
                V m0 = vneg_inf(), m1 = vneg_inf();  // two chains: half the dependent max latency
                int t = 0;
                for (; t + 1 < taps; t += 2) {
                    m0 = vmaxv(m0, load_elems(img + offs[t] + ch, left));
                    m1 = vmaxv(m1, load_elems(img + offs[t + 1] + ch, left));
                }
                if (t < taps) m0 = vmaxv(m0, load_elems(img + offs[t] + ch, left));
                V m = vmaxv(m0, m1);
                if (res) m = vadd(m, load_elems(res + ch, left));
                store_elems(dst + ch, m, left);
            }
        }
    }
}

}  // namespace

// ---- what the dispatcher calls ----------------------------------------------------------------------------

namespace ISA_NS {

// The activations' element type of this build: float32, or bfloat16 in the bf16 build.
#if XC_BF16
using Act = std::uint16_t;
#else
using Act = float;
#endif

int nr() { return NR; }
int kc() { return KC; }
int mr() { return MR; }

// Rows of A per block: the block of A and the rows of C it feeds (a group's columns of them) stay in L2
// (~XC_L2 KB of them).
int block_rows(const xc_conv* op) {
#ifndef XC_L2
#define XC_L2 384
#endif
    const long c_cols = PANEL_GROUP > 0 ? std::min<long>(op->cout, long(PANEL_GROUP) * NR) : op->cout;
    const long per_row = long(sizeof(Act)) * (op->k_dim + c_cols);
    long rows = (long(XC_L2) * 1024) / std::max(per_row, 1L);
    rows = std::max<long>(MR, std::min<long>(rows, 1024) / MR * MR);
    return int(rows);
}

void conv_task(const xc_conv* op, const void* in, void* out, long m0, int rows, int n0, int n1, void* abuf,
               long next_m0, int next_rows) {
    Task t{m0, rows, n0, n1, next_m0, next_rows};
    run_gemm_block(op, static_cast<const Act*>(in), static_cast<Act*>(out), t, static_cast<Act*>(abuf));
}

#if !XC_BF16  // the bf16 build's max-pools are the AVX-512 build's
void pool_rows(const xc_pool* op, const void* in, void* out, long row0, long row1) {
    if (op->bf16)
        maxpool_rows(op, static_cast<const std::uint16_t*>(in), static_cast<std::uint16_t*>(out), row0, row1);
    else
        maxpool_rows(op, static_cast<const float*>(in), static_cast<float*>(out), row0, row1);
}
#endif

}  // namespace ISA_NS
