// Optimiser steps over every parameter of a model in one pass: the tensors (parameter,
// gradient, state buffers) arrive as arrays of pointers, are cut into chunks, and one parallel
// region runs over the list of (tensor, chunk) work items, so a model of many small tensors
// pays one fork/join per step, not one per tensor.
//
// Each element's update is the sequence of roundings the NumPy reference makes (every scalar
// rounded to T first, then one operation at a time; no fused multiply-adds, hence the
// fp-contract pragma), so the results are bit for bit the reference's, except that subnormal
// values are flushed to zero as in every kernel here (common/denormals.h).
#pragma once

#include "common/denormals.h"
#include "common/prelude.h"

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

namespace pyconv {
namespace PYCONV_ISA {

// Elements per work item, and the total from which the items are split between threads.
constexpr int64_t kOptimizerChunk = int64_t(1) << 14;
constexpr int64_t kParallelOptimizer = int64_t(1) << 15;

struct TensorChunk {
    int64_t tensor, begin, end;
};

// Runs update(tensor, begin, end) over every chunk of every tensor.
template <class Update>
inline void for_tensor_chunks(int64_t count, const int64_t* sizes, Update&& update) {
    std::vector<TensorChunk> work;
    int64_t total = 0;
    for (int64_t k = 0; k < count; ++k) {
        for (int64_t b = 0; b < sizes[k]; b += kOptimizerChunk)
            work.push_back({k, b, std::min(sizes[k], b + kOptimizerChunk)});
        total += sizes[k];
    }
    const int64_t items = int64_t(work.size());
    FlushDenormals ftz;
    parallel_tasks(items, threads_if(items > 1 && total >= kParallelOptimizer),
                   [&](int64_t w, int) { update(work[w].tensor, work[w].begin, work[w].end); });
}

// SGD: g = grad + wd p; with momentum, buf = momentum buf + (1 - dampening) g (buf = g on the
// first step), g = g + momentum buf (Nesterov) or buf; p -= lr g. bufs is nullptr without
// momentum.
template <class T>
void sgd_step(int64_t count, const int64_t* sizes, T* const* params, const T* const* grads,
              T* const* bufs, double lr, double momentum, double dampening, bool nesterov,
              double weight_decay, bool first_step) {
    const T lr_t = T(lr), mom = T(momentum), keep = T(1 - dampening), wd = T(weight_decay);
    const bool decay = weight_decay != 0, damp = dampening != 0, with_momentum = momentum != 0;
    for_tensor_chunks(count, sizes, [&](int64_t k, int64_t b, int64_t e) {
        T* p = params[k];
        const T* grad = grads[k];
        T* buf = with_momentum ? bufs[k] : nullptr;
#pragma omp simd
        for (int64_t i = b; i < e; ++i) {
            T g = grad[i];
            if (decay) g = g + wd * p[i];
            if (with_momentum) {
                T v;
                if (first_step) v = g;
                else if (damp) v = buf[i] * mom + keep * g;
                else v = buf[i] * mom + g;
                buf[i] = v;
                g = nesterov ? g + mom * v : v;
            }
            p[i] = p[i] - lr_t * g;
        }
    });
}

// Adam step `step` (from 1): m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g g,
// p -= lr / (1 - b1^step) m / (sqrt(v) / sqrt(1 - b2^step) + eps); weight decay adds wd p to g,
// or with decoupled_weight_decay (AdamW) scales p by 1 - lr wd first.
template <class T>
void adam_step(int64_t count, const int64_t* sizes, T* const* params, const T* const* grads,
               T* const* exp_avgs, T* const* exp_avg_sqs, int64_t step, double lr, double beta1,
               double beta2, double eps, double weight_decay, bool decoupled_weight_decay) {
    const T b1 = T(beta1), b2 = T(beta2), one_minus_b1 = T(1 - beta1), one_minus_b2 = T(1 - beta2);
    const T step_size = T(lr / (1 - std::pow(beta1, double(step))));
    const T bias2_sqrt = T(std::sqrt(1 - std::pow(beta2, double(step))));
    const T eps_t = T(eps), wd = T(weight_decay), shrink = T(1 - lr * weight_decay);
    const bool coupled = weight_decay != 0 && !decoupled_weight_decay;
    const bool decoupled = weight_decay != 0 && decoupled_weight_decay;
    for_tensor_chunks(count, sizes, [&](int64_t k, int64_t b, int64_t e) {
        T* p = params[k];
        const T* grad = grads[k];
        T* m = exp_avgs[k];
        T* v = exp_avg_sqs[k];
#pragma omp simd
        for (int64_t i = b; i < e; ++i) {
            T pi = p[i], g = grad[i];
            if (decoupled) pi = pi * shrink;
            if (coupled) g = g + wd * pi;
            const T mi = m[i] * b1 + one_minus_b1 * g;
            const T vi = v[i] * b2 + (one_minus_b2 * g) * g;
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - (step_size * mi) / (std::sqrt(vi) / bias2_sqrt + eps_t);
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv

#pragma GCC pop_options
