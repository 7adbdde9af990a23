// LSTM kernels (gate order i, f, g, o as PyTorch).
//
// Every matrix product runs in the project GEMM (gemm/driver.h): per step the input projection
// x_t . W_ih^T and the recurrent product h_{t-1} . W_hh^T (B x 4H x I and B x 4H x H, each
// thread on its own gate columns, its slices of W_ih and W_hh prepacked once per call as
// PrepackedB), and in the backward pass the per-step dG_t . W_hh, then grad_x = dG . W_ih and
// both weight gradients in one product per chunk of steps, overlapped with the recurrence on
// two threads (lstm_backward). The weights are read through RowsB / ColumnsB sources that
// follow the gate layout below.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "gemm/tile.h"
#include "gemm/operands.h"
#include "gemm/driver.h"

#include <thread>

namespace pyconv {
namespace PYCONV_ISA {

static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The LSTM's large per-call buffers (gate activations of every step, saved states: tens of
// MB), kept by the calling thread from one call to the next: fresh memory of that size comes
// from the OS page by page, and those page faults are a visible share of a backward pass. `slot`
// names the buffer; its contents do not survive a call. Memory is held until the thread
// exits (at most the largest call's size per slot).
template <class T>
static T* reused_scratch(int slot, int64_t n) {
    thread_local std::vector<T> buffers[3];
    std::vector<T>& b = buffers[slot];
    if (int64_t(b.size()) < n) {
        b.clear();
        b.shrink_to_fit();
        b.resize(size_t(n));
    }
    return b.data();
}
enum LstmSlot { kGates = 0, kStatesH = 1, kStatesC = 2 };

// ==========================================================================================
// LSTM
//
// Gate layout inside the kernels: hidden units are grouped in blocks of U units (two vectors),
// and block j owns the 4U gate columns [4Uj, 4U(j+1)): the i, f, g, o pre-activations of its
// units side by side. Each thread owns a range of blocks: it computes their gate products
// (its slice of the GEMM) and then their cell update, with no barrier in between; one barrier
// per step publishes h_t to every thread. Units past H (padding of the last block) have zero
// weights and are never stored.

template <class T>
struct LstmPlan {
    static constexpr int64_t U = 2 * Simd<T>::lanes;
    int64_t T_, B, I, H, blocks, G;  // G = 4 * U * blocks gate columns
    LstmWeights<T> w;

    explicit LstmPlan(const LstmShape& s, LstmWeights<T> w_)
        : T_(s.T), B(s.B), I(s.I), H(s.H), blocks(ceil_div(s.H, U)), G(4 * U * blocks), w(w_) {}

    // Row of PyTorch's (4H, .) weights behind gate column col, or -1 for a padding unit.
    int64_t source_row(int64_t col) const {
        const int64_t block = col / (4 * U), gate = col % (4 * U) / U, u = block * U + col % U;
        return u < H ? gate * H + u : -1;
    }
    // That row of a (4H, width) weight matrix, or nullptr for padding.
    const T* weight_row(const T* w_, int64_t width, int64_t col) const {
        const int64_t r = source_row(col);
        return r < 0 ? nullptr : w_ + r * width;
    }
    T bias(int64_t col) const {
        const int64_t r = source_row(col);
        if (r < 0) return T(0);
        return (w.b_ih ? w.b_ih[r] : T(0)) + (w.b_hh ? w.b_hh[r] : T(0));
    }
    // Blocks [lo, hi) of thread t out of nt.
    std::pair<int64_t, int64_t> blocks_of(int t, int nt) const {
        return {blocks * t / nt, blocks * (t + 1) / nt};
    }
};

// Cell update of units [u0, u0 + n) of one batch row, vectorised. pre points at the block's
// 4U pre-activations (i, f, g, o), which are replaced by the activations.
template <class T>
static inline void cell_forward(T* pre, const T* bias, int64_t U, int64_t n, const T* c_prev,
                                T* c_new, T* h_new) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int64_t L = S::lanes;
    int64_t u = 0;
    for (; u + L <= n; u += L) {
        const V i = vsigmoid<T>(S::load(pre + u) + S::load(bias + u));
        const V f = vsigmoid<T>(S::load(pre + U + u) + S::load(bias + U + u));
        const V g = vtanh<T>(S::load(pre + 2 * U + u) + S::load(bias + 2 * U + u));
        const V o = vsigmoid<T>(S::load(pre + 3 * U + u) + S::load(bias + 3 * U + u));
        const V c = f * S::load(c_prev + u) + i * g;
        S::store(c_new + u, c);
        S::store(h_new + u, o * vtanh<T>(c));
        S::store(pre + u, i), S::store(pre + U + u, f);
        S::store(pre + 2 * U + u, g), S::store(pre + 3 * U + u, o);
    }
    for (; u < n; ++u) {  // the last block's units short of a full vector
        const T i = T(1) / (T(1) + std::exp(-(pre[u] + bias[u])));
        const T f = T(1) / (T(1) + std::exp(-(pre[U + u] + bias[U + u])));
        const T g = std::tanh(pre[2 * U + u] + bias[2 * U + u]);
        const T o = T(1) / (T(1) + std::exp(-(pre[3 * U + u] + bias[3 * U + u])));
        const T c = f * c_prev[u] + i * g;
        c_new[u] = c;
        h_new[u] = o * std::tanh(c);
        pre[u] = i, pre[U + u] = f, pre[2 * U + u] = g, pre[3 * U + u] = o;
    }
}

// An operand whose reduction index runs over two sources one after the other: k < K1 from
// first, k >= K1 from second (as k - K1). The step's product [x_t | h_{t-1}] . [W_ih | W_hh]^T
// is one GEMM over K = I + H through these, so each gate tile is loaded and stored once per step
// instead of once per product. Packed panels are contiguous in k (A: [k][MR], B: [k][NR]), so
// a panel that spans both sources is the two packings back to back.
template <class T, class First, class Second>
struct StackedK {
    First first;
    Second second;
    int64_t K1;

    // A panel: rows i0.. over reduction indices [k0, k0 + kc).
    void pack_panel(int64_t i0, int64_t rows, int64_t k0, int64_t kc, T* dst) const {
        constexpr int MR = GemmTile<T>::MR;
        const int64_t n1 = std::clamp<int64_t>(K1 - k0, 0, kc);
        if (n1 > 0) first.pack_panel(i0, rows, k0, n1, dst);
        if (kc > n1) second.pack_panel(i0, rows, k0 + n1 - K1, kc - n1, dst + n1 * MR);
    }
};

// The B counterpart of StackedK (B sources take (k0, kc, j0, cols, dst)).
template <class T, class First, class Second>
struct StackedKB {
    First first;
    Second second;
    int64_t K1;

    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t cols, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        const int64_t n1 = std::clamp<int64_t>(K1 - k0, 0, kc);
        if (n1 > 0) first.pack_panel(k0, n1, j0, cols, dst);
        if (kc > n1) second.pack_panel(k0 + n1 - K1, kc - n1, j0, cols, dst + n1 * NR);
    }
};

// Forward over the sequence. Step t's gate activations go to gates + t*gate_step (gate_step 0:
// one (B, G) buffer reused by every step), its hidden states to out (T, B, H), c_t to
// c_seq + t*c_step (c_step 0: one buffer updated in place). Each step's input projection is
// computed right before its recurrent product, so the step's gates stay in cache between the
// two products and the cell update (projecting all steps first wrote and re-read T*B*4H gates
// in memory: 26 MB for T=100, B=64, H=256).
template <class T>
static void lstm_forward_core(const LstmPlan<T>& P, const T* x, const T* h0, const T* c0,
                              T* gates, int64_t gate_step, T* out, T* c_seq, int64_t c_step) {
    constexpr int64_t U = LstmPlan<T>::U;
    const int64_t B = P.B, H = P.H, I = P.I, G = P.G;
    std::vector<T> bias(G);
    for (int64_t col = 0; col < G; ++col) bias[col] = P.bias(col);
    // The gate columns are cut into one slice per thread, each slice's weights packed once; a
    // step is then one pool job of a task per slice (its product, then its cells).
    const int slices = num_threads();
    auto packs = std::vector<std::optional<PrepackedB<T>>>(static_cast<size_t>(slices));
    std::vector<GemmBuffers<T>> bufs;
    for (int s = 0; s < slices; ++s) bufs.emplace_back(false);
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(slices, slices, [&](int64_t s, int) {
        const int64_t col0 = 4 * U * P.blocks_of(int(s), slices).first;
        // Column n of the slice of [x | h] . [W_ih | W_hh]^T is weight row source_row(col0 + n) of both.
        const auto w_ih_cols = columns_b<T>([&](int64_t n) { return P.weight_row(P.w.w_ih, I, col0 + n); });
        const auto w_hh_cols = columns_b<T>([&](int64_t n) { return P.weight_row(P.w.w_hh, H, col0 + n); });
        const auto [lo, hi] = P.blocks_of(int(s), slices);
        packs[size_t(s)].emplace(I + H, 4 * U * (hi - lo),
                                 StackedKB<T, decltype(w_ih_cols), decltype(w_hh_cols)>{w_ih_cols, w_hh_cols, I});
    });
    for (int64_t t = 0; t < P.T_; ++t) {
        const T* h_prev = t ? out + (t - 1) * B * H : h0;
        const T* c_prev = t ? c_seq + (t - 1) * c_step : c0;
        T* c_new = c_seq + t * c_step;
        T* g_t = gates + t * gate_step;
        parallel_tasks(slices, slices, [&](int64_t s, int worker) {
            const auto [lo, hi] = P.blocks_of(int(s), slices);
            const int64_t col0 = 4 * U * lo, cols = 4 * U * (hi - lo);
            if (cols > 0) {
                const StackedK<T, InMatrixA<T>, InMatrixA<T>> inputs{
                    InMatrixA<T>::plain(x + t * B * I, I, I), InMatrixA<T>::plain(h_prev, H, H), I};
                gemm_block<T>(0, B, 0, cols, 0, I + H, inputs, *packs[size_t(s)],
                              OutMatrix<T>::plain(g_t + col0, G, cols), Store::overwrite, bufs[size_t(worker)]);
            }
            for (int64_t b = 0; b < B; ++b)
                for (int64_t j = lo; j < hi; ++j) {
                    const int64_t u0 = j * U;
                    cell_forward(g_t + b * G + 4 * U * j, bias.data() + 4 * U * j, U,
                                 std::min(U, H - u0), c_prev + b * H + u0, c_new + b * H + u0,
                                 out + (t * B + b) * H + u0);
                }
        });
    }
}

template <class T>
int64_t lstm_gate_columns(int64_t H) {
    return 4 * LstmPlan<T>::U * ceil_div(H, LstmPlan<T>::U);
}

template <class T>
void lstm(const LstmShape& s, const T* x, const T* h0, const T* c0, LstmWeights<T> w, T* out,
          T* h_T, T* c_T, T* saved_gates, T* saved_cells) {
    const LstmPlan<T> P(s, w);
    const int64_t BH = P.B * P.H;
    if (saved_gates) {  // keeping the forward: the gates and every c_t go to the caller's buffers
        lstm_forward_core(P, x, h0, c0, saved_gates, P.B * P.G, out, saved_cells, BH);
        std::copy(saved_cells + (P.T_ - 1) * BH, saved_cells + P.T_ * BH, c_T);
    } else {
        lstm_forward_core(P, x, h0, c0, reused_scratch<T>(kGates, P.B * P.G), 0, out, c_T, 0);
    }
    if (h_T) std::copy(out + (P.T_ - 1) * BH, out + P.T_ * BH, h_T);
}

// Backward of the cell update for units [0, n) of one batch row. act holds the block's gate
// activations, dgate receives the pre-activation gradients (it may be act itself: each vector
// is read before it is written); dh is the gradient reaching h_t, dc the one reaching c_t
// (replaced by the gradient reaching c_{t-1}).
template <class T>
static inline void cell_backward(const T* act, T* dgate, int64_t U, int64_t n, const T* c,
                                 const T* c_prev, const T* grad_out, const T* dh_rec, T* dc) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int64_t L = S::lanes;
    int64_t u = 0;
    for (; u + L <= n; u += L) {
        const V i = S::load(act + u), f = S::load(act + U + u), g = S::load(act + 2 * U + u),
                o = S::load(act + 3 * U + u);
        const V tc = vtanh<T>(S::load(c + u));
        const V dh = S::load(dh_rec + u) + (grad_out ? S::load(grad_out + u) : S::splat(T(0)));
        const V dct = S::load(dc + u) + dh * o * (T(1) - tc * tc);
        S::store(dgate + u, dct * g * i * (T(1) - i));
        S::store(dgate + U + u, dct * S::load(c_prev + u) * f * (T(1) - f));
        S::store(dgate + 2 * U + u, dct * i * (T(1) - g * g));
        S::store(dgate + 3 * U + u, dh * tc * o * (T(1) - o));
        S::store(dc + u, dct * f);
    }
    for (; u < n; ++u) {
        const T i = act[u], f = act[U + u], g = act[2 * U + u], o = act[3 * U + u];
        const T tc = std::tanh(c[u]);
        const T dh = dh_rec[u] + (grad_out ? grad_out[u] : T(0));
        const T dct = dc[u] + dh * o * (T(1) - tc * tc);
        dgate[u] = dct * g * i * (T(1) - i);
        dgate[U + u] = dct * c_prev[u] * f * (T(1) - f);
        dgate[2 * U + u] = dct * i * (T(1) - g * g);
        dgate[3 * U + u] = dh * tc * o * (T(1) - o);
        dc[u] = dct * f;
    }
    for (; u < U; ++u)  // padding units past H get no gradient (whatever the activations hold)
        dgate[u] = dgate[U + u] = dgate[2 * U + u] = dgate[3 * U + u] = T(0);
}

// Calls put(col, sum of column col) for each column of a (rows x cols) row-major matrix,
// reading it row by row (a task per chunk of columns).
template <class T, class Put>
static void column_sums(const T* a, int64_t rows, int64_t cols, Put&& put) {
    constexpr int64_t chunk = 64;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks((cols + chunk - 1) / chunk, num_threads(), [&](int64_t task, int) {
        const int64_t c0 = task * chunk, n = std::min(chunk, cols - c0);
        T sum[chunk] = {};
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t j = 0; j < n; ++j) sum[j] += a[r * cols + c0 + j];
        for (int64_t j = 0; j < n; ++j) put(c0 + j, sum[j]);
    });
}

// A = [x | h_prev]^T ((I + H) x TB) for the weight gradients: rows [0, I) are the columns of x,
// rows [I, I + H) those of h_prev, both (TB x width) row-major. Reading them transposed steps
// through rows of 512 B-1 KB; the other way round (dG^T as A) strides by the 4 KB gate rows,
// each on a page of its own.
template <class T>
struct InputsAndStatesT {
    const T *x, *h;
    int64_t I, H;

    void pack_panel(int64_t i0, int64_t rows, int64_t k0, int64_t kc, T* dst) const {
        constexpr int MR = GemmTile<T>::MR;
        const int64_t nx = std::clamp<int64_t>(I - i0, 0, rows);  // rows from x
        if (nx == rows) return InMatrixAT<T>{x, I}.pack_panel(i0, rows, k0, kc, dst);
        if (nx == 0) return InMatrixAT<T>{h, H}.pack_panel(i0 - I, rows, k0, kc, dst);
        for (int64_t k = 0; k < kc; ++k) {  // the panel across the two
            const T *xr = x + (k0 + k) * I + i0, *hr = h + (k0 + k) * H - nx;
            for (int64_t i = 0; i < MR; ++i) dst[k * MR + i] = i < nx ? xr[i] : i < rows ? hr[i] : T(0);
        }
    }
};

// The time steps in chunks of about kStepChunkRows rows of dG, for the products that follow
// the recurrence (grad_x and the weight gradients); the bounds follow from the shape alone.
constexpr int64_t kStepChunkRows = 256;
struct StepChunks {
    int64_t T, steps;  // steps per chunk
    StepChunks(int64_t T_, int64_t B) : T(T_), steps(std::max<int64_t>(1, kStepChunkRows / B)) {}
    int64_t count() const { return ceil_div(T, steps); }
    int64_t begin(int64_t c) const { return std::min(T, c * steps); }
    int64_t end(int64_t c) const { return begin(c + 1); }
};

// Backpropagation through time. The recurrence (dh_rec = dG_{t+1} . W_hh, then the cells of
// step t) is sequential; grad_x = dG . W_ih and the weight gradients [x | h_prev]^T . dG are
// not, and are computed chunk by chunk of steps (StepChunks), the last chunk first, as the
// recurrence produces them. The weight gradients add up the chunks in that order, whoever
// computes them, so the result does not depend on the number of threads.
//
// On two threads the recurrence runs on one of them and the other computes the chunks it has
// finished, meanwhile; what is left when the recurrence ends is shared by both. Splitting every
// step between the threads instead (the product's columns, then their cells) costs a hand-over
// per step, which for a small step (B = 32, H = 128: ~20 us of work) is a large share of it,
// and a larger one when the two cores sit in different caches. With more threads one thread's
// recurrence would be the longer path: there every step is split between them.
template <class T>
void lstm_backward(const LstmShape& s, const T* grad_out, const T* grad_hT, const T* grad_cT,
                   const T* x, const T* h0, const T* c0, LstmWeights<T> w, T* grad_x,
                   T* grad_h0, T* grad_c0, T* grad_w_ih, T* grad_w_hh, T* grad_b,
                   const T* saved_gates, const T* saved_hs, const T* saved_cs) {
    constexpr int64_t U = LstmPlan<T>::U;
    const LstmPlan<T> P(s, w);
    const int64_t B = P.B, H = P.H, I = P.I, G = P.G, T_ = P.T_, TB = T_ * B, BH = B * H;

    // The gate gradients dG of every step. The forward's activations come from the caller's
    // saved buffers, or from running the forward again into dG itself (the backward sweep then
    // overwrites each step's activations with their gradients), with hs = [h0, h_1, ..., h_T]
    // and cs = [c0, c_1, ..., c_T].
    T* dG = reused_scratch<T>(kGates, T_ * B * G);
    const T *acts = saved_gates, *hs = saved_hs, *cs = saved_cs;
    if (!saved_gates) {
        T* hs_run = reused_scratch<T>(kStatesH, (T_ + 1) * BH);
        T* cs_run = reused_scratch<T>(kStatesC, (T_ + 1) * BH);
        std::copy(h0, h0 + BH, hs_run);
        std::copy(c0, c0 + BH, cs_run);
        lstm_forward_core(P, x, h0, c0, dG, B * G, hs_run + BH, cs_run + BH, BH);
        acts = dG, hs = hs_run, cs = cs_run;
    }

    const int threads = num_threads();
    const bool pipelined = threads == 2;
    // The recurrence's units are cut into slices, each slice's columns of W_hh packed once. A
    // slice's cells at step t need only its own units of dh_rec, which its product of step t + 1
    // wrote; the product needs every slice's dG of its step: per step one pool job of a task
    // per slice (the product of step t + 1, then the cells of step t), and one for the last
    // product. One slice when the recurrence runs on one thread.
    const int slices = pipelined ? 1 : threads;
    std::vector<T> dh_rec(B * H, T(0)), dc(B * H, T(0));  // dh_rec = dG_t . W_hh; dc runs along
    if (grad_hT) std::copy(grad_hT, grad_hT + B * H, dh_rec.begin());
    if (grad_cT) std::copy(grad_cT, grad_cT + B * H, dc.begin());
    auto packs = std::vector<std::optional<PrepackedB<T>>>(static_cast<size_t>(slices));
    std::vector<GemmBuffers<T>> step_bufs;
    for (int sl = 0; sl < slices; ++sl) step_bufs.emplace_back(false);
    const StepChunks chunks(T_, B);
    const int64_t C = chunks.count(), width = I + H, chunk_rows = chunks.steps * B;
    std::vector<GemmBuffers<T>> chunk_bufs;  // per worker, for the chunks' products
    for (int t = 0; t < threads; ++t) chunk_bufs.emplace_back(std::max(width, TB), G, std::max(chunk_rows, G));
    const auto dw = scratch<T>(width * G);  // transposed weight gradients, gate-column order
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    auto units_of = [&](int64_t sl) {
        const auto [lo, hi] = P.blocks_of(int(sl), slices);
        return std::pair<int64_t, int64_t>{lo * U, std::max<int64_t>(std::min(hi * U, H) - lo * U, 0)};
    };
    parallel_tasks(slices, slices, [&](int64_t sl, int) {
        const auto [u_lo, u_n] = units_of(sl);
        // Row k of B = W_hh in gate order is weight row source_row(k), the slice's units of it.
        packs[size_t(sl)].emplace(G, u_n, rows_b<T>([&](int64_t k) {
            const T* row = P.weight_row(w.w_hh, H, k);
            return row ? row + u_lo : nullptr;
        }));
    });
    // W_ih in gate order (row k is weight row source_row(k)), for grad_x = dG . W_ih.
    const PrepackedB<T> w_ih_rows(G, I, rows_b<T>([&](int64_t k) { return P.weight_row(w.w_ih, I, k); }));

    auto recurrent_product = [&](int64_t t, int64_t sl, int worker) {  // dh_rec = dG_t . W_hh, the slice's units
        const auto [u_lo, u_n] = units_of(sl);
        if (u_n > 0)
            gemm_block<T>(0, B, 0, u_n, 0, G, InMatrixA<T>::plain(dG + t * B * G, G, G), *packs[size_t(sl)],
                          OutMatrix<T>::plain(dh_rec.data() + u_lo, H, u_n), Store::overwrite,
                          step_bufs[size_t(worker)]);
    };
    // Steps T-1 .. 0; published(t) once dG_t is complete.
    auto recurrence = [&](auto&& published) {
        for (int64_t t = T_ - 1; t >= 0; --t) {
            const T* act = acts + t * B * G;
            T* dg = dG + t * B * G;
            parallel_tasks(slices, slices, [&](int64_t sl, int worker) {
                if (t + 1 < T_) recurrent_product(t + 1, sl, worker);
                const auto [lo, hi] = P.blocks_of(int(sl), slices);
                for (int64_t b = 0; b < B; ++b)
                    for (int64_t j = lo; j < hi; ++j) {
                        const int64_t at = b * H + j * U, gate_at = b * G + 4 * U * j;
                        cell_backward(act + gate_at, dg + gate_at, U, std::min(U, H - j * U),
                                      cs + (t + 1) * BH + at, cs + t * BH + at,
                                      grad_out ? grad_out + t * BH + at : nullptr,
                                      dh_rec.data() + at, dc.data() + at);
                    }
            });
            published(t);
        }
        parallel_tasks(slices, slices, [&](int64_t sl, int worker) { recurrent_product(0, sl, worker); });
    };

    // The chunks' products: grad_x rows [r0, r1), and columns [n0, n1) of chunk c's term of
    // the weight gradients (the last chunk's overwrites, the others add to it).
    auto grad_x_rows = [&](int64_t r0, int64_t r1, GemmBuffers<T>& buf) {
        if (r0 < r1)
            gemm_block<T>(r0, r1, 0, I, 0, G, InMatrixA<T>::plain(dG, G, G), w_ih_rows,
                          OutMatrix<T>::plain(grad_x, I, I), Store::overwrite, buf);
    };
    auto weight_grads = [&](int64_t c, int64_t n0, int64_t n1, GemmBuffers<T>& buf) {
        if (n0 < n1)
            gemm_block<T>(0, width, n0, n1, chunks.begin(c) * B, chunks.end(c) * B,
                          InputsAndStatesT<T>{x, hs, I, H}, InMatrixB<T>::plain(dG, G, G),
                          OutMatrix<T>::plain(dw.get(), G, G), c == C - 1 ? Store::overwrite : Store::accumulate,
                          buf);
    };
    // The weight gradients' columns in `threads` parts (whole panels), each part running
    // through the chunks in order; done[p]: chunks part p has taken (from the last), done[threads]
    // those grad_x has.
    auto columns_of = [&](int64_t p, int64_t& n0, int64_t& n1) { split_range(G, gemm_nr<T>(), p, threads, n0, n1); };
    std::vector<int64_t> done(size_t(threads) + 1, 0);

    if (!pipelined) {
        recurrence([](int64_t) {});
    } else {
        std::atomic<int64_t> ready{T_};  // dG_t is complete for every t >= ready
        std::atomic<bool> finished{false};
        parallel_tasks(2, 2, [&](int64_t task, int worker) {
            if (task == 0) {
                recurrence([&](int64_t t) { ready.store(t, std::memory_order_release); });
                finished.store(true, std::memory_order_release);
                return;
            }
            // The chunks the recurrence has finished, until it ends (then the rest is shared).
            for (int64_t c = C - 1; c >= 0; --c)
                for (size_t lane = 0; lane < done.size(); ++lane) {
                    for (int poll = 1; ready.load(std::memory_order_acquire) > chunks.begin(c); ++poll)
                        if (poll % 64 == 0) std::this_thread::yield();
                        else _mm_pause();
                    if (finished.load(std::memory_order_acquire)) return;
                    if (lane < size_t(threads)) {
                        int64_t n0, n1;
                        columns_of(int64_t(lane), n0, n1);
                        weight_grads(c, n0, n1, chunk_bufs[size_t(worker)]);
                    } else {
                        grad_x_rows(chunks.begin(c) * B, chunks.end(c) * B, chunk_bufs[size_t(worker)]);
                    }
                    ++done[lane];
                }
        });
    }
    std::copy(dh_rec.begin(), dh_rec.end(), grad_h0);
    std::copy(dc.begin(), dc.end(), grad_c0);

    // What is left of the chunks' products, on every thread: task 2p the weight gradients'
    // columns part p, task 2p + 1 a part of grad_x's remaining rows.
    const int64_t rows_left = chunks.begin(C - done[size_t(threads)]) * B;
    parallel_tasks(2 * threads, threads, [&](int64_t task, int worker) {
        const int64_t p = task / 2;
        if (task % 2 == 0) {
            int64_t n0, n1;
            columns_of(p, n0, n1);
            for (int64_t c = C - 1 - done[size_t(p)]; c >= 0; --c) weight_grads(c, n0, n1, chunk_bufs[size_t(worker)]);
        } else {
            int64_t r0, r1;
            split_range(rows_left, gemm_mr<T>(), p, threads, r0, r1);
            grad_x_rows(r0, r1, chunk_bufs[size_t(worker)]);
        }
    });
    for (int64_t col = 0; col < G; ++col) {
        const int64_t r = P.source_row(col);
        if (r < 0) continue;
        for (int64_t i = 0; i < I; ++i) grad_w_ih[r * I + i] = dw[i * G + col];
        for (int64_t j = 0; j < H; ++j) grad_w_hh[r * H + j] = dw[(I + j) * G + col];
    }
    if (grad_b) column_sums(dG, TB, G, [&](int64_t col, T sum) {
        const int64_t r = P.source_row(col);
        if (r >= 0) grad_b[r] = sum;
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
