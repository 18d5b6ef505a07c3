// The sliding window of a 3×3, stride-1 depthwise step along a run of `count` outputs of one row, one vector of
// channels: shared by the float32 (kernels.h) and int8 (qkernels.h) prologues, included after each build's
// vector type. Each input column (a vector from each of the window's three rows) is read once and feeds the
// three outputs whose windows hold it: with the window's right column it finishes output i − 2, with the middle
// one it adds to output i − 1, with the left one it starts output i. Two running sums and the column in hand are
// all that live, so the window stays in registers.
//   column(i): load run column i, which may lie one pixel past either border (the padding);
//   inside(i): the same for a column known to lie inside the image (columns 2 … count − 1);
//   dot(acc, dx): acc + the loaded column times the window's column dx;  emit(i, sum): finish output i.
#pragma once

// The window's helpers (and the loads and stores they call) must inline into each instantiation, or its sums
// leave the registers at every call (XC_INLINE).
#include "unroll.h"

namespace {  // each build's own copy, compiled for its instruction set

template <typename V, typename Column, typename Inside, typename Dot, typename Emit>
XC_INLINE inline void slide_window(int count, V start, const Column& column, const Inside& inside, const Dot& dot,
                                   const Emit& emit) {
    column(0);
    V a = dot(start, 0), b = start;  // the sums of outputs i − 2 and i − 1
    column(1);
    if (count > 1) b = dot(start, 0);
    a = dot(a, 1);
    int i = 2;
    for (; i < count; ++i) {
        inside(i);
        emit(i - 2, dot(a, 2));
        a = dot(b, 1);
        b = dot(start, 0);
    }
    for (; i < count + 2; ++i) {  // the last two columns only finish outputs
        column(i);
        emit(i - 2, dot(a, 2));
        a = dot(b, 1);
    }
}

}  // namespace
