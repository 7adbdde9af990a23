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

// X transposed where X is x itself (a 1x1 kernel, stride 1, no padding): B[k, j] = channel j
// of pixel k = (image, pixel) of x. Within an image a channel's pixels are contiguous, so each
// image's run of rows packs as ColumnsB does, through transposes in registers (the gathers of
// Im2colTransposed went element by element: a 138 -> 128 layer on 4x4, batch 64, 0.42
// against 0.25 ms).
template <class T>
struct PlanesTransposed {
    const T* x;
    int64_t pixels, image_stride;

    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t cols, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        for (int64_t k = 0; k < kc;) {
            const int64_t image = (k0 + k) / pixels, pixel = (k0 + k) % pixels;
            const int64_t run = std::min(kc - k, pixels - pixel);
            const T* planes = x + image * image_stride;
            columns_b<T>([&](int64_t j) { return planes + j * pixels; }).pack_panel(pixel, run, j0, cols, dst + k * NR);
            k += run;
        }
    }
};

// Weight gradient: dw[k, (c,r,s)] = sum_{(n,ho,wo)} dy[k, (n,ho,wo)] X[(c,r,s), (n,ho,wo)],
// X transposed while packing; the long reduction over pixels is split across threads.
template <class T>
void conv2d_grad_weight_im2col(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const int64_t HoWo = g.Ho * g.Wo;
    const bool x_is_X = g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
    std::vector<Tap> taps(taps_n);
    direct_taps(g, taps.data());
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        // dy as A: rows k, columns (n, pixel) with images g.K * HoWo apart.
        const InMatrixA<T> A{dy + grp * Kg * HoWo, HoWo, HoWo, g.K * HoWo};
        const T* xg = x + grp * Cg * g.H * g.W;
        T* dwg = dw + grp * Kg * taps_n;
        if (x_is_X) {
            gemm_parallel_split_k<T>(Kg, taps_n, g.N * HoWo, A, PlanesTransposed<T>{xg, HoWo, g.C * HoWo}, dwg);
            continue;
        }
        const Im2colTransposed<T> B{Im2col<T>{xg, g.C * g.H * g.W, g.H, g.W, g.Ho, g.Wo, g.sh, g.sw, taps.data()}};
        gemm_parallel_split_k<T>(Kg, taps_n, g.N * HoWo, A, B, dwg);
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
