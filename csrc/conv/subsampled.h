// Strided 1x1 convolutions without padding: output (ho, wo) reads only input pixel
// (ho*sh, wo*sw), so each pass is the stride-1 1x1 convolution of the subsampled input
// xs[n, c, ho, wo] = x[n, c, ho*sh, wo*sw] (a plain GEMM per image, w (K x C) times
// xs (C x Ho Wo), which the phase grid runs on xs in place). The forward and the weight
// gradient read a gathered copy of xs; the input gradient computes dxs and scatters it into
// a zeroed grad_x. The general kernels instead build the whole sh*sw-phase grid of x (or
// gather B through im2col) to use one phase of it.
#pragma once

#include "common/prelude.h"
#include "common/scratch.h"

namespace pyconv {
namespace PYCONV_ISA {

inline bool subsampled_applies(const ConvShape& g) {
    return g.R == 1 && g.S == 1 && g.ph == 0 && g.pw == 0 && g.groups == 1 && (g.sh > 1 || g.sw > 1);
}

// The stride-1 convolution on xs (dilation means nothing for a 1x1 kernel).
inline ConvShape subsampled_shape(const ConvShape& g) {
    ConvShape s = g;
    s.H = g.Ho, s.W = g.Wo, s.sh = s.sw = 1, s.dh = s.dw = 1;
    return s;
}

template <class T>
Scratch<T> subsample(const ConvShape& g, const T* x) {
    Scratch<T> xs = scratch<T>(checked_mul(g.N, g.C, g.Ho * g.Wo));
    T* out = xs.get();
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t p = 0; p < g.N * g.C; ++p)
        for (int64_t ho = 0; ho < g.Ho; ++ho) {
            const T* row = x + (p * g.H + ho * g.sh) * g.W;
            T* d = out + (p * g.Ho + ho) * g.Wo;
            for (int64_t wo = 0; wo < g.Wo; ++wo) d[wo] = row[wo * g.sw];
        }
    return xs;
}

// grad_x = 0 except at the read pixels, where it is dxs.
template <class T>
void scatter_subsampled(const ConvShape& g, const T* dxs, T* dx) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t p = 0; p < g.N * g.C; ++p) {
        T* plane = dx + p * g.H * g.W;
        std::fill(plane, plane + g.H * g.W, T(0));
        for (int64_t ho = 0; ho < g.Ho; ++ho) {
            const T* src = dxs + (p * g.Ho + ho) * g.Wo;
            T* row = plane + ho * g.sh * g.W;
            for (int64_t wo = 0; wo < g.Wo; ++wo) row[wo * g.sw] = src[wo];
        }
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
