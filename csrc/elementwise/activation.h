// Elementwise activations and their gradients, each one pass over contiguous arrays.
//
// Memory-bound: a pass reads and writes each element once, so the loops only need to
// vectorise (the selects below compile to masked blends) and to split long arrays between
// threads. Short arrays stay on the calling thread, where waking the pool would cost more
// than the pass itself.
#pragma once

#include "common/denormals.h"
#include "common/prelude.h"
#include "common/simd.h"
#include "elementwise/exp.h"

namespace pyconv {
namespace PYCONV_ISA {

// Elements from which a pass is split between threads (128 KiB of float32).
constexpr int64_t kParallelElementwise = int64_t(1) << 15;

// y = x where x > 0, else negative_slope * x (ReLU for a slope of 0). NaN stays NaN.
template <class T>
void leaky_relu(int64_t n, const T* x, T negative_slope, T* y) {
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(n, threads_if(n >= kParallelElementwise), [&](int64_t begin, int64_t end, int) {
        // In a register: read through the captured reference in one arm of the select, the
        // load would have to stay conditional, and the loop would not vectorise.
        const T slope = negative_slope;
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) y[i] = x[i] > T(0) ? x[i] : x[i] * slope;
    });
}

// grad_x = grad_y where x > 0, else negative_slope * grad_y.
template <class T>
void leaky_relu_backward(int64_t n, const T* grad_y, const T* x, T negative_slope, T* grad_x) {
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(n, threads_if(n >= kParallelElementwise), [&](int64_t begin, int64_t end, int) {
        const T slope = negative_slope;  // in a register (see leaky_relu)
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) grad_x[i] = x[i] > T(0) ? grad_y[i] : grad_y[i] * slope;
    });
}

// ---- ReLU and the smooth activations: ELU, sigmoid, tanh ------------------------------------
//
// Written on SIMD vectors (the vectorised e^x of elementwise/exp.h: the compiler cannot
// vectorise std::exp; ReLU compares bit patterns). The last, partial vector goes through the
// same vector code on a zero-padded copy, so that every element sees the same arithmetic
// wherever it sits and however the array is split between threads.

// out[i] = op(in[i]...) for the n elements of each input; op maps vectors to a vector.
template <class T, class Op, class... In>
void map_vectors(int64_t n, T* out, Op op, const In*... in) {
    using S = Simd<T>;
    constexpr int L = S::lanes;
    const int64_t vectors = n / L;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    // The loop inside the task, not a call per vector: 1.1-1.3x the time of the loop otherwise.
    parallel_ranges(vectors, threads_if(n >= kParallelElementwise), [=](int64_t begin, int64_t end, int) {
        for (int64_t v = begin; v < end; ++v) S::store(out + v * L, op(S::load(in + v * L)...));
    });
    const int64_t done = vectors * L, tail = n - done;
    if (tail == 0) return;
    auto padded = [&](const T* p) {
        T lanes[L] = {};
        std::memcpy(lanes, p + done, size_t(tail) * sizeof(T));
        return S::load(lanes);
    };
    T result[L];
    S::store(result, op(padded(in)...));
    std::memcpy(out + done, result, size_t(tail) * sizeof(T));
}

// The vector functions, as small structs rather than lambdas: their operator() is compiled
// with this build's target ISA and inlined into the loop (a lambda's conversion to a function
// pointer would be a function that passes vectors by the baseline ABI).
#define PYCONV_VECTOR_OP inline __attribute__((always_inline)) typename Simd<T>::V operator()

// ReLU as PyTorch's max(x, 0): y = 0 where x < 0 (-inf included), else x (NaN and -0 pass
// through); its gradient from the output: grad_x = 0 where y <= 0, else grad_y (NaN included).
// The comparisons read the bits: the kernels run with DAZ set (common/denormals.h), under which
// a float comparison takes a subnormal for 0 and would pass -1e-45 through, or stop the
// gradient of +1e-45, where PyTorch does not.
template <class T>
struct Relu {
    PYCONV_VECTOR_OP(typename Simd<T>::V x) const {
        using S = Simd<T>;
        using I = typename S::I;
        // As signed integers the negative numbers from -0 (the smallest integer) to -inf are a
        // range below the negative NaNs: two comparisons select it without -0.
        const I bits = I(x);
        const I minus_zero = I(S::splat(T(-0.0))), minus_inf = I(S::splat(-std::numeric_limits<T>::infinity()));
        const auto negative = (bits > minus_zero) & (bits <= minus_inf);
        return negative ? typename S::V{} : x;
    }
};

// ReLU of a sum, y = max(a + b, 0) in one pass (a residual block's Add and ReLU): the same
// bits as the sum stored and then ReLU'd.
template <class T>
struct AddRelu {
    PYCONV_VECTOR_OP(typename Simd<T>::V a, typename Simd<T>::V b) const { return Relu<T>{}(a + b); }
};

template <class T>
struct ReluBackward {
    PYCONV_VECTOR_OP(typename Simd<T>::V g, typename Simd<T>::V y) const {
        using S = Simd<T>;
        using I = typename S::I;
        // y <= 0: +0, or the range from -0 to -inf (see Relu); NaN of either sign passes.
        const I bits = I(y);
        const I minus_inf = I(S::splat(-std::numeric_limits<T>::infinity()));
        const auto stops = (bits <= minus_inf) | (bits == I{});
        return stops ? typename S::V{} : g;
    }
};

// y = x where x > 0, else alpha (e^x - 1), as torch.nn.functional.elu.
template <class T>
struct Elu {
    T alpha;
    PYCONV_VECTOR_OP(typename Simd<T>::V x) const { return x > T(0) ? x : alpha * expm1_full<T>(x); }
};

// grad_x = grad_y where x > 0, else grad_y alpha e^x (PyTorch's elu_backward from the input).
template <class T>
struct EluBackward {
    T alpha;
    PYCONV_VECTOR_OP(typename Simd<T>::V g, typename Simd<T>::V x) const {
        return x > T(0) ? g : g * (alpha * exp_full<T>(x));
    }
};

// y = 1 / (1 + e^-x): 0 at -inf, 1 at inf, relative accuracy kept for large negative x.
template <class T>
struct Sigmoid {
    PYCONV_VECTOR_OP(typename Simd<T>::V x) const { return T(1) / (T(1) + exp_full<T>(-x)); }
};

// grad_x = grad_y (1 - y) y, from the forward's output y.
template <class T>
struct SigmoidBackward {
    PYCONV_VECTOR_OP(typename Simd<T>::V g, typename Simd<T>::V y) const { return g * (T(1) - y) * y; }
};

// tanh, odd: computed on |x|, the sign of x put back (-0 stays -0, NaN stays NaN).
//
// float32: x + x^3 P(x^2) below |x| = 0.5625 (P a least-squares fit of tanh's relative error on
// Chebyshev nodes of [0, 0.5625], 1.4e-9 at most, far below float32's rounding), and
// 1 - 2 / (e^(2|x|) + 1) above it, where 2 / (e^(2|x|) + 1) <= 0.5 cannot cancel. There e^(2|x|)
// needs no overflow or NaN handling: |x| is clamped at 9.1, past which tanh rounds to 1, so
// 2|x| <= 18.2 and 2^n stays a normal number; e^r by its Taylor polynomial of degree 7
// (truncation below 10^-8 on |r| <= ln2/2). Without expm1's special cases this takes about half
// the time of the float64 form below, and is within 1.5 ulps of tanh where that form was
// within 2.5 (tests/test_activations.py).
//
// float64: tanh |x| = -m / (2 + m) with m = e^(-2|x|) - 1: no cancellation near 0 (m is accurate
// there), 1 for |x| -> inf.
template <class T>
struct Tanh {
    PYCONV_VECTOR_OP(typename Simd<T>::V x) const {
        using S = Simd<T>;
        using V = typename S::V;
        using I = typename S::I;
        const I sign = I(S::splat(T(-0.0)));
        const V a = V(I(x) & ~sign);
        V t;
        if constexpr (sizeof(T) == 4) t = a < T(0.5625) ? small_float(a) : large_float(a);
        else {
            const V m = expm1_full<T>(a * T(-2));
            t = -m / (T(2) + m);
        }
        return V((I(t) & ~sign) | (I(x) & sign));
    }

    // x + x^3 P(x^2), for 0 <= a < 0.5625.
    static inline __attribute__((always_inline)) typename Simd<T>::V small_float(typename Simd<T>::V a) {
        using S = Simd<T>;
        const typename S::V z = a * a;
        typename S::V p = S::splat(T(-0.006169400056088174));
        p = fma<T>(p, z, S::splat(T(0.02099914828848243)));
        p = fma<T>(p, z, S::splat(T(-0.05383511217842671)));
        p = fma<T>(p, z, S::splat(T(0.13332426194226057)));
        p = fma<T>(p, z, S::splat(T(-0.3333331293334263)));
        return fma<T>(a * z, p, a);
    }

    // 1 - 2 / (e^(2a) + 1), for a >= 0.5625 (NaN passes through).
    static inline __attribute__((always_inline)) typename Simd<T>::V large_float(typename Simd<T>::V a) {
        using S = Simd<T>;
        using V = typename S::V;
        using I = typename S::I;
        a = a > T(9.1) ? S::splat(T(9.1)) : a;
        // 2a = n ln2 + r: adding 1.5 * 2^23 rounds to the integer n held in the low mantissa
        // bits; ln2 in two parts so that n * ln2_hi is exact.
        const T magic = T(1.5) * T(1 << 23);
        const V shifted = fma<T>(a, S::splat(T(2 * 1.4426950408889634)), S::splat(magic));
        const V n = shifted - magic;
        const V r = fma<T>(n, S::splat(T(2.12194440e-4)), fma<T>(n, S::splat(T(-0.693359375)), a + a));
        V e = S::splat(T(1.0 / 5040));
        for (const double c : {1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0})
            e = fma<T>(e, r, S::splat(T(c)));
        // 2^n in the exponent bits: n (0..27) sits in the low bits of `shifted`, so the shift
        // leaves exactly n << 23.
        const V scale = V((I(shifted) << 23) + (127 << 23));
        return T(1) - T(2) / fma<T>(e, scale, S::splat(T(1)));
    }
};

// grad_x = grad_y (1 - y^2), from the forward's output y.
template <class T>
struct TanhBackward {
    PYCONV_VECTOR_OP(typename Simd<T>::V g, typename Simd<T>::V y) const { return g * (T(1) - y * y); }
};

#undef PYCONV_VECTOR_OP

template <class T>
void relu(int64_t n, const T* x, T* y) { map_vectors<T>(n, y, Relu<T>{}, x); }

template <class T>
void add_relu(int64_t n, const T* a, const T* b, T* y) { map_vectors<T>(n, y, AddRelu<T>{}, a, b); }

template <class T>
void relu_backward(int64_t n, const T* grad_y, const T* y, T* grad_x) {
    map_vectors<T>(n, grad_x, ReluBackward<T>{}, grad_y, y);
}

template <class T>
void elu(int64_t n, const T* x, T alpha, T* y) { map_vectors<T>(n, y, Elu<T>{alpha}, x); }

template <class T>
void elu_backward(int64_t n, const T* grad_y, const T* x, T alpha, T* grad_x) {
    map_vectors<T>(n, grad_x, EluBackward<T>{alpha}, grad_y, x);
}

template <class T>
void sigmoid(int64_t n, const T* x, T* y) { map_vectors<T>(n, y, Sigmoid<T>{}, x); }

template <class T>
void sigmoid_backward(int64_t n, const T* grad_y, const T* y, T* grad_x) {
    map_vectors<T>(n, grad_x, SigmoidBackward<T>{}, grad_y, y);
}

template <class T>
void tanh_forward(int64_t n, const T* x, T* y) { map_vectors<T>(n, y, Tanh<T>{}, x); }

template <class T>
void tanh_backward(int64_t n, const T* grad_y, const T* y, T* grad_x) {
    map_vectors<T>(n, grad_x, TanhBackward<T>{}, grad_y, y);
}

// ---- Sums of two arrays -----------------------------------------------------------------------
//
// y = a + b element by element (y may be a or b): the autograd's sums of large arrays (a
// residual connection's forward, the gradients that reach one tensor along several paths),
// which NumPy adds on one thread. Plain IEEE sums, subnormals kept: the caller does not flush
// them (the binding opens no FlushDenormals), so the bits are NumPy's.
template <class T>
void add(int64_t n, const T* a, const T* b, T* y) {
    parallel_ranges(n, threads_if(n >= kParallelElementwise), [=](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) y[i] = a[i] + b[i];
    });
}

// ---- The gated activation tanh(a) sigmoid(b) ---------------------------------------------------
//
// x = [a, b] split in halves along one axis (a gated PixelCNN's or WaveNet's gate), seen as
// (outer, 2, inner): row r holds a's run x[r, 0, :] and b's run x[r, 1, :]; y is (outer, inner).
// One pass over x where the separate activations and the product took five over halves that
// are not contiguous. The rows' vectors are split between threads as one range; a row's last,
// partial vector goes through the same vector code on masked loads.

// body(row, at, n): the n <= L elements [at, at + n) of row `row`.
template <class T, class Body>
void for_row_vectors(int64_t outer, int64_t inner, Body body) {
    constexpr int L = Simd<T>::lanes;
    const int64_t per_row = (inner + L - 1) / L, vectors = outer * per_row;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(vectors, threads_if(outer * inner >= kParallelElementwise), [=](int64_t begin, int64_t end, int) {
        int64_t row = begin / per_row, at = begin % per_row * L;
        for (int64_t v = begin; v < end; ++v) {
            body(row, at, int(std::min<int64_t>(L, inner - at)));
            if ((at += L) >= inner) at = 0, ++row;
        }
    });
}

template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V load_some(const T* p, int n) {
    return n == Simd<T>::lanes ? Simd<T>::load(p) : load_first<T>(p, n);
}

template <class T>
static inline __attribute__((always_inline)) void store_some(T* p, typename Simd<T>::V v, int n) {
    if (n == Simd<T>::lanes) Simd<T>::store(p, v);
    else store_first<T>(p, v, n);
}

template <class T>
void gated_tanh(int64_t outer, int64_t inner, const T* x, T* y) {
    for_row_vectors<T>(outer, inner, [=](int64_t row, int64_t at, int n) {
        const T* a = x + row * 2 * inner + at;
        store_some<T>(y + row * inner + at, Tanh<T>{}(load_some<T>(a, n)) * Sigmoid<T>{}(load_some<T>(a + inner, n)), n);
    });
}

// grad_a = grad_y s (1 - t^2), grad_b = grad_y t s (1 - s), with t = tanh(a), s = sigmoid(b)
// computed again from x.
template <class T>
void gated_tanh_backward(int64_t outer, int64_t inner, const T* grad_y, const T* x, T* grad_x) {
    for_row_vectors<T>(outer, inner, [=](int64_t row, int64_t at, int n) {
        const int64_t a_at = row * 2 * inner + at;
        const auto g = load_some<T>(grad_y + row * inner + at, n);
        const auto t = Tanh<T>{}(load_some<T>(x + a_at, n)), s = Sigmoid<T>{}(load_some<T>(x + a_at + inner, n));
        store_some<T>(grad_x + a_at, g * s * (T(1) - t * t), n);
        store_some<T>(grad_x + a_at + inner, g * t * (s * (T(1) - s)), n);
    });
}

// ---- PReLU: a learned slope per channel ------------------------------------------------------
//
// x is (N, C, inner) (inner: the product of the axes after the channel); w has C slopes, or
// one (w_size 1) shared by every channel. Rows (n, c) are independent: they are split between
// threads whole, and the slope's gradient sums each row into its own slot before the rows of a
// channel are added in order, so the sum does not depend on the number of threads.

template <class T>
void prelu(int64_t N, int64_t C, int64_t inner, const T* x, const T* w, int64_t w_size, T* y) {
    FlushDenormals ftz;
    parallel_for(N * C, threads_if(N * C * inner >= kParallelElementwise), [&](int64_t row, int) {
        const T slope = w[w_size == 1 ? 0 : row % C];
        const T* xr = x + row * inner;
        T* yr = y + row * inner;
#pragma omp simd
        for (int64_t i = 0; i < inner; ++i) yr[i] = xr[i] > T(0) ? xr[i] : xr[i] * slope;
    });
}

template <class T>
void prelu_backward(int64_t N, int64_t C, int64_t inner, const T* grad_y, const T* x,
                    const T* w, int64_t w_size, T* grad_x, T* grad_w) {
    std::vector<double> row_sums(size_t(N * C));
    FlushDenormals ftz;
    parallel_for(N * C, threads_if(N * C * inner >= kParallelElementwise), [&](int64_t row, int) {
        const T slope = w[w_size == 1 ? 0 : row % C];
        const T* xr = x + row * inner;
        const T* gr = grad_y + row * inner;
        T* gxr = grad_x + row * inner;
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < inner; ++i) {
            const bool positive = xr[i] > T(0);
            gxr[i] = positive ? gr[i] : gr[i] * slope;
            sum += positive ? T(0) : gr[i] * xr[i];
        }
        row_sums[size_t(row)] = sum;
    });
    std::vector<double> totals(size_t(w_size), 0.0);
    for (int64_t row = 0; row < N * C; ++row)
        totals[size_t(w_size == 1 ? 0 : row % C)] += row_sums[size_t(row)];
    for (int64_t k = 0; k < w_size; ++k) grad_w[k] = T(totals[size_t(k)]);
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
