// The next block's input window, residual and output rows, fetched a few cache lines per register tile while
// this block's GEMM runs, so that its prologue and its stores find them in cache: inside the network the
// previous layers have pushed them out to L3 or memory. Shared by the float32 and int8 kernels (Op: xc_conv or
// xc_qconv; In, Out: their input and output elements). Included by each build after its standard headers and
// its SIMD header.
#pragma once

#include "api.h"

namespace {  // each build's own copy, compiled for its instruction set

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
    template <typename Op, typename In, typename Out>
    Ahead(const Op* op, const In* input, const Out* output, long next_m0, int next_rows, long steps) {
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
        if (op->residual) add(op->residual + next_m0 * long(op->cout), outputs);
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
    void add(const T* p, long elements) {
        if (elements <= 0) return;
        start_[regions_] = reinterpret_cast<const char*>(p);
        lines_[regions_++] = (elements * long(sizeof(T)) + 63) / 64;
    }

    const char* start_[3] = {};
    long lines_[3] = {};
    int regions_ = 0, writes_ = 0, region_ = 0;
    long per_step_ = 0, at_ = 0;
};

}  // namespace
