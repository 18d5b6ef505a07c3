// The C interface of the fast path's CPU kernels (called from Python through ctypes).
#pragma once

#include <cstddef>

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
};

// One convolution over float32 NHWC tensors. Output: n × oh × ow × cout, written in full.
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
    const float* packed;           // B, packed by xc_pack_weights
    const float* bias;             // (cout padded to xc_tile_cols()) or null
    const float* residual;         // n × oh × ow × cout, added before the output ReLU, or null
    int relu_out;
};

// Max-pool (k×k, stride, padding that never wins) over NHWC, + an optional residual of the output's shape;
// float32, or bfloat16 (input, residual and output alike) when bf16 is set.
struct xc_pool {
    int n, h, w, c, oh, ow, kernel, stride, pad_top, pad_left;
    const void* residual;
    int bf16;
};

XC_API int xc_isa(void);                       // 0: none usable, 1: AVX2 + FMA, 2: AVX-512
XC_API int xc_select_isa(int isa);             // force a lower one (tests); returns the one in use
XC_API int xc_tile_cols(void);                 // NR: B is packed in panels this wide
XC_API int xc_depth_block(void);               // KC: ... and in blocks of this many rows
XC_API size_t xc_packed_floats(int k_dim, int cout);
// weight: cout × k_dim row-major (a conv weight flattened in the order the prologue produces A's columns)
XC_API void xc_pack_weights(const float* weight, int k_dim, int cout, float* packed);
XC_API int xc_set_threads(int threads);        // returns the number in use
XC_API int xc_conv_forward(const struct xc_conv* op, const float* input, float* output);  // 0 on success
XC_API int xc_pool_forward(const struct xc_pool* op, const void* input, void* output);
}

// What each instruction-set build provides (kernels_avx2.cpp, kernels_avx512.cpp).
#define XC_DECLARE_ISA(ns)                                                                                   \
    namespace ns {                                                                                           \
    int nr();                                                                                                \
    int kc();                                                                                                \
    int mr();                                                                                                \
    int block_rows(const xc_conv* op);                                                                       \
    void conv_task(const xc_conv* op, const float* in, float* out, long m0, int rows, int n0, int n1,        \
                   float* abuf);                                                                             \
    void pool_rows(const xc_pool* op, const void* in, void* out, long row0, long row1);                      \
    }
XC_DECLARE_ISA(xc_avx2)
XC_DECLARE_ISA(xc_avx512)
