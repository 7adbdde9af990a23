// LSTM kernels (gate order i, f, g, o as PyTorch). Included inside namespace pyconv::<isa> by
// kernels_isa.inc (after simd_impl.h).

// ==========================================================================================
// A small packed GEMM (GotoBLAS structure), stand-in for the project's GEMM: when
// csrc/gemm_impl.h lands, pack_b_rows / pack_b_cols / gemm_packed_b(_parallel) are the
// functions to replace (the LSTM packs its weights once per call and calls gemm_packed_b
// every step, each thread on its own columns).
//
// C (M x N) = [C +] A (M x K) . B (K x N). B is packed into panels of `nr` columns (two
// vectors), each panel K rows deep; A is read in place when row-major, else packed per block
// of kGemmMc x kGemmKc into panels of `mr` rows. The micro-kernel keeps an mr x nr tile of C
// in registers and, for each k, broadcasts mr values of A against the two vectors of B.

template <class T>
struct Tile {
    static constexpr int64_t nr = 2 * Simd<T>::lanes;
    static constexpr int64_t mr = PYCONV_ISA_LEVEL >= 2 ? 8 : PYCONV_ISA_LEVEL == 1 ? 6 : 4;
};
constexpr int64_t kGemmKc = 256;  // depth of a block: a B panel slice (kc x nr) stays in L1
constexpr int64_t kGemmMc = 96;   // rows of A per packed block (a multiple of every mr)

static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The LSTM's large per-call buffers (gate activations of every step, saved states: tens of
// MB), kept by the calling thread from one call to the next: fresh memory of that size comes
// from the OS page by page, and those page faults cost ~10 % of a backward pass. `slot`
// names the buffer; its contents do not survive a call. Memory is held until the thread
// exits (at most the largest call's size per slot).
template <class T>
static T* reused_scratch(int slot, int64_t n) {
    thread_local std::vector<T> buffers[4];
    std::vector<T>& b = buffers[slot];
    if (int64_t(b.size()) < n) {
        b.clear();
        b.shrink_to_fit();
        b.resize(size_t(n));
    }
    return b.data();
}
enum LstmSlot { kGates = 0, kStatesH = 1, kStatesC = 2, kWeightGradB = 3 };

template <class T>
static int64_t packed_b_size(int64_t K, int64_t N) {
    return ceil_div(N, Tile<T>::nr) * Tile<T>::nr * K;
}

// Packs panels [p_lo, p_hi) of B into bp (laid out for all panels; columns past N are zero).
// pack_b_rows takes B by rows: brow(k) points at B(k, 0..N-1), or is nullptr for a zero row.
template <class T, class Row>
static void pack_b_rows(int64_t K, int64_t N, Row&& brow, T* bp, int64_t p_lo, int64_t p_hi) {
    constexpr int64_t nr = Tile<T>::nr;
    for (int64_t p = p_lo; p < p_hi; ++p) {
        T* dst = bp + p * nr * K;
        const int64_t n0 = p * nr, width = std::min(nr, N - n0);
        for (int64_t k = 0; k < K; ++k, dst += nr) {
            const T* src = brow(k);
            for (int64_t j = 0; j < nr; ++j) dst[j] = (src && j < width) ? src[n0 + j] : T(0);
        }
    }
}

// pack_b_cols takes B by columns: bcol(n) points at B(0..K-1, n) (a row of B^T, e.g. a weight
// row for x . W^T), or is nullptr for a zero column. It is a transpose: lanes x lanes blocks
// go through registers (transpose_block), the last K % lanes rows element by element.
template <class T, class Col>
static void pack_b_cols(int64_t K, int64_t N, Col&& bcol, T* bp, int64_t p_lo, int64_t p_hi) {
    using S = Simd<T>;
    constexpr int64_t nr = Tile<T>::nr, L = S::lanes;
    for (int64_t p = p_lo; p < p_hi; ++p) {
        T* dst = bp + p * nr * K;
        for (int64_t half = 0; half < nr; half += L) {
            const T* src[L];
            for (int64_t r = 0; r < L; ++r) {
                const int64_t n = p * nr + half + r;
                src[r] = n < N ? bcol(n) : nullptr;
            }
            int64_t k0 = 0;
            for (; k0 + L <= K; k0 += L) {
                typename S::V rows[L];
                for (int64_t r = 0; r < L; ++r) rows[r] = src[r] ? S::load(src[r] + k0) : S::splat(T(0));
                transpose_block<T>(rows);
                for (int64_t r = 0; r < L; ++r) S::store(dst + (k0 + r) * nr + half, rows[r]);
            }
            for (; k0 < K; ++k0)
                for (int64_t r = 0; r < L; ++r) dst[k0 * nr + half + r] = src[r] ? src[r][k0] : T(0);
        }
    }
}

// C tile (mv x nv valid of mr x nr) = [C +] A panel . B panel (kc x nr). The A panel is
// either packed (kPackedA: kc x mr, k-major) or mr rows of a row-major A with row stride a_rs.
template <class T, bool kPackedA>
static inline void micro_tile(int64_t kc, const T* ap, int64_t a_rs, const T* bp, T* c,
                              int64_t ldc, bool accumulate, int64_t mv, int64_t nv) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int64_t mr = Tile<T>::mr, L = S::lanes;
    V acc[mr][2];
    for (int64_t m = 0; m < mr; ++m) {
        acc[m][0] = acc[m][1] = S::splat(T(0));
        // The C tile is read after the k loop: start fetching it now (in the LSTM it is the
        // input projection of this step, written long ago and no longer in cache).
        if (accumulate) {
            __builtin_prefetch(c + m * ldc);
            __builtin_prefetch(c + m * ldc + 2 * L - 1);
        }
    }
    for (int64_t k = 0; k < kc; ++k) {
        const V b0 = S::load(bp + k * 2 * L), b1 = S::load(bp + k * 2 * L + L);
#pragma GCC unroll 8
        for (int64_t m = 0; m < mr; ++m) {
            const V a = S::splat(kPackedA ? ap[k * mr + m] : ap[m * a_rs + k]);
            acc[m][0] = fma<T>(a, b0, acc[m][0]);
            acc[m][1] = fma<T>(a, b1, acc[m][1]);
        }
    }
    if (mv == mr && nv == 2 * L) {
#pragma GCC unroll 8
        for (int64_t m = 0; m < mr; ++m) {
            T* row = c + m * ldc;
            if (accumulate) {
                acc[m][0] += S::load(row);
                acc[m][1] += S::load(row + L);
            }
            S::store(row, acc[m][0]);
            S::store(row + L, acc[m][1]);
        }
        return;
    }
    T tile[mr][2 * L];
    for (int64_t m = 0; m < mr; ++m) {
        S::store(tile[m], acc[m][0]);
        S::store(tile[m] + L, acc[m][1]);
    }
    for (int64_t m = 0; m < mv; ++m)
        for (int64_t n = 0; n < nv; ++n) c[m * ldc + n] = (accumulate ? c[m * ldc + n] : T(0)) + tile[m][n];
}

// One depth block of the GEMM below: C [+]= A[:, k0 : k0+kc] . B[k0 : k0+kc, :], with B
// packed K rows deep.
template <class T>
static void gemm_block(int64_t M, int64_t N, int64_t K, int64_t k0, int64_t kc, const T* a,
                       int64_t a_rs, int64_t a_cs, const T* bp, T* c, int64_t ldc, bool accumulate,
                       T* a_buf) {
    constexpr int64_t mr = Tile<T>::mr, nr = Tile<T>::nr;
    for (int64_t m0 = 0; m0 < M; m0 += kGemmMc) {
        const int64_t mc = std::min(kGemmMc, M - m0);
        // Panels read in place: [0, direct); packed: [direct, mc).
        const int64_t direct = a_cs == 1 ? mc / mr * mr : 0;
        for (int64_t i = direct; i < mc; i += mr) {
            const int64_t rows = std::min(mr, mc - i);
            for (int64_t k = 0; k < kc; ++k) {
                T* dst = a_buf + i * kc + k * mr;
                const T* src = a + (m0 + i) * a_rs + (k0 + k) * a_cs;
                if (a_rs == 1 && rows == mr) {  // a column of A: mr contiguous values
                    std::memcpy(dst, src, mr * sizeof(T));
                    continue;
                }
                for (int64_t m = 0; m < mr; ++m) dst[m] = m < rows ? src[m * a_rs] : T(0);
            }
        }
        for (int64_t j = 0; j < N; j += nr)
            for (int64_t i = 0; i < mc; i += mr) {
                const T* b_panel = bp + j * K + k0 * nr;
                T* c_tile = c + (m0 + i) * ldc + j;
                const int64_t mv = std::min(mr, mc - i), nv = std::min(nr, N - j);
                if (i < direct)
                    micro_tile<T, false>(kc, a + (m0 + i) * a_rs + k0, a_rs, b_panel, c_tile, ldc,
                                         accumulate, mv, nv);
                else
                    micro_tile<T, true>(kc, a_buf + i * kc, 0, b_panel, c_tile, ldc, accumulate,
                                        mv, nv);
            }
    }
}

// C (M x N, row stride ldc) = [C +] A . B, with A(m, k) = a[m*a_rs + k*a_cs] and B packed by
// pack_b_* (bp points at the first panel used; N may cover only some panels). A row-major A
// (a_cs == 1) is read in place, except a last panel short of mr rows; any other A is packed
// per block of kGemmMc x kGemmKc. Serial: callers split the work. a_buf holds
// kGemmMc * kGemmKc elements.
template <class T>
static void gemm_packed_b(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_rs,
                          int64_t a_cs, const T* bp, T* c, int64_t ldc, bool accumulate,
                          T* a_buf) {
    for (int64_t k0 = 0; k0 < K; k0 += kGemmKc)
        gemm_block(M, N, K, k0, std::min(kGemmKc, K - k0), a, a_rs, a_cs, bp, c, ldc,
                   accumulate || k0 > 0, a_buf);
}

// The same (C = A . B), OpenMP-parallel over blocks of rows of C, for callers outside a
// parallel region. The depth loop is outermost, so that each depth block of B (kGemmKc x N)
// is read from cache by every row block rather than all of B streaming once per row block.
template <class T>
static void gemm_packed_b_parallel(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_rs,
                                   int64_t a_cs, const T* bp, T* c, int64_t ldc) {
    // Blocks of at most kGemmMc rows, but at least 8 per thread so that they balance.
    constexpr int64_t mr = Tile<T>::mr;
    const int64_t rows = std::clamp(ceil_div(M, 8 * int64_t(num_threads())), mr, kGemmMc) / mr * mr;
    const int64_t blocks = ceil_div(M, rows);
#pragma omp parallel num_threads(num_threads())
    {
        const auto a_buf = scratch<T>(kGemmMc * kGemmKc);
        for (int64_t k0 = 0; k0 < K; k0 += kGemmKc) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t b = 0; b < blocks; ++b) {
                const int64_t m0 = b * rows;
                gemm_block(std::min(rows, M - m0), N, K, k0, std::min(kGemmKc, K - k0),
                           a + m0 * a_rs, a_rs, a_cs, bp, c + m0 * ldc, ldc, k0 > 0, a_buf.get());
            }
        }
    }
}

// ==========================================================================================
// LSTM
//
// Gate layout inside the kernels: hidden units are grouped in blocks of U = nr units, and
// block j owns the 4U gate columns [4Uj, 4U(j+1)): the i, f, g, o pre-activations of its
// units side by side. Each thread owns a range of blocks: it computes their gate products
// (its slice of the GEMM) and then their cell update, with no barrier in between; one barrier
// per step publishes h_t to every thread. Units past H (padding of the last block) have zero
// weights and are never stored.

template <class T>
struct LstmPlan {
    static constexpr int64_t U = Tile<T>::nr;
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

// Forward over the sequence. gates (T, B, G) receives the gate activations; out (T, B, H) the
// hidden states; c_t goes to c_seq + t*c_step (c_step 0: one buffer updated in place).
template <class T>
static void lstm_forward_core(const LstmPlan<T>& P, const T* x, const T* h0, const T* c0,
                              T* gates, T* out, T* c_seq, int64_t c_step) {
    constexpr int64_t U = LstmPlan<T>::U;
    const int64_t B = P.B, H = P.H, I = P.I, G = P.G, TB = P.T_ * P.B;
    const auto w_ih_p = scratch<T>(packed_b_size<T>(I, G)), w_hh_p = scratch<T>(packed_b_size<T>(H, G));
    std::vector<T> bias(G);
    for (int64_t col = 0; col < G; ++col) bias[col] = P.bias(col);
#pragma omp parallel num_threads(num_threads())
    {
        const auto [lo, hi] = P.blocks_of(omp_get_thread_num(), omp_get_num_threads());
        const int64_t col0 = 4 * U * lo, cols = 4 * U * (hi - lo);
        const auto a_buf = scratch<T>(kGemmMc * kGemmKc);
        // Each thread packs the weight panels of its own blocks (4 panels of U per block).
        // (Column n of B = x . W^T is weight row source_row(n).)
        pack_b_cols(I, G, [&](int64_t n) { return P.weight_row(P.w.w_ih, I, n); }, w_ih_p.get(), 4 * lo, 4 * hi);
        pack_b_cols(H, G, [&](int64_t n) { return P.weight_row(P.w.w_hh, H, n); }, w_hh_p.get(), 4 * lo, 4 * hi);
        // Input projection of every step at once, for this thread's gate columns.
        if (cols > 0)
            gemm_packed_b(TB, cols, I, x, I, 1, w_ih_p.get() + col0 * I, gates + col0, G,
                          false, a_buf.get());
        for (int64_t t = 0; t < P.T_; ++t) {
            const T* h_prev = t ? out + (t - 1) * B * H : h0;
            const T* c_prev = t ? c_seq + (t - 1) * c_step : c0;
            T* c_new = c_seq + t * c_step;
            T* g_t = gates + t * B * G;
            if (cols > 0)
                gemm_packed_b(B, cols, H, h_prev, H, 1, w_hh_p.get() + col0 * H, g_t + col0, G,
                              true, a_buf.get());
            for (int64_t b = 0; b < B; ++b)
                for (int64_t j = lo; j < hi; ++j) {
                    const int64_t u0 = j * U;
                    cell_forward(g_t + b * G + 4 * U * j, bias.data() + 4 * U * j, U,
                                 std::min(U, H - u0), c_prev + b * H + u0, c_new + b * H + u0,
                                 out + (t * B + b) * H + u0);
                }
#pragma omp barrier
        }
    }
}

template <class T>
void lstm(const LstmShape& s, const T* x, const T* h0, const T* c0, LstmWeights<T> w, T* out,
          T* h_T, T* c_T) {
    const LstmPlan<T> P(s, w);
    T* gates = reused_scratch<T>(kGates, P.T_ * P.B * P.G);
    lstm_forward_core(P, x, h0, c0, gates, out, c_T, 0);
    if (h_T) std::copy(out + (P.T_ - 1) * P.B * P.H, out + P.T_ * P.B * P.H, h_T);
}

// Backward of the cell update for units [0, n) of one batch row. act holds the block's gate
// activations and receives the pre-activation gradients; dh is the gradient reaching h_t, dc
// the one reaching c_t (replaced by the gradient reaching c_{t-1}).
template <class T>
static inline void cell_backward(T* act, int64_t U, int64_t n, const T* c, const T* c_prev,
                                 const T* grad_out, const T* dh_rec, T* dc) {
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
        S::store(act + u, dct * g * i * (T(1) - i));
        S::store(act + U + u, dct * S::load(c_prev + u) * f * (T(1) - f));
        S::store(act + 2 * U + u, dct * i * (T(1) - g * g));
        S::store(act + 3 * U + u, dh * tc * o * (T(1) - o));
        S::store(dc + u, dct * f);
    }
    for (; u < n; ++u) {
        const T i = act[u], f = act[U + u], g = act[2 * U + u], o = act[3 * U + u];
        const T tc = std::tanh(c[u]);
        const T dh = dh_rec[u] + (grad_out ? grad_out[u] : T(0));
        const T dct = dc[u] + dh * o * (T(1) - tc * tc);
        act[u] = dct * g * i * (T(1) - i);
        act[U + u] = dct * c_prev[u] * f * (T(1) - f);
        act[2 * U + u] = dct * i * (T(1) - g * g);
        act[3 * U + u] = dh * tc * o * (T(1) - o);
        dc[u] = dct * f;
    }
}

// Calls put(col, sum of column col) for each column of a (rows x cols) row-major matrix,
// reading it row by row (OpenMP over chunks of columns).
template <class T, class Put>
static void column_sums(const T* a, int64_t rows, int64_t cols, Put&& put) {
    constexpr int64_t chunk = 64;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t c0 = 0; c0 < cols; c0 += chunk) {
        const int64_t n = std::min(chunk, cols - c0);
        T sum[chunk] = {};
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t j = 0; j < n; ++j) sum[j] += a[r * cols + c0 + j];
        for (int64_t j = 0; j < n; ++j) put(c0 + j, sum[j]);
    }
}

template <class T>
void lstm_backward(const LstmShape& s, const T* grad_out, const T* grad_hT, const T* grad_cT,
                   const T* x, const T* h0, const T* c0, LstmWeights<T> w, T* grad_x,
                   T* grad_h0, T* grad_c0, T* grad_w_ih, T* grad_w_hh, T* grad_b) {
    constexpr int64_t U = LstmPlan<T>::U;
    const LstmPlan<T> P(s, w);
    const int64_t B = P.B, H = P.H, I = P.I, G = P.G, T_ = P.T_, TB = T_ * B;

    // Forward again, keeping every step: hs = [h0, h_1, ..., h_T], cs = [c_1, ..., c_T], and
    // the gate activations, which the backward sweep overwrites with their gradients dG.
    T* hs = reused_scratch<T>(kStatesH, (T_ + 1) * B * H);
    T* cs = reused_scratch<T>(kStatesC, T_ * B * H);
    T* gates = reused_scratch<T>(kGates, T_ * B * G);
    std::copy(h0, h0 + B * H, hs);
    lstm_forward_core(P, x, h0, c0, gates, hs + B * H, cs, B * H);

    // dh_rec = dG_t . W_hh (the gradient h_{t-1} receives through the gates); dc runs along.
    const auto w_hh_t = scratch<T>(packed_b_size<T>(G, H));
    std::vector<T> dh_rec(B * H, T(0)), dc(B * H, T(0));
    if (grad_hT) std::copy(grad_hT, grad_hT + B * H, dh_rec.begin());
    if (grad_cT) std::copy(grad_cT, grad_cT + B * H, dc.begin());
#pragma omp parallel num_threads(num_threads())
    {
        const auto [lo, hi] = P.blocks_of(omp_get_thread_num(), omp_get_num_threads());
        const int64_t u_lo = lo * U, u_n = std::min(hi * U, H) - u_lo;  // this thread's units
        const auto a_buf = scratch<T>(kGemmMc * kGemmKc);
        // Row k of B = W_hh' is weight row source_row(k); panels of U units = this thread's blocks.
        pack_b_rows(G, H, [&](int64_t k) { return P.weight_row(w.w_hh, H, k); }, w_hh_t.get(), lo, hi);
#pragma omp barrier
        for (int64_t t = T_ - 1; t >= 0; --t) {
            T* dg = gates + t * B * G;
            const T* c_prev = t ? cs + (t - 1) * B * H : c0;
            for (int64_t b = 0; b < B; ++b)
                for (int64_t j = lo; j < hi; ++j) {
                    const int64_t at = b * H + j * U;
                    cell_backward(dg + b * G + 4 * U * j, U, std::min(U, H - j * U),
                                  cs + t * B * H + at, c_prev + at,
                                  grad_out ? grad_out + t * B * H + at : nullptr,
                                  dh_rec.data() + at, dc.data() + at);
                }
#pragma omp barrier
            if (u_n > 0)
                gemm_packed_b(B, u_n, G, dg, G, 1, w_hh_t.get() + u_lo * G,
                              dh_rec.data() + u_lo, H, false, a_buf.get());
        }
    }
    std::copy(dh_rec.begin(), dh_rec.end(), grad_h0);
    std::copy(dc.begin(), dc.end(), grad_c0);

    // The weight-shared products over all steps at once, on dG (TB x G).
    const T* dG = gates;
    {  // grad_x = dG . W_ih', B's row k being weight row source_row(k)
        const auto bp = scratch<T>(packed_b_size<T>(G, I));
        pack_b_rows(G, I, [&](int64_t k) { return P.weight_row(w.w_ih, I, k); }, bp.get(), 0,
                    ceil_div(I, U));
        gemm_packed_b_parallel(TB, I, G, dG, G, 1, bp.get(), grad_x, I);
    }
    // Both weight gradients in one GEMM, dG^T . [x | h_prev] (TB x (I + H)), so that dG^T is
    // packed once: x fills the first ceil(I/U) panels of B, h_prev the next ones.
    const int64_t x_panels = ceil_div(I, U), h_col0 = x_panels * U, width = h_col0 + H;
    {
        T* bp = reused_scratch<T>(kWeightGradB, packed_b_size<T>(TB, width));
        const int64_t panels = ceil_div(width, U);
#pragma omp parallel for num_threads(num_threads()) schedule(dynamic, 1)
        for (int64_t p = 0; p < panels; ++p) {
            if (p < x_panels)
                pack_b_rows(TB, I, [&](int64_t k) { return x + k * I; }, bp, p, p + 1);
            else  // panel p - x_panels of h_prev, stored at panel p
                pack_b_rows(TB, H, [&](int64_t k) { return hs + k * H; },
                            bp + h_col0 * TB, p - x_panels, p - x_panels + 1);
        }
        const auto dw = scratch<T>(G * width);  // weight gradients in gate-column order
        gemm_packed_b_parallel(G, width, TB, dG, 1, G, bp, dw.get(), width);
        for (int64_t col = 0; col < G; ++col) {
            const int64_t r = P.source_row(col);
            if (r < 0) continue;
            const T* row = dw.get() + col * width;
            std::copy(row, row + I, grad_w_ih + r * I);
            std::copy(row + h_col0, row + h_col0 + H, grad_w_hh + r * H);
        }
    }
    if (grad_b) column_sums(dG, TB, G, [&](int64_t col, T sum) {
        const int64_t r = P.source_row(col);
        if (r >= 0) grad_b[r] = sum;
    });
}
