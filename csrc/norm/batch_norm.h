// Batch normalisation with batch statistics (training mode), fused: each channel is one task
// that computes its statistics and then normalises (forward) or reduces and then writes the
// input gradient (backward), so a channel's data is read from DRAM once and its later passes
// hit the cache. Data is (N, C, L): every axis after the channel axis is flattened into L.
//
// Sums run over the L contiguous elements of one (n, c) row in T (vectorised by `omp simd`),
// and the row sums are added in double: n*L can be large, and the variance is taken as the
// mean squared deviation from the mean (two passes), never as E[x^2] - E[x]^2.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"

namespace pyconv {
namespace PYCONV_ISA {

// sum over l < L of f(l), in T within the row.
template <class T, class F>
static inline T row_sum(int64_t L, F&& f) {
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t l = 0; l < L; ++l) s += f(l);
    return s;
}

// y = (x - mean) * invstd * w + b per channel (w, b may be nullptr: 1 and 0); mean and var
// (biased: divided by N*L) of each channel out. Needs N*L >= 1.
template <class T>
void batch_norm_forward(int64_t N, int64_t C, int64_t L, const T* x, const T* w, const T* b,
                        double eps, T* y, T* mean, T* var) {
    const double count = double(N) * double(L);
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(C, num_threads(), [&](int64_t c, int) {
        double sum = 0;
        for (int64_t n = 0; n < N; ++n) {
            const T* xr = x + (n * C + c) * L;
            sum += row_sum<T>(L, [&](int64_t l) { return xr[l]; });
        }
        const T m = T(sum / count);
        double squares = 0;
        for (int64_t n = 0; n < N; ++n) {
            const T* xr = x + (n * C + c) * L;
            squares += row_sum<T>(L, [&](int64_t l) { return (xr[l] - m) * (xr[l] - m); });
        }
        const double v = squares / count;
        const double invstd = 1.0 / std::sqrt(v + eps);
        const T scale = T(invstd * (w ? double(w[c]) : 1.0));
        const T shift = T((b ? double(b[c]) : 0.0) - double(m) * invstd * (w ? double(w[c]) : 1.0));
        for (int64_t n = 0; n < N; ++n) {
            const T* xr = x + (n * C + c) * L;
            T* yr = y + (n * C + c) * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) yr[l] = xr[l] * scale + shift;
        }
        mean[c] = m;
        var[c] = T(v);
    });
}

// The gradients of batch_norm_forward (training: mean and var depend on x) given the mean and
// invstd = 1/sqrt(var + eps) it used: grad_b = sum g, grad_w = sum g*xhat and
// grad_x = w*invstd*(g - (grad_b + xhat*grad_w)/(N*L)), xhat = (x - mean)*invstd.
template <class T>
void batch_norm_backward(int64_t N, int64_t C, int64_t L, const T* grad_y, const T* x,
                         const T* mean, const T* invstd, const T* w, T* grad_x, T* grad_w,
                         T* grad_b) {
    const double count = double(N) * double(L);
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(C, num_threads(), [&](int64_t c, int) {
        const T m = mean[c], is = invstd[c];
        double sum_g = 0, sum_gxhat = 0;
        for (int64_t n = 0; n < N; ++n) {
            const T* gr = grad_y + (n * C + c) * L;
            const T* xr = x + (n * C + c) * L;
            sum_g += row_sum<T>(L, [&](int64_t l) { return gr[l]; });
            sum_gxhat += row_sum<T>(L, [&](int64_t l) { return gr[l] * (xr[l] - m); });
        }
        sum_gxhat *= double(is);
        grad_b[c] = T(sum_g);
        grad_w[c] = T(sum_gxhat);
        const T scale = T(double(is) * (w ? double(w[c]) : 1.0));
        const T mean_g = T(sum_g / count), mean_gxhat = T(sum_gxhat / count);
        for (int64_t n = 0; n < N; ++n) {
            const T* gr = grad_y + (n * C + c) * L;
            const T* xr = x + (n * C + c) * L;
            T* gx = grad_x + (n * C + c) * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l)
                gx[l] = scale * (gr[l] - mean_g - (xr[l] - m) * is * mean_gxhat);
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
