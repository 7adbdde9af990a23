// Elementwise activations and their gradients, each one pass over contiguous arrays.
//
// Memory-bound: a pass reads and writes each element once, so the loops only need to
// vectorise (the selects below compile to masked blends) and to split long arrays between
// threads. Short arrays stay on the calling thread, where waking the pool would cost more
// than the pass itself.
#pragma once

#include "common/denormals.h"
#include "common/prelude.h"

namespace pyconv {
namespace PYCONV_ISA {

// Elements from which a pass is split between threads (128 KiB of float32).
constexpr int64_t kParallelElementwise = int64_t(1) << 15;

// y = x where x > 0, else negative_slope * x (ReLU for a slope of 0). NaN stays NaN.
template <class T>
void leaky_relu(int64_t n, const T* x, T negative_slope, T* y) {
    FlushDenormals ftz;  // on every thread of the team (common/denormals.h)
#pragma omp parallel for simd num_threads(num_threads()) schedule(static) firstprivate(ftz) \
    if (n >= kParallelElementwise)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : x[i] * negative_slope;
}

// grad_x = grad_y where x > 0, else negative_slope * grad_y.
template <class T>
void leaky_relu_backward(int64_t n, const T* grad_y, const T* x, T negative_slope, T* grad_x) {
    FlushDenormals ftz;  // on every thread of the team (common/denormals.h)
#pragma omp parallel for simd num_threads(num_threads()) schedule(static) firstprivate(ftz) \
    if (n >= kParallelElementwise)
    for (int64_t i = 0; i < n; ++i) grad_x[i] = x[i] > T(0) ? grad_y[i] : grad_y[i] * negative_slope;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
