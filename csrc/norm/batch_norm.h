// Batch normalisation with batch statistics (training mode), fused: each block of channels is
// one task that computes its statistics and then normalises (forward) or reduces and then
// writes the input gradient (backward), so its data is read from DRAM once and its later
// passes hit the cache. An activation after the normalisation (ReLU, LeakyReLU) is applied as
// y is stored, and its gradient taken as grad_y is read. Data is (N, C, L): every axis after
// the channel axis is flattened into L.
//
// A block's passes run image by image over its channels, so each pass reads runs of
// (channels x L) consecutive elements: with short rows (a 7x7 plane is 196 bytes) channel by
// channel would read N rows a plane apart, each a few cache lines, which the hardware
// prefetchers do not follow. Blocks take as many channels as keep their data in L2 between
// the passes (one channel at a time where a channel alone is that large).
//
// Sums: each lane of a vector sums its elements of one (n, c) row in T, and the row's vector
// is added lane by lane to the channel's sums in double, which are added up once per channel:
// n*L can be large, and the variance is taken as the mean squared deviation from the mean (two
// passes), never as E[x^2] - E[x]^2. (A scalar total per row cost a chain of 16 dependent
// additions per row: with 7x7 planes more than the row's own work.) Every channel's
// arithmetic is the same for any blocking and thread count.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/simd.h"
#include "elementwise/activation.h"

namespace pyconv {
namespace PYCONV_ISA {

// The activation A on vectors, as the elementwise kernels compute it (elementwise/activation.h:
// leaky_relu's select, Relu and ReluBackward on the bits), so that the fused result has the
// bits of the separate passes.
template <NormActivation A, class T>
struct NormAct {
    using V = typename Simd<T>::V;
    static inline __attribute__((always_inline)) V forward(V v, V slope) {
        if constexpr (A == NormActivation::none) return v;
        else if constexpr (A == NormActivation::leaky_relu) return v > T(0) ? v : v * slope;
        else return Relu<T>{}(v);
    }
    // The gradient g through A at its output y (for a slope >= 0, y > 0 exactly where the
    // input is).
    static inline __attribute__((always_inline)) V backward(V g, V y, V slope) {
        if constexpr (A == NormActivation::none) return g;
        else if constexpr (A == NormActivation::leaky_relu) return y > T(0) ? g : g * slope;
        else return ReluBackward<T>{}(g, y);
    }
};

// Where a row's vector reads: a whole vector at l, or the first n < lanes elements at l (zeros
// in the other lanes).
template <class T>
struct RowPart {
    int64_t l;
    int n;
    inline __attribute__((always_inline)) typename Simd<T>::V load(const T* row) const {
        return n == Simd<T>::lanes ? Simd<T>::load(row + l) : load_first<T>(row + l, n);
    }
    inline __attribute__((always_inline)) void store(T* row, typename Simd<T>::V v) const {
        if (n == Simd<T>::lanes) Simd<T>::store(row + l, v);
        else store_first<T>(row + l, v, n);
    }
    // v with the lanes past the row cleared.
    inline __attribute__((always_inline)) typename Simd<T>::V kept(typename Simd<T>::V v) const {
        using S = Simd<T>;
        return n == S::lanes ? v : S::iota() < S::splat_int(typename S::Int(n)) ? v : S::zero();
    }
};

// Channels' running sums: one double per lane of T's vectors (Simd<T>::lanes per channel, in a
// plain array: std::vector does not align elements of vector type).
template <class T>
struct LaneSums {
    using D = typename Simd<double>::V;
    static constexpr int lanes = Simd<T>::lanes, halves = lanes / Simd<double>::lanes;
    std::vector<double> sums;
    explicit LaneSums(int64_t channels) : sums(size_t(channels * lanes), 0.0) {}
    // Adds a row's vector of sums to channel i's, lane by lane.
    inline __attribute__((always_inline)) void add(int64_t i, typename Simd<T>::V row) {
        alignas(64) T parts[lanes];
        Simd<T>::store(parts, row);
        double* at = sums.data() + i * lanes;
        for (int h = 0; h < halves; ++h) {
            D sum;
            std::memcpy(&sum, at + h * Simd<double>::lanes, sizeof sum);
            sum += load_as_double(parts + h * Simd<double>::lanes);
            std::memcpy(at + h * Simd<double>::lanes, &sum, sizeof sum);
        }
    }
    double total(int64_t i) const {
        double t = 0;
        for (int j = 0; j < lanes; ++j) t += sums[size_t(i * lanes + j)];
        return t;
    }
};

// out(part) for every vector of a row of L elements.
template <class T, class F>
static inline __attribute__((always_inline)) void each_part(int64_t L, F&& out) {
    using S = Simd<T>;
    int64_t l = 0;
    for (; l + S::lanes <= L; l += S::lanes) out(RowPart<T>{l, S::lanes});
    if (l < L) out(RowPart<T>{l, int(L - l)});
}

// Channels per task: a block's (N, L) planes of one array within kBatchNormBlockBytes, at
// most a quarter of a thread's share of the channels (so that a thread that loses its core
// leaves most of its share to the others).
constexpr double kBatchNormBlockBytes = 192 * 1024;
template <class T>
inline int64_t batch_norm_block(int64_t N, int64_t C, int64_t L) {
    const double channel = double(N) * double(L) * double(sizeof(T));
    const int64_t fits = int64_t(kBatchNormBlockBytes / std::max(channel, 1.0));
    const int64_t share = (C + 4 * int64_t(num_threads()) - 1) / (4 * int64_t(num_threads()));
    return std::clamp<int64_t>(std::min(fits, share), 1, std::max<int64_t>(C, 1));
}

// y = act((x - mean) * invstd * w + b) per channel (w, b may be nullptr: 1 and 0); mean and
// var (biased: divided by N*L) of each channel out. Needs N*L >= 1.
template <NormActivation A, class T>
void batch_norm_forward_with(int64_t N, int64_t C, int64_t L, const T* x, const T* w, const T* b,
                             double eps, T slope, T* y, T* mean, T* var) {
    using S = Simd<T>;
    using V = typename S::V;
    const double count = double(N) * double(L);
    const int64_t block = batch_norm_block<T>(N, C, L), blocks = (C + block - 1) / block;
    const V slopes = S::splat(slope);
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(blocks, num_threads(), [&](int64_t task, int) {
        const int64_t c0 = task * block, c1 = std::min(C, c0 + block);
        LaneSums<T> sums(c1 - c0), squares(c1 - c0);
        for (int64_t n = 0; n < N; ++n)
            for (int64_t c = c0; c < c1; ++c) {
                const T* xr = x + (n * C + c) * L;
                V acc = S::zero();
                each_part<T>(L, [&](RowPart<T> p) { acc += p.load(xr); });  // zeros past the row
                sums.add(c - c0, acc);
            }
        for (int64_t c = c0; c < c1; ++c) mean[c] = T(sums.total(c - c0) / count);
        for (int64_t n = 0; n < N; ++n)
            for (int64_t c = c0; c < c1; ++c) {
                const T* xr = x + (n * C + c) * L;
                const V m = S::splat(mean[c]);
                V acc = S::zero();
                each_part<T>(L, [&](RowPart<T> p) {
                    const V d = p.kept(p.load(xr) - m);  // past the row x reads 0, and 0 - mean is not 0
                    acc += d * d;
                });
                squares.add(c - c0, acc);
            }
        std::vector<T> scale(size_t(c1 - c0)), shift(size_t(c1 - c0));
        for (int64_t c = c0; c < c1; ++c) {
            const double v = squares.total(c - c0) / count;
            const double invstd = 1.0 / std::sqrt(v + eps);
            scale[size_t(c - c0)] = T(invstd * (w ? double(w[c]) : 1.0));
            shift[size_t(c - c0)] = T((b ? double(b[c]) : 0.0) - double(mean[c]) * invstd * (w ? double(w[c]) : 1.0));
            var[c] = T(v);
        }
        for (int64_t n = 0; n < N; ++n)
            for (int64_t c = c0; c < c1; ++c) {
                const T* xr = x + (n * C + c) * L;
                T* yr = y + (n * C + c) * L;
                const V sc = S::splat(scale[size_t(c - c0)]), sh = S::splat(shift[size_t(c - c0)]);
                each_part<T>(L, [&](RowPart<T> p) { p.store(yr, NormAct<A, T>::forward(p.load(xr) * sc + sh, slopes)); });
            }
    });
}

template <class T>
void batch_norm_forward(int64_t N, int64_t C, int64_t L, const T* x, const T* w, const T* b,
                        double eps, NormActivation act, T slope, T* y, T* mean, T* var) {
    switch (act) {
        case NormActivation::none:
            return batch_norm_forward_with<NormActivation::none>(N, C, L, x, w, b, eps, slope, y, mean, var);
        case NormActivation::relu:
            return batch_norm_forward_with<NormActivation::relu>(N, C, L, x, w, b, eps, slope, y, mean, var);
        case NormActivation::leaky_relu:
            return batch_norm_forward_with<NormActivation::leaky_relu>(N, C, L, x, w, b, eps, slope, y, mean, var);
    }
}

// The gradients of batch_norm_forward (training: mean and var depend on x) given the mean and
// invstd = 1/sqrt(var + eps) it used: grad_b = sum g, grad_w = sum g*xhat and
// grad_x = w*invstd*(g - (grad_b + xhat*grad_w)/(N*L)), xhat = (x - mean)*invstd, where g is
// grad_y through the activation A (taken from the forward's output y), formed as it is read.
template <NormActivation A, class T>
void batch_norm_backward_with(int64_t N, int64_t C, int64_t L, const T* grad_y, const T* x,
                              const T* mean, const T* invstd, const T* w, T slope, const T* y,
                              T* grad_x, T* grad_w, T* grad_b) {
    using S = Simd<T>;
    using V = typename S::V;
    const double count = double(N) * double(L);
    const int64_t block = batch_norm_block<T>(N, C, L), blocks = (C + block - 1) / block;
    const V slopes = S::splat(slope);
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(blocks, num_threads(), [&](int64_t task, int) {
        const int64_t c0 = task * block, c1 = std::min(C, c0 + block);
        LaneSums<T> sum_g(c1 - c0), sum_gxhat(c1 - c0);
        for (int64_t n = 0; n < N; ++n)
            for (int64_t c = c0; c < c1; ++c) {
                const int64_t row = (n * C + c) * L;
                const T *gr = grad_y + row, *xr = x + row, *yr = y + row;
                const V m = S::splat(mean[c]);
                V acc_g = S::zero(), acc_gxhat = S::zero();
                each_part<T>(L, [&](RowPart<T> p) {  // g reads 0 past the row, and so adds 0
                    const V g = NormAct<A, T>::backward(p.load(gr), A == NormActivation::none ? V{} : p.load(yr), slopes);
                    acc_g += g;
                    acc_gxhat += g * (p.load(xr) - m);
                });
                sum_g.add(c - c0, acc_g);
                sum_gxhat.add(c - c0, acc_gxhat);
            }
        std::vector<T> scale(size_t(c1 - c0)), mean_g(size_t(c1 - c0)), mean_gxhat(size_t(c1 - c0));
        for (int64_t c = c0; c < c1; ++c) {
            const size_t i = size_t(c - c0);
            const T is = invstd[c];
            const double sg = sum_g.total(c - c0), sgx = sum_gxhat.total(c - c0) * double(is);
            grad_b[c] = T(sg);
            grad_w[c] = T(sgx);
            scale[i] = T(double(is) * (w ? double(w[c]) : 1.0));
            mean_g[i] = T(sg / count);
            mean_gxhat[i] = T(sgx / count);
        }
        for (int64_t n = 0; n < N; ++n)
            for (int64_t c = c0; c < c1; ++c) {
                const size_t i = size_t(c - c0);
                const int64_t row = (n * C + c) * L;
                const T *gr = grad_y + row, *xr = x + row, *yr = y + row;
                T* gx = grad_x + row;
                const V m = S::splat(mean[c]), is = S::splat(invstd[c]), sc = S::splat(scale[i]);
                const V mg = S::splat(mean_g[i]), mgx = S::splat(mean_gxhat[i]);
                each_part<T>(L, [&](RowPart<T> p) {
                    const V g = NormAct<A, T>::backward(p.load(gr), A == NormActivation::none ? V{} : p.load(yr), slopes);
                    p.store(gx, sc * (g - mg - (p.load(xr) - m) * is * mgx));
                });
            }
    });
}

template <class T>
void batch_norm_backward(int64_t N, int64_t C, int64_t L, const T* grad_y, const T* x,
                         const T* mean, const T* invstd, const T* w, NormActivation act, T slope,
                         const T* y, T* grad_x, T* grad_w, T* grad_b) {
    switch (act) {
        case NormActivation::none:  // y is not read
            return batch_norm_backward_with<NormActivation::none>(N, C, L, grad_y, x, mean, invstd, w, slope, grad_y,
                                                                  grad_x, grad_w, grad_b);
        case NormActivation::relu:
            return batch_norm_backward_with<NormActivation::relu>(N, C, L, grad_y, x, mean, invstd, w, slope, y,
                                                                  grad_x, grad_w, grad_b);
        case NormActivation::leaky_relu:
            return batch_norm_backward_with<NormActivation::leaky_relu>(N, C, L, grad_y, x, mean, invstd, w, slope, y,
                                                                        grad_x, grad_w, grad_b);
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
