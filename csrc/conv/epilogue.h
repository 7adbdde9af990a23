// What a forward convolution may do to its outputs after the bias, before they are stored (an
// ONNX graph's Conv -> Add -> Relu chain): add a residual of y's shape, then clamp at zero with
// relu's rules (elementwise/activation.h). The result has the bits of the separate Add and
// Relu kernels run over y afterwards; stored from registers it saves their passes over y.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/simd.h"
#include "elementwise/activation.h"

namespace pyconv {
namespace PYCONV_ISA {

template <class T>
struct Epilogue {
    const T* residual = nullptr;  // laid out as y (NCHW), or none
    bool relu = false;
    bool any() const { return residual != nullptr || relu; }
};

// dst[i] = epilogue(src[i]) for i < n, where y_offset is dst's offset in y (the residual's
// element at the same place is added).
template <class T>
inline void store_with(const Epilogue<T>& ep, const T* src, int64_t n, T* dst, int64_t y_offset) {
    using S = Simd<T>;
    constexpr int L = S::lanes;
    const T* r = ep.residual ? ep.residual + y_offset : nullptr;
    auto finish = [&](typename S::V v, int64_t e) {
        if (r) v += S::load(r + e);
        return ep.relu ? Relu<T>{}(v) : v;
    };
    int64_t e = 0;
    for (; e + L <= n; e += L) S::store(dst + e, finish(S::load(src + e), e));
    // The tail (Winograd's runs on small images are a tile or two, 4-8 outputs) element by
    // element, with relu's rule: 0 where v < 0, which keeps -0 and NaN as the vector form does.
    for (; e < n; ++e) {
        const T v = r ? src[e] + r[e] : src[e];
        dst[e] = ep.relu && v < T(0) ? T(0) : v;
    }
}

template <class T>
struct AddResidual {
    inline __attribute__((always_inline)) typename Simd<T>::V operator()(typename Simd<T>::V a,
                                                                         typename Simd<T>::V b) const {
        return a + b;
    }
};

// y[n, c, :] = y[n, c, :] + bias[c] (bias: nullptr for none), then relu if asked, in place over
// y's `rows` = N x C planes of `plane` elements: a transposed convolution's bias and activation
// in one pass after its kernel (the NumPy broadcast add and a Relu pass took as long as a
// DCGAN generator's small layers at batch 1).
template <class T>
void channel_bias_relu(int64_t rows, int64_t channels, int64_t plane, const T* bias, bool relu, T* y) {
    using S = Simd<T>;
    constexpr int L = S::lanes;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    const bool split = checked_mul(rows, plane) >= kParallelElementwise;
    parallel_ranges(rows, threads_if(split), [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) {
            const typename S::V b = S::splat(bias ? bias[i % channels] : T(0));
            auto finish = [&](typename S::V v) { return relu ? Relu<T>{}(v + b) : v + b; };
            T* p = y + i * plane;
            int64_t e = 0;
            for (; e + L <= plane; e += L) S::store(p + e, finish(S::load(p + e)));
            if (e < plane) store_first<T>(p + e, finish(load_first<T>(p + e, int(plane - e))), int(plane - e));
        }
    });
}

// The epilogue over the n elements of y in place, for the forwards that store without it.
template <class T>
void apply_epilogue(const Epilogue<T>& ep, int64_t n, T* y) {
    if (ep.residual == nullptr && ep.relu) return relu(n, y, y);
    if (ep.residual != nullptr && ep.relu) return add_relu(n, y, ep.residual, y);
    if (ep.residual != nullptr) map_vectors<T>(n, y, AddResidual<T>{}, y, ep.residual);
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
