// The 256-bit int8 dot loops' shared shape, included by the AVX2 builds (qkernels_avx2*.cpp) after their target
// pragmas: start + A[R × depth] · B-panel in int32, two registers of 8 columns per row, each row starting from
// the 16 columns' start (the folded bias); then (*finish)(out, row, sums of columns 0–7, 8–15) for each row, or
// where finish is null the sums stored in acc[R × 16]. Each step of the depth
// takes Step::words 4-byte words of each row of A, each broadcast to every lane, and for each word 64 bytes
// of the packed panel (two registers, lane j holding column j's 4 bytes of k); `step(c, a, b0or1)` returns c
// plus their products, the only part an instruction set changes (vpmaddwd, vpmaddubsw).
#pragma once

#include "unroll.h"

namespace {  // each build's own copy, compiled for its instruction set

template <int R, typename A, typename B, typename Finish, typename Step>
inline void dot_tile(int groups, const A* __restrict a, long lda, const B* __restrict b,
                     const std::int32_t* __restrict start, std::int32_t* __restrict acc, const Finish* finish,
                     void* out, Step step) {
    constexpr int W = Step::words;
    constexpr int a_step = W * 4 / sizeof(A), b_word = 64 / sizeof(B), b_step = W * b_word;  // elements
    __m256i c[R][2];
    const __m256i s0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start)),
                  s1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start + 8));
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) c[i][0] = s0, c[i][1] = s1;
#pragma GCC unroll 2
    for (int g = 0; g < groups; ++g) {
        __m256i b0[W], b1[W];
#pragma GCC unroll 2
        for (int w = 0; w < W; ++w) {
            b0[w] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * b_step + w * b_word));
            b1[w] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * b_step + w * b_word + b_word / 2));
        }
        _mm_prefetch(reinterpret_cast<const char*>(b + (g + 8 / W) * b_step), _MM_HINT_T0);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            __m256i av[W];
#pragma GCC unroll 2
            for (int w = 0; w < W; ++w) {
                std::int32_t word;
                std::memcpy(&word, a + i * lda + a_step * g + w * (4 / sizeof(A)), sizeof(word));
                av[w] = _mm256_set1_epi32(word);
            }
            c[i][0] = step(c[i][0], av, b0);
            c[i][1] = step(c[i][1], av, b1);
        }
    }
    if (finish) {  // row by row with constant indices, so that c stays in registers
        unrolled<R>([&](int i) XC_INLINE { (*finish)(out, i, c[i][0], c[i][1]); });
        return;
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(acc + i * 16), c[i][0]);
        _mm256_store_si256(reinterpret_cast<__m256i*>(acc + i * 16 + 8), c[i][1]);
    }
}

}  // namespace
