// Convolutions whose kernel window covers the whole (padded) input: one output pixel per
// image, so every pass is a plain matrix product over the flattened window X[n, (c,r,s)]:
//   forward      y[n, k]        = sum_{(c,r,s)} X[n, (c,r,s)] w[k, (c,r,s)]
//   grad weight  dw[k, (c,r,s)] = sum_n dy[n, k] X[n, (c,r,s)]
//   grad input   dX[n, (c,r,s)] = sum_k dy[n, k] w[k, (c,r,s)], then the padding cropped off
// The transpose convolution from a 1x1 input (a generator's first layer) is the grad input
// pass; a classifier's last convolution over a whole feature map is the forward. The products
// run through dense/matmul.h: one image (a generator sampling one z) makes them matrix-vector
// products, which the packed GEMM would pad to whole register tiles (a 16 -> 64 channel 4x4
// generator layer at batch 1: 8 us, most of it packing w).
#pragma once

#include "common/prelude.h"
#include "common/scratch.h"
#include "conv/padding.h"
#include "dense/matmul.h"

namespace pyconv {
namespace PYCONV_ISA {

// In every pass X is PaddedInput's x: x itself when nothing is padded, else a zero-padded copy
// whose planes are exactly R x S, so either way an N x (C R S) row-major matrix.

template <class T>
void conv2d_forward_whole_window(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    const int64_t taps_n = g.C * g.R * g.S;
    const PaddedInput<T> X(g, x);
    // y (N x K) = X (N x CRS) w^T, w stored K x CRS.
    matmul<T>(g.N, g.K, taps_n, X.data, false, w, true, y, false);
    if (bias)
        for (int64_t n = 0; n < g.N; ++n)
            for (int64_t k = 0; k < g.K; ++k) y[n * g.K + k] += bias[k];
}

template <class T>
void conv2d_grad_weight_whole_window(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const int64_t taps_n = g.C * g.R * g.S;
    const PaddedInput<T> X(g, x);
    // dw (K x CRS) = dy^T (K x N) X (N x CRS), dy stored N x K.
    matmul<T>(g.K, taps_n, g.N, dy, true, X.data, false, dw, false);
}

template <class T>
void conv2d_grad_input_whole_window(const ConvShape& g, const T* dy, const T* w, T* dx) {
    const int64_t taps_n = g.C * g.R * g.S;
    const bool padded = g.ph > 0 || g.pw > 0;
    Scratch<T> window = padded ? scratch<T>(g.N * taps_n) : Scratch<T>();
    T* out = padded ? window.get() : dx;
    // dX (N x CRS) = dy (N x K) w (K x CRS).
    matmul<T>(g.N, taps_n, g.K, dy, false, w, false, out, false);
    if (!padded) return;
    parallel_for(g.N * g.C, num_threads(), [&](int64_t p, int) {
        for (int64_t h = 0; h < g.H; ++h) {
            const T* src = out + (p * g.R + h + g.ph) * g.S + g.pw;
            std::copy(src, src + g.W, dx + (p * g.H + h) * g.W);
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
