// The C interface of the fast path's CPU kernels (called from Python through ctypes).
#pragma once

#include <cstddef>
#include <cstdint>

#define XC_API __attribute__((visibility("default")))
#if defined(__x86_64__) || defined(__i386__)
#define XC_X86 1
#else
#define XC_X86 0
#endif

extern "C" {

enum xc_kind {
    XC_POINTWISE = 0,  // 1×1 conv, stride 1: A is the input itself
    XC_SEPARABLE = 1,  // depthwise k×k (+ bias, + ReLU) then 1×1: A is the depthwise output, never stored
    XC_PATCHES = 2,    // k×k conv (or a strided 1×1 conv): A is the input's k×k patches
    XC_DEPTHWISE = 3,  // int8 only: a depthwise k×k conv on its own (no pointwise conv after it), no GEMM
};

// One convolution over float32 NHWC tensors (bfloat16 ones when bf16 is set: input, residual and output).
// Output: n × oh × ow × cout, written in full.
struct xc_conv {
    int kind;
    int n, h, w, c;                // input
    int oh, ow;                    // output pixels
    int kernel, stride, dilation;  // the spatial window (depthwise or patches)
    int pad_top, pad_left;         // zero padding before the first row / column
    int relu_in;                   // ReLU applied to the input as it is read
    const float* dw_weight;        // XC_SEPARABLE: (kernel², c), tap-major
    const float* dw_bias;          // XC_SEPARABLE: (c) or null (a BatchNorm folded into the depthwise step)
    int relu_mid;                  // XC_SEPARABLE: ReLU between the depthwise and pointwise steps
    int k_dim;                     // GEMM depth: c, or kernel² · c for XC_PATCHES
    int cout;
    const float* packed;           // B, packed by xc_pack_weights (bf16: by xc_pack_weights_bf16)
    const float* bias;             // (cout padded to xc_tile_cols()) or null
    const float* residual;         // n × oh × ow × cout, added before the output ReLU, or null
    int relu_out;
    int bf16;                      // bfloat16 activations and weights, on the bf16 kernels (xc_bf16() must be 1)
};

// Max-pool (k×k, stride, padding that never wins) over NHWC, + an optional residual of the output's shape;
// float32, or bfloat16 (input, residual and output alike) when bf16 is set.
struct xc_pool {
    int n, h, w, c, oh, ow, kernel, stride, pad_top, pad_left;
    const void* residual;
    int bf16;
};

// One int8 convolution over uint8 NHWC codes, in the arithmetic of xception/quantize/scheme.py (the integer
// parts exact, the float epilogue bit for bit). Output: n × oh × ow × cout codes (or float32 logits).
struct xc_qconv {
    int kind;                      // as xc_conv
    int n, h, w, c;
    int oh, ow;
    int kernel, stride, dilation;
    int pad_top, pad_left;         // padding reads in_zero: a real zero
    int in_zero;                   // zero point of the input codes
    int relu_in;                   // max(q, in_zero) as the input is read
    const float* dw_weight;        // XC_SEPARABLE: (kernel², c) tap-major int8 values, as floats
    const int32_t* dw_bias;        // XC_SEPARABLE: (c padded to 64) int32
    const float* dw_mult;          // XC_SEPARABLE: (c padded to 64) requantisation multipliers
    const float* dw_start;         // XC_SEPARABLE: (c padded to 64) dw_bias − in_zero·Σ_taps w as float32, where
                                   // accumulating from it stays exact (below 2^24), or null
    int mid_zero, mid_lo;          // XC_SEPARABLE: the depthwise output's zero point and lowest code
    int k_dim, cout;
    const void* packed;            // B, packed by xc_qpack_weights
    const int32_t* bias;           // (cout padded to 64): bias − z·Σ_k w, z the GEMM input's zero point
    const float* mult;             // (cout padded to 64)
    const uint8_t* residual;       // n × oh × ow × cout codes added in the epilogue, or null
    int res_zero;
    float res_mult;
    int out_zero, out_lo;          // the output's zero point and lowest code (out_zero after a ReLU, else 0)
    int code_max;                  // the top code of every activation: 255, or 127 for 7-bit activations
    int out_float;                 // write float32 f32(acc)·M (the classifier's logits) instead of codes
    int kernels;                   // XC_Q_PAIRS, XC_Q_QUADS, XC_Q_VNNI or XC_Q_OCTETS: how B was packed
    // Last, so that builds of earlier revisions read the fields above as they did (benchmarks/kernel_ab.py):
    const int32_t* dw_quads;       // a 3×3 depthwise step: (3, c padded to 64) words, the window's column dx as
                                   // int8 taps (top, middle, bottom, 0) for a byte dot product, or null
    const int32_t* dw_start_q;     // with dw_quads: dw_bias − in_zero·Σ_taps w as int32
};

// The global pool of uint8 NHWC codes (n × pixels × c) → n × c codes. An average in the scheme's arithmetic:
// acc = Σ (q − in_zero) in int32, then round_half_even(f32(acc)·mult), clamped to [−out_zero, code_max − out_zero],
// + out_zero; or (max_pool) the largest code, as it is (the same scale and zero point).
struct xc_qglobal {
    int n, pixels, c;
    int in_zero;
    float mult;
    int out_zero, code_max;
    int max_pool;
};

// The int8 GEMM kernels: int16 pairs (vpmaddwd; any int8 weights), byte quads (vpmaddubsw; weights whose
// neighbouring pairs (k even, k + 1) have |w[k]| + |w[k+1]| ≤ 128, e.g. all within [−64, 64]), or VNNI quads
// (vpdpbusd; any int8 weights, on CPUs with AVX-512 VNNI: xc_qisa() == 2), or byte octets (two vpmaddubsw
// added in int16; weights as for the quads, and every activation code at most 127: code_max = 127).
enum xc_qkernels { XC_Q_PAIRS = 0, XC_Q_QUADS = 1, XC_Q_VNNI = 2, XC_Q_OCTETS = 3 };

XC_API int xc_isa(void);                       // 0: none usable, 1: AVX2 + FMA, 2: AVX-512
XC_API int xc_select_isa(int isa);             // force a lower one (tests); returns the one in use
XC_API int xc_tile_cols(void);                 // NR: B is packed in panels this wide
XC_API int xc_depth_block(void);               // KC: ... and in blocks of this many rows
XC_API size_t xc_packed_floats(int k_dim, int cout);
// weight: cout × k_dim row-major (a conv weight flattened in the order the prologue produces A's columns)
XC_API void xc_pack_weights(const float* weight, int k_dim, int cout, float* packed);
XC_API int xc_set_threads(int threads);        // returns the number in use
XC_API int xc_conv_forward(const struct xc_conv* op, const void* input, void* output);  // 0 on success
// The bfloat16 kernels (vdpbf16ps): 1 where the CPU has AVX-512 BF16 and the AVX-512 kernels are in use.
XC_API int xc_bf16(void);
XC_API size_t xc_packed_bf16_words(int k_dim, int cout);  // 32-bit words: a bfloat16 pair each
// weight: cout × k_dim bfloat16, row-major; panels of NR columns over the whole depth, each ceil(k_dim / 2) pairs
// of rows deep (the last pair's second row zero when k_dim is odd).
XC_API void xc_pack_weights_bf16(const uint16_t* weight, int k_dim, int cout, uint32_t* packed);
XC_API int xc_pool_forward(const struct xc_pool* op, const void* input, void* output);

XC_API int xc_qisa(void);                      // the int8 kernels in use: 0 none, 1 AVX2, 2 AVX-512 VNNI
XC_API size_t xc_qpacked_bytes(int k_dim, int cout, int kernels);
// weight: cout × k_dim int8, row-major, columns in the order the prologue produces A's
XC_API void xc_qpack_weights(const int8_t* weight, int k_dim, int cout, int kernels, void* packed);
XC_API int xc_qconv_forward(const struct xc_qconv* op, const uint8_t* input, void* output);  // 0 on success
XC_API int xc_qpool_forward(const struct xc_pool* op, const uint8_t* input, uint8_t* output);  // no residual
XC_API int xc_qglobal_pool(const struct xc_qglobal* op, const uint8_t* input, uint8_t* output);  // 0 on success
// float32 NCHW images → uint8 NHWC codes of scale and zero point, 0 … qmax; 0 on success
XC_API int xc_quantize_input(const float* input, int n, int c, int h, int w, float scale, int zero, int qmax,
                             uint8_t* output);
}

// What each instruction-set build provides (kernels_avx2.cpp, kernels_avx512.cpp).
#define XC_DECLARE_ISA(ns)                                                                                   \
    namespace ns {                                                                                           \
    int nr();                                                                                                \
    int kc();                                                                                                \
    int mr();                                                                                                \
    int block_rows(const xc_conv* op);                                                                       \
    void conv_task(const xc_conv* op, const void* in, void* out, long m0, int rows, int n0, int n1,          \
                   void* abuf, long next_m0, int next_rows);                                                 \
    }
XC_DECLARE_ISA(xc_avx2)
XC_DECLARE_ISA(xc_avx512)
XC_DECLARE_ISA(xc_avx512_bf16)
namespace xc_avx2 { void pool_rows(const xc_pool* op, const void* in, void* out, long row0, long row1); }
namespace xc_avx512 { void pool_rows(const xc_pool* op, const void* in, void* out, long row0, long row1); }

// What each int8 kernel build provides (qkernels_avx2.cpp, qkernels_avx2_s7.cpp, qkernels_avx512_vnni.cpp).
#define XC_DECLARE_QISA(ns)                                                                                  \
    namespace ns {                                                                                           \
    size_t packed_bytes(int k_dim, int cout);                                                                \
    void pack(const int8_t* weight, int k_dim, int cout, void* packed);                                      \
    int nr();                                                                                                \
    int mr();                                                                                                \
    int block_rows(const xc_qconv* op);                                                                      \
    size_t abuf_bytes(const xc_qconv* op, int rows);                                                         \
    void conv_task(const xc_qconv* op, const uint8_t* in, void* out, long m0, int rows, int n0, int n1,     \
                   void* abuf);                                                                              \
    void pool_rows(const xc_pool* op, const uint8_t* in, uint8_t* out, long row0, long row1);                \
    }
XC_DECLARE_QISA(xc_q_avx2)
XC_DECLARE_QISA(xc_q_avx2_s7)
XC_DECLARE_QISA(xc_q_vnni)
XC_DECLARE_QISA(xc_q_avx2_s7a7)
