// Helpers that must inline into each instantiation: a loop over a register tile's rows is only kept in registers
// when every index is a constant after inlining, which GCC's unroll pragma does not promise for a large body.
#pragma once

#include <utility>

#define XC_INLINE __attribute__((always_inline))

namespace {  // each build's own copy, compiled for its instruction set

template <typename F, int... I>
XC_INLINE inline void each_index(const F& f, std::integer_sequence<int, I...>) {
    (f(I), ...);
}

// f(0), f(1), …, f(N − 1), written out: f's index is a constant wherever it inlines.
template <int N, typename F>
XC_INLINE inline void unrolled(const F& f) {
    each_index(f, std::make_integer_sequence<int, N>{});
}

}  // namespace
