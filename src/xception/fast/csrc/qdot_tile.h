// The int8 dot loops' shared shape, included by each int8 build (qkernels_*.cpp) after its target pragmas:
// acc[R × 16] = A[R × depth] · B-panel in int32, two registers of 8 columns per row. Each step of the depth
// reads 64 bytes of the packed panel (two registers, lane j holding column j's 4 bytes of k) and 4 bytes of
// each row of A, broadcast to every lane; `step(c, a, b)` returns c plus their products, the only part
// an instruction set changes (vpmaddwd, vpmaddubsw, vpdpbusd).
#pragma once

namespace {  // each build's own copy, compiled for its instruction set

template <int R, typename A, typename B, typename Step>
inline void dot_tile(int groups, const A* __restrict a, long lda, const B* __restrict b, std::int32_t* __restrict acc,
                     Step step) {
    constexpr int a_step = 4 / sizeof(A), b_step = 64 / sizeof(B);  // elements per step
    __m256i c[R][2];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) c[i][0] = c[i][1] = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int g = 0; g < groups; ++g) {
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * b_step));
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * b_step + b_step / 2));
        _mm_prefetch(reinterpret_cast<const char*>(b + (g + 8) * b_step), _MM_HINT_T0);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            std::int32_t word;
            std::memcpy(&word, a + i * lda + a_step * g, sizeof(word));
            const __m256i av = _mm256_set1_epi32(word);
            c[i][0] = step(c[i][0], av, b0);
            c[i][1] = step(c[i][1], av, b1);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(acc + i * 16), c[i][0]);
        _mm256_store_si256(reinterpret_cast<__m256i*>(acc + i * 16 + 8), c[i][1]);
    }
}

}  // namespace
