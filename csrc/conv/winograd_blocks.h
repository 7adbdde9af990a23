// Kernels larger than 3x3 (stride 1, dilation 1, one group) on F(4x4, 3x3) Winograd, by cutting
// the kernel into 3x3 blocks. Block (i, j) holds the kernel's rows 3i..3i+2 and columns
// 3j..3j+2 (zeros past its edge); output (ho, wo) takes from it
//   sum_c sum_{r,s < 3} w[k, c, 3i + r, 3j + s] xp[c, ho + 3i + r, wo + 3j + s]
// with xp the zero-padded input, which is a 3x3 convolution without padding of xp shifted up
// by 3i rows and left by 3j columns. So the R x S convolution is one 3x3 convolution over
// B = ceil(R/3) ceil(S/3) shifted copies of xp, stacked as B C input channels (channel
// b C + c, b = i ceil(S/3) + j), with the blocks stacked alike as its weights:
//   x3[n, b C + c, h, w] = xp[n, c, h + 3i, w + 3j]     (h < Ho + 2, w < Wo + 2)
//   w3[k, b C + c, r, s] = w[k, c, 3i + r, 3j + s]       (0 past the kernel)
// Winograd does a 3x3 block's 9 products per output in 2.25, so a 3x5 kernel's 15 cost 4.5 and
// a 5x5 kernel's 25 cost 9, for one copy of x per block. Its weight gradient is the 3x3 one of
// x3, cut back into the kernel; its input gradient is a forward convolution with the flipped
// weights (conv/grad_input_as_forward.h), which takes the blocks in turn.
#pragma once

#include "common/prelude.h"
#include "common/scratch.h"
#include "conv/epilogue.h"
#include "conv/winograd.h"

namespace pyconv {
namespace PYCONV_ISA {

inline int64_t kernel_blocks_down(const ConvShape& g) { return (g.R + 2) / 3; }
inline int64_t kernel_blocks_across(const ConvShape& g) { return (g.S + 2) / 3; }

// Whether the blocks compute g at all: a kernel larger than 3x3 with stride 1, dilation 1 and
// one group.
inline bool winograd_blocks_apply(const ConvShape& g) {
    return g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.groups == 1 && g.R >= 3 && g.S >= 3 &&
           g.R * g.S > 9;
}

// The 3x3 convolution over the copies: x3 as its input, no padding (the copies hold it), the
// same output.
inline ConvShape winograd_blocks_shape(const ConvShape& g) {
    ConvShape b = g;
    b.C = checked_mul(g.C, kernel_blocks_down(g), kernel_blocks_across(g));
    b.H = g.Ho + 2, b.W = g.Wo + 2, b.R = 3, b.S = 3, b.ph = 0, b.pw = 0;
    return b;
}

// x3 (see the top of the file).
template <class T>
Scratch<T> winograd_blocks_input(const ConvShape& g, const T* x) {
    const ConvShape b = winograd_blocks_shape(g);
    Scratch<T> x3 = scratch<T>(checked_mul(b.N, b.C, b.H * b.W));
    T* out = x3.get();
    const int64_t across = kernel_blocks_across(g);
    parallel_for(b.N * b.C, num_threads(), [&](int64_t p, int) {
        const int64_t n = p / b.C, block = (p % b.C) / g.C, c = p % g.C;
        const int64_t top = 3 * (block / across) - g.ph, left = 3 * (block % across) - g.pw;
        const T* plane = x + (n * g.C + c) * g.H * g.W;
        // Columns w of a row read x's column w + left where that lies in [0, W).
        const int64_t first = std::clamp<int64_t>(-left, 0, b.W), last = std::clamp<int64_t>(g.W - left, first, b.W);
        for (int64_t h = 0; h < b.H; ++h) {
            T* d = out + (p * b.H + h) * b.W;
            const int64_t row = h + top;
            if (row < 0 || row >= g.H) {
                std::fill(d, d + b.W, T(0));
                continue;
            }
            std::fill(d, d + first, T(0));
            std::copy(plane + row * g.W + first + left, plane + row * g.W + last + left, d + first);
            std::fill(d + last, d + b.W, T(0));
        }
    });
    return x3;
}

// w3 (see the top of the file).
template <class T>
Scratch<T> winograd_blocks_weights(const ConvShape& g, const T* w) {
    const ConvShape b = winograd_blocks_shape(g);
    Scratch<T> w3 = scratch<T>(checked_mul(b.K, b.C, 9));
    const int64_t across = kernel_blocks_across(g);
    for (int64_t k = 0; k < b.K; ++k)
        for (int64_t bc = 0; bc < b.C; ++bc) {
            const int64_t block = bc / g.C, c = bc % g.C, i = block / across, j = block % across;
            for (int64_t r = 0; r < 3; ++r)
                for (int64_t s = 0; s < 3; ++s) {
                    const int64_t kr = 3 * i + r, ks = 3 * j + s;
                    w3[(k * b.C + bc) * 9 + r * 3 + s] =
                        kr < g.R && ks < g.S ? w[((k * g.C + c) * g.R + kr) * g.S + ks] : T(0);
                }
        }
    return w3;
}

// layout: Winograd's layout for the 3x3 convolution over the copies.
template <class T>
void conv2d_forward_winograd_blocks(const ConvShape& g, const T* x, const T* w, const T* bias, T* y,
                                    WinogradLayout layout, const Epilogue<T>& ep = {}) {
    const ConvShape b = winograd_blocks_shape(g);
    const Scratch<T> x3 = winograd_blocks_input(g, x), w3 = winograd_blocks_weights(g, w);
    conv2d_forward_winograd(b, x3.get(), w3.get(), bias, y, layout, ep);
}

template <class T>
void conv2d_grad_weight_winograd_blocks(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const ConvShape b = winograd_blocks_shape(g);
    const Scratch<T> x3 = winograd_blocks_input(g, x);
    Scratch<T> dw3 = scratch<T>(checked_mul(b.K, b.C, 9));
    conv2d_grad_weight_winograd(b, dy, x3.get(), dw3.get());
    // Each tap of the kernel lies in exactly one block; the blocks' taps past it are dropped.
    const int64_t across = kernel_blocks_across(g);
    for (int64_t k = 0; k < g.K; ++k)
        for (int64_t c = 0; c < g.C; ++c)
            for (int64_t kr = 0; kr < g.R; ++kr)
                for (int64_t ks = 0; ks < g.S; ++ks) {
                    const int64_t block = (kr / 3) * across + ks / 3;
                    dw[((k * g.C + c) * g.R + kr) * g.S + ks] = dw3[(k * b.C + block * g.C + c) * 9 + (kr % 3) * 3 + ks % 3];
                }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
