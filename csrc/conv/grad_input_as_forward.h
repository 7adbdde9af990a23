// With stride 1, grad_x is itself a convolution: dy convolved with the weights flipped in
// space and transposed in channels, padded by (R-1)*dh - ph. conv/dispatch.h runs it on the
// forward kernels (which store tiles in place instead of scattering them, as col2im must);
// this header builds that convolution's geometry and weights.
#pragma once

#include "common/prelude.h"
#include "common/scratch.h"

namespace pyconv {
namespace PYCONV_ISA {

// The forward convolution whose output is grad_x: input dy (N, K, Ho, Wo), output (N, C, H, W).
inline ConvShape grad_input_as_forward_shape(const ConvShape& g) {
    return ConvShape{g.N, g.K, g.Ho, g.Wo, g.C, g.R, g.S, g.H, g.W, 1, 1,
                     (g.R - 1) * g.dh - g.ph, (g.S - 1) * g.dw - g.pw, g.dh, g.dw, g.groups};
}

// Its weights: w (K, Cg, R, S) as (C, Kg, R, S), flipped in space.
template <class T>
Scratch<T> flipped_transposed_weights(const ConvShape& g, const T* w) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
    Scratch<T> wf = scratch<T>(g.C * Kg * RS);
    for (int64_t grp = 0; grp < g.groups; ++grp)
        for (int64_t c = 0; c < Cg; ++c)
            for (int64_t k = 0; k < Kg; ++k)
                for (int64_t rs = 0; rs < RS; ++rs)
                    wf[((grp * Cg + c) * Kg + k) * RS + (RS - 1 - rs)] = w[((grp * Kg + k) * Cg + c) * RS + rs];
    return wf;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
