// LSTM kernels (gate order i, f, g, o as PyTorch).
//
// Every matrix product runs in the project GEMM (gemm/driver.h): per step the input projection
// and the recurrent product in one, [x_t | h_{t-1}] . [W_ih | W_hh]^T, and in the backward pass
// dG_t . W_hh (with W_ih beside it: grad_x in the same product, when every thread has batch
// rows), the weights prepacked once per call (PrepackedB); the weight gradients are one product
// per chunk of steps, taken by whichever thread is free as the recurrences finish them. The batch rows are independent through the
// whole sequence, so threads share them out and each runs every step on its rows alone. The
// weights are read through sources that follow the gate layout below.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "gemm/tile.h"
#include "gemm/operands.h"
#include "gemm/driver.h"

#include <atomic>
#include <memory>
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
// 4U pre-activations (i, f, g, o), which are replaced by the activations. Inlined into the
// step's loop over rows and blocks, which then loads the activations' dozen constants once
// (a call per block of 2 vectors loaded them each time: forward 1-4% slower).
template <class T>
static inline __attribute__((always_inline)) void cell_forward(T* pre, const T* bias, int64_t U, int64_t n,
                                                               const T* c_prev, T* c_new, T* h_new) {
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

// How many threads share the batch rows of a sequence (whole MR-row panels each): the rows
// are independent from the first step to the last, so a thread that owns some of them runs
// every step on them alone, with no hand-over between threads at all. One when the batch is
// smaller than two panels (the steps' columns are then split instead, see below).
template <class T>
static int batch_row_parts(int64_t B) {
    return int(std::clamp<int64_t>(B / GemmTile<T>::MR, 1, num_threads()));
}

// Forward over the sequence. Step t's gate activations go to gates + t*gate_step (gate_step 0:
// one (B, G) buffer reused by every step), its hidden states to out (T, B, H), c_t to
// c_seq + t*c_step (c_step 0: one buffer updated in place). Each step's input projection is
// computed right before its recurrent product, so the step's gates stay in cache between the
// two products and the cell update (projecting all steps first wrote and re-read T*B*4H gates
// in memory: 26 MB for T=100, B=64, H=256).
//
// With enough batch rows (batch_row_parts) and more than two steps each thread runs the whole
// sequence on its rows. Otherwise each step's gate columns are cut into one slice per thread,
// each slice's weights packed once, and a step is one pool job of a task per slice (its
// product, then its cells): a hand-over per step, which for a small step (B = 32, H = 128:
// ~20 us of work) is a large share of it, and a larger one when the cores sit in different
// caches. For one or two steps the hand-over costs less than what owning rows costs: every
// thread reading every weight, half of them packed in the other core's cache (2 threads,
// 64 x 128 -> 256: one step 0.43 -> 0.31 ms, two 0.62 -> 0.47; with four steps of 32 x 64 ->
// 128 the rows won, 0.16 against 0.18).
template <class T>
static void lstm_forward_core(const LstmPlan<T>& P, const T* x, const T* h0, const T* c0,
                              T* gates, int64_t gate_step, T* out, T* c_seq, int64_t c_step) {
    constexpr int64_t U = LstmPlan<T>::U;
    const int64_t B = P.B, H = P.H, I = P.I, G = P.G;
    std::vector<T> bias(G);
    for (int64_t col = 0; col < G; ++col) bias[col] = P.bias(col);
    const int row_parts = P.T_ > 2 ? batch_row_parts<T>(B) : 1, slices = row_parts > 1 ? 1 : num_threads();
    auto packs = std::vector<std::optional<PrepackedB<T>>>(static_cast<size_t>(slices));
    std::vector<GemmBuffers<T>> bufs;
    for (int i = 0; i < std::max(slices, row_parts); ++i) bufs.emplace_back(false);
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    auto pack_slice = [&](int64_t s, int) {
        const int64_t col0 = 4 * U * P.blocks_of(int(s), slices).first;
        // Column n of the slice of [x | h] . [W_ih | W_hh]^T is weight row source_row(col0 + n) of both.
        const auto w_ih_cols = columns_b<T>([&](int64_t n) { return P.weight_row(P.w.w_ih, I, col0 + n); });
        const auto w_hh_cols = columns_b<T>([&](int64_t n) { return P.weight_row(P.w.w_hh, H, col0 + n); });
        const auto [lo, hi] = P.blocks_of(int(s), slices);
        packs[size_t(s)].emplace(I + H, 4 * U * (hi - lo),
                                 StackedKB<T, decltype(w_ih_cols), decltype(w_hh_cols)>{w_ih_cols, w_hh_cols, I});
    };
    // One slice is packed by every thread (PrepackedB), several each by the thread that uses it.
    if (slices == 1) pack_slice(0, 0);
    else parallel_tasks(slices, slices, pack_slice);
    // Step t on batch rows [r0, r1) and the gate columns of slice s.
    auto step = [&](int64_t t, int64_t r0, int64_t r1, int s, GemmBuffers<T>& buf) {
        const T* h_prev = t ? out + (t - 1) * B * H : h0;
        const T* c_prev = t ? c_seq + (t - 1) * c_step : c0;
        T* c_new = c_seq + t * c_step;
        T* g_t = gates + t * gate_step;
        const auto [lo, hi] = P.blocks_of(s, slices);
        const int64_t col0 = 4 * U * lo, cols = 4 * U * (hi - lo);
        if (cols > 0) {
            const StackedK<T, InMatrixA<T>, InMatrixA<T>> inputs{
                InMatrixA<T>::plain(x + t * B * I, I, I), InMatrixA<T>::plain(h_prev, H, H), I};
            gemm_block<T>(r0, r1, 0, cols, 0, I + H, inputs, *packs[size_t(s)],
                          OutMatrix<T>::plain(g_t + col0, G, cols), Store::overwrite, buf);
        }
        for (int64_t b = r0; b < r1; ++b)
            for (int64_t j = lo; j < hi; ++j) {
                const int64_t u0 = j * U;
                cell_forward(g_t + b * G + 4 * U * j, bias.data() + 4 * U * j, U, std::min(U, H - u0),
                             c_prev + b * H + u0, c_new + b * H + u0, out + (t * B + b) * H + u0);
            }
    };
    if (slices == 1) {
        parallel_tasks(row_parts, row_parts, [&](int64_t p, int worker) {
            int64_t r0, r1;
            split_range(B, GemmTile<T>::MR, p, row_parts, r0, r1);
            for (int64_t t = 0; t < P.T_; ++t) step(t, r0, r1, 0, bufs[size_t(worker)]);
        });
    } else {
        for (int64_t t = 0; t < P.T_; ++t)
            parallel_tasks(slices, slices, [&](int64_t s, int worker) { step(t, 0, B, int(s), bufs[size_t(worker)]); });
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

// B = [W_hh | W_ih] in gate order (G x (H + I)): one step's dG_t . B is the gradient reaching
// h_{t-1} (its first H columns) and the one reaching x_t (the last I), both in one product.
template <class T>
struct RecurrentAndInputWeights {
    const LstmPlan<T>& P;

    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t cols, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        const int64_t H = P.H;
        // Row k of the panel: columns [j0, j0 + cols) of [w_hh row | w_ih row], zero past them.
        const int64_t from_hh = std::clamp<int64_t>(H - j0, 0, cols);
        for (int64_t k = 0; k < kc; ++k) {
            const T* hh = P.weight_row(P.w.w_hh, H, k0 + k);  // nullptr together for a padding unit
            const T* ih = P.weight_row(P.w.w_ih, P.I, k0 + k);
            T* d = dst + k * NR;
            if (!hh) {
                std::fill(d, d + NR, T(0));
                continue;
            }
            std::copy(hh + j0, hh + j0 + from_hh, d);
            if (cols > from_hh) std::copy(ih + (j0 + from_hh - H), ih + (j0 + cols - H), d + from_hh);
            std::fill(d + cols, d + NR, T(0));
        }
    }
};

// Backpropagation through time. The recurrence runs from the last step to the first: step t's
// cells turn the gradients reaching h_t and c_t into dG_t, and dG_t . W_hh is the gradient
// reaching h_{t-1}. Each thread that owns batch rows (batch_row_parts) runs it on them alone.
// The rest is products that can follow it: the weight gradients [x | h_prev]^T . dG, which need
// every row of a step, computed chunk by chunk of steps (StepChunks) in parts of their columns,
// each part running through the chunks from the last in the same order whoever computes it (so
// the result does not depend on the number of threads); and grad_x = dG . W_ih.
//
// When the batch rows fill the threads, each thread runs its recurrence with grad_x in the same
// product (dG_t . [W_hh | W_ih]), and at each chunk boundary adds its own weight-gradient
// parts' pieces of the chunks every thread has finished (only its own: otherwise the one that
// completes a chunk, the later one, would take all of its pieces and fall further behind). With
// fewer row parts than threads (a small batch) the recurrences are the critical path: they run
// alone, and the other threads take the pieces, grad_x's rows by chunk among them, as they
// become ready. A thread whose recurrence has ended takes any piece while another runs; what is
// left is shared out at the end.
template <class T>
void lstm_backward(const LstmShape& s, const T* grad_out, const T* grad_hT, const T* grad_cT,
                   const T* x, const T* h0, const T* c0, LstmWeights<T> w, T* grad_x,
                   T* grad_h0, T* grad_c0, T* grad_w_ih, T* grad_w_hh, T* grad_b,
                   const T* saved_gates, const T* saved_hs, const T* saved_cs, T* gate_grads) {
    constexpr int64_t U = LstmPlan<T>::U;
    const LstmPlan<T> P(s, w);
    const int64_t B = P.B, H = P.H, I = P.I, G = P.G, T_ = P.T_, BH = B * H, width = I + H;

    // The gate gradients dG of every step, in gate_grads where the caller gives it. The
    // forward's activations come from the caller's saved buffers, or from running the forward
    // again into dG itself; either way the backward sweep may overwrite each step's
    // activations with their gradients (cell_backward reads a vector before writing it). hs =
    // [h0, h_1, ..., h_T] and cs = [c0, c_1, ..., c_T].
    T* dG = gate_grads ? gate_grads : reused_scratch<T>(kGates, T_ * B * G);
    const T *acts = saved_gates, *hs = saved_hs, *cs = saved_cs;
    if (!saved_gates) {
        T* hs_run = reused_scratch<T>(kStatesH, (T_ + 1) * BH);
        T* cs_run = reused_scratch<T>(kStatesC, (T_ + 1) * BH);
        std::copy(h0, h0 + BH, hs_run);
        std::copy(c0, c0 + BH, cs_run);
        lstm_forward_core(P, x, h0, c0, dG, B * G, hs_run + BH, cs_run + BH, BH);
        acts = dG, hs = hs_run, cs = cs_run;
    }

    const int threads = num_threads(), row_parts = batch_row_parts<T>(B);
    const bool fused = row_parts == threads;  // grad_x in the recurrence's product
    const int64_t step_cols = fused ? width : H;
    auto rows_of = [&](int64_t p, int64_t& r0, int64_t& r1) { split_range(B, GemmTile<T>::MR, p, row_parts, r0, r1); };
    const PrepackedB<T> back_weights(G, step_cols, RecurrentAndInputWeights<T>{P});
    std::optional<PrepackedB<T>> w_ih_rows;  // W_ih in gate order, for grad_x by chunks
    if (!fused) w_ih_rows.emplace(G, I, rows_b<T>([&](int64_t k) { return P.weight_row(w.w_ih, I, k); }));
    // Per row part: d_prev (rows x step_cols), the product of the last step (the gradient
    // reaching h_{t-1}, then, fused, the one reaching x_t), and dc (rows x H), the gradient
    // reaching c_t.
    std::vector<std::vector<T>> d_prev(static_cast<size_t>(row_parts)), dc(static_cast<size_t>(row_parts));
    for (int p = 0; p < row_parts; ++p) {
        int64_t r0, r1;
        rows_of(p, r0, r1);
        d_prev[size_t(p)].assign(size_t((r1 - r0) * step_cols), T(0));
        dc[size_t(p)].assign(size_t((r1 - r0) * H), T(0));
        for (int64_t b = r0; b < r1; ++b) {
            if (grad_hT) std::copy(grad_hT + b * H, grad_hT + (b + 1) * H, d_prev[size_t(p)].begin() + (b - r0) * step_cols);
            if (grad_cT) std::copy(grad_cT + b * H, grad_cT + (b + 1) * H, dc[size_t(p)].begin() + (b - r0) * H);
        }
    }
    const StepChunks chunks(T_, B);
    const int64_t C = chunks.count(), chunk_rows = chunks.steps * B;
    std::vector<GemmBuffers<T>> step_bufs, chunk_bufs;  // per worker
    for (int t = 0; t < threads; ++t) {
        step_bufs.emplace_back(B, step_cols, G, false);
        chunk_bufs.emplace_back(std::max(width, chunk_rows), G, std::max(chunk_rows, G));
    }
    const auto dw = scratch<T>(width * G);  // transposed weight gradients, gate-column order
    std::vector<T> bias_sums(size_t(G), T(0));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)

    // Step t of row part p: its cells, then its product.
    auto step = [&](int64_t p, int64_t t, GemmBuffers<T>& buf) {
        int64_t r0, r1;
        rows_of(p, r0, r1);
        T *d = d_prev[size_t(p)].data(), *dcp = dc[size_t(p)].data();
        const T* act = acts + t * B * G;
        T* dg = dG + t * B * G;
        for (int64_t b = r0; b < r1; ++b)
            for (int64_t j = 0; j < P.blocks; ++j) {
                const int64_t u0 = j * U, at = b * H + u0, gate_at = b * G + 4 * U * j;
                cell_backward(act + gate_at, dg + gate_at, U, std::min(U, H - u0), cs + (t + 1) * BH + at,
                              cs + t * BH + at, grad_out ? grad_out + t * BH + at : nullptr,
                              d + (b - r0) * step_cols + u0, dcp + (b - r0) * H + u0);
            }
        gemm_block<T>(0, r1 - r0, 0, step_cols, 0, G, InMatrixA<T>::plain(dg + r0 * G, G, G), back_weights,
                      OutMatrix<T>::plain(d, step_cols, step_cols), Store::overwrite, buf);
        if (fused)
            for (int64_t b = r0; b < r1; ++b) {
                const T* dx = d + (b - r0) * step_cols + H;
                std::copy(dx, dx + I, grad_x + (t * B + b) * I);
            }
    };

    // Columns [n0, n1) of chunk c's term of the weight gradients (the last chunk's overwrites,
    // the others add to it) and of the bias gradient's sums over dG's rows; after the first
    // chunk, those columns of the results, in PyTorch's layout.
    auto weight_grads = [&](int64_t c, int64_t n0, int64_t n1, GemmBuffers<T>& buf) {
        if (n0 >= n1) return;
        const int64_t k0 = chunks.begin(c) * B, k1 = chunks.end(c) * B;
        gemm_block<T>(0, width, n0, n1, k0, k1, InputsAndStatesT<T>{x, hs, I, H}, InMatrixB<T>::plain(dG, G, G),
                      OutMatrix<T>::plain(dw.get(), G, G), c == C - 1 ? Store::overwrite : Store::accumulate, buf);
        if (grad_b)
            for (int64_t k = k0; k < k1; ++k)
                for (int64_t col = n0; col < n1; ++col) bias_sums[col] += dG[k * G + col];
        if (c > 0) return;
        // dw's rows (inputs, then states) are the weights' columns: a transpose, by blocks of
        // lanes x lanes in registers (column by column, each read was a line of its own, 4G
        // bytes apart: an eighth of a one-step backward's time). The lanes columns of a block
        // (n0 is a multiple of NR) are consecutive units of one gate, so consecutive weight
        // rows, unless the block reaches into the padding units.
        using S = Simd<T>;
        constexpr int64_t L = S::lanes;
        auto transpose_into = [&](T* grad_w, int64_t w_cols, int64_t first_row) {
            for (int64_t c0 = n0; c0 < n1; c0 += L) {
                const int64_t r0 = P.source_row(c0), c1 = std::min(c0 + L, n1);
                const bool rows_follow = c1 - c0 == L && r0 >= 0 && P.source_row(c1 - 1) == r0 + L - 1;
                for (int64_t i0 = 0; i0 < w_cols; i0 += L) {
                    if (rows_follow && i0 + L <= w_cols) {
                        typename S::V block[L];
                        for (int64_t i = 0; i < L; ++i) block[i] = S::load(dw.get() + (first_row + i0 + i) * G + c0);
                        transpose_block<T>(block);
                        for (int64_t j = 0; j < L; ++j) S::store(grad_w + (r0 + j) * w_cols + i0, block[j]);
                        continue;
                    }
                    for (int64_t col = c0; col < c1; ++col) {
                        const int64_t r = P.source_row(col);
                        if (r < 0) continue;
                        for (int64_t i = i0; i < std::min(i0 + L, w_cols); ++i)
                            grad_w[r * w_cols + i] = dw[(first_row + i) * G + col];
                    }
                }
            }
        };
        transpose_into(grad_w_ih, I, 0);
        transpose_into(grad_w_hh, H, I);
        if (grad_b)
            for (int64_t col = n0; col < n1; ++col)
                if (P.source_row(col) >= 0) grad_b[P.source_row(col)] = bias_sums[col];
    };
    // The pieces: a chunk of one of `threads` parts of the weight gradients' columns, or
    // (unfused) a chunk of grad_x's rows. Part q: the next chunk it adds (from C - 1 down; -1
    // when done), and whether a thread is adding one now.
    const int column_parts = threads, parts_count = column_parts + (fused ? 0 : 1);
    auto piece = [&](int q, int64_t c, GemmBuffers<T>& buf) {
        if (q < column_parts) {
            int64_t n0, n1;
            split_range(G, gemm_nr<T>(), q, column_parts, n0, n1);
            return weight_grads(c, n0, n1, buf);
        }
        gemm_block<T>(chunks.begin(c) * B, chunks.end(c) * B, 0, I, 0, G, InMatrixA<T>::plain(dG, G, G), *w_ih_rows,
                      OutMatrix<T>::plain(grad_x, I, I), Store::overwrite, buf);
    };
    struct alignas(64) Part {
        std::atomic<int64_t> next;
        std::atomic<bool> busy;
    };
    struct alignas(64) Progress {
        std::atomic<int64_t> lowest;  // the first step the row part has finished (T_ before it starts)
    };
    const std::unique_ptr<Part[]> parts(new Part[size_t(parts_count)]);
    const std::unique_ptr<Progress[]> progress(new Progress[size_t(row_parts)]);
    for (int q = 0; q < parts_count; ++q) parts[q].next.store(C - 1), parts[q].busy.store(false);
    for (int p = 0; p < row_parts; ++p) progress[p].lowest.store(T_);
    auto chunk_ready = [&](int64_t c) {
        for (int p = 0; p < row_parts; ++p)
            if (progress[p].lowest.load(std::memory_order_acquire) > chunks.begin(c)) return false;
        return true;
    };
    // Adds one piece whose chunk is ready, of one of thread `owner`'s parts (q % threads ==
    // owner) or, for owner -1, of any part, if there is one; whether it did.
    auto take_piece = [&](int worker, int owner) {
        for (int q = 0; q < parts_count; ++q) {
            Part& part = parts[q];
            if ((owner >= 0 && q % threads != owner) || part.next.load(std::memory_order_relaxed) < 0 ||
                part.busy.load(std::memory_order_relaxed) || part.busy.exchange(true, std::memory_order_acquire))
                continue;
            const int64_t c = part.next.load(std::memory_order_relaxed);
            const bool ready = c >= 0 && chunk_ready(c);
            if (ready) {
                piece(q, c, chunk_bufs[size_t(worker)]);
                part.next.store(c - 1, std::memory_order_relaxed);
            }
            part.busy.store(false, std::memory_order_release);
            if (ready) return true;
        }
        return false;
    };
    auto all_taken = [&] {
        for (int q = 0; q < parts_count; ++q)
            if (parts[q].next.load(std::memory_order_acquire) >= 0) return false;
        return true;
    };

    // A thread without rows waits for pieces until every recurrence has ended: the row parts'
    // tasks have started, or will be run by a thread that finishes its own
    // (common/thread_pool.h). A thread with rows, once done, waits only while another
    // recurrence runs (one that has not started may be waiting for this thread to run it).
    std::atomic<int> running{0}, finished{0};  // row parts started and not finished; finished
    parallel_tasks(threads, threads, [&](int64_t task, int worker) {
        const bool has_rows = task < row_parts;
        if (has_rows) {
            running.fetch_add(1, std::memory_order_relaxed);
            for (int64_t t = T_ - 1; t >= 0; --t) {
                step(task, t, step_bufs[size_t(worker)]);
                progress[task].lowest.store(t, std::memory_order_release);
                if (fused && t > 0 && t % chunks.steps == 0)  // a chunk finished (the last one: below)
                    while (take_piece(worker, int(task))) {
                    }
            }
            running.fetch_sub(1, std::memory_order_relaxed);
            finished.fetch_add(1, std::memory_order_relaxed);
        }
        auto waiting = [&] {
            return has_rows ? running.load(std::memory_order_relaxed) > 0
                            : finished.load(std::memory_order_relaxed) < row_parts && !all_taken();
        };
        for (int poll = 1; waiting(); ++poll)
            if (!take_piece(worker, -1)) {
                if (poll % 64 == 0) std::this_thread::yield();
                else _mm_pause();
            }
    });
    parallel_tasks(threads, threads, [&](int64_t, int worker) {  // every chunk is ready now
        while (take_piece(worker, -1)) {
        }
    });
    for (int p = 0; p < row_parts; ++p) {
        int64_t r0, r1;
        rows_of(p, r0, r1);
        for (int64_t b = r0; b < r1; ++b) {
            const T* dh = d_prev[size_t(p)].data() + (b - r0) * step_cols;
            std::copy(dh, dh + H, grad_h0 + b * H);
            std::copy(dc[size_t(p)].begin() + (b - r0) * H, dc[size_t(p)].begin() + (b - r0 + 1) * H, grad_c0 + b * H);
        }
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
