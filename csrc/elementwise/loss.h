// Softmax, log_softmax and the losses over rows x (M, C) of C classes, forward and backward,
// each one pass per row (after the row's maximum): the exponentials come from
// elementwise/vector_math.h, so the passes vectorise. The cross-entropy also takes its classes
// on axis 1 of an (N, C, P) array (ClassRows), as a segmentation's per-pixel loss has them.
//
// Sums over a row accumulate in double (float32 rows lose nothing to cancellation or
// ordering); a row is always summed by one thread, in one order, so results do not depend on
// the thread count. Rows are split between threads once a call has kParallelRows elements.
#pragma once

#include "common/denormals.h"
#include "common/prelude.h"
#include "common/scratch.h"
#include "elementwise/vector_math.h"

namespace pyconv {
namespace PYCONV_ISA {

// Elements from which rows are split between threads (the exponentials cost ~10 flops each,
// so the split pays earlier than for a copy-like pass).
constexpr int64_t kParallelRows = int64_t(1) << 14;

template <class T>
inline T row_max(const T* x, int64_t C) {
    T m = x[0];
#pragma omp simd reduction(max : m)
    for (int64_t c = 1; c < C; ++c) m = x[c] > m ? x[c] : m;
    return m;
}

// A sum of a row's float terms in double: widened a vector at a time into one vector of partial
// sums (lane j: the terms c with c = j modulo the lanes), the terms past the last whole vector
// into a scalar, then added up in a halving tree in registers. The vectoriser's own reduction
// ended in a chain of as many dependent scalar additions as it kept partial sums (16) per row
// (a cross-entropy of 3200 rows of 65 classes, one thread: 218 us with it, 206 us so), and
// writing the last terms into lanes in memory stalled the vector's reload (a fifth of a softmax
// gradient).
class WideSum {
public:
    WideSum() : lanes_(Simd<double>::zero()), tail_(0) {}
    // Adds v[0..n); every n but the last call's must be a multiple of the lanes.
    template <class T>
    void add(const T* v, int64_t n) {
        add_terms(n, [v](int64_t j) { return load_as_double(v + j); }, [v](int64_t j) { return double(v[j]); });
    }
    // Adds the products a[j] b[j], each factor widened before they are multiplied.
    template <class T>
    void add_products(const T* a, const T* b, int64_t n) {
        add_terms(
            n, [a, b](int64_t j) { return load_as_double(a + j) * load_as_double(b + j); },
            [a, b](int64_t j) { return double(a[j]) * double(b[j]); });
    }
    double total() const {
        // Lane j += lane j + w for w = lanes / 2, ..., 1 (the masks' other lanes are not used).
        using I = Simd<double>::I;
        Lanes v = lanes_;
#if PYCONV_ISA_LEVEL >= 2
        v += __builtin_shuffle(v, I{4, 5, 6, 7});
#endif
#if PYCONV_ISA_LEVEL >= 1
        v += __builtin_shuffle(v, I{2, 3});
#endif
        v += __builtin_shuffle(v, I{1});
        return v[0] + tail_;
    }

private:
    static constexpr int DL = Simd<double>::lanes;
    using Lanes = Simd<double>::V;

    template <class Vector, class Scalar>
    inline __attribute__((always_inline)) void add_terms(int64_t n, Vector&& vector, Scalar&& scalar) {
        int64_t j = 0;
        for (; j + DL <= n; j += DL) lanes_ += vector(j);
        for (; j < n; ++j) tail_ += scalar(j);
    }

    Lanes lanes_;
    double tail_;
};

template <class T>
inline double sum_in_double(const T* v, int64_t n) {
    WideSum s;
    s.add(v, n);
    return s.total();
}

// Sum of exp(x - m) over a row, accumulated in double. The exponentials go through a block on
// the stack first: a loop that only computes them vectorises fully, while one that also widens
// them into a double sum runs several times slower (measured with GCC 12).
constexpr int64_t kExpBlock = 256;

template <class T>
inline double row_sum_exp(const T* x, int64_t C, T m) {
    static_assert(kExpBlock % Simd<double>::lanes == 0, "blocks before the last hold whole vectors");
    alignas(64) T e[kExpBlock];
    WideSum sum;
    for (int64_t c0 = 0; c0 < C; c0 += kExpBlock) {
        const int64_t n = std::min(kExpBlock, C - c0);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) e[j] = vexp_nonpositive<T>(x[c0 + j] - m);
        sum.add(e, n);
    }
    return sum.total();
}

// Runs row(i) for every row, on the thread pool once there is enough work.
template <class Row>
inline void for_rows(int64_t M, int64_t C, Row&& row) {
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(M, threads_if(M > 1 && M * C >= kParallelRows), [&](int64_t i, int) { row(i); });
}

// Rows whose log-sum-exp is wanted go in groups of kLogRows, so that the logs of their sums run
// along a vector (vlog_from_one) instead of one libm call per row: 15% of a 3200 x 65
// log_softmax on one thread. group(i0, n, m, log_sum) for each group of n <= kLogRows rows from
// i0 (row i at x + i C), with each row's maximum m[r] and the log of its sum of exp(x - m),
// summed in double; on the thread pool once there is enough work.
constexpr int64_t kLogRows = 16;

template <class T, class Group>
inline void for_log_sum_exp_groups(const T* x, int64_t M, int64_t C, Group&& group) {
    const int64_t groups = (M + kLogRows - 1) / kLogRows;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(groups, threads_if(groups > 1 && M * C >= kParallelRows), [&](int64_t g, int) {
        const int64_t i0 = g * kLogRows, n = std::min(kLogRows, M - i0);
        alignas(64) T m[kLogRows];
        alignas(64) double s[kLogRows], log_sum[kLogRows];
        for (int64_t r = 0; r < n; ++r) {
            m[r] = row_max(x + (i0 + r) * C, C);
            s[r] = row_sum_exp(x + (i0 + r) * C, C, m[r]);
        }
        for (int64_t r = n; r < kLogRows; ++r) s[r] = 1;
#pragma omp simd
        for (int64_t r = 0; r < kLogRows; ++r) log_sum[r] = vlog_from_one<double>(s[r]);
        group(i0, n, m, log_sum);
    });
}

// y = softmax(x) (log_softmax when `log`) over each row.
template <class T>
void softmax_forward(int64_t M, int64_t C, const T* x, bool log, T* y) {
    if (C == 0) return;
    if (log)
        return for_log_sum_exp_groups(x, M, C, [&](int64_t i0, int64_t n, const T* m, const double* log_sum) {
            for (int64_t r = 0; r < n; ++r) {
                const T* xr = x + (i0 + r) * C;
                const T mr = m[r], lr = T(log_sum[r]);
                T* yr = y + (i0 + r) * C;
#pragma omp simd
                for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - mr) - lr;
            }
        });
    for_rows(M, C, [&](int64_t i) {
        const T* xr = x + i * C;
        T* yr = y + i * C;
        const T m = row_max(xr, C);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yr[c] = vexp_nonpositive<T>(xr[c] - m);
        const T inv = T(1 / sum_in_double(yr, C));
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yr[c] *= inv;
    });
}

// grad_x from grad_y and the forward's y: softmax: y (g - sum(g y)); log_softmax:
// g - exp(y) sum(g).
template <class T>
void softmax_backward(int64_t M, int64_t C, const T* grad_y, const T* y, bool log, T* grad_x) {
    if (C == 0) return;
    for_rows(M, C, [&](int64_t i) {
        const T* g = grad_y + i * C;
        const T* yr = y + i * C;
        T* gx = grad_x + i * C;
        if (log) {
            const T sum = T(sum_in_double(g, C));
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) gx[c] = g[c] - vexp<T>(yr[c]) * sum;
        } else {
            WideSum dot_sum;
            dot_sum.add_products(g, yr, C);
            const T dot = T(dot_sum.total());
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) gx[c] = yr[c] * (g[c] - dot);
        }
    });
}

// Rows of few classes (a segmentation's pixels: 4 classes, 65536 rows) spend the row-by-row
// loops' time on each row's scalar log and on loops shorter than a vector. There the rows go in
// blocks of kNarrowRows, each copied into classes x rows, so that the maximum, the
// exponentials, their sum and its log run along vectors of rows (vlog_from_one). Each row's sum
// still runs over its classes in order, in double.
constexpr int64_t kNarrowClasses = 64, kNarrowRows = 64;
// The gradient has no log: there the blocks pay only below a vector's worth of classes (2
// threads, float32, against the row-by-row loops: 65536 x 4 0.33 against 0.73 ms, 65536 x 10
// 0.55-0.65 against 0.76; 32768 x 16 0.42 against 0.33, 4096 x 35 0.13 against 0.09).
constexpr int64_t kNarrowGradClasses = 15;

// A block's run of n <= kNarrowRows values from src into dst, `fill` past n (in loops: a
// library call per run of 64 costs as much as the copy).
template <class T>
PYCONV_KEEP_LOOPS static inline void read_block(const T* src, int64_t n, T* dst, T fill) {
    copy_run(src, n, dst);
    for (int64_t r = n; r < kNarrowRows; ++r) dst[r] = fill;
}

// Rows of classes as the cross-entropy takes them: x (N, C, P), row i = n P + p holding
// x[n, :, p]. Classes last is P = 1 (row i at x + i C); classes on axis 1 of an (N, C, H, W)
// tensor is P = H W, where the rows of one image lie side by side along each class's plane.
struct ClassRows {
    int64_t N, C, P;
    int64_t rows() const { return N * P; }
    // Offset of element (row i, class 0); class c is c * P further.
    int64_t start(int64_t i) const { return (i / P) * C * P + i % P; }
};

// f(i0, n, xt) for each block of n <= kNarrowRows rows from i0, xt[c][r] = x[row i0 + r, c]
// (rows past n zero), on the thread pool once there is enough work. With P > 1 a block stays
// within one image, so each class's n values are one contiguous run of x.
template <class T, class Block>
inline void for_narrow_blocks(const ClassRows& g, const T* x, Block&& block) {
    const int64_t per_image = g.P == 1 ? 0 : (g.P + kNarrowRows - 1) / kNarrowRows;
    const int64_t blocks = g.P == 1 ? (g.N + kNarrowRows - 1) / kNarrowRows : g.N * per_image;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(blocks, threads_if(blocks > 1 && g.rows() * g.C >= kParallelRows), [&](int64_t b, int) {
        const int64_t i0 = g.P == 1 ? b * kNarrowRows : (b / per_image) * g.P + (b % per_image) * kNarrowRows;
        const int64_t n = g.P == 1 ? std::min(kNarrowRows, g.N - i0)
                                   : std::min(kNarrowRows, g.P - (b % per_image) * kNarrowRows);
        alignas(64) T xt[kNarrowClasses][kNarrowRows];
        for (int64_t c = 0; c < g.C; ++c) {
            if (g.P == 1) {
                for (int64_t r = 0; r < n; ++r) xt[c][r] = x[(i0 + r) * g.C + c];
                for (int64_t r = n; r < kNarrowRows; ++r) xt[c][r] = T(0);
            } else {
                read_block(x + g.start(i0) + c * g.P, n, xt[c], T(0));
            }
        }
        block(i0, n, xt);
    });
}

// row(i, xr, buffer) for every row i, xr its C classes contiguous: in place where P = 1, else
// gathered into `buffer` (room for C) first. (The buffers are allocated before the threads run:
// an exception must not escape a pool thread.)
template <class T, class Row>
inline void for_class_rows(const ClassRows& g, const T* x, Row&& row) {
    if (g.P == 1) return for_rows(g.N, g.C, [&](int64_t i) { row(i, x + i * g.C, static_cast<T*>(nullptr)); });
    const int threads = threads_if(g.rows() > 1 && g.rows() * g.C >= kParallelRows);
    Scratch<T> buffers = scratch<T>(checked_mul(int64_t(threads), g.C));
    FlushDenormals ftz;
    parallel_ranges(g.rows(), threads, [&](int64_t begin, int64_t end, int worker) {
        T* buffer = buffers.get() + worker * g.C;
        for (int64_t i = begin; i < end; ++i) {
            const T* src = x + g.start(i);
            for (int64_t c = 0; c < g.C; ++c) buffer[c] = src[c * g.P];
            row(i, buffer, buffer);
        }
    });
}

// Each row's maximum m and the log of its sum of exp(x - m), in double, along the block's rows.
template <class T>
inline void narrow_log_sum_exp(int64_t C, const T (*xt)[kNarrowRows], T* m, double* log_sum) {
    alignas(64) double s[kNarrowRows] = {};
#pragma omp simd
    for (int64_t r = 0; r < kNarrowRows; ++r) m[r] = xt[0][r];
    for (int64_t c = 1; c < C; ++c)
#pragma omp simd
        for (int64_t r = 0; r < kNarrowRows; ++r) m[r] = xt[c][r] > m[r] ? xt[c][r] : m[r];
    for (int64_t c = 0; c < C; ++c) {
        alignas(64) T e[kNarrowRows];
#pragma omp simd
        for (int64_t r = 0; r < kNarrowRows; ++r) e[r] = vexp_nonpositive<T>(xt[c][r] - m[r]);
#pragma omp simd
        for (int64_t r = 0; r < kNarrowRows; ++r) s[r] += double(e[r]);
    }
#pragma omp simd
    for (int64_t r = 0; r < kNarrowRows; ++r) log_sum[r] = vlog_from_one<double>(s[r]);
}

// Each row's target t (ignore_index past the block's n rows), its class weight w[t] (0 where t
// is ignore_index) and, when x_t is given, its target's logit xt[t][r], for the rows of a
// block: one select per class along the rows (row by row, an indexed load per row was a
// seventh of the forward).
template <class T>
inline void narrow_targets(int64_t C, const T (*xt)[kNarrowRows], const int64_t* target, int64_t n,
                           const T* weight, int64_t ignore_index, int64_t* t, double* row_w, T* x_t) {
    read_block(target, n, t, ignore_index);
#pragma omp simd
    for (int64_t r = 0; r < kNarrowRows; ++r) row_w[r] = 0.0;
    if (x_t)
#pragma omp simd
        for (int64_t r = 0; r < kNarrowRows; ++r) x_t[r] = T(0);
    for (int64_t c = 0; c < C; ++c) {
        if (c == ignore_index) continue;
        const double wc = weight ? double(weight[c]) : 1.0;
#pragma omp simd
        for (int64_t r = 0; r < kNarrowRows; ++r) row_w[r] = t[r] == c ? wc : row_w[r];
        if (x_t)
#pragma omp simd
            for (int64_t r = 0; r < kNarrowRows; ++r) x_t[r] = t[r] == c ? xt[c][r] : x_t[r];
    }
}

// The class weights' sum, in order (C where weight is nullptr: all ones).
template <class T>
inline double class_weight_sum(int64_t C, const T* weight) {
    if (!weight) return double(C);
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += double(weight[c]);
    return sum;
}

// Cross-entropy of each row against its target class (rows whose target is ignore_index, or
// whose class weight is 0, give 0), with label smoothing eps:
//   loss = -(1 - eps) w[t] logp[t] - (eps / C) sum_c w[c] logp[c],  logp = x - lse.
// weight may be nullptr (all ones). lse (M,): each row's log-sum-exp, for the backward.
// logp[c] = (x[c] - m) - log_sum: the shifted values are <= 0, so their sums do not cancel
// whatever the logits' offset.
template <class T>
void cross_entropy_forward(int64_t N, int64_t C, int64_t P, const T* x, const int64_t* target,
                           const T* weight, int64_t ignore_index, double eps, T* loss, T* lse) {
    const ClassRows layout{N, C, P};
    const double w_sum = class_weight_sum(C, weight);
    if (C > 0 && C <= kNarrowClasses) {
        for_narrow_blocks(layout, x, [&](int64_t i0, int64_t n, const T (*xt)[kNarrowRows]) {
            alignas(64) T m[kNarrowRows], x_t[kNarrowRows], out[kNarrowRows];
            alignas(64) double log_sum[kNarrowRows], row_w[kNarrowRows], l[kNarrowRows];
            narrow_log_sum_exp(C, xt, m, log_sum);
            // x_t of a row of weight 0 may be -inf: its l is then NaN, and dropped below.
            alignas(64) int64_t t[kNarrowRows];
            narrow_targets(C, xt, target + i0, n, weight, ignore_index, t, row_w, x_t);
#pragma omp simd
            for (int64_t r = 0; r < kNarrowRows; ++r) {
                out[r] = T(double(m[r]) + log_sum[r]);
                l[r] = -(1 - eps) * row_w[r] * (double(x_t[r] - m[r]) - log_sum[r]);
            }
            copy_run(out, n, lse + i0);
            if (eps != 0) {  // (eps / C) (w_sum log_sum - sum_c w[c] (x[c] - m))
                alignas(64) double wx[kNarrowRows] = {};
                for (int64_t c = 0; c < C; ++c) {
                    const double wc = weight ? double(weight[c]) : 1.0;
#pragma omp simd
                    for (int64_t r = 0; r < kNarrowRows; ++r) wx[r] += wc * double(xt[c][r] - m[r]);
                }
#pragma omp simd
                for (int64_t r = 0; r < kNarrowRows; ++r) l[r] += (eps / double(C)) * (w_sum * log_sum[r] - wx[r]);
            }
            // (Select, then narrow, in two loops: GCC leaves the fused form scalar.)
#pragma omp simd
            for (int64_t r = 0; r < kNarrowRows; ++r) l[r] = row_w[r] == 0 ? 0.0 : l[r];
#pragma omp simd
            for (int64_t r = 0; r < kNarrowRows; ++r) out[r] = T(l[r]);
            copy_run(out, n, loss + i0);
        });
        return;
    }
    // Row i's loss from its classes xr, maximum m and log_sum.
    auto row_loss = [&](int64_t i, const T* xr, T m, double log_sum) {
        lse[i] = T(double(m) + log_sum);
        const int64_t t = target[i];
        const double row_w = t == ignore_index ? 0.0 : (weight ? double(weight[t]) : 1.0);
        if (row_w == 0) {
            loss[i] = T(0);
            return;
        }
        double l = -(1 - eps) * row_w * (double(xr[t] - m) - log_sum);
        if (eps != 0) {
            double wx = 0;
            if (weight) {
#pragma omp simd reduction(+ : wx)
                for (int64_t c = 0; c < C; ++c) wx += double(weight[c]) * double(xr[c] - m);
            } else {
#pragma omp simd reduction(+ : wx)
                for (int64_t c = 0; c < C; ++c) wx += double(xr[c] - m);
            }
            l += (eps / double(C)) * (w_sum * log_sum - wx);
        }
        loss[i] = T(l);
    };
    if (P == 1)
        return for_log_sum_exp_groups(x, N, C, [&](int64_t i0, int64_t n, const T* m, const double* log_sum) {
            for (int64_t r = 0; r < n; ++r) row_loss(i0 + r, x + (i0 + r) * C, m[r], log_sum[r]);
        });
    for_class_rows(layout, x, [&](int64_t i, const T* xr, T*) {
        const T m = row_max(xr, C);
        row_loss(i, xr, m, std::log(row_sum_exp(xr, C, m)));
    });
}

// grad_x[i, c] = grad_loss[i] * (p[c] A - a[c]) with p = exp(x - lse), a the loss's derivative
// with respect to logp (-(1 - eps) w[t] at t, -(eps / C) w[c] everywhere) and A = sum(a);
// rows that give no loss get zeros. grad_x has x's layout.
template <class T>
void cross_entropy_backward(int64_t N, int64_t C, int64_t P, const T* grad_loss, const T* x,
                            const int64_t* target, const T* weight, const T* lse,
                            int64_t ignore_index, double eps, T* grad_x) {
    const ClassRows layout{N, C, P};
    const double w_sum = class_weight_sum(C, weight);
    const double smooth = eps / double(C);
    // Along vectors of rows, as cross_entropy_forward: below a vector's worth of classes, and
    // for every narrow row of classes on axis 1, whose rows lie along the planes.
    if (C > 0 && (C <= kNarrowGradClasses || (layout.P > 1 && C <= kNarrowClasses))) {
        for_narrow_blocks(layout, x, [&](int64_t i0, int64_t n, const T (*xt)[kNarrowRows]) {
            // Per row: the target t (-1 where the row gives no loss), -g A, g eps / C, and what
            // the target's class subtracts, g (1 - eps) w[t].
            alignas(64) T l[kNarrowRows], g[kNarrowRows], minus_gA[kNarrowRows], gs[kNarrowRows],
                at_target[kNarrowRows];
            alignas(64) double row_w[kNarrowRows];
            alignas(64) int64_t t[kNarrowRows];
            narrow_targets<T>(C, xt, target + i0, n, weight, ignore_index, t, row_w, nullptr);
#pragma omp simd
            for (int64_t r = 0; r < kNarrowRows; ++r) t[r] = row_w[r] == 0 ? -1 : t[r];
            read_block(lse + i0, n, l, T(0));
            read_block(grad_loss + i0, n, g, T(0));
#pragma omp simd
            for (int64_t r = 0; r < kNarrowRows; ++r) {
                minus_gA[r] = T(double(g[r]) * ((1 - eps) * row_w[r] + smooth * w_sum));
                gs[r] = T(double(g[r]) * smooth);
                at_target[r] = T(double(g[r]) * (1 - eps) * row_w[r]);
            }
            alignas(64) T gt[kNarrowRows];
            for (int64_t c = 0; c < C; ++c) {
                const T wc = smooth != 0 && weight ? weight[c] : T(1);
#pragma omp simd
                for (int64_t r = 0; r < kNarrowRows; ++r) {
                    const T v = (vexp<T>(xt[c][r] - l[r]) * minus_gA[r] - gs[r] * wc) - (t[r] == c ? at_target[r] : T(0));
                    gt[r] = t[r] < 0 ? T(0) : v;
                }
                if (layout.P == 1)
                    for (int64_t r = 0; r < n; ++r) grad_x[(i0 + r) * C + c] = gt[r];
                else
                    copy_run(gt, n, grad_x + layout.start(i0) + c * layout.P);
            }
        });
        return;
    }
    // Row i's gradient into gx (which may be xr itself: each element is read before it is
    // written).
    auto row_gradient = [&](int64_t i, const T* xr, T* gx) {
        const int64_t t = target[i];
        const double row_w = t == ignore_index ? 0.0 : (weight ? double(weight[t]) : 1.0);
        if (row_w == 0) {
            std::fill(gx, gx + C, T(0));
            return;
        }
        const double g = double(grad_loss[i]);
        const T minus_gA = T(g * ((1 - eps) * row_w + smooth * w_sum));  // -g A
        const T l = lse[i];
        if (smooth != 0 && weight) {
            const T gs = T(g * smooth);
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) gx[c] = vexp<T>(xr[c] - l) * minus_gA - gs * weight[c];
        } else {
            const T gs = T(g * smooth);
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) gx[c] = vexp<T>(xr[c] - l) * minus_gA - gs;
        }
        gx[t] -= T(g * (1 - eps) * row_w);
    };
    // In place where P = 1; else in the gathered row's buffer, then scattered along the planes.
    for_class_rows(layout, x, [&](int64_t i, const T* xr, T* buffer) {
        if (!buffer) return row_gradient(i, xr, grad_x + i * C);
        row_gradient(i, xr, buffer);
        T* out = grad_x + layout.start(i);
        for (int64_t c = 0; c < C; ++c) out[c * layout.P] = buffer[c];
    });
}

// Work items of an elementwise pass over rows (M, C) whose columns carry a per-column value:
// (row, block of columns) pairs, so that one long row is split between threads too.
constexpr int64_t kColumnBlock = 4096;

template <class Block>
inline void for_column_blocks(int64_t M, int64_t C, Block&& block) {
    if (M == 0 || C == 0) return;
    const int64_t per_row = (C + kColumnBlock - 1) / kColumnBlock;
    FlushDenormals ftz;
    parallel_tasks(M * per_row, threads_if(M * per_row > 1 && M * C >= kParallelRows), [&](int64_t w, int) {
        const int64_t i = w / per_row, c0 = (w % per_row) * kColumnBlock;
        block(i, c0, std::min(C, c0 + kColumnBlock));
    });
}

// The binary cross-entropy of logits, (1 - t) x + (1 + (p - 1) t) log(1 + exp(-x)) with p =
// pos_weight[c] (1 where pos_weight is nullptr), and its gradient, written per sign of x so
// that no two large terms cancel (with L = log1p(exp(-|x|)), e = exp(-|x|)):
//   loss = (1 + (p - 1) t) L + ((1 - t) x if x >= 0 else -p t x),
//   d loss / dx = ((1 - t - p t e) if x >= 0 else (e (1 - t) - p t)) / (1 + e).
// Without a pos_weight the loops run with p = 1 as a constant, not a masked load from the null
// pointer: AMD cores take a slow path for a masked vector load whose masked-off lanes point at an
// unmapped page, even when no lane is used (64 x 1024 float32 on 1 thread: 0.51 against
// 0.06 ms forward).
template <class T>
inline T bce_with_logits_element(T v, T t, T p) {
    const T softplus = vlog1p<T>(vexp<T>(v < T(0) ? v : -v));
    const T linear = v >= T(0) ? (T(1) - t) * v : -p * t * v;
    return (T(1) + (p - T(1)) * t) * softplus + linear;
}

template <class T>
inline T bce_with_logits_slope(T v, T t, T p) {
    const T e = vexp<T>(v < T(0) ? v : -v);
    const T slope = v >= T(0) ? T(1) - t - p * t * e : e * (T(1) - t) - p * t;
    return slope / (T(1) + e);
}

template <class T>
void bce_with_logits_forward(int64_t M, int64_t C, const T* x, const T* target,
                             const T* pos_weight, T* loss) {
    for_column_blocks(M, C, [&](int64_t i, int64_t c0, int64_t c1) {
        const T* xr = x + i * C;
        const T* tr = target + i * C;
        T* lr = loss + i * C;
        if (pos_weight) {
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) lr[c] = bce_with_logits_element<T>(xr[c], tr[c], pos_weight[c]);
        } else {
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) lr[c] = bce_with_logits_element<T>(xr[c], tr[c], T(1));
        }
    });
}

template <class T>
void bce_with_logits_backward(int64_t M, int64_t C, const T* grad_y, const T* x,
                              const T* target, const T* pos_weight, T* grad_x) {
    for_column_blocks(M, C, [&](int64_t i, int64_t c0, int64_t c1) {
        const T* xr = x + i * C;
        const T* tr = target + i * C;
        const T* gr = grad_y + i * C;
        T* gx = grad_x + i * C;
        if (pos_weight) {
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) gx[c] = gr[c] * bce_with_logits_slope<T>(xr[c], tr[c], pos_weight[c]);
        } else {
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) gx[c] = gr[c] * bce_with_logits_slope<T>(xr[c], tr[c], T(1));
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
