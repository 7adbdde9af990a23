// The bias gradient: grad_b[k] = the sum of grad_y over images and the plane of channel k.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"

namespace pyconv {
namespace PYCONV_ISA {

template <class T>
void conv2d_grad_bias(int64_t N, int64_t K, int64_t plane, const T* dy, T* db) {
    const int threads = std::max<int64_t>(1, std::min<int64_t>(num_threads(), K));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(K, threads, [&](int64_t k, int) {
        double acc = 0.0;  // float32 sums of ~10^5 terms lose digits; double costs nothing here
        for (int64_t n = 0; n < N; ++n) {
            const T* p = dy + (n * K + k) * plane;
#pragma omp simd reduction(+ : acc)
            for (int64_t i = 0; i < plane; ++i) acc += double(p[i]);
        }
        db[k] = T(acc);
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
