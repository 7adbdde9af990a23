// Convolution as a GEMM over the implicit im2col matrix (conv/im2col.h), B gathered from x row
// run by row run while packing: the general path, for shapes no specialised kernel takes.
#pragma once

#include "common/prelude.h"
#include "gemm/operands.h"
#include "gemm/driver.h"
#include "conv/im2col.h"

namespace pyconv {
namespace PYCONV_ISA {

// Forward: y[k, (n,ho,wo)] = sum_{(c,r,s)} w[k, (c,r,s)] X[(c,r,s), (n,ho,wo)], per group, with
// the weights packed once for every block and thread.
template <class T>
void conv2d_forward_im2col(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const int64_t HoWo = g.Ho * g.Wo;
    std::vector<Tap> taps(taps_n);
    direct_taps(g, taps.data());
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        const PrepackedA<T> A(Kg, taps_n, InMatrixA<T>::plain(w + grp * Kg * taps_n, taps_n, taps_n));
        const Im2col<T> B{x + grp * Cg * g.H * g.W, g.C * g.H * g.W, g.H, g.W,
                          g.Ho, g.Wo, g.sh, g.sw, taps.data()};
        OutMatrix<T> C{y + grp * Kg * HoWo, HoWo, HoWo, 1, 1, 0, g.K * HoWo};
        C.bias = bias ? bias + grp * Kg : nullptr;
        gemm_parallel<T>(Kg, g.N * HoWo, taps_n, A, B, C);
    }
}

// Weight gradient: dw[k, (c,r,s)] = sum_{(n,ho,wo)} dy[k, (n,ho,wo)] X[(c,r,s), (n,ho,wo)],
// X transposed while packing; the long reduction over pixels is split across threads.
template <class T>
void conv2d_grad_weight_im2col(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const int64_t HoWo = g.Ho * g.Wo;
    std::vector<Tap> taps(taps_n);
    direct_taps(g, taps.data());
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        // dy as A: rows k, columns (n, pixel) with images g.K * HoWo apart.
        const InMatrixA<T> A{dy + grp * Kg * HoWo, HoWo, HoWo, g.K * HoWo};
        const Im2colTransposed<T> B{Im2col<T>{x + grp * Cg * g.H * g.W, g.C * g.H * g.W, g.H, g.W,
                                              g.Ho, g.Wo, g.sh, g.sw, taps.data()}};
        gemm_parallel_split_k<T>(Kg, taps_n, g.N * HoWo, A, B, dw + grp * Kg * taps_n);
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
