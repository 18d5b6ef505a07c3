// The fast path's CPU kernels: instruction-set dispatch, weight packing, and a small thread pool.
//
// Built as the extension module xception.fast._cpu (an empty Python module: Python calls the C
// functions of api.h through ctypes). Each convolution is split into tasks (blocks of output pixels, and
// of output channels when there are few pixels) that the pool's threads take in turn; the calling thread
// works too.

#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "api.h"

#if XC_X86
#include <immintrin.h>  // the input quantisation and the global pool below (AVX2, which the int8 kernels need)
#endif

namespace {

int detect_isa() {
#if !XC_X86
    return 0;
#else
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
#endif
}

int g_isa = detect_isa();

bool cpu_has_bf16() {
#if !XC_X86
    return false;
#else
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
#endif
}

// ---- scratch: one growing, 64-byte aligned buffer per thread ------------------------------------------

struct Scratch {
    float* data = nullptr;
    size_t floats = 0;
    float* get(size_t n) {
        if (n > floats) {
            std::free(data);
            data = static_cast<float*>(std::aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64));
            if (!data) throw std::bad_alloc();
            floats = n;
        }
        return data;
    }
    ~Scratch() { std::free(data); }
};

// ---- the pool ------------------------------------------------------------------------------------------

#ifndef XC_SPIN
#define XC_SPIN 20000  // pauses an idle worker spins before it sleeps (about 0.3 ms; -DXC_SPIN=N for A/B builds)
#endif

class Pool {
public:
    ~Pool() { resize(1); }

    int size() const { return int(workers_.size()) + 1; }

    void resize(int threads) {
        threads = std::max(1, threads);
        if (threads == size()) return;
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
            ++generation_;
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
        workers_.clear();
        stop_ = false;
        scratch_.clear();
        scratch_.resize(threads);
        for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
    }

    float* scratch(int thread, size_t floats) { return scratch_[thread].get(floats); }

    // Run fn(task, thread) for every task in [0, tasks); returns when all are done.
    void run(int tasks, const std::function<void(int, int)>& fn) {
        if (scratch_.empty()) scratch_.resize(1);
        if (workers_.empty() || tasks <= 1) {
            for (int i = 0; i < tasks; ++i) fn(i, 0);
            return;
        }
        {
            std::lock_guard<std::mutex> lock(mu_);
            job_ = &fn;
            tasks_ = tasks;
            next_.store(0, std::memory_order_relaxed);
            done_.store(0, std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        drain(0);
        while (done_.load(std::memory_order_acquire) < tasks) _mm_pause_();
        std::lock_guard<std::mutex> lock(mu_);
        job_ = nullptr;
    }

private:
    static void _mm_pause_() {
#if XC_X86
        __builtin_ia32_pause();
#endif
    }

    void drain(int thread) {
        for (;;) {
            const int i = next_.fetch_add(1, std::memory_order_relaxed);
            if (i >= tasks_) return;
            (*job_)(i, thread);
            done_.fetch_add(1, std::memory_order_release);
        }
    }

    void work(int thread) {
        uint64_t seen = generation_.load(std::memory_order_acquire);
        for (;;) {
            // Spin a little (layers follow each other within microseconds), then sleep.
            for (int spin = 0; spin < XC_SPIN && generation_.load(std::memory_order_acquire) == seen; ++spin)
                _mm_pause_();
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
            seen = generation_.load(std::memory_order_acquire);
            if (stop_) return;
            if (!job_) continue;
            lock.unlock();
            drain(thread);
        }
    }

    std::vector<std::thread> workers_;
    std::vector<Scratch> scratch_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> next_{0}, done_{0};
    int tasks_ = 0;
    const std::function<void(int, int)>* job_ = nullptr;
    bool stop_ = false;
};

Pool& pool() {
    static Pool p;
    return p;
}

#if XC_X86
int nr_of(int isa) { return isa == 2 ? xc_avx512::nr() : xc_avx2::nr(); }
int kc_of(int isa) { return isa == 2 ? xc_avx512::kc() : xc_avx2::kc(); }
int mr_of(int isa) { return isa == 2 ? xc_avx512::mr() : xc_avx2::mr(); }
int block_rows_of(int isa, const xc_conv* op) {
    if (op->bf16) return xc_avx512_bf16::block_rows(op);
    return isa == 2 ? xc_avx512::block_rows(op) : xc_avx2::block_rows(op);
}
void conv_task_of(int isa, const xc_conv* op, const void* in, void* out, long m0, int rows, int n0, int n1, void* abuf,
                  long next_m0, int next_rows) {
    if (op->bf16) xc_avx512_bf16::conv_task(op, in, out, m0, rows, n0, n1, abuf, next_m0, next_rows);
    else if (isa == 2) xc_avx512::conv_task(op, in, out, m0, rows, n0, n1, abuf, next_m0, next_rows);
    else xc_avx2::conv_task(op, in, out, m0, rows, n0, n1, abuf, next_m0, next_rows);
}
void pool_rows_of(int isa, const xc_pool* op, const void* in, void* out, long r0, long r1) {
    if (isa == 2) xc_avx512::pool_rows(op, in, out, r0, r1);
    else xc_avx2::pool_rows(op, in, out, r0, r1);
}
#else  // no kernels on other architectures: xc_isa() is 0 and nothing below is reached
int nr_of(int) { return 0; }
int kc_of(int) { return 0; }
int mr_of(int) { return 0; }
int block_rows_of(int, const xc_conv*) { return 0; }
void conv_task_of(int, const xc_conv*, const void*, void*, long, int, int, int, void*, long, int) {}
void pool_rows_of(int, const xc_pool*, const void*, void*, long, long) {}
#endif

// How a convolution's GEMM is split into tasks: blocks of about `rows` output pixels and, when there are
// too few blocks to keep every thread busy, `n_split` parts of the output channels (whole panels of nr).
// The blocks are whole MR-row tiles, as equal as the tiles allow, and a multiple of the thread count: with
// blocks of the preferred size and a short last one, one thread would run a whole block more than another
// (at batch 1 and 2 threads, 6 blocks of the middle flow's 361 pixels split 198 / 163).
struct Plan {
    long m, m_blocks, tiles;
    int mr, rows, n_split, cols_per, cout;  // rows: the most of any block (the scratch is sized for it)

    long first(long block) const { return std::min(m, block * tiles / m_blocks * mr); }
};

#ifndef XC_TASKS
#define XC_TASKS 2  // the fewest tasks per thread a GEMM is split into (-DXC_TASKS=N for A/B builds)
#endif
Plan plan_tasks(long m, int rows, int mr, int nr, int cout) {
    const int threads = pool().size();
    const long tiles = (m + mr - 1) / mr;
    // Enough blocks to keep every thread busy: smaller pixel blocks first, then split the channels.
    const long want = long(XC_TASKS) * threads;
    long m_blocks = (m + rows - 1) / rows;
    if (m_blocks < want) m_blocks = want;
    else m_blocks = (m_blocks + threads - 1) / threads * threads;
    m_blocks = std::max<long>(1, std::min(m_blocks, tiles));
    const int block_rows = int((tiles + m_blocks - 1) / m_blocks * mr);
    const int panels = (cout + nr - 1) / nr;
    const int n_split = m_blocks >= want || threads == 1 ? 1 : int(std::min<long>(panels, (want + m_blocks - 1) / m_blocks));
    return {m, m_blocks, tiles, mr, block_rows, n_split, (panels + n_split - 1) / n_split * nr, cout};
}

// Run task(m0, rows, n0, n1, abuf, next_m0, next_rows) for every part of the plan, each with its thread's
// scratch of a_floats. [next_m0, next_m0 + next_rows) are the pixels of the block the same thread most likely
// takes next (the threads take blocks in turns), for the task to fetch ahead; none when channels are split.
template <typename Task>
int run_plan(const Plan& p, size_t a_floats, const Task& task) {
    const int threads = pool().size();
    try {
        pool().run(int(p.m_blocks * p.n_split), [&](int i, int thread) {
            const long block = i / p.n_split, m0 = p.first(block), m1 = p.first(block + 1);
            const int part = i % p.n_split;
            const int n0 = part * p.cols_per, n1 = std::min(p.cout, (part + 1) * p.cols_per);
            if (n0 >= n1) return;
            float* abuf = a_floats ? pool().scratch(thread, a_floats) : nullptr;
            const long next = p.n_split == 1 ? block + threads : p.m_blocks;
            const long next_m0 = p.first(next), next_rows = next < p.m_blocks ? p.first(next + 1) - next_m0 : 0;
            if (m1 > m0) task(m0, int(m1 - m0), n0, n1, abuf, next_m0, int(next_rows));
        });
    } catch (const std::bad_alloc&) {
        return 2;
    }
    return 0;
}

// Run task(row0, row1) over `rows` rows in about four parts per thread.
template <typename Task>
void run_rows(long rows, const Task& task) {
    const long per = std::max<long>(1, rows / (4L * pool().size()));
    pool().run(int((rows + per - 1) / per), [&](int i, int) { task(i * per, std::min(rows, i * per + per)); });
}

}  // namespace

extern "C" {

int xc_isa(void) { return g_isa; }

int xc_select_isa(int isa) {
    g_isa = std::min(detect_isa(), std::max(0, isa));
    return g_isa;
}

int xc_tile_cols(void) { return g_isa ? nr_of(g_isa) : 0; }

int xc_depth_block(void) { return g_isa ? kc_of(g_isa) : 0; }

size_t xc_packed_floats(int k_dim, int cout) {
    const int nr = xc_tile_cols();
    return nr ? size_t(k_dim) * size_t((cout + nr - 1) / nr * nr) : 0;
}

void xc_pack_weights(const float* weight, int k_dim, int cout, float* packed) {
    // B = weightᵀ (k_dim × cout) in blocks of KC rows; within a block, panels of NR columns, each kc rows of
    // NR floats (zero-padded past cout): what one pass of the register tile reads is contiguous.
    const int nr = xc_tile_cols(), kc_max = xc_depth_block();
    const int panels = (cout + nr - 1) / nr;
    for (int k0 = 0; k0 < k_dim; k0 += kc_max) {
        const int kc = std::min(kc_max, k_dim - k0);
        for (int p = 0; p < panels; ++p) {
            float* panel = packed + size_t(k0) * panels * nr + size_t(p) * kc * nr;
            for (int k = 0; k < kc; ++k)
                for (int j = 0; j < nr; ++j) {
                    const int n = p * nr + j;
                    panel[size_t(k) * nr + j] = n < cout ? weight[size_t(n) * k_dim + k0 + k] : 0.f;
                }
        }
    }
}

int xc_set_threads(int threads) {
    pool().resize(threads);
    return pool().size();
}

int xc_bf16(void) { return g_isa == 2 && cpu_has_bf16() ? 1 : 0; }

size_t xc_packed_bf16_words(int k_dim, int cout) {
    const int nr = xc_tile_cols();
    return nr ? size_t((k_dim + 1) / 2) * size_t((cout + nr - 1) / nr * nr) : 0;
}

void xc_pack_weights_bf16(const uint16_t* weight, int k_dim, int cout, uint32_t* packed) {
    const int nr = xc_tile_cols(), kp = (k_dim + 1) / 2, panels = (cout + nr - 1) / nr;
    for (int p = 0; p < panels; ++p)
        for (int k = 0; k < kp; ++k)
            for (int j = 0; j < nr; ++j) {
                const int n = p * nr + j;
                const uint16_t* row = weight + size_t(n) * k_dim;
                const uint32_t lo = n < cout ? row[2 * k] : 0u;
                const uint32_t hi = n < cout && 2 * k + 1 < k_dim ? row[2 * k + 1] : 0u;
                packed[(size_t(p) * kp + k) * nr + j] = lo | (hi << 16);
            }
}

int xc_conv_forward(const xc_conv* op, const void* input, void* output) {
    if (!g_isa || (op->bf16 && !xc_bf16())) return 1;
    const int isa = g_isa;
    const Plan plan = plan_tasks(long(op->n) * op->oh * op->ow, block_rows_of(isa, op), mr_of(isa), nr_of(isa), op->cout);
    const bool needs_a = op->kind != XC_POINTWISE || op->relu_in || (op->bf16 && op->c % 2);
    // + kernels.h's a_stride padding (bfloat16: elements of half a float each, and a pair's zero half)
    const size_t a_floats = !needs_a ? 0
                            : op->bf16 ? size_t(plan.rows) * (op->k_dim + 34) / 2
                                       : size_t(plan.rows) * (op->k_dim + 16);
    return run_plan(plan, a_floats, [&](long m0, int rows, int n0, int n1, float* abuf, long next_m0, int next_rows) {
        conv_task_of(isa, op, input, output, m0, rows, n0, n1, abuf, next_m0, next_rows);
    });
}

#if XC_X86
// The int8 kernels' entry points, by how B is packed.
#define XC_QDISPATCH(kernels, call)                                                                    \
    ((kernels) == XC_Q_VNNI     ? xc_q_vnni::call                                                         \
     : (kernels) == XC_Q_OCTETS ? xc_q_avx2_s7a7::call                                                    \
     : (kernels) == XC_Q_QUADS  ? xc_q_avx2_s7::call                                                      \
                                : xc_q_avx2::call)

namespace {
// The VNNI kernels run only where the CPU has them and, once per process, they give the int16 pairs' exact
// int32 sums on a small GEMM (odd depth, ragged tiles, the full int8 range); else the AVX2 kernels run.
bool vnni_agrees() {
    constexpr int rows = 21, depth = 75, cout = 37, pad = 64;
    std::vector<uint8_t> in(rows * depth);
    std::vector<int8_t> weight(cout * depth);
    uint32_t state = 12345u;
    auto next = [&state] { state = state * 1664525u + 1013904223u; return int(state >> 24); };
    for (auto& v : in) v = uint8_t(next());
    for (auto& v : weight) v = int8_t(next() - 128);
    weight[0] = -128;
    std::vector<int32_t> bias(pad, 0);
    std::vector<float> mult(pad, 1.f);  // every |sum| < 75·255·128 < 2^24: exact in float32
    xc_qconv op{};
    op.kind = XC_POINTWISE;
    op.n = op.h = op.oh = op.kernel = op.stride = op.dilation = 1;
    op.w = op.ow = rows;
    op.c = op.k_dim = depth;
    op.cout = cout;
    op.bias = bias.data();
    op.mult = mult.data();
    op.out_float = 1;
    op.code_max = 255;
    std::vector<float> out[2];
    const int kinds[2] = {XC_Q_PAIRS, XC_Q_VNNI};
    for (int i = 0; i < 2; ++i) {
        std::vector<uint8_t> packed(XC_QDISPATCH(kinds[i], packed_bytes(depth, cout)));
        std::vector<uint8_t> abuf(XC_QDISPATCH(kinds[i], abuf_bytes(&op, rows)));
        XC_QDISPATCH(kinds[i], pack(weight.data(), depth, cout, packed.data()));
        op.packed = packed.data();
        op.kernels = kinds[i];
        out[i].assign(size_t(rows) * cout, -1.f);
        XC_QDISPATCH(kinds[i], conv_task(&op, in.data(), out[i].data(), 0, rows, 0, cout, abuf.data()));
    }
    return out[0] == out[1];
}

bool vnni_usable() {
    static const bool usable = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512vnni") && vnni_agrees();
    }();
    return usable;
}
}  // namespace

int xc_qisa(void) { return g_isa == 2 && vnni_usable() ? 2 : g_isa ? 1 : 0; }

namespace {
// Whether this process runs the int8 kernels that B packed as `kernels` needs.
bool runs(int kernels) {
    const int isa = xc_qisa();
    return isa && kernels >= XC_Q_PAIRS && kernels <= XC_Q_OCTETS && (kernels != XC_Q_VNNI || isa == 2);
}
}  // namespace

size_t xc_qpacked_bytes(int k_dim, int cout, int kernels) {
    return runs(kernels) ? XC_QDISPATCH(kernels, packed_bytes(k_dim, cout)) : 0;
}

void xc_qpack_weights(const int8_t* weight, int k_dim, int cout, int kernels, void* packed) {
    if (runs(kernels)) XC_QDISPATCH(kernels, pack(weight, k_dim, cout, packed));
}

int xc_qconv_forward(const xc_qconv* op, const uint8_t* input, void* output) {
    if (!runs(op->kernels)) return 1;
    const int k = op->kernels;
    // A depthwise conv on its own computes all channels of a pixel at once: its tasks split pixels only.
    const int nr = XC_QDISPATCH(k, nr()), cols = op->kind == XC_DEPTHWISE ? nr : op->cout;
    const Plan plan = plan_tasks(long(op->n) * op->oh * op->ow, XC_QDISPATCH(k, block_rows(op)), XC_QDISPATCH(k, mr()),
                                 nr, cols);
    const size_t a_floats = (XC_QDISPATCH(k, abuf_bytes(op, plan.rows)) + sizeof(float) - 1) / sizeof(float);
    return run_plan(plan, a_floats, [&](long m0, int rows, int n0, int n1, float* abuf, long, int) {
        XC_QDISPATCH(k, conv_task(op, input, output, m0, rows, n0, n1, abuf));
    });
}

int xc_qpool_forward(const xc_pool* op, const uint8_t* input, uint8_t* output) {
    if (!xc_qisa()) return 1;
    run_rows(long(op->n) * op->oh, [&](long r0, long r1) { xc_q_avx2::pool_rows(op, input, output, r0, r1); });
    return 0;
}

// One image's codes summed per channel in int32 (exact: 255 · pixels stays far below 2^31), or their maximum.
int xc_qglobal_pool(const xc_qglobal* op, const uint8_t* input, uint8_t* output) {
    if (!xc_qisa()) return 1;
    const int c = op->c;
    std::vector<int32_t> acc;
    try {
        acc.resize(size_t(op->n) * c);
    } catch (const std::bad_alloc&) {
        return 2;
    }
    run_rows(op->n, [&](long i0, long i1) {
        for (long i = i0; i < i1; ++i) {
            const uint8_t* img = input + i * long(op->pixels) * c;
            int32_t* sum = acc.data() + i * c;
            uint8_t* out = output + i * c;
            if (op->max_pool) {
                std::memcpy(out, img, size_t(c));
                for (long p = 1; p < op->pixels; ++p)
                    for (int ch = 0; ch < c; ++ch) out[ch] = std::max(out[ch], img[p * c + ch]);
                continue;
            }
            for (long p = 0; p < op->pixels; ++p)
                for (int ch = 0; ch < c; ++ch) sum[ch] += img[p * c + ch];
            const int32_t zeros = op->in_zero * op->pixels;
            const float lo = float(-op->out_zero), hi = float(op->code_max - op->out_zero);
            for (int ch = 0; ch < c; ++ch) {  // rounded as the reference does, then clamped (the bounds are integers)
                const float v = std::nearbyint(float(sum[ch] - zeros) * op->mult);
                out[ch] = uint8_t(int(std::min(std::max(v, lo), hi)) + op->out_zero);
            }
        }
    });
    return 0;
}

// float32 NCHW in, uint8 NHWC codes out, as ONNX's QuantizeLinear and the reference compute them:
// clamp(round_half_even(x / scale), -zero, qmax - zero) + zero. Clamping first gives the same codes (rounding is
// monotonic and the bounds are integers) and keeps the conversion in range; cvtps2dq rounds half to even in the
// default rounding mode. A NaN becomes code 0 (maxps returns its second operand when either is NaN).
// Each channel's row is quantised 8 values at a time into a row of bytes, and the c rows are then interleaved:
// writing each code from the vector one byte at a time, as this kernel did before, took over twice as long.
__attribute__((target("avx2"))) void quantize_row(const float* src, int w, float scale, int zero_point, int qmax,
                                                  uint8_t* dst) {
    const __m256 s = _mm256_set1_ps(scale), lo = _mm256_set1_ps(float(-zero_point)),
                 hi = _mm256_set1_ps(float(qmax - zero_point));
    const __m256i zero = _mm256_set1_epi32(zero_point);
    int x = 0;
    for (; x + 8 <= w; x += 8) {
        const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(_mm256_loadu_ps(src + x), s), lo), hi);
        const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(v), zero);
        const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + x), _mm_packus_epi16(words, words));
    }
    for (; x < w; ++x) {
        const __m128 v = _mm_min_ss(_mm_max_ss(_mm_div_ss(_mm_set_ss(src[x]), _mm256_castps256_ps128(s)),
                                               _mm256_castps256_ps128(lo)), _mm256_castps256_ps128(hi));
        dst[x] = uint8_t(_mm_cvtss_si32(v) + zero_point);
    }
}

int xc_quantize_input(const float* input, int n, int c, int h, int w, float scale, int zero, int qmax,
                      uint8_t* output) {
    if (!xc_qisa()) return 1;
    const size_t row_bytes = size_t(c) * w;
    std::vector<uint8_t> scratch;  // each thread's row of codes, channel by channel
    try {
        scratch.resize(size_t(pool().size()) * row_bytes);
    } catch (const std::bad_alloc&) {
        return 2;
    }
    const long rows = long(n) * h, per = std::max<long>(1, rows / (4L * pool().size()));
    pool().run(int((rows + per - 1) / per), [&](int task, int thread) {
        uint8_t* codes = scratch.data() + size_t(thread) * row_bytes;
        for (long row = task * per; row < std::min(rows, task * per + per); ++row) {
            const long image = row / h, y = row % h;
            for (int ch = 0; ch < c; ++ch)
                quantize_row(input + ((image * c + ch) * h + y) * w, w, scale, zero, qmax, codes + long(ch) * w);
            uint8_t* dst = output + row * w * c;
            if (c == 3) {  // images: a loop the compiler keeps to three loads and stores a pixel
                const uint8_t *r = codes, *g = r + w, *b = g + w;
                for (int x = 0; x < w; ++x) dst[3 * x] = r[x], dst[3 * x + 1] = g[x], dst[3 * x + 2] = b[x];
            } else {
                for (int x = 0; x < w; ++x)
                    for (int ch = 0; ch < c; ++ch) dst[long(x) * c + ch] = codes[long(ch) * w + x];
            }
        }
    });
    return 0;
}
#else
int xc_qisa(void) { return 0; }
size_t xc_qpacked_bytes(int, int, int) { return 0; }
void xc_qpack_weights(const int8_t*, int, int, int, void*) {}
int xc_qconv_forward(const xc_qconv*, const uint8_t*, void*) { return 1; }
int xc_qpool_forward(const xc_pool*, const uint8_t*, uint8_t*) { return 1; }
int xc_quantize_input(const float*, int, int, int, int, float, int, int, uint8_t*) { return 1; }
int xc_qglobal_pool(const xc_qglobal*, const uint8_t*, uint8_t*) { return 1; }
#endif

int xc_pool_forward(const xc_pool* op, const void* input, void* output) {
    if (!g_isa) return 1;
    const int isa = g_isa;
    run_rows(long(op->n) * op->oh, [&](long r0, long r1) { pool_rows_of(isa, op, input, output, r0, r1); });
    return 0;
}

}  // extern "C"

// An importable, empty module: importing it finds the shared library for ctypes.
static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_cpu", "The fast path's CPU kernels (see csrc/api.h).",
                                 -1, nullptr, nullptr, nullptr, nullptr, nullptr};
PyMODINIT_FUNC PyInit__cpu(void) { return PyModule_Create(&module_def); }
