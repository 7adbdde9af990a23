// Winograd convolution F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016) for 3x3 kernels with stride 1, dilation 1 and one group, any padding.
// Everything below is written for a transform set F (winograd::F4x3, F4x2: 4x4 output tiles
// from alpha x alpha windows, alpha^2 positions); F(4x4, 2x2) serves the 4x4 stride-2
// convolutions split into their stride phases (conv/winograd_phases.h). The description
// below uses F(4x4, 3x3)'s sizes.
//
// Each 4x4 tile of the output is computed from the 6x6 tile of (zero-padded) input under it:
//   Y = A^T [ sum_c (G w[k,c] G^T) * (B^T d[c] B) ] A          (* elementwise, 6x6)
// so that per tile the 16 outputs cost 36 multiplications per channel pair instead of 144.
// The sum over channels of the 36 elementwise products is 36 GEMMs, one per transform-domain
// position xi:
//   M[xi] (K x tiles) = U[xi] (K x C) V[xi] (C x tiles)
// U (the transformed filters) is computed once per call and packed as the GEMM's A; V is
// written by the input transform directly in the GEMM's packed B layout, so the GEMM reads it
// in place. Transforms run vectorised over tiles (one lane per tile).
//
// Two layouts, with the same arithmetic and so the same bits. Block by block: the tiles are
// processed in blocks of a size fixed by the shape, small enough that a block's V and M stay in
// a core's cache; each block is transformed, multiplied and transformed back by one thread.
// By position (forward_by_position; few tiles, many channel pairs): all tiles are transformed,
// then each position's GEMM runs over all of them on one thread. Either way the result does
// not depend on the number of threads. Past 256 x 256 channel pairs, by position with U
// computed per block of output channels in T, never stored (multiply_filter_blocks): other bits.
//
// Accuracy: the transforms' coefficients (up to 8, and 1/6, 1/24) amplify rounding; the error
// against the exact result measured 4-50x the GEMM's, largest in the last row of each tile
// (README, "Convolution algorithms"; tests/test_winograd.py holds it to a bound). Stored
// filters are transformed in double precision and rounded once.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "conv/epilogue.h"
#include "gemm/driver.h"
#include "gemm/operands.h"

#include <optional>

namespace pyconv {
namespace PYCONV_ISA {

// Whether F(4x4, 3x3) computes this convolution (padding is free).
inline bool winograd_applies(const ConvShape& g) {
    return g.R == 3 && g.S == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.groups == 1;
}

namespace winograd {

constexpr int kTile = 4;        // outputs per tile side, in every transform set
constexpr int kMaxAlpha = 6;    // inputs per tile side, at most (F(4x4, 3x3): kTile + 3 - 1)

// B^T applied to 6 values (input transform, one dimension).
template <class V>
static inline __attribute__((always_inline)) void input_1d(const V* x, int step, V* o, int ostep) {
    const V x0 = x[0], x1 = x[step], x2 = x[2 * step], x3 = x[3 * step], x4 = x[4 * step], x5 = x[5 * step];
    const V s42 = x4 - x2, d31 = x3 - x1;
    o[0] = x0 * 4 - x2 * 5 + x4;
    o[ostep] = (x4 + x3) - (x1 + x2) * 4;
    o[2 * ostep] = (x4 - x3) + (x1 - x2) * 4;
    o[3 * ostep] = s42 + d31 * 2;
    o[4 * ostep] = s42 - d31 * 2;
    o[5 * ostep] = x1 * 4 - x3 * 5 + x5;
}

// A applied to the 4 values of an output gradient's tile row or column (the weight gradient's
// transform of dy, one dimension): the adjoint of output_1d. x[4 step], x[5 step] are read by
// nothing (they lie past the tile).
template <class V>
static inline __attribute__((always_inline)) void output_grad_1d(const V* x, int step, V* o, int ostep) {
    const V g0 = x[0], g1 = x[step], g2 = x[2 * step], g3 = x[3 * step];
    const V p02 = g0 + g2, p13 = g1 + g3, q02 = g0 + g2 * 4, q13 = g1 * 2 + g3 * 8;
    o[0] = g0;
    o[ostep] = p02 + p13;
    o[2 * ostep] = p02 - p13;
    o[3 * ostep] = q02 + q13;
    o[4 * ostep] = q02 - q13;
    o[5 * ostep] = g3;
}

// The 1-D transforms that transform_input applies to the rows, then the columns, of a 6x6
// window, as types.
template <class F>
struct InputTransform {   // B^T d B
    template <class V>
    static inline __attribute__((always_inline)) void apply(const V* x, int step, V* o, int ostep) {
        F::input(x, step, o, ostep);
    }
};
template <class F>
struct OutputGradTransform {   // A dy A^T, dy's 4x4 tile in the window's top-left corner
    template <class V>
    static inline __attribute__((always_inline)) void apply(const V* x, int step, V* o, int ostep) {
        F::output_grad(x, step, o, ostep);
    }
};

// G^T applied to 6 values (the weight gradient's transform back, one dimension): the adjoint
// of filter_1d, V a double or a vector of them.
template <class V>
static inline __attribute__((always_inline)) void filter_grad_1d(const V* m, int step, V* o, int ostep) {
    constexpr double sixth = 1.0 / 6, twelfth = 1.0 / 12, twenty_fourth = 1.0 / 24;
    const V m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step], m5 = m[5 * step];
    o[0] = m0 * 0.25 - (m1 + m2) * sixth + (m3 + m4) * twenty_fourth;
    o[ostep] = (m2 - m1) * sixth + (m3 - m4) * twelfth;
    o[2 * ostep] = (m3 + m4 - m1 - m2) * sixth + m5;
}

// A^T applied to 6 values (output transform, one dimension).
template <class V>
static inline __attribute__((always_inline)) void output_1d(const V* m, int step, V* o, int ostep) {
    const V m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step], m5 = m[5 * step];
    const V p12 = m1 + m2, d12 = m1 - m2, p34 = m3 + m4, d34 = m3 - m4;
    o[0] = m0 + p12 + p34;
    o[ostep] = d12 + d34 * 2;
    o[2 * ostep] = p12 + p34 * 4;
    o[3 * ostep] = d12 + d34 * 8 + m5;
}

// G applied to 3 values (the filter transform, one dimension), V a double or a vector of them.
// Products with the reciprocals, not divisions: their rounding in double precision is far
// below float32's.
template <class V>
static inline __attribute__((always_inline)) void filter_1d(V w0, V w1, V w2, V* o, int ostep) {
    constexpr double sixth = 1.0 / 6, twelfth = 1.0 / 12, twenty_fourth = 1.0 / 24;
    o[0] = w0 * 0.25;
    o[ostep] = -(w0 + w1 + w2) * sixth;
    o[2 * ostep] = -(w0 - w1 + w2) * sixth;
    o[3 * ostep] = w0 * twenty_fourth + w1 * twelfth + w2 * sixth;
    o[4 * ostep] = w0 * twenty_fourth - w1 * twelfth + w2 * sixth;
    o[5 * ostep] = w2;
}

// A transform set: F(m x m, R x R) with m = tile outputs per side, its alpha x alpha windows
// (alpha = m + R - 1) and points = alpha^2 transform-domain positions, and its 1-D transforms:
// input (B^T), output (A^T), filter (G, from R values, in double), filter_grad (G^T, to R
// values, in double) and output_grad (A, from an output tile's m values). Every function below
// takes one as F; the tile-by-tile layout of this file (transform_input, transform_output)
// handles tile = 4 only, the images-in-lanes layout of conv/winograd_phases.h any tile.
struct F4x3 {
    static constexpr int tile = 4, R = 3, alpha = 6, points = 36;
    template <class V>
    static inline __attribute__((always_inline)) void input(const V* x, int step, V* o, int ostep) {
        input_1d(x, step, o, ostep);
    }
    template <class V>
    static inline __attribute__((always_inline)) void output(const V* m, int step, V* o, int ostep) {
        output_1d(m, step, o, ostep);
    }
    template <class V>
    static inline __attribute__((always_inline)) void filter(const V* w, int step, V* o, int ostep) {
        filter_1d(w[0], w[step], w[2 * step], o, ostep);
    }
    template <class V>
    static inline __attribute__((always_inline)) void filter_grad(const V* m, int step, V* o, int ostep) {
        filter_grad_1d(m, step, o, ostep);
    }
    template <class V>
    static inline __attribute__((always_inline)) void output_grad(const V* x, int step, V* o, int ostep) {
        output_grad_1d(x, step, o, ostep);
    }
};

// F(4x4, 2x2), for the 2x2 stride-1 convolutions that 4x4 stride-2 ones become over their
// input's four stride phases (conv/winograd_phases.h). Toom-Cook on the points 0, 1, -1, 2 and
// infinity:
//   A^T = [1 1 1 1 0; 0 1 -1 2 0; 0 1 1 4 0; 0 1 -1 8 1]
//   G   = [1/2 0; -1/2 -1/2; -1/6 1/6; 1/6 1/3; 0 1]
//   B^T = [2 -1 -2 1 0; 0 -2 -1 1 0; 0 2 -3 1 0; 0 -1 0 1 0; 0 2 -1 -2 1]
// The points 0, 1, -1, 1/2 (coefficients up to 8/3 in G, down to 1/8 in A^T) gave a larger
// float32 error in the worst case: simulated on 5x5 windows of 256 channels (200 draws), the
// largest error relative to the output's largest magnitude was 7.5e-6 against 2.1e-5 (means
// both 2.1e-6); 0, 1, -1, -2 measured 8.4e-6.
struct F4x2 {
    static constexpr int tile = 4, R = 2, alpha = 5, points = 25;
    template <class V>
    static inline __attribute__((always_inline)) void input(const V* x, int step, V* o, int ostep) {
        const V x0 = x[0], x1 = x[step], x2 = x[2 * step], x3 = x[3 * step], x4 = x[4 * step];
        const V d31 = x3 - x1;
        o[0] = (x0 - x2) * 2 - x1 + x3;
        o[ostep] = d31 - x1 - x2;
        o[2 * ostep] = d31 + (x1 - x2) * 3;
        o[3 * ostep] = d31;
        o[4 * ostep] = (x1 - x3) * 2 - x2 + x4;
    }
    template <class V>
    static inline __attribute__((always_inline)) void output(const V* m, int step, V* o, int ostep) {
        const V m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step];
        const V p12 = m1 + m2, d12 = m1 - m2;
        o[0] = m0 + p12 + m3;
        o[ostep] = d12 + m3 * 2;
        o[2 * ostep] = p12 + m3 * 4;
        o[3 * ostep] = d12 + m3 * 8 + m4;
    }
    template <class V>
    static inline __attribute__((always_inline)) void filter(const V* w, int step, V* o, int ostep) {
        constexpr double sixth = 1.0 / 6, third = 1.0 / 3;
        const V w0 = w[0], w1 = w[step];
        o[0] = w0 * 0.5;
        o[ostep] = -(w0 + w1) * 0.5;
        o[2 * ostep] = (w1 - w0) * sixth;
        o[3 * ostep] = w0 * sixth + w1 * third;
        o[4 * ostep] = w1;
    }
    template <class V>
    static inline __attribute__((always_inline)) void filter_grad(const V* m, int step, V* o, int ostep) {
        constexpr double sixth = 1.0 / 6, third = 1.0 / 3;
        const V m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step];
        o[0] = (m0 - m1) * 0.5 + (m3 - m2) * sixth;
        o[ostep] = m4 - m1 * 0.5 + m2 * sixth + m3 * third;
    }
    template <class V>
    static inline __attribute__((always_inline)) void output_grad(const V* x, int step, V* o, int ostep) {
        const V g0 = x[0], g1 = x[step], g2 = x[2 * step], g3 = x[3 * step];
        const V p02 = g0 + g2, p13 = g1 + g3;
        o[0] = g0;
        o[ostep] = p02 + p13;
        o[2 * ostep] = p02 - p13;
        o[3 * ostep] = g0 + g1 * 2 + g2 * 4 + g3 * 8;
        o[4 * ostep] = g3;
    }
};

// F(7x7, 2x2), for the weight gradient of 4x4 stride-2 convolutions whose phase planes are 7
// (or 14) wide (conv/winograd_phases.h, by_7x7_tiles): one 8x8 window per 7x7 tile, 64
// products where F(4x4, 2x2) needs 100 for the four tiles that cover 7x7 (8x8). Toom-Cook on the points 0, 1, -1, 2, -2, 1/2, -1/2 and infinity
// (the points of the usual F(6x6, 3x3)):
//   A^T[i] = (0^i, 1, (-1)^i, 2^i, (-2)^i, 2^-i, (-2)^-i, [i = 6])        i < 7
//   G      = [1 0; -2/9 -2/9; -2/9 2/9; 1/90 1/45; 1/90 -1/45; 32/45 16/45; 32/45 -16/45; 0 1]
//   B^T    = [1 0 -21/4 0 21/4 0 -1 0; 0 1 1 -17/4 -17/4 1 1 0; 0 -1 1 17/4 -17/4 -1 1 0;
//             0 1/2 1/4 -5/2 -5/4 2 1 0; 0 -1/2 1/4 5/2 -5/4 -2 1 0; 0 2 4 -5/2 -5 1/2 1 0;
//             0 -2 4 5/2 -5 -1/2 1 0; 0 -1 0 21/4 0 -21/4 0 1]
// Its float32 error is about 5x F(4x4, 2x2)'s (simulated on 8x8 windows of 256 channels, 100
// draws: the largest error relative to the output's largest magnitude 3.4e-5 against 6.9e-6,
// means 1.2e-5 against 2.2e-6; F(4x4, 3x3) 1.9e-5 and 4.6e-6); scaling B^T's rows against G's
// moved it by less than a third. The coefficients of the data's transforms are exact in float32.
// It serves the weight gradient (input, output_grad, filter_grad) and the forward of 7x7
// outputs (input, filter, output; conv/winograd_phases.h, forward_by_7x7_tile), whose
// transformed filters are computed per position there (FiltersOnDemand): stored whole, as
// TransformedFilters, they made that forward slower than F(4x4, 2x2)'s.
struct F7x2 {
    static constexpr int tile = 7, R = 2, alpha = 8, points = 64;
    template <class V>
    static inline __attribute__((always_inline)) void input(const V* x, int step, V* o, int ostep) {
        const V x0 = x[0], x1 = x[step], x2 = x[2 * step], x3 = x[3 * step], x4 = x[4 * step], x5 = x[5 * step],
                x6 = x[6 * step], x7 = x[7 * step];
        const V a1 = x2 + x6 - x4 * 4.25f, b1 = x1 + x5 - x3 * 4.25f;
        const V a2 = x2 * 0.25f - x4 * 1.25f + x6, b2 = x1 * 0.5f - x3 * 2.5f + x5 * 2;
        const V a3 = x2 * 4 - x4 * 5 + x6, b3 = x1 * 2 - x3 * 2.5f + x5 * 0.5f;
        o[0] = x0 - x6 + (x4 - x2) * 5.25f;
        o[ostep] = a1 + b1;
        o[2 * ostep] = a1 - b1;
        o[3 * ostep] = a2 + b2;
        o[4 * ostep] = a2 - b2;
        o[5 * ostep] = a3 + b3;
        o[6 * ostep] = a3 - b3;
        o[7 * ostep] = x7 - x1 + (x3 - x5) * 5.25f;
    }
    // A^T applied to 8 values: the products at the points, back to the tile's 7 outputs (the
    // even and odd parts of each pair +-p shared).
    template <class V>
    static inline __attribute__((always_inline)) void output(const V* m, int step, V* o, int ostep) {
        const V m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step], m5 = m[5 * step], m6 = m[6 * step];
        const V p1 = m1 + m2, d1 = m1 - m2, p2 = m3 + m4, d2 = m3 - m4, ph = m5 + m6, dh = m5 - m6;
        o[0] = m[0] + p1 + p2 + ph;
        o[ostep] = d1 + d2 * 2 + dh * 0.5f;
        o[2 * ostep] = p1 + p2 * 4 + ph * 0.25f;
        o[3 * ostep] = d1 + d2 * 8 + dh * 0.125f;
        o[4 * ostep] = p1 + p2 * 16 + ph * 0.0625f;
        o[5 * ostep] = d1 + d2 * 32 + dh * 0.03125f;
        o[6 * ostep] = p1 + p2 * 64 + ph * 0.015625f + m[7 * step];
    }
    // G applied to 2 values (V a double or a vector of them).
    template <class V>
    static inline __attribute__((always_inline)) void filter(const V* w, int step, V* o, int ostep) {
        constexpr double two_ninths = 2.0 / 9, ninetieth = 1.0 / 90, fortyfifth = 1.0 / 45;
        constexpr double sixteen_45ths = 16.0 / 45;
        const V w0 = w[0], w1 = w[step];
        o[0] = w0;
        o[ostep] = -(w0 + w1) * two_ninths;
        o[2 * ostep] = (w1 - w0) * two_ninths;
        o[3 * ostep] = w0 * ninetieth + w1 * fortyfifth;
        o[4 * ostep] = w0 * ninetieth - w1 * fortyfifth;
        o[5 * ostep] = w0 * (2 * sixteen_45ths) + w1 * sixteen_45ths;
        o[6 * ostep] = w0 * (2 * sixteen_45ths) - w1 * sixteen_45ths;
        o[7 * ostep] = w1;
    }
    template <class V>
    static inline __attribute__((always_inline)) void filter_grad(const V* m, int step, V* o, int ostep) {
        constexpr double two_ninths = 2.0 / 9, ninetieth = 1.0 / 90, sixteen_45ths = 16.0 / 45;
        const V m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step], m5 = m[5 * step], m6 = m[6 * step];
        o[0] = m[0] - (m1 + m2) * two_ninths + (m3 + m4) * ninetieth + (m5 + m6) * (2 * sixteen_45ths);
        o[ostep] = (m2 - m1) * two_ninths + (m3 - m4) * (2 * ninetieth) + (m5 - m6) * sixteen_45ths + m[7 * step];
    }
    // A applied to a tile row's 7 values: the values of the polynomial g0 + g1 t + ... + g6 t^6
    // at the points (even and odd parts shared by +-p), and g6 for infinity.
    template <class V>
    static inline __attribute__((always_inline)) void output_grad(const V* x, int step, V* o, int ostep) {
        const V g0 = x[0], g1 = x[step], g2 = x[2 * step], g3 = x[3 * step], g4 = x[4 * step], g5 = x[5 * step],
                g6 = x[6 * step];
        const V e1 = g0 + g2 + g4 + g6, o1 = g1 + g3 + g5;
        const V e2 = g0 + g2 * 4 + g4 * 16 + g6 * 64, o2 = g1 * 2 + g3 * 8 + g5 * 32;
        const V eh = g0 + g2 * 0.25f + g4 * 0.0625f + g6 * 0.015625f, oh = g1 * 0.5f + g3 * 0.125f + g5 * 0.03125f;
        o[0] = g0;
        o[ostep] = e1 + o1;
        o[2 * ostep] = e1 - o1;
        o[3 * ostep] = e2 + o2;
        o[4 * ostep] = e2 - o2;
        o[5 * ostep] = eh + oh;
        o[6 * ostep] = eh - oh;
        o[7 * ostep] = g6;
    }
};

// Above this many bytes the transformed filters are written with streaming stores: they do not
// stay in a core's cache until the products read them, and a normal store first reads each line
// (8 x 256 x 14x14 -> 256, 2 threads: the transform 1.3-1.6 -> 0.6-0.7 ms of a 5 ms forward).
constexpr double kStreamFiltersBytes = 1.0 * (1 << 20);

// The transformed filters U[xi] (K x C), each packed as the GEMM's A: MR-row panels with
// rows p*MR.. stored as [c][MR] (PrepackedA's layout), rows past K zero. Computed in double
// precision and rounded once, for MR rows x 8 channels at a time, so that each panel's run
// of U[xi] is stored contiguously.
template <class T, class F>
struct TransformedFilters {
    static constexpr int MR = GemmTile<T>::MR;
    Scratch<T> data;
    int64_t C, panel_size, xi_size;

    // w: the K x C filters, R x R each, in order.
    TransformedFilters(const ConvShape& g, const T* w)
        : TransformedFilters(g, [w, C = g.C](int64_t k, int64_t c, int j) { return w[(k * C + c) * F::R * F::R + j]; }) {}

    // tap(k, c, j): tap j (row-major) of filter k's channel c, for filters that are read from
    // another layout (conv/winograd_phases.h: a 4x4 filter's stride phases) without a copy.
    template <class Tap, class = std::enable_if_t<std::is_invocable_v<const Tap&, int64_t, int64_t, int>>>
    TransformedFilters(const ConvShape& g, const Tap& tap)
        : C(g.C), panel_size(int64_t(MR) * g.C), xi_size(checked_mul((g.K + MR - 1) / MR, panel_size)) {
        constexpr int channels = 8, n = MR * channels;  // pairs per pass: (c, row) with the row fastest
        data = scratch<T>(checked_mul(int64_t(F::points), xi_size));
        const int64_t panels = (g.K + MR - 1) / MR, chunks = (g.C + channels - 1) / channels;
        const bool stream = double(F::points) * double(xi_size) * sizeof(T) > kStreamFiltersBytes;
        parallel_for(panels * chunks, num_threads(), [&](int64_t job, int) {
            const int64_t p = job / chunks, c0 = job % chunks * channels;
            constexpr int R = F::R, RR = R * R;
            double taps[RR][n], full[F::points][n];
            for (int e = 0; e < n; ++e) {
                const int64_t k = p * MR + e % MR, c = c0 + e / MR;
                for (int j = 0; j < RR; ++j) taps[j][e] = (k < g.K && c < g.C) ? double(tap(k, c, j)) : 0.0;
            }
            // G w G^T, vectorised over the pairs (n is a multiple of the lanes).
            using D = Simd<double>;
            static_assert(n % D::lanes == 0, "whole vectors of pairs");
            for (int e = 0; e < n; e += D::lanes) {
                typename D::V tap[RR], half[F::alpha][R], out[F::points];
                for (int j = 0; j < RR; ++j) tap[j] = D::load(taps[j] + e);
                for (int s = 0; s < R; ++s) F::filter(tap + s, R, &half[0][s], R);                       // G w
                for (int a = 0; a < F::alpha; ++a) F::filter(half[a], 1, out + a * F::alpha, 1);  // (.) G^T
                for (int xi = 0; xi < F::points; ++xi) D::store(full[xi] + e, out[xi]);
            }
            const int64_t run = std::min<int64_t>(channels, g.C - c0) * MR;
            T rounded[n];
            for (int xi = 0; xi < F::points; ++xi) {
                T* dst = data.get() + xi * xi_size + p * panel_size + c0 * MR;
                for (int64_t e = 0; e < run; ++e) rounded[e] = T(full[xi][e]);
                if (stream) stream_copy(rounded, dst, run);
                else std::copy(rounded, rounded + run, dst);
            }
            if (stream) _mm_sfence();  // the streamed stores are visible before the job counts as done
        });
    }

    // The A source of position xi, its panels read in place by gemm_block (it has a_panel()):
    // with the micro-kernel's prefetch of A, copying each panel first measured slower at every
    // size of U, beyond the L2 cache too (2 threads, copied against in place: 8 x 256 x 14x14
    // -> 256 by position 4.74-4.81 against 4.57-4.62 ms, 64 x 256 x 14x14 block by block
    // 34.3-34.6 against 28.9-29.5 ms).
    struct Position {
        const T* data;
        int64_t C;
        const T* a_panel(int64_t i0, int64_t k0) const { return data + i0 * C + k0 * MR; }  // i0: a multiple of MR
    };
    Position operator[](int xi) const { return Position{data.get() + xi * xi_size, C}; }
    Position position(int xi, int /*worker*/) const { return (*this)[xi]; }
    static int order(int i) { return i; }
};

// M = U[xi] B for all K rows and the columns [0, cols); u: U[xi] as gemm_block's A (a
// TransformedFilters' Position).
template <class T, class ASrc, class BSrc>
void multiply_position(const ASrc& u, int64_t K, int64_t cols, int64_t C, const BSrc& B, const OutMatrix<T>& M,
                       GemmBuffers<T>& buf) {
    gemm_block<T>(0, K, 0, cols, 0, C, u, B, M, Store::overwrite, buf);
}

// V[xi] of one block, in the packed B layout: panel p (tiles p*NR..) as [c][NR], read in place
// by gemm_block (it has panel()); a block of fewer than NR tiles as one panel [c][width]
// (Tiling::panel_width).
template <class T>
struct TransformedTiles {
    const T* data;
    int64_t C;
    int64_t width = gemm_nr<T>();
    const T* panel(int64_t k0, int64_t j0) const { return data + j0 * C + k0 * width; }
    int64_t panel_width() const { return width; }
};

// Distance between consecutive positions' matrices V[xi] or M[xi]: their size plus one cache
// line. The transforms read or write all 36 positions of a tile at once; at a distance that is
// a multiple of 4 KiB (48 tiles x 64 channels x 4 bytes is 12 KiB) those 36 lines would map
// to one set of the L1 cache, which holds 12. (On the development machine the padding
// measured no difference; it costs nothing.)
template <class T>
inline int64_t position_stride(int64_t elements) {
    return checked_add(elements, int64_t(64 / sizeof(T)));
}

// How the output is cut into tiles and the tiles into blocks.
struct Tiling {
    int64_t rows, cols;   // tiles per image, down and across
    int64_t total;        // over the batch
    int64_t block;        // tiles per block: a multiple of the GEMM's NR
    int64_t blocks;

    template <class T, class F>
    static Tiling of(const ConvShape& g) {
        Tiling t;
        t.rows = (g.Ho + F::tile - 1) / F::tile;
        t.cols = (g.Wo + F::tile - 1) / F::tile;
        t.total = checked_mul(checked_mul(g.N, t.rows), t.cols);
        constexpr int64_t NR = gemm_nr<T>();
        // V and M of a block (36 (C + K) tiles elements) within about 1 MiB, in whole panels,
        // 1 to 4 of them; and at least 8 blocks when the output has enough tiles, so that the
        // threads share the work evenly. A function of the shape only (see the header).
        const double per_tile = double(F::points) * double(g.C + g.K) * double(sizeof(T));
        const int64_t fit = int64_t(double(1 << 20) / per_tile) / NR * NR;
        const int64_t spread = (t.total / 8) / NR * NR;
        t.block = std::clamp<int64_t>(std::min(fit, std::max<int64_t>(spread, NR)), NR, 4 * NR);
        t.blocks = (t.total + t.block - 1) / t.block;
        return t;
    }

    // The block-by-block forward's tiling: as of(), except that an output of fewer than 8
    // blocks of NR tiles is cut into an even number of equal blocks of whole vectors, at most
    // NR tiles each, where one exists: in blocks of NR the threads would share it out unevenly
    // (64 tiles, a small ResNet's 8x8 layers at batch 16: 48 + 16, one of two threads doing
    // three quarters of the work; 128 tiles: 80 against 48). Each tile is the same sum whatever
    // block holds it (its column of each GEMM), so the cut changes the schedule, not the
    // result; it is a function of the shape only. A block's V still takes whole NR panels
    // (capacity).
    template <class T, class F>
    static Tiling of_forward(const ConvShape& g) {
        Tiling t = of<T, F>(g);
        constexpr int64_t NR = gemm_nr<T>(), L = Simd<T>::lanes;
        const int64_t vectors = (t.total + L - 1) / L;
        if (t.total >= 8 * NR) return t;  // of() made 8 or more blocks
        int64_t most = NR / L;
        for (int64_t per_block = most; per_block >= 1; --per_block)
            if (vectors % per_block == 0 && (vectors / per_block) % 2 == 0) {
                t.block = per_block * L;
                t.blocks = vectors / per_block;
                break;
            }
        return t;
    }

    // Tiles a block's V is laid out for: whole panels of NR (the GEMM reads them in place),
    // or for a block of fewer tiles one panel of its width.
    template <class T>
    int64_t capacity() const {
        constexpr int64_t NR = gemm_nr<T>();
        return block < NR ? panel_width<T>() : (block + NR - 1) / NR * NR;
    }
    // The distance between the rows of a block's panels: NR, or a narrower block's tiles in
    // whole vectors. A 32-tile block in rows of NR = 48 left a third of every row unused, in
    // lines that the prefetchers fetched into L1 all the same (64 -> 128 4x4 stride 2 on 14x14,
    // batch 64, forward 2.33 -> 2.24-2.30 ms; 32 -> 64 on 16x16 0.84-0.85 -> 0.78-0.80).
    template <class T>
    int64_t panel_width() const {
        constexpr int64_t NR = gemm_nr<T>(), L = Simd<T>::lanes;
        return block < NR ? (block + L - 1) / L * L : NR;
    }
};

// Where a tile's 6x6 input window starts: x's plane offset of its image, top-left corner.
struct TileOrigin {
    int64_t image;   // n * C * H * W
    int64_t h0, w0;  // may be negative (padding)
    int64_t n, i, j;
};

// The zero-padded copies of the input rows under the tile rows of a block (transform_input):
// row after row, column 4 j + b of tile j at 4 j + b. Loads for lanes outside a tile row read
// the neighbouring rows' values, which the blends drop; the buffer has room before its first
// row for lanes that start up to L - 1 tiles early, and after its last for the loads past its
// last tile.
struct InputRows {
    template <class T>
    static constexpr int64_t before() { return 4 * Simd<T>::lanes; }
    template <class T>
    static constexpr int64_t after() { return 6 * Simd<T>::lanes; }
    static int64_t width(const struct Tiling& tl) { return 4 * tl.cols + 2; }
    // Elements of the buffer for a block of `block` tiles, which touches at most
    // block / cols + 2 tile rows.
    template <class T>
    static int64_t size(const struct Tiling& tl, int64_t block) {
        return checked_add(checked_mul((block / tl.cols + 2) * kMaxAlpha, width(tl)), before<T>() + after<T>());
    }
};

inline TileOrigin tile_origin(const ConvShape& g, const Tiling& tl, int64_t t) {
    const int64_t per_image = tl.rows * tl.cols;
    const int64_t n = t / per_image, i = t % per_image / tl.cols, j = t % tl.cols;
    return TileOrigin{n * g.C * g.H * g.W, i * kTile - g.ph, j * kTile - g.pw, n, i, j};
}

// The six vectors d[b] with lanes d[b][l] = row[4 l + b]: the columns of L consecutive tiles'
// windows in one input row, gathered by shuffles from five loads (row[0 .. 5 L)).
template <class T>
static inline __attribute__((always_inline)) void deinterleave_row(const T* row, typename Simd<T>::V* d) {
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;
    constexpr int L = S::lanes;
    V q[5];
    for (int m = 0; m < 5; ++m) q[m] = S::load(row + m * L);
    I low, high, halves, next;
    for (int l = 0; l < L; ++l) {
        halves[l] = l < L / 2 ? l : L + l;   // lanes of a below L/2, of b from there
        next[l] = l + 1;                     // a's lanes shifted down by one, then b's first
    }
#pragma GCC unroll 4
    for (int b = 0; b < 4; ++b) {
        for (int l = 0; l < L; ++l) {
            low[l] = l < L / 2 ? 4 * l + b : 0;            // from q0, q1
            high[l] = l < L / 2 ? 0 : 4 * l + b - 2 * L;   // from q2, q3
        }
        d[b] = __builtin_shuffle(__builtin_shuffle(q[0], q[1], low), __builtin_shuffle(q[2], q[3], high),
                                 halves);
    }
    // Column 4 l + 4 (+1) is column 4 (l + 1) (+1): lanes shifted by one, the last from q4.
    I q4_first = next, q4_second = next;
    q4_first[L - 1] = L;
    q4_second[L - 1] = L + 1;
    d[4] = __builtin_shuffle(d[0], q[4], q4_first);
    d[5] = __builtin_shuffle(d[1], q[4], q4_second);
}

// Where transform_input stores: tile l (from the call's first) of channel c (from c_begin) of
// a position's matrix at (l / panel) * panel * C + c * row + l % panel. Packed: the forward
// GEMM's B panels ([panel][c][NR], or a block narrower than NR as one panel [c][width]:
// TransformedTiles); rows: a plain matrix with `row` tiles per channel (the weight gradient's
// buffer, transposed from there: transform_tile_major).
struct TilesLayout {
    int64_t panel, row;
    template <class T>
    static TilesLayout packed(int64_t width = gemm_nr<T>()) { return TilesLayout{gemm_nr<T>(), width}; }
    static TilesLayout rows(int64_t tiles) { return TilesLayout{tiles, tiles}; }
};

// Input transform of tiles [t0, t0 + nt), channels [c_begin, c_end) (all by default):
// V[xi] at v + xi * stride, laid out as `layout` says (by default TransformedTiles' panels).
// Transform: InputTransform (x), or OutputGradTransform (dy, seen as the input of a
// convolution without padding, for the weight gradient).
// Per channel, the six input rows under each tile row of the block are copied once, zero
// padded, into `rows`; lanes of consecutive tiles in one tile row are then gathered with
// shuffles (deinterleave_row), a group of L tiles that spans tile rows blending one run of
// lanes per tile row.
template <class T, class F, class Transform = InputTransform<F>>
void transform_input(const ConvShape& g, const Tiling& tl, const T* x, int64_t t0, int64_t nt,
                     T* v, int64_t stride, T* rows, TilesLayout layout = TilesLayout::packed<T>(),
                     int64_t c_begin = 0, int64_t c_end = -1) {
    static_assert(F::tile == kTile && F::alpha <= kMaxAlpha, "the tile-by-tile layout takes 4x4 tiles");
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;
    constexpr int L = S::lanes;
    const int64_t HW = g.H * g.W, C = g.C;
    const int64_t groups = (nt + L - 1) / L;
    const int64_t width = InputRows::width(tl);
    T* const first_row = rows + InputRows::before<T>();
    // The tile rows of the block (as their first tile's index) and, per tile, its tile row's
    // ordinal and its column.
    std::vector<int64_t> row_first, ordinal(nt), column(nt);
    for (int64_t l = 0; l < nt; ++l) {
        const int64_t t = t0 + l;
        if (l == 0 || t % tl.cols == 0) row_first.push_back(t);
        ordinal[l] = int64_t(row_first.size()) - 1;
        column[l] = t % tl.cols;
    }
    const I lane = S::iota();
    if (c_end < 0) c_end = C;
    for (int64_t c = c_begin; c < c_end; ++c) {
        for (size_t q = 0; q < row_first.size(); ++q) {
            const TileOrigin o = tile_origin(g, tl, row_first[q]);
            const T* plane = x + o.image + c * HW;
            for (int r = 0; r < F::alpha; ++r) {
                T* dst = first_row + (int64_t(q) * kMaxAlpha + r) * width;
                const int64_t h = o.h0 + r;
                if (h < 0 || h >= g.H) {
                    zero_run(width, dst);
                    continue;
                }
                zero_run(g.pw, dst);
                copy_run(plane + h * g.W, g.W, dst + g.pw);
                zero_run(width - g.pw - g.W, dst + g.pw + g.W);
            }
            // The next channel's rows, requested now: they come from memory in short runs (a
            // few rows per plane), which the hardware prefetchers ramp up on too late; the
            // copies above measured half of this function's time waiting for them.
            if (c + 1 < c_end) {
                const int64_t h_begin = std::max<int64_t>(o.h0, 0), h_end = std::min<int64_t>(o.h0 + F::alpha, g.H);
                const char* begin = reinterpret_cast<const char*>(plane + HW + h_begin * g.W);
                const char* end = reinterpret_cast<const char*>(plane + HW + h_end * g.W);
                for (const char* line = begin; line < end; line += 64) _mm_prefetch(line, _MM_HINT_T0);
            }
        }
        for (int64_t grp = 0; grp < groups; ++grp) {
            constexpr int A = F::alpha, P = F::points;
            V in[P];
            const int valid = int(std::min<int64_t>(L, nt - grp * L));
            for (int l = 0; l < valid;) {
                const int64_t first = grp * L + l, q = ordinal[first];
                int end = l + 1;
                while (end < valid && ordinal[grp * L + end] == q) ++end;
                // Lane l' reads tile column column[first] - l + l' of tile row q.
                const T* base = first_row + q * kMaxAlpha * width + 4 * (column[first] - l);
                const I run = (lane >= l) & (lane < end);
                for (int r = 0; r < A; ++r) {
                    V d[kMaxAlpha];
                    deinterleave_row<T>(base + r * width, d);
                    // The first run sets every lane; later ones replace theirs.
                    for (int b = 0; b < A; ++b)
                        in[r * A + b] = l == 0 ? d[b] : (run ? d[b] : in[r * A + b]);
                }
                l = end;
            }
            if (valid < L)  // lanes past the block's tiles: zeros
                for (int p = 0; p < P; ++p) in[p] = lane < valid ? in[p] : S::zero();
            V mid[P], out[P];
            for (int s = 0; s < A; ++s) Transform::apply(in + s, A, mid + s, A);      // B^T d
            for (int a = 0; a < A; ++a) Transform::apply(mid + a * A, 1, out + a * A, 1);  // (.) B
            const int64_t first = grp * L;
            T* dst = v + (first / layout.panel) * layout.panel * C + (c - c_begin) * layout.row + first % layout.panel;
            for (int p = 0; p < P; ++p) S::store(dst + p * stride, out[p]);
        }
    }
}

// The inverse of deinterleave_row for four vectors: z[4 l + s] = o[s][l], the output columns
// of L consecutive tiles' rows in order.
template <class T>
static inline __attribute__((always_inline)) void interleave_row(const typename Simd<T>::V* o, T* z) {
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;
    constexpr int L = S::lanes;
    I pairs_low, pairs_high, quads[2];
    for (int e = 0; e < L; ++e) {
        pairs_low[e] = e / 2 + (e % 2) * L;  // a[0], b[0], a[1], b[1], ... from the first halves
        pairs_high[e] = L / 2 + e / 2 + (e % 2) * L;
    }
    for (int half = 0; half < 2; ++half)
        for (int e = 0; e < L; ++e) {
            const int index = half * L + e, t = index / 4, s = index % 4;
            quads[half][e] = s < 2 ? 2 * t + s : L + 2 * t + s - 2;
        }
    const V lo01 = __builtin_shuffle(o[0], o[1], pairs_low), hi01 = __builtin_shuffle(o[0], o[1], pairs_high);
    const V lo23 = __builtin_shuffle(o[2], o[3], pairs_low), hi23 = __builtin_shuffle(o[2], o[3], pairs_high);
    S::store(z, __builtin_shuffle(lo01, lo23, quads[0]));
    S::store(z + L, __builtin_shuffle(lo01, lo23, quads[1]));
    S::store(z + 2 * L, __builtin_shuffle(hi01, hi23, quads[0]));
    S::store(z + 3 * L, __builtin_shuffle(hi01, hi23, quads[1]));
}

// Output transform of tiles [t0, t0 + nt), output channels [k_begin, k_end) (all by default),
// from M[xi] (K x block, row stride block, at m + xi * stride) into y.
// Each output row of a group of L tiles is interleaved in registers (interleave_row) and
// stored as one run per tile row the group spans.
template <class T, class F>
void transform_output(const ConvShape& g, const Tiling& tl, const T* m, int64_t t0, int64_t nt,
                      int64_t block, int64_t stride, const T* bias, T* y, const Epilogue<T>& ep,
                      int64_t k_begin = 0, int64_t k_end = -1) {
    static_assert(F::tile == kTile, "the tile-by-tile layout takes 4x4 tiles");
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes;
    const int64_t K = g.K, HoWo = g.Ho * g.Wo;
    if (k_end < 0) k_end = K;
    const int64_t groups = (nt + L - 1) / L;
    // Per tile row of the block: where its outputs start (channel 0) and how many rows exist;
    // per tile: its tile row's ordinal and its column.
    struct Row {
        int64_t offset;
        int rows;
    };
    std::vector<Row> tile_rows;
    std::vector<int64_t> ordinal(nt), column(nt);
    for (int64_t l = 0; l < nt; ++l) {
        const int64_t t = t0 + l;
        if (l == 0 || t % tl.cols == 0) {
            const TileOrigin o = tile_origin(g, tl, t);
            tile_rows.push_back(Row{o.n * K * HoWo + o.i * kTile * g.Wo,
                                    int(std::min<int64_t>(kTile, g.Ho - o.i * kTile))});
        }
        ordinal[l] = int64_t(tile_rows.size()) - 1;
        column[l] = t % tl.cols;
    }
    alignas(64) T z[kTile][kTile * L];
    for (int64_t k = k_begin; k < k_end; ++k) {
        const T b = bias ? bias[k] : T(0);
        for (int64_t grp = 0; grp < groups; ++grp) {
            constexpr int A = F::alpha;
            V in[F::points], mid[kTile * A], out[kTile * kTile];
            for (int p = 0; p < F::points; ++p) in[p] = S::load(m + p * stride + k * block + grp * L);
            for (int s = 0; s < A; ++s) F::output(in + s, A, mid + s, A);      // A^T m
            for (int r = 0; r < kTile; ++r) F::output(mid + r * A, 1, out + r * kTile, 1);  // (.) A
            for (int p = 0; p < kTile * kTile; ++p) out[p] += b;
            for (int r = 0; r < kTile; ++r) interleave_row<T>(out + r * kTile, z[r]);
            const int valid = int(std::min<int64_t>(L, nt - grp * L));
            for (int l = 0; l < valid;) {
                const int64_t first = grp * L + l, q = ordinal[first];
                int end = l + 1;
                while (end < valid && ordinal[grp * L + end] == q) ++end;
                const Row& row = tile_rows[q];
                const int64_t wo0 = column[first] * kTile;
                const int64_t count = std::min<int64_t>(kTile * (end - l), g.Wo - wo0);
                T* dst = y + row.offset + k * HoWo + wo0;
                if (ep.any())
                    for (int r = 0; r < row.rows; ++r)
                        store_with(ep, z[r] + kTile * l, count, dst + r * g.Wo, dst + r * g.Wo - y);
                else
                    for (int r = 0; r < row.rows; ++r) copy_run(z[r] + kTile * l, count, dst + r * g.Wo);
                l = end;
            }
        }
    }
}

// Every M[xi] = U[xi] V[xi] with U stored: a task per position.
template <class T, class F>
auto multiply_positions(const ConvShape& g, const TransformedFilters<T, F>& U) {
    return [&g, &U](const T* v, int64_t v_stride, T* m, int64_t m_stride, int64_t columns, int64_t cols, int threads,
                    std::vector<GemmBuffers<T>>& bufs) {
        parallel_tasks(F::points, threads, [&](int64_t xi, int worker) {
            const TransformedTiles<T> B{v + xi * v_stride, g.C};
            const OutMatrix<T> M = OutMatrix<T>::plain(m + xi * m_stride, columns, columns);
            multiply_position(U[int(xi)], g.K, cols, g.C, B, M, bufs[size_t(worker)]);
        });
    };
}

// Every M[xi] = U[xi] V[xi] with U computed block by block of output channels, right before
// the block's products, never stored whole: for many channel pairs (512 x 512: U is 36 K C
// floats, 38 MB) writing U to memory and reading it back cost more than the products it
// saves (the forward ran at half the speed of the GEMM forms). A block is 2 MR output
// channels: their taps are gathered once into RR planes in the GEMM's packed A layout (MR-row
// panels, [c][MR]), and each position's U rows are a linear combination of those planes, the
// coefficients G[a][r] G[b][s] (zeros skipped: 5.4 of 9 on average for F(4x4, 3x3)), in
// vectors over the whole block, summed in T: a few roundings against the stored U's one, well
// below the transforms' own error. The planes (RR x 2 MR x C) stay in L2 for the 36
// positions; each position's V[xi] is read from the shared cache. Each M[xi] entry is one
// GEMM's sum over all channels on one thread: the result does not depend on the thread count.
// tap(k, c, j): tap j (row-major) of filter k's channel c.
template <class T, class F, class Tap>
auto multiply_filter_blocks(const ConvShape& g, const Tap& tap) {
    return [&g, tap](const T* v, int64_t v_stride, T* m, int64_t m_stride, int64_t columns, int64_t cols,
                     int threads, std::vector<GemmBuffers<T>>& bufs) {
        using S = Simd<T>;
        constexpr int MR = GemmTile<T>::MR, R = F::R, RR = R * R, L = S::lanes;
        constexpr int64_t KB = 2 * MR;
        // plane: one tap's block, packed, in whole vectors (the tail stays zero); the planes a
        // line further apart than that (position_stride)
        const int64_t blocks = (g.K + KB - 1) / KB, plane = (KB * g.C + L - 1) / L * L;
        const int64_t stride = position_stride<T>(plane);
        // G's entries, from G applied to unit vectors; each position's nonzero products.
        double G[F::alpha][R];
        for (int r = 0; r < R; ++r) {
            double unit[R] = {}, column[F::alpha];
            unit[r] = 1.0;
            F::filter(unit, 1, column, 1);
            for (int a = 0; a < F::alpha; ++a) G[a][r] = column[a];
        }
        struct Term {
            int tap;
            T coef;
        };
        Term terms[F::points][RR];
        int counts[F::points];
        for (int xi = 0; xi < F::points; ++xi) {
            counts[xi] = 0;
            for (int j = 0; j < RR; ++j) {
                const double c = G[xi / F::alpha][j / R] * G[xi % F::alpha][j % R];
                if (c != 0.0) terms[xi][counts[xi]++] = Term{j, T(c)};
            }
        }
        std::vector<Scratch<T>> taps, us;
        for (int t = 0; t < threads; ++t) {
            taps.push_back(scratch<T>(RR * stride)), us.push_back(scratch<T>(plane));
            std::fill(taps.back().get(), taps.back().get() + RR * stride, T(0));
        }
        parallel_for(blocks, threads, [&](int64_t blk, int worker) {
            const int64_t k0 = blk * KB, rows = std::min(KB, g.K - k0);
            T* w = taps[size_t(worker)].get();
            T* u = us[size_t(worker)].get();
            for (int64_t kk = 0; kk < KB; ++kk) {
                T* at = w + kk / MR * MR * g.C + kk % MR;  // row kk of the block in its panel
                for (int64_t c = 0; c < g.C; ++c)
                    for (int j = 0; j < RR; ++j) at[j * stride + c * MR] = kk < rows ? tap(k0 + kk, c, j) : T(0);
            }
            for (int xi = 0; xi < F::points; ++xi) {
                // Four vectors at a time: four independent chains of multiply-adds (one chain
                // waited on each multiply-add's latency: half of this function's time).
                const int count = counts[xi];
                const T* planes[RR];
                typename S::V coefs[RR];
                for (int n = 0; n < count; ++n) planes[n] = w + terms[xi][n].tap * stride, coefs[n] = S::splat(terms[xi][n].coef);
                int64_t e = 0;
                for (; e + 4 * L <= plane; e += 4 * L) {
                    typename S::V s0 = coefs[0] * S::load(planes[0] + e), s1 = coefs[0] * S::load(planes[0] + e + L);
                    typename S::V s2 = coefs[0] * S::load(planes[0] + e + 2 * L), s3 = coefs[0] * S::load(planes[0] + e + 3 * L);
                    for (int n = 1; n < count; ++n) {
                        s0 = S::fma(coefs[n], S::load(planes[n] + e), s0);
                        s1 = S::fma(coefs[n], S::load(planes[n] + e + L), s1);
                        s2 = S::fma(coefs[n], S::load(planes[n] + e + 2 * L), s2);
                        s3 = S::fma(coefs[n], S::load(planes[n] + e + 3 * L), s3);
                    }
                    S::store(u + e, s0), S::store(u + e + L, s1), S::store(u + e + 2 * L, s2), S::store(u + e + 3 * L, s3);
                }
                for (; e < plane; e += L) {
                    typename S::V sum = coefs[0] * S::load(planes[0] + e);
                    for (int n = 1; n < count; ++n) sum = S::fma(coefs[n], S::load(planes[n] + e), sum);
                    S::store(u + e, sum);
                }
                const TransformedTiles<T> B{v + xi * v_stride, g.C};
                const OutMatrix<T> M = OutMatrix<T>::plain(m + xi * m_stride + k0 * columns, columns, columns);
                multiply_position(typename TransformedFilters<T, F>::Position{u, g.C}, rows, cols, g.C, B, M,
                                  bufs[size_t(worker)]);
            }
        });
    };
}

// All tiles' V, then per position one GEMM over every tile, then the output transform: the
// layout for few tiles and many channel pairs. Blocks of tiles would each read all 36 U[xi]
// (36 K C elements, past a core's cache from 256 x 256 pairs) for a GEMM of one block's
// columns; here each U[xi] is read once, against all columns, and stays in cache with its
// V[xi] and M[xi]; and the layout for fewer blocks than threads (one image: a small layer has
// one or two blocks), where the 36 GEMMs share out evenly. Each position's GEMM runs on one
// thread, and the transforms work tile by tile and channel by channel, so the result does not
// depend on the number of threads or on how the transforms are cut into tasks.
//
// products(v, v_stride, m, m_stride, cols, threads, bufs) computes every M[xi] (K x columns, at
// m + xi * m_stride) from V[xi] (at v + xi * v_stride) for the tile columns [0, cols):
// multiply_positions (U stored) or multiply_filter_blocks (U per block of output channels).
template <class T, class F, class Products>
void forward_by_position(const ConvShape& g, const Tiling& tl, const T* x, const T* bias, T* y,
                         const Epilogue<T>& ep, const Products& products) {
    constexpr int64_t NR = gemm_nr<T>();
    constexpr int L = Simd<T>::lanes;
    const int64_t columns = (tl.total + NR - 1) / NR * NR;  // of every V[xi] and M[xi]
    const int64_t v_stride = position_stride<T>(checked_mul(g.C, columns));
    const int64_t m_stride = position_stride<T>(checked_mul(g.K, columns));
    const Scratch<T> v = scratch<T>(checked_mul(int64_t(F::points), v_stride));
    const Scratch<T> m = scratch<T>(checked_mul(int64_t(F::points), m_stride));
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), F::points)));
    const int64_t rows_size = InputRows::size<T>(tl, tl.block);
    std::vector<Scratch<T>> rows;
    std::vector<GemmBuffers<T>> bufs;
    for (int t = 0; t < threads; ++t) {
        rows.push_back(scratch<T>(rows_size));
        std::fill(rows.back().get(), rows.back().get() + rows_size, T(0));  // the margins stay zero
        bufs.emplace_back(false);
    }
    // Columns in whole vectors: the input transform wrote them (zeros past the last tile).
    const int64_t cols = std::min(columns, (tl.total + L - 1) / L * L);
    // The transforms' tasks: a block and a run of channels, cut so that every thread has two.
    const int64_t runs = std::max<int64_t>(1, (2 * threads + tl.blocks - 1) / tl.blocks);
    const int64_t c_run = (g.C + runs - 1) / runs, k_run = (g.K + runs - 1) / runs;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(tl.blocks * runs, threads, [&](int64_t task, int worker) {
        const int64_t t0 = task / runs * tl.block;  // a multiple of NR: panel t0 / NR of V[xi]
        const int64_t c0 = task % runs * c_run, c1 = std::min(g.C, c0 + c_run);
        if (c0 < c1)
            transform_input<T, F>(g, tl, x, t0, std::min(tl.block, tl.total - t0), v.get() + t0 * g.C + c0 * NR,
                                  v_stride, rows[size_t(worker)].get(), TilesLayout::packed<T>(), c0, c1);
    });
    products(v.get(), v_stride, m.get(), m_stride, columns, cols, threads, bufs);
    parallel_for(tl.blocks * runs, threads, [&](int64_t task, int) {
        const int64_t t0 = task / runs * tl.block;
        const int64_t k0 = task % runs * k_run, k1 = std::min(g.K, k0 + k_run);
        if (k0 < k1)
            transform_output<T, F>(g, tl, m.get() + t0, t0, std::min(tl.block, tl.total - t0), columns, m_stride, bias,
                                   y, ep, k0, k1);
    });
}

// U for K x C filters, kept for later calls (kernels.h, PreparedFilters).
template <class T, class F>
struct PreparedTransform final : PreparedFilters {
    int64_t K, C;
    TransformedFilters<T, F> U;
    PreparedTransform(const ConvShape& g, const T* w) : K(g.K), C(g.C), U(g, w) {}

    // `prepared`'s U where it was made by these kernels for K x C filters, else nullptr.
    static const TransformedFilters<T, F>* find(const PreparedFilters* prepared, const ConvShape& g) {
        const auto* p = dynamic_cast<const PreparedTransform*>(prepared);
        return p != nullptr && p->K == g.K && p->C == g.C ? &p->U : nullptr;
    }
};

// The forward by position with U per block of output channels (multiply_filter_blocks), a
// batch of images at a time: all tiles' V and M (36 (C + K) elements per tile) within 16 MiB,
// the by-position layout's bound (winograd_by_position), so that every block of output
// channels reads V from the shared cache. tap(k, c, j) as multiply_filter_blocks takes it.
template <class T, class F, class Tap>
void forward_filter_blocks(const ConvShape& g, const T* x, const Tap& tap, const T* bias, T* y, const Epilogue<T>& ep) {
    auto images = [&g](int64_t n) {
        ConvShape part = g;
        part.N = n;
        return part;
    };
    const Tiling one = Tiling::of<T, F>(images(1));
    const double per_image = double(F::points) * double(g.C + g.K) * double(one.total) * double(sizeof(T));
    const int64_t batch = std::clamp<int64_t>(int64_t(16.0 * (1 << 20) / per_image), 1, g.N);
    for (int64_t n0 = 0; n0 < g.N; n0 += batch) {
        const ConvShape part = images(std::min(batch, g.N - n0));
        Epilogue<T> part_ep = ep;
        if (ep.residual) part_ep.residual = ep.residual + n0 * g.K * g.Ho * g.Wo;
        forward_by_position<T, F>(part, Tiling::of<T, F>(part), x + n0 * g.C * g.H * g.W, bias,
                                  y + n0 * g.K * g.Ho * g.Wo, part_ep, multiply_filter_blocks<T, F>(part, tap));
    }
}

}  // namespace winograd

// Winograd's layouts (conv/dispatch.h, winograd_layout, says which pays): block by block;
// by position (all tiles at once, one GEMM per position: winograd::forward_by_position); by
// position with U computed per block of output channels (winograd::multiply_filter_blocks),
// a batch of images at a time.
enum class WinogradLayout { blocks, by_position, filter_blocks };

// The forward in `layout`. The output transform applies `ep` as it stores. U comes from
// `prepared` where that holds it, else is computed here (never stored whole for filter_blocks).
template <class T, class F = winograd::F4x3>
void conv2d_forward_winograd(const ConvShape& g, const T* x, const T* w, const T* bias, T* y, WinogradLayout layout,
                             const Epilogue<T>& ep = {}, const PreparedFilters* prepared = nullptr) {
    using namespace winograd;
    const TransformedFilters<T, F>* found = PreparedTransform<T, F>::find(prepared, g);
    if (layout == WinogradLayout::filter_blocks && found == nullptr) {
        const auto tap = [w, C = g.C](int64_t k, int64_t c, int j) { return w[(k * C + c) * F::R * F::R + j]; };
        return forward_filter_blocks<T, F>(g, x, tap, bias, y, ep);
    }
    std::optional<TransformedFilters<T, F>> computed;
    const TransformedFilters<T, F>& U = found != nullptr ? *found : computed.emplace(g, w);
    if (layout != WinogradLayout::blocks)
        return forward_by_position<T, F>(g, Tiling::of<T, F>(g), x, bias, y, ep, multiply_positions(g, U));
    const Tiling tl = Tiling::of_forward<T, F>(g);
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), tl.blocks)));
    // Per thread: V and M of one block, and the GEMM's A buffer. Allocated before the tasks run:
    // an exception must not escape a pool thread.
    const int64_t v_stride = position_stride<T>(checked_mul(g.C, tl.capacity<T>()));
    const int64_t m_stride = position_stride<T>(checked_mul(g.K, tl.block));
    const int64_t v_size = checked_mul(int64_t(F::points), v_stride), m_size = checked_mul(int64_t(F::points), m_stride);
    const int64_t rows_size = InputRows::size<T>(tl, tl.block);
    std::vector<Scratch<T>> vs, ms, rows;
    std::vector<GemmBuffers<T>> bufs;
    for (int t = 0; t < threads; ++t) {
        vs.push_back(scratch<T>(v_size));
        ms.push_back(scratch<T>(m_size));
        rows.push_back(scratch<T>(rows_size));
        std::fill(rows.back().get(), rows.back().get() + rows_size, T(0));  // the margins stay zero
        bufs.emplace_back(false);
    }
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(tl.blocks, threads, [&](int64_t b, int worker) {
        T* v = vs[size_t(worker)].get();
        T* m = ms[size_t(worker)].get();
        const int64_t t0 = b * tl.block, nt = std::min(tl.block, tl.total - t0);
        transform_input<T, F>(g, tl, x, t0, nt, v, v_stride, rows[size_t(worker)].get(),
                              TilesLayout::packed<T>(tl.panel_width<T>()));
        // Columns in whole vectors: the input transform wrote them (zeros past nt).
        const int64_t cols = std::min(tl.block, (nt + Simd<T>::lanes - 1) / Simd<T>::lanes * Simd<T>::lanes);
        for (int xi = 0; xi < F::points; ++xi) {
            const TransformedTiles<T> B{v + xi * v_stride, g.C, tl.panel_width<T>()};
            const OutMatrix<T> M = OutMatrix<T>::plain(m + xi * m_stride, tl.block, tl.block);
            multiply_position(U[xi], g.K, cols, g.C, B, M, bufs[size_t(worker)]);
        }
        transform_output<T, F>(g, tl, m, t0, nt, tl.block, m_stride, bias, y, ep);
    });
}

// The weight gradient through F(4x4, 3x3): the adjoint of the forward's per-tile formula,
//   dw[k,c] = G^T [ sum over tiles (A dy[k] A^T) * (B^T x[c] B) ] G     (* elementwise, 6x6)
// with dy's 4x4 tile (zero past the output) and x's 6x6 window at the forward's places. The
// sum over tiles is 36 GEMMs with the tiles as the reduction,
//   M[xi] (K x C) = DY[xi] (K x tiles) X[xi] (tiles x C),
// 36 K C multiplications per tile against the GEMM forms' 144. The packed GEMM wants each
// tile's channels contiguous, the transforms (transform_input) produce vectors of tiles: each
// group of `lanes` channels is transformed into a small buffer and transposed in registers
// (transpose_block, common/simd.h) into tile-major matrices X[xi], DY[xi] (tiles x channels).
// The tiles go in chunks of a size fixed by the shape (their transformed matrices within
// kWeightGradChunkBytes, so that they are read back from cache); per chunk, the transforms are
// shared out by blocks of tiles and the 36 products by position, each position's sum on one
// thread, accumulated over the chunks in order: the result does not depend on the number of
// threads. M is transformed back in double precision and rounded once.
//
// Chunks of 2 MiB: about a core's L2 cache and its share of the L3. Measured on one thread (CPU time,
// loaded host, best of 4): 64 channels on 56 px 8.7 ms against 15.2 ms with 8 MiB chunks and
// 20.8 ms with 16 MiB; 128 on 28 px 8.0 against 12.2 and 18.4 ms; 256 on 14 px 10.4 against
// 12.6 and 16.8 ms; 1 MiB measured the same as 2.
constexpr double kWeightGradChunkBytes = 2.0 * (1 << 20);

template <class T, class F>
struct WeightGradChunks {
    int64_t tiles;  // per chunk: whole blocks of the tiling
    static WeightGradChunks of(const ConvShape& g, const winograd::Tiling& tl) {
        const double per_tile = double(F::points) * double(g.C + g.K) * double(sizeof(T));
        const int64_t blocks = std::max<int64_t>(1, int64_t(kWeightGradChunkBytes / per_tile) / tl.block);
        return WeightGradChunks{std::min(blocks * tl.block, (tl.total + tl.block - 1) / tl.block * tl.block)};
    }
};

namespace winograd {

// The transform of tiles [t0, t0 + nt) of all channels of `src` (shape g) into tile-major
// matrices: out[xi * stride + (t - t0) * g.C + c]. tmp: F::points * tmp_stride elements, with
// tmp_stride >= lanes * tl.block.
template <class T, class F, class Transform>
void transform_tile_major(const ConvShape& g, const Tiling& tl, const T* src, int64_t t0, int64_t nt, T* out,
                          int64_t stride, T* tmp, int64_t tmp_stride, T* rows) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes;
    for (int64_t c0 = 0; c0 < g.C; c0 += L) {
        const int channels = int(std::min<int64_t>(L, g.C - c0));
        // tmp[xi][c - c0][tile]
        transform_input<T, F, Transform>(g, tl, src, t0, nt, tmp, tmp_stride, rows, TilesLayout::rows(tl.block), c0,
                                      c0 + channels);
        for (int xi = 0; xi < F::points; ++xi)
            for (int64_t first = 0; first < nt; first += L) {
                V r[L];
                for (int c = 0; c < L; ++c) r[c] = S::load(tmp + xi * tmp_stride + c * tl.block + first);
                transpose_block<T>(r);
                const int tiles = int(std::min<int64_t>(L, nt - first));
                T* dst = out + xi * stride + first * g.C + c0;
                if (channels == L)
                    for (int t = 0; t < tiles; ++t) S::store(dst + t * g.C, r[t]);
                else
                    for (int t = 0; t < tiles; ++t) store_first<T>(dst + t * g.C, r[t], channels);
            }
    }
}

}  // namespace winograd

namespace winograd {

// The weight gradient's transform back, dw[p] = G^T M[., p] G (R x R) for the D::lanes pairs
// p0.. (below `pairs`) of the position matrices M[xi] at m + xi * m_stride, in double
// precision, rounded once.
template <class T, class F>
void filters_back(int64_t p0, int64_t pairs, const T* m, int64_t m_stride, T* dw) {
    using D = Simd<double>;
    constexpr int DL = D::lanes, P = F::points, A = F::alpha, R = F::R, RR = R * R;
    const int n = int(std::min<int64_t>(DL, pairs - p0));
    typename D::V in[P], half[A * R], out[RR];
    if (n == DL) {  // whole vectors: DL values of T widened in registers
        for (int xi = 0; xi < P; ++xi) in[xi] = load_as_double(m + xi * m_stride + p0);
    } else {
        alignas(64) double wide[P][DL] = {};
        for (int xi = 0; xi < P; ++xi)
            for (int e = 0; e < n; ++e) wide[xi][e] = double(m[xi * m_stride + p0 + e]);
        for (int xi = 0; xi < P; ++xi) in[xi] = D::load(wide[xi]);
    }
    alignas(64) double done[RR][DL];
    for (int a = 0; a < A; ++a) F::filter_grad(in + a * A, 1, half + a * R, 1);  // (.) G
    for (int s = 0; s < R; ++s) F::filter_grad(half + s, R, out + s, R);         // G^T (.)
    for (int j = 0; j < RR; ++j) D::store(done[j], out[j]);
    for (int e = 0; e < n; ++e)
        for (int j = 0; j < RR; ++j) dw[(p0 + e) * RR + j] = T(done[j][e]);
}

}  // namespace winograd

// Whether the weight gradient goes by blocks of output channels (below): past 256 x 256
// channel pairs, where M (36 K C elements) would go to memory and back, and when all tiles'
// transformed x and dy fit kFilterBlockTilesBytes (one chunk: each block needs every tile).
constexpr double kFilterBlockTilesBytes = 16.0 * (1 << 20);
template <class T, class F = winograd::F4x3>
inline bool weight_grad_by_filter_blocks(const ConvShape& g) {
    const winograd::Tiling tl = winograd::Tiling::of<T, F>(g);
    return g.C * g.K > 256 * 256 &&
           double(F::points) * double(g.C + g.K) * double(tl.total) * double(sizeof(T)) <= kFilterBlockTilesBytes;
}

// by_filter_blocks (weight_grad_by_filter_blocks): all tiles in one chunk, then a task per
// block of 2 MR output channels computes its rows of the 36 M[xi] (16 x C: cache-resident) and
// transforms them back at once; M is never stored whole. The same sums in the same order as
// the chunked form with one chunk, so the same bits.
template <class T, class F = winograd::F4x3>
void conv2d_grad_weight_winograd(const ConvShape& g, const T* dy, const T* x, T* dw) {
    using namespace winograd;
    constexpr int L = Simd<T>::lanes, P = F::points, RR = F::R * F::R;
    const Tiling tl = Tiling::of<T, F>(g);
    // dy as the input of a convolution without padding: its tiles lie where the forward's are.
    ConvShape gy = g;
    gy.C = g.K, gy.H = g.Ho, gy.W = g.Wo, gy.ph = 0, gy.pw = 0;
    if (tl.total == 0) return std::fill(dw, dw + g.K * g.C * RR, T(0));  // no products to sum
    const bool by_filter_blocks = weight_grad_by_filter_blocks<T, F>(g);
    constexpr int64_t KB = 2 * GemmTile<T>::MR;
    const int64_t chunk = by_filter_blocks ? (tl.total + tl.block - 1) / tl.block * tl.block
                                           : WeightGradChunks<T, F>::of(g, tl).tiles;
    const int64_t x_stride = position_stride<T>(checked_mul(g.C, chunk));
    const int64_t y_stride = position_stride<T>(checked_mul(g.K, chunk));
    const int64_t m_stride = position_stride<T>(checked_mul(by_filter_blocks ? KB : g.K, g.C));
    const int64_t tmp_stride = position_stride<T>(L * tl.block);
    const Scratch<T> vx = scratch<T>(checked_mul(int64_t(P), x_stride));
    const Scratch<T> vy = scratch<T>(checked_mul(int64_t(P), y_stride));
    const Scratch<T> m = by_filter_blocks ? Scratch<T>() : scratch<T>(checked_mul(int64_t(P), m_stride));
    const int threads = num_threads();
    const int64_t rows_size = InputRows::size<T>(tl, tl.block);
    std::vector<Scratch<T>> rows, tmps, m_blocks;
    std::vector<GemmBuffers<T>> bufs;
    for (int t = 0; t < threads; ++t) {
        rows.push_back(scratch<T>(rows_size));
        std::fill(rows.back().get(), rows.back().get() + rows_size, T(0));  // the margins stay zero
        tmps.push_back(scratch<T>(P * tmp_stride));
        std::fill(tmps.back().get(), tmps.back().get() + P * tmp_stride, T(0));  // lanes past C
        bufs.emplace_back(g.K, g.C, chunk);
        if (by_filter_blocks) m_blocks.push_back(scratch<T>(checked_mul(int64_t(P), m_stride)));
    }
    constexpr int64_t D = Simd<double>::lanes;  // pairs transformed back at a time (filters_back)
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    for (int64_t c0 = 0; c0 < tl.total; c0 += chunk) {
        const int64_t tiles = std::min(chunk, tl.total - c0), blocks = (tiles + tl.block - 1) / tl.block;
        parallel_tasks(2 * blocks, threads, [&](int64_t job, int worker) {
            const int64_t b = job / 2, t0 = c0 + b * tl.block, nt = std::min(tl.block, c0 + tiles - t0);
            T* tmp = tmps[size_t(worker)].get();
            T* rows_w = rows[size_t(worker)].get();
            if (job % 2 == 0)
                transform_tile_major<T, F, InputTransform<F>>(g, tl, x, t0, nt, vx.get() + (t0 - c0) * g.C, x_stride,
                                                              tmp, tmp_stride, rows_w);
            else
                transform_tile_major<T, F, OutputGradTransform<F>>(gy, tl, dy, t0, nt, vy.get() + (t0 - c0) * g.K,
                                                                   y_stride, tmp, tmp_stride, rows_w);
        });
        if (by_filter_blocks)
            return parallel_for((g.K + KB - 1) / KB, threads, [&](int64_t blk, int worker) {
                const int64_t k0 = blk * KB, rows_k = std::min(KB, g.K - k0);
                T* mb = m_blocks[size_t(worker)].get();
                for (int xi = 0; xi < P; ++xi)
                    gemm_block<T>(0, rows_k, 0, g.C, 0, tiles, InMatrixAT<T>{vy.get() + xi * y_stride + k0, g.K},
                                  InMatrixB<T>::plain(vx.get() + xi * x_stride, g.C, g.C),
                                  OutMatrix<T>::plain(mb + xi * m_stride, g.C, g.C), Store::overwrite,
                                  bufs[size_t(worker)]);
                for (int64_t p = 0; p < rows_k * g.C; p += D) filters_back<T, F>(p, rows_k * g.C, mb, m_stride, dw + k0 * g.C * RR);
            });
        parallel_tasks(P, threads, [&](int64_t xi, int worker) {
            gemm_block<T>(0, g.K, 0, g.C, 0, tiles, InMatrixAT<T>{vy.get() + xi * y_stride, g.K},
                          InMatrixB<T>::plain(vx.get() + xi * x_stride, g.C, g.C),
                          OutMatrix<T>::plain(m.get() + xi * m_stride, g.C, g.C),
                          c0 == 0 ? Store::overwrite : Store::accumulate, bufs[size_t(worker)]);
        });
    }
    // dw[k, c] = G^T M[., k, c] G, for D consecutive pairs (k, c) at a time.
    const int64_t pairs = g.K * g.C;
    parallel_for((pairs + D - 1) / D, threads, [&](int64_t q, int) { filters_back<T, F>(q * D, pairs, m.get(), m_stride, dw); });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
