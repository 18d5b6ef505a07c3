// The int8 kernels on their own, one thread, no Python: how fast the GEMM runs with its operands warm, what the
// depthwise prologue costs per output, and the core's float32 FMA rate (its clock, in effect). The ceiling the
// network's layers are measured against (benchmarks/NOTES.md). By default the AVX2 byte octets (7-bit codes and
// weights); with -DMICRO_VNNI the AVX-512 VNNI quads (8-bit codes and weights, for CPUs that have them), whose
// depthwise step runs on byte quads too unless -DXC_QDW_QUADS=0 (the float32 step, for comparison).
//
//   g++ -O3 -std=c++17 -fno-math-errno -ffp-contract=off -I src/xception/fast/csrc [-DMICRO_VNNI]
//       benchmarks/int8_micro.cpp -o /tmp/int8_micro && /tmp/int8_micro [rounds]
//
// Another revision's kernels: `git archive REV src/xception/fast/csrc | tar -x -C /tmp/rev` and -I that folder.
// Each figure is the best of `rounds` timings (default 7): on a shared host the minimum is the kernel's own speed.
#ifdef MICRO_VNNI
#include "qkernels_avx512_vnni.cpp"
namespace qk = xc_q_vnni;
constexpr int KERNELS = XC_Q_VNNI, CODE_MAX = 255;
#else
#include "qkernels_avx2_s7a7.cpp"
namespace qk = xc_q_avx2_s7a7;
constexpr int KERNELS = XC_Q_OCTETS, CODE_MAX = 127;
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
int rounds = 7;

// Best time (s) of `rounds` timings of fn() repeated `reps` times, per repetition.
template <typename Fn>
double best_of(int reps, Fn fn) {
    double best = 1e30;
    for (int t = 0; t < rounds; ++t) {
        const auto start = Clock::now();
        for (int r = 0; r < reps; ++r) fn();
        best = std::min(best, std::chrono::duration<double>(Clock::now() - start).count() / reps);
    }
    return best;
}

// One conv of the network's shapes on random 7-bit codes and weights (which every kernel takes): a 1×1 conv (kind
// XC_POINTWISE) or a 3×3 depthwise step with 'same' padding and an input ReLU joined to it (XC_SEPARABLE), h × h
// pixels, c → n channels.
struct Conv {
    xc_qconv op{};
    std::vector<std::uint8_t> in, out, packed, abuf;
    std::vector<std::int8_t> weight;
    std::vector<std::int32_t> bias, dw_bias, dw_quads, dw_start_q;
    std::vector<float> mult, dw_weight, dw_mult, dw_start;
    int rows = 0;

    Conv(int kind, int h, int c, int n) {
        const long m = long(h) * h;
        in.resize(m * c);
        for (auto& v : in) v = std::uint8_t(std::rand() % 128);
        weight.resize(long(n) * c);
        for (auto& v : weight) v = std::int8_t(std::rand() % 127 - 63);
        bias.assign(n + 64, 0);
        mult.assign(n + 64, 1e-3f);
        dw_weight.resize(9L * c);
        for (auto& v : dw_weight) v = float(std::rand() % 127 - 63);
        dw_bias.assign(c + 64, 3);
        dw_mult.assign(c + 64, 1e-2f);
        dw_start.assign(c + 64, 5.f);
        const long stride = (c + 63) / 64 * 64;  // the byte quads' layout (quantize/native.py, _depthwise_quads)
        dw_quads.assign(3 * stride, 0);
        for (int dx = 0; dx < 3; ++dx)
            for (int ch = 0; ch < c; ++ch)
                for (int dy = 0; dy < 3; ++dy)
                    dw_quads[dx * stride + ch] |= (std::int32_t(dw_weight[(3 * dy + dx) * long(c) + ch]) & 0xFF) << (8 * dy);
        dw_start_q.assign(c + 64, 5);
        op.kind = kind;
        op.n = 1;
        op.h = op.w = op.oh = op.ow = h;
        op.c = op.k_dim = c;
        op.cout = n;
        op.kernel = kind == XC_SEPARABLE ? 3 : 1;
        op.stride = op.dilation = 1;
        op.pad_top = op.pad_left = kind == XC_SEPARABLE ? 1 : 0;
        op.in_zero = 10;
        op.relu_in = 1;
        op.dw_weight = dw_weight.data();
        op.dw_bias = dw_bias.data();
        op.dw_mult = dw_mult.data();
        op.dw_start = dw_start.data();
        op.dw_quads = dw_quads.data();  // read by the VNNI build only
        op.dw_start_q = dw_start_q.data();
        op.bias = bias.data();
        op.mult = mult.data();
        op.code_max = CODE_MAX;
        op.kernels = KERNELS;
        packed.resize(qk::packed_bytes(c, n));
        qk::pack(weight.data(), c, n, packed.data());
        op.packed = packed.data();
        rows = qk::block_rows(&op);
        abuf.resize(qk::abuf_bytes(&op, rows) + 64);
        out.resize(m * n);
    }
    void run() {
        const long m = long(op.h) * op.w;
        for (long m0 = 0; m0 < m; m0 += rows)
            qk::conv_task(&op, in.data(), out.data(), m0, int(std::min<long>(rows, m - m0)), 0, op.cout, abuf.data());
    }
    double macs() const { return double(op.h) * op.w * op.c * op.cout; }
};

double fma_rate() {  // float32 FMA instructions per second: 8 independent chains, in registers
    const __m256 m = _mm256_set1_ps(0.9999999f), add = _mm256_set1_ps(1e-7f);
    __m256 a0 = m, a1 = m, a2 = m, a3 = m, a4 = m, a5 = m, a6 = m, a7 = m;
    const long n = 20000000;
    const double t = best_of(1, [&] {
        for (long i = 0; i < n; ++i) {
            a0 = _mm256_fmadd_ps(a0, m, add);
            a1 = _mm256_fmadd_ps(a1, m, add);
            a2 = _mm256_fmadd_ps(a2, m, add);
            a3 = _mm256_fmadd_ps(a3, m, add);
            a4 = _mm256_fmadd_ps(a4, m, add);
            a5 = _mm256_fmadd_ps(a5, m, add);
            a6 = _mm256_fmadd_ps(a6, m, add);
            a7 = _mm256_fmadd_ps(a7, m, add);
            __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(a6), "+x"(a7));
        }
    });
    return 8.0 * n / t;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1) rounds = std::max(1, std::atoi(argv[1]));
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        std::puts("this CPU has no AVX2 and FMA: nothing to measure");
        return 1;
    }
    const double fmas = fma_rate();
    std::printf("float32 FMA: %.2f G instructions/s (%.2f GHz at two a cycle)\n", fmas / 1e9, fmas / 2e9);

    std::puts("GEMM, 1x1 conv (GMAC/s, operands warm):");
    const int gemm[][3] = {{19, 728, 728}, {147, 64, 128}, {147, 128, 128}, {10, 1536, 2048}};
    for (const auto& s : gemm) {
        Conv conv(XC_POINTWISE, s[0], s[1], s[2]);
        const double t = best_of(std::max(1, int(2e8 / conv.macs())), [&] { conv.run(); });
        std::printf("  %3d^2 px, %4d -> %4d: %6.3f ms, %6.1f GMAC/s\n", s[0], s[1], s[2], t * 1e3, conv.macs() / t / 1e9);
    }

    std::puts("3x3 depthwise prologue (ns per output: the separable conv less its GEMM, with 16 output channels):");
    const int dw[][2] = {{19, 728}, {37, 728}, {74, 128}, {147, 64}};
    for (const auto& s : dw) {
        Conv sep(XC_SEPARABLE, s[0], s[1], 16), pw(XC_POINTWISE, s[0], s[1], 16);
        const int reps = std::max(1, int(2e6 / (double(s[0]) * s[0] * s[1])));
        const double t = best_of(reps, [&] { sep.run(); }) - best_of(reps, [&] { pw.run(); });
        std::printf("  %3d^2 px, %4d channels: %.3f ns\n", s[0], s[1], t * 1e9 / (double(s[0]) * s[0] * s[1]));
    }

    std::puts("separable convs of the entry and middle flows (ms: whole conv, its GEMM alone):");
    const int sep[][3] = {{147, 64, 128}, {147, 128, 128}, {19, 728, 728}};
    for (const auto& s : sep) {
        Conv a(XC_SEPARABLE, s[0], s[1], s[2]), b(XC_POINTWISE, s[0], s[1], s[2]);
        const int reps = std::max(1, int(1e8 / a.macs()));
        std::printf("  %3d^2 px, %4d -> %4d: %6.3f, %6.3f\n", s[0], s[1], s[2], best_of(reps, [&] { a.run(); }) * 1e3,
                    best_of(reps, [&] { b.run(); }) * 1e3);
    }

    // As in the network: the middle flow's 24 separable convs one after another, each its own weights (12.7 MB
    // together, past L2), each reading the codes the one before wrote (two buffers in turn) with one A buffer.
    std::vector<Conv> chain;
    for (int i = 0; i < 24; ++i) chain.emplace_back(XC_SEPARABLE, 19, 728, 728);
    const double t = best_of(20, [&] {
        for (int i = 0; i < 24; ++i) {
            auto& c = chain[i];
            const std::uint8_t* in = (i % 2 ? chain[0].out : chain[1].out).data();
            std::uint8_t* out = (i % 2 ? chain[1].out : chain[0].out).data();
            const long m = long(c.op.h) * c.op.w;
            for (long m0 = 0; m0 < m; m0 += c.rows)
                qk::conv_task(&c.op, in, out, m0, int(std::min<long>(c.rows, m - m0)), 0, c.op.cout,
                              chain[0].abuf.data());
        }
    });
    std::printf("the middle flow's 24 separable convs in a chain, weights cold: %.3f ms a conv\n", t * 1e3 / 24);
    return 0;
}
