// The int8 kernels of the fast path, written once for any instruction set: xception/quantize/scheme.py's
// arithmetic on uint8 NHWC codes, integer parts exact, the float epilogue bit for bit.
//
// Included by each int8 build (qkernels_avx2.cpp, ...) after it has defined, on top of its vector
// operations (simd_*.h):
//   AType, KG     the GEMM's A elements and how many consecutive k one step of its dot loop takes
//                 (int16 pairs for vpmaddwd; uint8 quads for VNNI's vpdpbusd; octets, two quads, for 7-bit codes)
//   BType         the packed weights' elements (int16 pairs, or int8 quads)
//   QMR, QNR      the register tile: QMR rows × QNR columns of int32 accumulators
//   dot_tile, QStep  the register tile's dot loop, start + A[R × groups·KG] · B-panel, int32, exact, finished by a
//                 WholeTile from its registers or stored in acc[R × QNR]:
//                 qdot_tile.h's with the build's step, or the build's own (AVX-512 VNNI: 512-bit registers)
//
// The structure is the float kernels': one GEMM per convolution, C[M×N] = A[M×K]·B[K×N] over NHWC rows,
// with a prologue that makes a block of A's rows in a buffer that stays in L2 and an epilogue that
// finishes a tile of C:
//   * prologue: the input codes (a 1×1 conv), k×k patches padded with the input's zero point (a plain
//     conv), or a depthwise k×k conv computed on the fly and requantised to codes (a separable conv: the
//     pointwise GEMM's inputs are 8-bit, as in the reference, but they never go to memory);
//   * epilogue: bias, requantisation with the residual add and the ReLU in its clamp, codes written once
//     (or, for the classifier, float32 logits).
// The input's zero point is folded into the bias (acc = Σ q·w + (bias − z·Σw)), so A holds the codes as
// they are, which is what the dot instructions multiply (u8 × s8 → s32).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "api.h"
#include "slide.h"

namespace {

inline int padded_depth(int k_dim) { return (k_dim + KG - 1) / KG * KG; }

inline void store_codes(std::int16_t* p, VI x, int n) { vi_store_i16_n(p, x, n); }
inline void store_codes(std::uint8_t* p, VI x, int n) { vi_store_u8_n(p, x, n); }

// The scheme's requantisation of int32 lanes: f32(acc)·M (+ the residual's f32(q − z)·R), clamped to the
// codes' range [lowest, top], rounded half to even, plus the zero point. Clamping before rounding is the same
// as after: the bounds are integers.
struct Requant {
    V lo, hi;
    VI zero;
    Requant(int zero_point, int lowest, int top)
        : lo(vset1(float(lowest - zero_point))), hi(vset1(float(top - zero_point))), zero(vi_set1(zero_point)) {}
    VI codes(V v) const { return vi_add(v_round_to_int(vmin(vmax(v, lo), hi)), zero); }
};

// ---- prologues: the rows of A --------------------------------------------------------------------------

struct QGeometry {
    int h, w, c, oh, ow, k, stride, dilation, pad_top, pad_left;
};

inline QGeometry geometry(const xc_qconv* op) {
    return {op->h, op->w, op->c, op->oh, op->ow, op->kernel, op->stride, op->dilation, op->pad_top, op->pad_left};
}

// (n, oy, ox) of output pixel m.
inline void locate(const QGeometry& g, long m, long& n, int& oy, int& ox) {
    const long plane = long(g.oh) * g.ow;
    n = m / plane;
    oy = int((m % plane) / g.ow);
    ox = int(m % g.ow);
}

// The depthwise k×k step for output pixels [m0, m0 + rows) into A's rows, as codes of the depthwise output.
// Computed in float32, exactly: every product (q − z)·w is an integer of at most 255·127 in magnitude and
// every partial sum of k² ≤ 49 of them stays below 2^24, so each float operation is exact (in any order);
// the bias is then added in int32, and the rest is the scheme's epilogue. Along the rows of a 3×3, stride-1
// conv the sums start at dw_start = bias − z·Σw instead (where that too stays exact) and take the codes as
// they are, which saves the subtraction on every input and the bias on every output.
// T: AType (A's rows, for the GEMM) or uint8_t (the output itself, for a depthwise conv on its own).
template <typename T>
struct QDepthwise {
    const xc_qconv* op;
    QGeometry g;
    const std::uint8_t* in;
    long m0;
    T* a;
    long lda;
    VI zin = vi_set1(op->in_zero);
    Requant rq{op->mid_zero, op->mid_lo, op->code_max};
    const std::uint8_t* residual = op->kind == XC_DEPTHWISE ? op->residual : nullptr;  // closes a module
    VI rzero = vi_set1(op->res_zero);
    V rmult = vset1(op->res_mult);

    // Input codes as floats: q − z, or (Folded) q itself; max(q, z) first under an input ReLU.
    V input(const std::uint8_t* p, int left) const { return input(p, left, op->relu_in, false); }
    XC_INLINE V input(const std::uint8_t* p, int left, bool relu, bool folded) const {
        VI q = vi_load_u8_n(p, left);
        if (relu) q = vi_max(q, zin);
        return vi_to_float(folded ? q : vi_sub(q, zin));
    }
    V weight(int tap, int ch, int left) const {
        const float* w = op->dw_weight + long(tap) * g.c + ch;
        return left >= LANES ? vloadu(w) : vload_n(w, left);
    }
    // Row r's channels [ch, ch + left) from their scaled sums f32(Σ + bias)·M.
    XC_INLINE void store(int r, int ch, int left, V v) const {
        if (residual) {
            const VI res = vi_sub(vi_load_u8_n(residual + (m0 + r) * long(g.c) + ch, left), rzero);
            v = vadd(v, vmul(vi_to_float(res), rmult));
        }
        store_codes(a + long(r) * lda + ch, rq.codes(v), left);
    }
    XC_INLINE void finish(int r, int ch, int left, V acc) const {
        const VI sum = vi_add(v_trunc_to_int(acc), vi_loadu(op->dw_bias + ch));
        store(r, ch, left, vmul(vi_to_float(sum), vloadu(op->dw_mult + ch)));
    }

    // One output pixel, any window: the taps inside the image (padding is a real zero: it adds nothing).
    void pixel(int r, const std::uint8_t* img, int oy, int ox) const {
        const int kk = g.k, iy0 = oy * g.stride - g.pad_top, ix0 = ox * g.stride - g.pad_left;
        long taps[49];
        int tap_index[49];
        int count = 0;
        for (int dy = 0; dy < kk; ++dy) {
            const int iy = iy0 + dy * g.dilation;
            for (int dx = 0; dx < kk && iy >= 0 && iy < g.h; ++dx) {
                const int ix = ix0 + dx * g.dilation;
                if (ix < 0 || ix >= g.w) continue;
                taps[count] = (long(iy) * g.w + ix) * g.c;
                tap_index[count++] = dy * kk + dx;
            }
        }
        for (int ch = 0; ch < g.c; ch += LANES) {
            const int left = g.c - ch;
            V acc = vzero();
            for (int t = 0; t < count; ++t) acc = vfma(input(img + taps[t] + ch, left), weight(tap_index[t], ch, left), acc);
            finish(r, ch, left, acc);
        }
    }

    // `count` neighbouring output pixels of a 3×3, stride-1 conv, their window slid along the row (slide.h). A
    // window may reach one pixel past the border on each side (the 'same' padding of a 3×3 conv): a column or a
    // row (Outside: 1 the top, 2 the bottom) there is the zero point's value.
    template <bool Folded, bool Relu>
    void row(int r, const std::uint8_t* img, int oy, int ox, int count) const {
        const int iy0 = oy - g.pad_top, ix0 = ox - g.pad_left;
        const int outside = (iy0 < 0 ? 1 : 0) | (iy0 + 2 >= g.h ? 2 : 0);
        const long down = long(g.w) * g.c;
        const std::uint8_t* mid = img + (iy0 + 1) * down;  // the window's middle row: always inside
        int ch = 0;
#if XC_DEPTHWISE_DOT
        if (op->dw_quads) {
            for (; ch + LANES <= g.c; ch += LANES) {
                switch (outside) {
                case 0: slide_quads<Relu, 0>(r, mid, down, ix0, ch, count); break;
                case 1: slide_quads<Relu, 1>(r, mid, down, ix0, ch, count); break;
                case 2: slide_quads<Relu, 2>(r, mid, down, ix0, ch, count); break;
                default: slide_quads<Relu, 3>(r, mid, down, ix0, ch, count); break;
                }
            }
        }
#endif
        for (; ch + LANES <= g.c; ch += LANES) {
            switch (outside) {
            case 0: slide<Folded, Relu, true, 0>(r, mid, down, ix0, ch, count); break;
            case 1: slide<Folded, Relu, true, 1>(r, mid, down, ix0, ch, count); break;
            case 2: slide<Folded, Relu, true, 2>(r, mid, down, ix0, ch, count); break;
            default: slide<Folded, Relu, true, 3>(r, mid, down, ix0, ch, count); break;
            }
        }
        if (ch < g.c) {
            switch (outside) {
            case 0: slide<Folded, Relu, false, 0>(r, mid, down, ix0, ch, count); break;
            case 1: slide<Folded, Relu, false, 1>(r, mid, down, ix0, ch, count); break;
            case 2: slide<Folded, Relu, false, 2>(r, mid, down, ix0, ch, count); break;
            default: slide<Folded, Relu, false, 3>(r, mid, down, ix0, ch, count); break;
            }
        }
    }

    template <bool Folded, bool Relu, bool Full, int Outside>
    void slide(int r, const std::uint8_t* mid, long down, int ix0, int ch, int count) const {
        const int left = Full ? LANES : g.c - ch;
        alignas(32) float w[9][LANES];  // the taps' weights, at fixed offsets for the whole row
        for (int t = 0; t < 9; ++t) vstoreu(w[t], weight(t, ch, left));
        const V start = Folded ? vloadu(op->dw_start + ch) : vzero(), mult = vloadu(op->dw_mult + ch);
        const V padding = Folded ? vset1(float(op->in_zero)) : vzero();  // the zero point, as input() gives it
        V x0, x1, x2;
        auto inside = [&](int i) XC_INLINE {  // column i of the run, at input column ix0 + i inside the image
            const std::uint8_t* q = mid + (long(ix0) + i) * g.c + ch;
            x0 = Outside & 1 ? padding : input(q - down, left, Relu, Folded);
            x1 = input(q, left, Relu, Folded);
            x2 = Outside & 2 ? padding : input(q + down, left, Relu, Folded);
        };
        auto column = [&](int i) XC_INLINE {  // any column: the first and the last may lie on the padding
            const int ix = ix0 + i;
            if (ix >= 0 && ix < g.w) inside(i);
            else x0 = x1 = x2 = padding;
        };
        auto dot = [&](V acc, int dx) XC_INLINE {  // acc + the column times the window's column dx
            acc = vfma(x0, vload(w[dx]), acc);
            acc = vfma(x1, vload(w[3 + dx]), acc);
            return vfma(x2, vload(w[6 + dx]), acc);
        };
        auto emit = [&](int i, V sum) XC_INLINE {
            if constexpr (Folded) store(r + i, ch, left, vmul(sum, mult));
            else finish(r + i, ch, left, sum);
        };
        slide_window(count, start, column, inside, dot, emit);
    }

#if XC_DEPTHWISE_DOT
    // The same run on a byte dot product (the build's column_quads and vi_dot_quads): each input column is one
    // quad a channel (its top, middle and bottom codes, 0), and each output takes three dot steps of four taps,
    // not nine multiply-adds, in int32 from dw_start_q (the codes as they are: exact at any size). A whole vector
    // of channels only: the tail takes slide().
    template <bool Relu, int Outside>
    void slide_quads(int r, const std::uint8_t* mid, long down, int ix0, int ch, int count) const {
        const long stride = (g.c + 63) / 64 * 64;
        const VI w[3] = {vi_loadu(op->dw_quads + ch), vi_loadu(op->dw_quads + stride + ch),
                         vi_loadu(op->dw_quads + 2 * stride + ch)};
        const VI start = vi_loadu(op->dw_start_q + ch);
        const V mult = vloadu(op->dw_mult + ch);
        const VI padding = zero_quads(op->in_zero);  // a column outside the image; max(q, z) under a ReLU
        VI x;
        auto inside = [&](int i) XC_INLINE {
            const std::uint8_t* q = mid + (long(ix0) + i) * g.c + ch;
            x = column_quads<Outside>(q - down, q, q + down, padding);
            if (Relu) x = vq_max(x, padding);
        };
        auto column = [&](int i) XC_INLINE {
            const int ix = ix0 + i;
            if (ix >= 0 && ix < g.w) inside(i);
            else x = padding;
        };
        auto dot = [&](VI acc, int dx) XC_INLINE { return vi_dot_quads(acc, x, w[dx]); };
        auto emit = [&](int i, VI sum) XC_INLINE { store(r + i, ch, LANES, vmul(vi_to_float(sum), mult)); };
        slide_window(count, start, column, inside, dot, emit);
    }
#endif

    // How many output pixels from (oy, ox) on, at most `rows_left`, row() can take: 0 if none. Its windows
    // reach at most one pixel past each border.
    int row_length(int rows_left, int oy, int ox) const {
        if (g.k != 3 || g.stride != 1 || g.dilation != 1) return 0;
        const int iy = oy - g.pad_top;
        if (iy < -1 || iy + 2 > g.h) return 0;
        const int first = std::max(0, g.pad_left - 1), last = std::min(g.ow - 1, g.w - 2 + g.pad_left);
        if (ox < first || ox > last) return 0;
        return std::min(rows_left, last - ox + 1);
    }

    void run(int rows) const {
        for (int r = 0; r < rows;) {
            long n;
            int oy, ox;
            locate(g, m0 + r, n, oy, ox);
            const std::uint8_t* img = in + n * long(g.h) * g.w * g.c;
            int done = row_length(rows - r, oy, ox);
            if (done == 0) {
                pixel(r, img, oy, ox);
                done = 1;
            } else if (op->dw_start) {
                op->relu_in ? row<true, true>(r, img, oy, ox, done) : row<true, false>(r, img, oy, ox, done);
            } else {
                op->relu_in ? row<false, true>(r, img, oy, ox, done) : row<false, false>(r, img, oy, ox, done);
            }
            if (lda > g.c)
                for (int p = r; p < r + done; ++p) std::fill(a + long(p) * lda + g.c, a + long(p + 1) * lda, T(0));
            r += done;
        }
    }
};

template <typename T>
void q_depthwise_rows(const xc_qconv* op, const std::uint8_t* in, long m0, int rows, T* a, long lda) {
    QDepthwise<T>{op, geometry(op), in, m0, a, lda}.run(rows);
}

// `len` bytes in fixed-size moves, the last one overlapping the one before (a call to memcpy costs more than
// the copy for the short rows of patches: the stem's 9 and 96 bytes, a shortcut's pixel).
template <int N>
inline void move_bytes(std::uint8_t* __restrict dst, const std::uint8_t* __restrict src) {
    std::uint8_t part[N];
    std::memcpy(part, src, N);
    std::memcpy(dst, part, N);
}

inline void copy_bytes(std::uint8_t* __restrict dst, const std::uint8_t* __restrict src, int len) {
    if (len >= 32) {
        for (int i = 0; i + 32 < len; i += 32) move_bytes<32>(dst + i, src + i);
        move_bytes<32>(dst + len - 32, src + len - 32);
    } else if (len >= 16) {
        move_bytes<16>(dst, src);
        move_bytes<16>(dst + len - 16, src + len - 16);
    } else if (len >= 8) {
        move_bytes<8>(dst, src);
        move_bytes<8>(dst + len - 8, src + len - 8);
    } else {
        for (int i = 0; i < len; ++i) dst[i] = src[i];
    }
}

// c input codes into A (with the input ReLU, max(q, z)). Byte-wide A takes them as they are: a copy, or a
// byte-wise max the compiler vectorises 32 at a time; wider A goes through int32 lanes.
inline void copy_codes(AType* __restrict out, const std::uint8_t* __restrict src, int c, bool relu, int z, VI zin) {
    if constexpr (std::is_same_v<AType, std::uint8_t>) {
        (void)zin;
        if (!relu) {
            copy_bytes(reinterpret_cast<std::uint8_t*>(out), src, c);
            return;
        }
        const std::uint8_t floor = std::uint8_t(z);
        if (c < BYTES) {
            for (int ch = 0; ch < c; ++ch) out[ch] = std::max(src[ch], floor);
            return;
        }
        // Whole vectors, the last one overlapping the one before (the compiler left the byte loop scalar).
        const VB floor_v = vb_set1(floor);
        std::uint8_t* dst = reinterpret_cast<std::uint8_t*>(out);
        for (int ch = 0; ch + BYTES < c; ch += BYTES) vb_storeu(dst + ch, vb_max(vb_loadu(src + ch), floor_v));
        vb_storeu(dst + c - BYTES, vb_max(vb_loadu(src + c - BYTES), floor_v));
    } else {
        if (c < LANES) {  // the first conv's three channels: a vector would be mostly tail
            for (int ch = 0; ch < c; ++ch) out[ch] = AType(relu ? std::max<int>(src[ch], z) : src[ch]);
            return;
        }
        for (int ch = 0; ch < c; ch += LANES) {
            VI q = vi_load_u8_n(src + ch, c - ch);
            if (relu) q = vi_max(q, zin);
            store_codes(out + ch, q, c - ch);
        }
    }
}

// k×k patches of output pixels [m0, m0 + rows): row r holds the window in (dy, dx, channel) order, the
// input's zero point outside the image (the stem's convs, strided 1×1 shortcuts, conv="standard").
#ifndef XC_QROWS
#define XC_QROWS 1  // -DXC_QROWS=0: a window row copied channel group by channel group (A/B builds)
#endif
#ifndef XC_WINDOW_GATHER
#define XC_WINDOW_GATHER 0  // a build with gather_window(dst, src, down, row_bytes, k, lda) sets it to 1
#endif
// Runs: byte codes, no dilation, no input ReLU: the windows inside the image are taken a run at a time along an
// output row, each window row one copy (or, with gather, the whole window one register: the build's
// gather_window), with no geometry worked out per pixel. A template argument: the loop without runs ran 3 %
// slower on the stem's second conv with their test in it.
template <bool Runs>
void patch_rows(const xc_qconv* op, const std::uint8_t* __restrict in, long m0, int rows, AType* __restrict a,
                long lda, bool gather) {
    (void)gather;  // read only where the build has gather_window
    const QGeometry g = geometry(op);
    const int c = g.c, kk = g.k, z = op->in_zero;
    const VI zin = vi_set1(z);
    // Output columns [first, last] have their window's columns inside the image.
    const int first = (g.pad_left + g.stride - 1) / g.stride, reach = g.w - kk + g.pad_left;
    const int last = reach < 0 ? -1 : std::min(g.ow - 1, reach / g.stride);
    long n;
    int oy, ox;
    locate(g, m0, n, oy, ox);  // then stepped pixel by pixel
    for (int r = 0; r < rows;) {
        const std::uint8_t* img = in + n * long(g.h) * g.w * c;
        AType* dst = a + long(r) * lda;
        const int iy0 = oy * g.stride - g.pad_top, ix0 = ox * g.stride - g.pad_left;
        int done = 1;
        if (Runs && iy0 >= 0 && iy0 + kk <= g.h && ox >= first && ox <= last) {  // a run of windows inside
            done = std::min(rows - r, last - ox + 1);
            const std::uint8_t* src = img + (long(iy0) * g.w + ix0) * c;
            const long step = long(g.stride) * c, down = long(g.w) * c;
            const int row_bytes = kk * c;
#if XC_WINDOW_GATHER
            if (gather) {
                for (int p = 0; p < done; ++p) gather_window(dst + p * lda, src + p * step, down, row_bytes, kk, int(lda));
            } else
#endif
            {
                for (int p = 0; p < done; ++p) {
                    std::uint8_t* to = reinterpret_cast<std::uint8_t*>(dst + p * lda);
                    for (int dy = 0; dy < kk; ++dy) copy_bytes(to + dy * row_bytes, src + p * step + dy * down, row_bytes);
                    std::fill(to + op->k_dim, to + lda, std::uint8_t(0));
                }
            }
        } else {
            // A window row inside the image is k·c consecutive codes: one copy instead of k (the stem's second
            // conv copies 96 bytes three times instead of 32 bytes nine times).
            const bool whole_rows = XC_QROWS && std::is_same_v<AType, std::uint8_t> && g.dilation == 1 &&
                                    !op->relu_in && ix0 >= 0 && ix0 + kk <= g.w;
            for (int dy = 0; dy < kk; ++dy) {
                const int iy = iy0 + dy * g.dilation;
                if (whole_rows && iy >= 0 && iy < g.h) {
                    copy_bytes(reinterpret_cast<std::uint8_t*>(dst + dy * kk * c), img + (long(iy) * g.w + ix0) * c,
                               kk * c);
                    continue;
                }
                for (int dx = 0; dx < kk; ++dx) {
                    const int ix = ix0 + dx * g.dilation;
                    AType* out = dst + (dy * kk + dx) * c;
                    if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) {
                        std::fill(out, out + c, AType(z));
                        continue;
                    }
                    const std::uint8_t* src = img + (long(iy) * g.w + ix) * c;
                    copy_codes(out, src, c, op->relu_in, z, zin);
                }
            }
            std::fill(dst + op->k_dim, dst + lda, AType(0));
        }
        r += done;
        ox += done;  // never past the row's end: a run stops at its last column
        if (ox == g.ow) {
            ox = 0;
            if (++oy == g.oh) {
                oy = 0;
                ++n;
            }
        }
    }
}

void q_patch_rows(const xc_qconv* op, const std::uint8_t* in, long m0, int rows, AType* a, long lda) {
    if constexpr (std::is_same_v<AType, std::uint8_t>) {
        if (XC_QROWS && op->dilation == 1 && !op->relu_in) {
            // A whole window in one register (the stem's first conv: 27 bytes), where the build can.
            const bool gather = XC_WINDOW_GATHER && long(op->kernel) * op->kernel * op->c <= lda && lda <= 64;
            patch_rows<true>(op, in, m0, rows, a, lda, gather);
            return;
        }
    }
    patch_rows<false>(op, in, m0, rows, a, lda, false);
}

// The input's own rows (a 1×1 conv): widened to AType, with the input ReLU; none of it when A can be the
// input itself.
const AType* q_pointwise_rows(const xc_qconv* op, const std::uint8_t* __restrict in, long m0, int rows,
                              AType* __restrict a, long lda) {
    const int c = op->c;
    if constexpr (std::is_same_v<AType, std::uint8_t>) {
        if (!op->relu_in && lda == c) return reinterpret_cast<const AType*>(in + m0 * c);  // the identity here
    }
    const VI zin = vi_set1(op->in_zero);
    for (int r = 0; r < rows; ++r) {
        AType* dst = a + long(r) * lda;
        copy_codes(dst, in + (m0 + r) * long(c), c, op->relu_in, op->in_zero, zin);
        std::fill(dst + c, dst + lda, AType(0));
    }
    return a;
}

// ---- the epilogue ----------------------------------------------------------------------------------------

// A whole tile of codes (QNR columns) from the dot loop's registers, row by row: two vectors of int32 sums, the
// bias already in them (dot_tile starts from it). The clamp in two halves: the top in float, before rounding
// (so no sum converts out of int32's range), the bottom in the pack (saturated at 0, then raised to the lowest
// code): the same codes as Requant's.
struct WholeTile {
    static_assert(QNR == 2 * LANES, "a tile row is two vectors");
    const xc_qconv* op;
    long offset;  // of the tile's first code, row m and column n, in the output and the residual
    V mult[2];
    V top, rmult;
    VI zero, rzero;
    WholeTile(const xc_qconv* op_, long m, int n)
        : op(op_), offset(m * long(op_->cout) + n), mult{vloadu(op_->mult + n), vloadu(op_->mult + n + LANES)},
          top(vset1(float(op_->code_max - op_->out_zero))), rmult(vset1(op_->res_mult)),
          zero(vi_set1(op_->out_zero)), rzero(vi_set1(op_->res_zero)) {}

    static bool takes(const xc_qconv* op, int n) { return !op->out_float && n + QNR <= op->cout; }

    XC_INLINE void operator()(void* out, int r, VI sum0, VI sum1) const {
        const long at = offset + r * long(op->cout);
        const VI sums[2] = {sum0, sum1};
        VI codes[2];
        for (int t = 0; t < 2; ++t) {
            V x = vmul(vi_to_float(sums[t]), mult[t]);
            if (op->residual) {
                const VI q = vi_sub(vi_load_u8_n(op->residual + at + t * LANES, LANES), rzero);
                x = vadd(x, vmul(vi_to_float(q), rmult));
            }
            codes[t] = vi_add(v_round_to_int(vmin(x, top)), zero);
        }
        vi_store_u8_2_sat(static_cast<std::uint8_t*>(out) + at, codes[0], codes[1], op->out_lo);
    }
};

// Any other tile (fewer columns, or the classifier's float32 logits): rows [m, m + rows) and columns
// [n, n + n_valid) of the output from the int32 sums the dot loop stored in acc[rows × QNR], the bias in them.
void q_epilogue(const xc_qconv* op, const std::int32_t* __restrict acc, int rows, long m, int n, int n_valid,
                void* out) {
    const VI rzero = vi_set1(op->res_zero);
    const V rmult = vset1(op->res_mult);
    const Requant rq(op->out_zero, op->out_lo, op->code_max);
    for (int r = 0; r < rows; ++r) {
        const long row = (m + r) * long(op->cout) + n;
        for (int v = 0; v < n_valid; v += LANES) {
            const int count = std::min(LANES, n_valid - v);
            V x = vmul(vi_to_float(vi_loadu(acc + r * QNR + v)), vloadu(op->mult + n + v));
            if (op->out_float) {
                float* dst = static_cast<float*>(out) + row + v;
                if (count >= LANES) vstoreu(dst, x); else vstore_n(dst, x, count);
                continue;
            }
            if (op->residual) {
                const VI q = vi_sub(vi_load_u8_n(op->residual + row + v, count), rzero);
                x = vadd(x, vmul(vi_to_float(q), rmult));
            }
            vi_store_u8_n(static_cast<std::uint8_t*>(out) + row + v, rq.codes(x), count);
        }
    }
}

// ---- one convolution -------------------------------------------------------------------------------------

// The dot loop on R rows; its sums go to `whole` (a WholeTile, from the registers) or, where that is null, to acc.
// A function of its own for each R: inlined together into q_run_block, the tiles' register allocation spilled
// the sums to the stack on every step of the depth (1.4× the time; benchmarks/NOTES.md).
template <int R>
__attribute__((noinline)) void qdot(int groups, const AType* __restrict a, long lda, const BType* __restrict b,
                                    const std::int32_t* __restrict start, std::int32_t* __restrict acc,
                                    const WholeTile* whole, void* out) {
    dot_tile<R>(groups, a, lda, b, start, acc, whole, out, QStep{});
}

template <int R>
void qdot_rows(int rows, int groups, const AType* a, long lda, const BType* b, const std::int32_t* start,
               std::int32_t* acc, const WholeTile* whole, void* out) {
    if constexpr (R == 0) {
        (void)rows; (void)groups; (void)a; (void)lda; (void)b; (void)start; (void)acc; (void)whole; (void)out;
    } else {
        if (rows == R) qdot<R>(groups, a, lda, b, start, acc, whole, out);
        else qdot_rows<R - 1>(rows, groups, a, lda, b, start, acc, whole, out);
    }
}

void q_run_block(const xc_qconv* op, const std::uint8_t* in, void* out, long m0, int rows, int n0, int n1,
                 AType* abuf) {
    if (op->kind == XC_DEPTHWISE) {  // the depthwise step is the whole conv: its codes are the output
        q_depthwise_rows(op, in, m0, rows, static_cast<std::uint8_t*>(out) + m0 * op->c, op->c);
        return;
    }
    const long lda = padded_depth(op->k_dim);
    const AType* a = abuf;
    switch (op->kind) {
    case XC_POINTWISE: a = q_pointwise_rows(op, in, m0, rows, abuf, lda); break;
    case XC_SEPARABLE: q_depthwise_rows(op, in, m0, rows, abuf, lda); break;
    default: q_patch_rows(op, in, m0, rows, abuf, lda); break;
    }
    const int groups = int(lda / KG);
    const BType* packed = static_cast<const BType*>(op->packed);
    alignas(64) std::int32_t acc[QMR * QNR];
#ifndef XC_QORDER
#define XC_QORDER 1
#endif
#ifndef XC_QREGS
#define XC_QREGS 1  // -DXC_QREGS=0: every tile's sums through acc and q_epilogue (A/B builds)
#endif
#ifndef XC_QEVEN
#define XC_QEVEN 1  // -DXC_QEVEN=0: tiles of QMR rows and a short last one (A/B builds)
#endif
    // The block's rows in tiles of nearly equal height: a block of 121 rows takes 11 tiles of 11, not 10 of 12
    // and one of a single row, whose dot loop waits on its two accumulators' latency at every step.
    const int tiles = (rows + QMR - 1) / QMR;
    auto tile_start = [&](int t) { return XC_QEVEN ? int(long(t) * rows / tiles) : std::min(rows, t * QMR); };
#if XC_QORDER == 1
    // A panel of B (depth × QNR) stays in L1 while the block's rows of A stream past it from L2: A is
    // QNR/QMR times smaller per multiply-add than B would be the other way round.
    for (int n = n0; n < n1; n += QNR) {
        for (int t = 0; t < tiles; ++t) {
#else
    for (int t = 0; t < tiles; ++t) {
        for (int n = n0; n < n1; n += QNR) {
#endif
            const int i = tile_start(t), r = tile_start(t + 1) - i;
            const BType* panel = packed + long(n / QNR) * lda * QNR;
            if (XC_QREGS && WholeTile::takes(op, n)) {
                const WholeTile whole(op, m0 + i, n);
                qdot_rows<QMR>(r, groups, a + i * lda, lda, panel, op->bias + n, acc, &whole, out);
            } else {
                qdot_rows<QMR>(r, groups, a + i * lda, lda, panel, op->bias + n, acc, nullptr, out);
                q_epilogue(op, acc, r, m0 + i, n, std::min(QNR, op->cout - n), out);
            }
        }
    }
}

// k×k max-pool on codes (exact: the map from code to value is increasing), no residual. The max of the codes
// is their byte-wise max, 32 channels at a time; a window inside the input takes its taps at fixed offsets.
void q_maxpool_rows(const xc_pool* op, const std::uint8_t* __restrict in, std::uint8_t* __restrict out, long row0,
                    long row1) {
    const int c = op->c, k = std::min(op->kernel, 7);
    long inside[49];  // the taps' offsets from the window's first input, for a window inside the input
    for (int dy = 0; dy < k; ++dy)
        for (int dx = 0; dx < k; ++dx) inside[dy * k + dx] = (long(dy) * op->w + dx) * c;
    for (long row = row0; row < row1; ++row) {
        const long n = row / op->oh;
        const int oy = int(row % op->oh), iy0 = oy * op->stride - op->pad_top;
        const std::uint8_t* img = in + n * long(op->h) * op->w * c;
        for (int ox = 0; ox < op->ow; ++ox) {
            const int ix0 = ox * op->stride - op->pad_left;
            long edge[49];
            const long* offs = edge;
            const std::uint8_t* src = img;
            int taps = 0;
            if (iy0 >= 0 && iy0 + k <= op->h && ix0 >= 0 && ix0 + k <= op->w) {
                offs = inside;
                src = img + (long(iy0) * op->w + ix0) * c;
                taps = k * k;
            } else {  // the taps inside the input only: padding never wins
                for (int dy = 0; dy < k; ++dy) {
                    const int iy = iy0 + dy;
                    if (iy < 0 || iy >= op->h) continue;
                    for (int dx = 0; dx < k; ++dx) {
                        const int ix = ix0 + dx;
                        if (ix >= 0 && ix < op->w) edge[taps++] = (long(iy) * op->w + ix) * c;
                    }
                }
            }
            std::uint8_t* dst = out + (row * op->ow + ox) * c;
            int ch = 0;
            for (; ch + BYTES <= c; ch += BYTES) {
                VB m = vb_loadu(src + offs[0] + ch);  // every window holds an input
                for (int t = 1; t < taps; ++t) m = vb_max(m, vb_loadu(src + offs[t] + ch));
                vb_storeu(dst + ch, m);
            }
            for (; ch < c; ch += LANES) {
                VI m = vi_set1(0);
                for (int t = 0; t < taps; ++t) m = vi_max(m, vi_load_u8_n(src + offs[t] + ch, c - ch));
                vi_store_u8_n(dst + ch, m, c - ch);
            }
        }
    }
}

}  // namespace

// ---- what the dispatcher calls ----------------------------------------------------------------------------

namespace QISA_NS {

size_t packed_bytes(int k_dim, int cout) {
    return size_t(padded_depth(k_dim)) * size_t((cout + QNR - 1) / QNR * QNR) * sizeof(BType);
}

// Panels of QNR columns, each `groups` steps of KG consecutive k, a step in 4-byte words of QNR columns × the
// k a word holds: what one step of the register tile reads is contiguous. Zero past k_dim and past cout.
void pack(const std::int8_t* weight, int k_dim, int cout, void* packed) {
    constexpr int per_word = 4 / int(sizeof(BType));
    const int depth = padded_depth(k_dim), panels = (cout + QNR - 1) / QNR;
    BType* out = static_cast<BType*>(packed);
    for (int p = 0; p < panels; ++p)
        for (int g = 0; g < depth / KG; ++g)
            for (int w = 0; w < KG / per_word; ++w)
                for (int j = 0; j < QNR; ++j)
                    for (int e = 0; e < per_word; ++e) {
                        const int col = p * QNR + j, k = g * KG + w * per_word + e;
                        *out++ = BType(col < cout && k < k_dim ? weight[long(col) * k_dim + k] : 0);
                    }
}

int nr() { return QNR; }
int mr() { return QMR; }

// Rows of A per block: the block of A and the rows of C it feeds stay in L2 (~XC_QL2 KB of them).
#ifndef XC_QL2
#define XC_QL2 256  // -DXC_QL2=N for A/B builds
#endif
int block_rows(const xc_qconv* op) {
    const long per_row = long(sizeof(AType)) * padded_depth(op->k_dim) + op->cout;
    const long rows = (long(XC_QL2) * 1024) / std::max(per_row, 1L);
    return int(std::max<long>(QMR, std::min<long>(rows, 1024) / QMR * QMR));
}

size_t abuf_bytes(const xc_qconv* op, int rows) { return size_t(rows) * padded_depth(op->k_dim) * sizeof(AType); }

void conv_task(const xc_qconv* op, const std::uint8_t* in, void* out, long m0, int rows, int n0, int n1, void* abuf) {
    q_run_block(op, in, out, m0, rows, n0, n1, static_cast<AType*>(abuf));
}

void pool_rows(const xc_pool* op, const std::uint8_t* in, std::uint8_t* out, long row0, long row1) {
    q_maxpool_rows(op, in, out, row0, row1);
}

}  // namespace QISA_NS
