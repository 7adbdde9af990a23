// Pooling kernels.
//
// Layout NCHW; every (n, c) plane is independent, so the forward kernels run on the thread pool
// over (plane, output row) pairs and vectorise along the output row: lane j of a vector holds output
// column ow + j, whose window tap (r, s) reads input column (ow + j)*stride - pad + s*dilation.
// For stride 1 that is one contiguous load per tap, for stride 2 two loads and one shuffle that
// keeps every other element. A row with fewer interior columns than a vector has lanes (LeNet's
// 28 -> 14 pooling under AVX-512) runs as one partial vector: masked loads that read only the
// elements its columns use, and a store of just those columns. Output columns whose windows
// cross the left or right border (and any stride above 2) take the scalar path, which clips
// each window to the input.
//
// The loops hand out small chunks as tasks rather than one static half per thread:
// on a shared machine a thread that loses its core then delays only its current chunk, not
// half the work (the kernels are memory-bound, so the chunk bookkeeping costs nothing visible).
//
// Semantics follow PyTorch: max pooling keeps the first maximum in row-major window order, a
// NaN beats every number (the last NaN's position is reported), indices are flat offsets
// h*W + w into the input plane; average pooling uses PyTorch's divisor rule (see avg_divisor).
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

// `Simd<T>::lanes` elements p[0], p[kStep], p[2*kStep], ... (kStep 1 or 2). Reads nothing past
// the last element it returns, so it is safe wherever the scalar loop would be.
template <class T, int kStep>
static inline __attribute__((always_inline)) typename Simd<T>::V load_strided(const T* p) {
    using S = Simd<T>;
    static_assert(kStep == 1 || kStep == 2, "strided loads exist for stride 1 and 2");
    if constexpr (kStep == 1) {
        return S::load(p);
    } else {
        // a = p[0 .. L-1], b = p[L-1 .. 2L-2]: lane i takes p[2i], which is a[2i] in the first
        // half and b[2i - L + 1] (shuffle index 2i + 1) in the second.
        typename S::I pick = S::iota() * 2;
        for (int i = S::lanes / 2; i < S::lanes; ++i) pick[i] += 1;
        return __builtin_shuffle(S::load(p), S::load(p + S::lanes - 1), pick);
    }
}

// load_strided's first n lanes (0 < n < lanes), zeros in the others: reads only p[0],
// p[kStep], ..., p[(n-1)*kStep], and what lies between them.
template <class T, int kStep>
static inline __attribute__((always_inline)) typename Simd<T>::V load_strided_first(const T* p,
                                                                                     int n) {
    using S = Simd<T>;
    if constexpr (kStep == 1) {
        return load_first<T>(p, n);
    } else {
        // The elements used are p[0 .. 2n-2]: the first min(2n-1, L) from a, the rest from b,
        // which starts at p[L-1] (see load_strided).
        const int used = 2 * n - 1;
        const typename S::V a = load_first<T>(p, std::min(used, S::lanes));
        const typename S::V b = used > S::lanes ? load_first<T>(p + S::lanes - 1, used - S::lanes + 1)
                                                : S::splat(T(0));
        typename S::I pick = S::iota() * 2;
        for (int i = S::lanes / 2; i < S::lanes; ++i) pick[i] += 1;
        return __builtin_shuffle(a, b, pick);
    }
}

// Kernel rows [r_lo, r_hi) of a window starting at input row h0 that lie inside 0..H-1.
struct RowRange {
    int64_t lo, hi;
};

static inline RowRange taps_inside(int64_t start, int64_t k, int64_t d, int64_t n) {
    const int64_t lo = start >= 0 ? 0 : (-start + d - 1) / d;
    const int64_t hi = std::min(k, (n - start + d - 1) / d);
    return {lo, hi};
}

// Output columns [lo, hi) whose whole window lies inside the input row (may be empty).
static inline RowRange columns_inside(const PoolShape& g) {
    const int64_t lo = (g.pw + g.sw - 1) / g.sw;
    const int64_t last_start = g.W - 1 - (g.kw - 1) * g.dw + g.pw;  // largest ow*sw allowed
    const int64_t hi = last_start < 0 ? 0 : std::min(g.Wo, last_start / g.sw + 1);
    return {lo, std::max(lo, hi)};
}

// True when an output row can use the vector path: stride 1 or 2, at least one interior
// column, and (for float) plane offsets that fit the int32 index lanes.
template <class T>
static bool row_vectorisable(const PoolShape& g, RowRange cols) {
    using Int = typename Simd<T>::Int;
    return (g.sw == 1 || g.sw == 2) && cols.hi > cols.lo &&
           g.H * g.W <= int64_t(std::numeric_limits<Int>::max());
}

// Loads `n` lanes for output columns starting at p: a whole vector, or its first n lanes.
template <class T, int kStep, bool kPartial>
static inline __attribute__((always_inline)) typename Simd<T>::V load_columns(const T* p, int n) {
    if constexpr (kPartial) return load_strided_first<T, kStep>(p, n);
    else return load_strided<T, kStep>(p);
}

// Calls f(ow) for vector starts covering [lo, hi): steps of `lanes`, the last one moved back so
// that it ends at hi (it recomputes a few columns, which is harmless for a pure function).
template <class F>
static inline void for_each_vector(int64_t lo, int64_t hi, int64_t lanes, F&& f) {
    for (int64_t ow = lo;; ow = std::min(ow + lanes, hi - lanes)) {
        f(ow);
        if (ow + lanes >= hi) break;
    }
}

// Calls f(ow) for the output columns outside [done.lo, done.hi).
template <class F>
static inline void for_each_other_column(RowRange done, int64_t Wo, F&& f) {
    for (int64_t ow = 0; ow < done.lo; ++ow) f(ow);
    for (int64_t ow = done.hi; ow < Wo; ++ow) f(ow);
}

// Calls vector<kPartial>(ow, n) for the columns [lo, hi) (not empty): one partial vector of
// n = hi - lo lanes when the run is shorter than a vector, else whole vectors (n = lanes).
template <class T, class F>
static inline void for_each_column_vector(RowRange cols, F&& vector) {
    constexpr int L = Simd<T>::lanes;
    if (cols.hi - cols.lo < L) {
        vector(std::true_type{}, cols.lo, int(cols.hi - cols.lo));
        return;
    }
    for_each_vector(cols.lo, cols.hi, L, [&](int64_t ow) { vector(std::false_type{}, ow, L); });
}

// ------------------------------------------------------------------------------------------
// Max pooling

// One output of max pooling over the clipped window, scalar.
template <class T>
static inline void max_window(const PoolShape& g, const T* xp, int64_t h0, RowRange rows,
                              int64_t w0, T* y, int64_t* idx) {
    const RowRange cols = taps_inside(w0, g.kw, g.dw, g.W);
    T best = -std::numeric_limits<T>::infinity();
    int64_t best_at = (h0 + rows.lo * g.dh) * g.W + (w0 + cols.lo * g.dw);
    for (int64_t r = rows.lo; r < rows.hi; ++r) {
        const int64_t row = (h0 + r * g.dh) * g.W;
        for (int64_t s = cols.lo; s < cols.hi; ++s) {
            const int64_t at = row + w0 + s * g.dw;
            const T v = xp[at];
            if (v > best || std::isnan(v)) {
                best = v;
                best_at = at;
            }
        }
    }
    *y = best;
    if (idx) *idx = best_at;
}

// Interior columns [cols.lo, cols.hi) of one output row, `lanes` outputs at a time.
template <class T, int kStep, bool kIndices>
static void max_row_simd(const PoolShape& g, const T* xp, int64_t h0, RowRange rows,
                         RowRange cols, T* yrow, int64_t* irow) {
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;
    using Int = typename S::Int;
    const I lane_offset = S::iota() * kStep;
    for_each_column_vector<T>(cols, [&](auto partial, int64_t ow, int n) {
        constexpr bool kPartial = decltype(partial)::value;
        const int64_t w0 = ow * kStep - g.pw;
        V best = S::splat(-std::numeric_limits<T>::infinity());
        I best_at = S::splat_int(Int((h0 + rows.lo * g.dh) * g.W + w0)) + lane_offset;
        for (int64_t r = rows.lo; r < rows.hi; ++r) {
            const int64_t row = (h0 + r * g.dh) * g.W;
            for (int64_t s = 0; s < g.kw; ++s) {
                const int64_t at = row + w0 + s * g.dw;
                const V v = load_columns<T, kStep, kPartial>(xp + at, n);
                const auto take = (v > best) | (v != v);  // v > best, or v is NaN
                best = take ? v : best;
                if constexpr (kIndices) best_at = take ? S::splat_int(Int(at)) + lane_offset : best_at;
            }
        }
        if constexpr (kPartial) {
            store_first<T>(yrow + ow, best, n);
            if constexpr (kIndices) {
                const typename S::I64 wide = __builtin_convertvector(best_at, typename S::I64);
                for (int j = 0; j < n; ++j) irow[ow + j] = wide[j];
            }
        } else {
            S::store(yrow + ow, best);
            if constexpr (kIndices) S::store_index(irow + ow, best_at);
        }
    });
}

template <class T, bool kIndices>
static void max_row(const PoolShape& g, const T* xp, int64_t oh, T* yrow, int64_t* irow) {
    const int64_t h0 = oh * g.sh - g.ph;
    const RowRange rows = taps_inside(h0, g.kh, g.dh, g.H);
    RowRange cols = columns_inside(g);
    if (row_vectorisable<T>(g, cols)) {
        if (g.sw == 1) max_row_simd<T, 1, kIndices>(g, xp, h0, rows, cols, yrow, irow);
        else max_row_simd<T, 2, kIndices>(g, xp, h0, rows, cols, yrow, irow);
    } else {
        cols = {0, 0};
    }
    for_each_other_column(cols, g.Wo, [&](int64_t ow) {
        max_window(g, xp, h0, rows, ow * g.sw - g.pw, yrow + ow, kIndices ? irow + ow : nullptr);
    });
}

// ---- 2x2 windows at stride 2 (no padding, dilation or indices): the pools of LeNet-like nets.
// Each output row reads two whole input rows: two vector loads per row give `lanes` outputs,
// shuffles split the even and odd columns. On rows of 5-14 outputs (one partial step) this is
// a handful of instructions per row where the general path's per-tap strided loads and window
// clipping cost several times as much (64x16x10x10: 66 us on one thread before).

template <class T>
static inline bool max_pool_2x2_applies(const PoolShape& g) {
    return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 &&
           g.dh == 1 && g.dw == 1 && 2 * g.Ho <= g.H && 2 * g.Wo <= g.W;
}

// second where it is larger or NaN, else first: folding taps in window order with this keeps
// the first maximum and lets a NaN win, as the general path does.
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V later_if_larger(typename Simd<T>::V first,
                                                                                 typename Simd<T>::V second) {
    const auto take = (second > first) | (second != second);
    return take ? second : first;
}

// The larger of each pair of columns (2j, 2j+1) of a[0 .. 2n-1], n = lanes unless kPartial.
template <class T, bool kPartial>
static inline __attribute__((always_inline)) typename Simd<T>::V max_of_column_pairs(const T* a, int n) {
    using S = Simd<T>;
    constexpr int L = S::lanes;
    typename S::V lo, hi;
    if constexpr (kPartial) {
        lo = load_first<T>(a, std::min(2 * n, L));
        hi = 2 * n > L ? load_first<T>(a + L, 2 * n - L) : S::splat(T(0));
    } else {
        lo = S::load(a);
        hi = S::load(a + L);
    }
    const typename S::I even = S::iota() * 2;
    return later_if_larger<T>(__builtin_shuffle(lo, hi, even), __builtin_shuffle(lo, hi, even + 1));
}

template <class T, bool kPartial>
static inline __attribute__((always_inline)) void max_2x2_step(const T* a, const T* b, T* y, int n, bool relu) {
    using S = Simd<T>;
    typename S::V v = later_if_larger<T>(max_of_column_pairs<T, kPartial>(a, n),
                                         max_of_column_pairs<T, kPartial>(b, n));
    if (relu) v = v < S::splat(T(0)) ? S::splat(T(0)) : v;  // NaN and -0 kept, as relu keeps them
    if constexpr (kPartial) store_first<T>(y, v, n);
    else Simd<T>::store(y, v);
}

// Below this many outputs (1 MiB of float32) the pool runs on one thread: the pass is bound by
// memory, and waking a second thread costs more than its share (medians on a loaded 2-core
// host, one thread against two: 64x6x28x28 42 against 56 us, 32x32x32x32 97 against 108 us).
constexpr int64_t kMaxPool2x2ParallelOutputs = int64_t(1) << 18;

template <class T>
static void max_pool_2x2(const PoolShape& g, const T* x, T* y, bool relu) {
    constexpr int L = Simd<T>::lanes;
    const int64_t rows = g.N * g.C * g.Ho;
    const int threads = rows * g.Wo < kMaxPool2x2ParallelOutputs ? 1 : num_threads();
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(rows, (rows + 63) / 64, threads, [&](int64_t begin, int64_t end, int) {
        for (int64_t r = begin; r < end; ++r) {
            const int64_t plane = r / g.Ho, oh = r % g.Ho;
            const T* a = x + (plane * g.H + 2 * oh) * g.W;
            const T* b = a + g.W;
            T* yr = y + r * g.Wo;
            int64_t ow = 0;
            for (; ow + L <= g.Wo; ow += L) max_2x2_step<T, false>(a + 2 * ow, b + 2 * ow, yr + ow, L, relu);
            if (ow < g.Wo) max_2x2_step<T, true>(a + 2 * ow, b + 2 * ow, yr + ow, int(g.Wo - ow), relu);
        }
    });
}

// y (N,C,Ho,Wo); idx the same shape, or nullptr. The spec guarantees that every window holds
// at least one input element. With `relu`, y = max(y, 0) (NaN and -0 kept) in the same pass:
// a ReLU before or after the pool (they commute), without a pass of its own.
template <class T>
void max_pool2d(const PoolShape& g, const T* x, T* y, int64_t* idx, bool relu) {
    if (!idx && max_pool_2x2_applies<T>(g)) return max_pool_2x2(g, x, y, relu);
    const int64_t planes = g.N * g.C;
    const int64_t rows = planes * g.Ho;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(rows, (rows + 31) / 32, num_threads(), [&](int64_t begin, int64_t end, int) {
        for (int64_t r = begin; r < end; ++r) {
            const int64_t p = r / g.Ho, oh = r % g.Ho;
            const T* xp = x + p * g.H * g.W;
            const int64_t out = r * g.Wo;
            if (idx) max_row<T, true>(g, xp, oh, y + out, idx + out);
            else max_row<T, false>(g, xp, oh, y + out, nullptr);
            for (int64_t ow = 0; relu && ow < g.Wo; ++ow)
                if (y[out + ow] < T(0)) y[out + ow] = T(0);
        }
    });
}

// out (planes, out_plane) = 0, then out[p, idx[p, j]] (+)= in[p, j] for j = 0, 1, ... of each
// plane. With Add this is max pooling's backward (a scatter-add: a pixel that was the maximum
// of several windows collects every gradient); without, max-unpooling (the last of repeated
// indices wins). Indices outside [0, out_plane) (the spec rejects them) are skipped and
// counted; returns the count.
// The scatter is bound by writing `out`; below this many elements of it one thread finishes
// before a second is woken: 64 x 16 x 10 x 10 (LeNet's second pool) measured 22 us on one
// thread against 25-44 us on two, 16 x 128 x 16 x 16 97-101 against 115-137 us; from about
// 1 M elements (16 x 64 x 32 x 32) the two were even.
constexpr int64_t kScatterParallelElements = int64_t(1) << 20;

template <bool Add, class T>
int64_t scatter_planes(int64_t planes, int64_t in_plane, int64_t out_plane, const T* in,
                       const int64_t* idx, T* out) {
    std::atomic<int64_t> bad{0};
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(planes, threads_if(planes * out_plane >= kScatterParallelElements), [&](int64_t p, int) {
        T* op = out + p * out_plane;
        const T* src = in + p * in_plane;
        const int64_t* ip = idx + p * in_plane;
        std::fill(op, op + out_plane, T(0));
        int64_t skipped = 0;
        for (int64_t j = 0; j < in_plane; ++j) {
            if (uint64_t(ip[j]) >= uint64_t(out_plane)) ++skipped;
            else if (Add) op[ip[j]] += src[j];
            else op[ip[j]] = src[j];
        }
        if (skipped) bad += skipped;
    });
    return bad;
}

// grad_x (planes, in_plane) = scatter-add of grad_y (planes, out_plane) at idx.
template <class T>
int64_t max_pool2d_backward(int64_t planes, int64_t out_plane, int64_t in_plane, const T* grad_y,
                            const int64_t* idx, T* grad_x) {
    return scatter_planes<true>(planes, out_plane, in_plane, grad_y, idx, grad_x);
}

// y (planes, out_plane) = x (planes, in_plane) placed at idx.
template <class T>
int64_t max_unpool2d(int64_t planes, int64_t in_plane, int64_t out_plane, const T* x,
                     const int64_t* idx, T* y) {
    return scatter_planes<false>(planes, in_plane, out_plane, x, idx, y);
}

// ------------------------------------------------------------------------------------------
// Average pooling (no dilation: the spec passes dh = dw = 1)

// PyTorch's divisor of output (oh, ow), and the window clipped to the input. The window before
// clipping is cut at H + pad (in ceil mode it can reach further); its size is what
// count_include_pad divides by. The divisor is a double: a window of kh x kw can hold more
// than int64_t counts (a huge kernel over a small padded input).
struct AvgWindow {
    int64_t h_lo, h_hi, w_lo, w_hi;
    double divisor;
};

static inline AvgWindow avg_window(const PoolShape& g, bool count_include_pad,
                                   int64_t divisor_override, int64_t oh, int64_t ow) {
    const int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
    const int64_t he = std::min(hs + g.kh, g.H + g.ph), we = std::min(ws + g.kw, g.W + g.pw);
    AvgWindow a{std::max<int64_t>(hs, 0), std::min(he, g.H), std::max<int64_t>(ws, 0),
                std::min(we, g.W), 0.0};
    if (divisor_override) a.divisor = divisor_override;
    else if (count_include_pad) a.divisor = double(he - hs) * double(we - ws);
    else a.divisor = double(a.h_hi - a.h_lo) * double(a.w_hi - a.w_lo);
    return a;
}

template <class T, int kStep>
static void avg_row_simd(const PoolShape& g, const T* xp, const AvgWindow& first,
                         RowRange cols, T* yrow) {
    using S = Simd<T>;
    using V = typename S::V;
    // Interior columns all see kw input columns, so the divisor is the same along the row.
    const V divisor = S::splat(T(first.divisor));
    for_each_column_vector<T>(cols, [&](auto partial, int64_t ow, int n) {
        constexpr bool kPartial = decltype(partial)::value;
        const int64_t w0 = ow * kStep - g.pw;
        V sum = S::splat(T(0));
        for (int64_t h = first.h_lo; h < first.h_hi; ++h)
            for (int64_t s = 0; s < g.kw; ++s)
                sum += load_columns<T, kStep, kPartial>(xp + h * g.W + w0 + s, n);
        if constexpr (kPartial) store_first<T>(yrow + ow, sum / divisor, n);
        else S::store(yrow + ow, sum / divisor);
    });
}

template <class T>
static void avg_row(const PoolShape& g, bool count_include_pad, int64_t divisor_override,
                    const T* xp, int64_t oh, T* yrow) {
    RowRange cols = columns_inside(g);
    if (row_vectorisable<T>(g, cols)) {
        const AvgWindow first = avg_window(g, count_include_pad, divisor_override, oh, cols.lo);
        if (g.sw == 1) avg_row_simd<T, 1>(g, xp, first, cols, yrow);
        else avg_row_simd<T, 2>(g, xp, first, cols, yrow);
    } else {
        cols = {0, 0};
    }
    for_each_other_column(cols, g.Wo, [&](int64_t ow) {
        const AvgWindow a = avg_window(g, count_include_pad, divisor_override, oh, ow);
        T sum = 0;
        for (int64_t h = a.h_lo; h < a.h_hi; ++h)
            for (int64_t w = a.w_lo; w < a.w_hi; ++w) sum += xp[h * g.W + w];
        yrow[ow] = sum / T(a.divisor);
    });
}

// Above this many bytes of input + output the pooling runs from DRAM (the L3 holds 32 MiB,
// shared) and its output is streamed.
constexpr int64_t kStreamingPoolBytes = int64_t(24) << 20;

// The sum of the n contiguous elements at p: four vector accumulators, then the tail.
template <class T>
static T contiguous_sum(const T* p, int64_t n) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes;
    V a0 = S::zero(), a1 = S::zero(), a2 = S::zero(), a3 = S::zero();
    int64_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
        a0 += S::load(p + i);
        a1 += S::load(p + i + L);
        a2 += S::load(p + i + 2 * L);
        a3 += S::load(p + i + 3 * L);
    }
    for (; i + L <= n; i += L) a0 += S::load(p + i);
    if (i < n) a1 += load_first<T>(p + i, int(n - i));
    return S::sum((a0 + a1) + (a2 + a3));
}

// One window over each whole plane (no padding: a global average pool, ResNet's last 8x8 or
// 7x7 pooling): a vectorised sum of each contiguous plane. The row kernel would see an output
// row of one column, too short for its vectors, and sum the plane element by element.
static inline bool avg_pool_whole_plane(const PoolShape& g) {
    return g.Ho == 1 && g.Wo == 1 && g.ph == 0 && g.pw == 0 && g.kh == g.H && g.kw == g.W;
}

// divisor_override 0 means none.
template <class T>
void avg_pool2d(const PoolShape& g, bool count_include_pad, int64_t divisor_override, const T* x,
                T* y) {
    const int64_t planes = g.N * g.C;
    if (avg_pool_whole_plane(g)) {
        const int64_t n = g.H * g.W;
        const T divisor = T(divisor_override ? double(divisor_override) : double(n));
        FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
        parallel_for(planes, threads_if(planes * n >= (int64_t(1) << 14)),
                     [&](int64_t p, int) { y[p] = contiguous_sum(x + p * n, n) / divisor; });
        return;
    }
    // Large pools compute a block of whole output rows into a buffer in L1, then stream it out.
    constexpr int64_t kBlock = 4096 / sizeof(T) * 4;  // elements: 16 KiB
    const int64_t bytes = planes * (g.H * g.W + g.Ho * g.Wo) * int64_t(sizeof(T));
    if (bytes < kStreamingPoolBytes || g.Wo > kBlock) {
        const int64_t out_rows = planes * g.Ho;
        FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
        parallel_ranges(out_rows, (out_rows + 31) / 32, num_threads(), [&](int64_t begin, int64_t end, int) {
            for (int64_t r = begin; r < end; ++r)
                avg_row(g, count_include_pad, divisor_override, x + r / g.Ho * g.H * g.W, r % g.Ho, y + r * g.Wo);
        });
        return;
    }
    const int64_t rows = std::min(g.Ho, kBlock / g.Wo);  // output rows per block
    const int64_t blocks_per_plane = (g.Ho + rows - 1) / rows;
    const int64_t tasks = planes * blocks_per_plane;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(tasks, (tasks + 3) / 4, num_threads(), [&](int64_t begin, int64_t end, int) {
        alignas(64) T buf[kBlock];
        for (int64_t task = begin; task < end; ++task) {
            const int64_t p = task / blocks_per_plane, oh0 = task % blocks_per_plane * rows;
            const int64_t oh1 = std::min(g.Ho, oh0 + rows);
            for (int64_t oh = oh0; oh < oh1; ++oh)
                avg_row(g, count_include_pad, divisor_override, x + p * g.H * g.W, oh,
                        buf + (oh - oh0) * g.Wo);
            stream_copy(buf, y + (p * g.Ho + oh0) * g.Wo, (oh1 - oh0) * g.Wo);
        }
        _mm_sfence();  // the streamed stores are visible before the task counts as done
    });
}

// Each output's gradient, divided by its divisor, is added to every input of its window. The
// windows and divisors depend only on the output position, so they are worked out once per
// call, not once per output of every plane: a window is its row range (from oh) times its
// column range (from ow), and its divisor the product of a factor of each (see avg_window).
template <class T>
void avg_pool2d_backward(const PoolShape& g, bool count_include_pad, int64_t divisor_override,
                         const T* grad_y, T* grad_x) {
    const int64_t planes = g.N * g.C;
    std::vector<AvgWindow> rows(size_t(std::max<int64_t>(g.Ho, 0))), cols(size_t(std::max<int64_t>(g.Wo, 0)));
    for (int64_t oh = 0; oh < g.Ho; ++oh) rows[oh] = avg_window(g, count_include_pad, 1, oh, 0);
    for (int64_t ow = 0; ow < g.Wo; ++ow) cols[ow] = avg_window(g, count_include_pad, 1, 0, ow);
    // The divisor's factor from rows alone and from columns alone.
    auto row_factor = [&](int64_t oh) {
        const int64_t hs = oh * g.sh - g.ph, he = std::min(hs + g.kh, g.H + g.ph);
        return count_include_pad ? double(he - hs) : double(rows[oh].h_hi - rows[oh].h_lo);
    };
    auto col_factor = [&](int64_t ow) {
        const int64_t ws = ow * g.sw - g.pw, we = std::min(ws + g.kw, g.W + g.pw);
        return count_include_pad ? double(we - ws) : double(cols[ow].w_hi - cols[ow].w_lo);
    };
    std::vector<double> row_div(rows.size()), col_div(cols.size());
    for (int64_t oh = 0; oh < g.Ho; ++oh) row_div[oh] = row_factor(oh);
    for (int64_t ow = 0; ow < g.Wo; ++ow) col_div[ow] = col_factor(ow);
    // Per output row: its shares (one division per output), then each input row of its windows
    // receives them. Every input still sums its shares in (oh, ow) order.
    const int threads = num_threads();
    std::vector<T> shares(size_t(threads) * size_t(std::max<int64_t>(g.Wo, 0)));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(planes, (planes + 7) / 8, threads, [&](int64_t begin, int64_t end, int worker) {
        T* share = shares.data() + int64_t(worker) * g.Wo;
        for (int64_t p = begin; p < end; ++p) {
            T* gx = grad_x + p * g.H * g.W;
            const T* gy = grad_y + p * g.Ho * g.Wo;
            std::fill(gx, gx + g.H * g.W, T(0));
            for (int64_t oh = 0; oh < g.Ho; ++oh) {
                for (int64_t ow = 0; ow < g.Wo; ++ow) {
                    const double divisor = divisor_override ? double(divisor_override) : row_div[oh] * col_div[ow];
                    share[ow] = gy[oh * g.Wo + ow] / T(divisor);
                }
                for (int64_t h = rows[oh].h_lo; h < rows[oh].h_hi; ++h) {
                    T* gx_row = gx + h * g.W;
                    for (int64_t ow = 0; ow < g.Wo; ++ow)
                        for (int64_t w = cols[ow].w_lo; w < cols[ow].w_hi; ++w) gx_row[w] += share[ow];
                }
            }
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
