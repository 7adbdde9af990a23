// The weight gradient of a 1x1 convolution with stride 1 and no padding on small images (a
// conditional discriminator's 1x1 layer on 4x4 features):
//
//   dw[k, c] = sum over images n and pixels p of dy[n, k, p] x[n, c, p]
//
// is one packed GEMM, dy (K rows) times x^T (C columns), whose reduction runs over (image,
// pixel). The forms per image reduce over a few pixels each, so their accumulators are
// loaded and stored for a handful of products.
#pragma once

#include "common/prelude.h"
#include "gemm/driver.h"

namespace pyconv {
namespace PYCONV_ISA {

// B[k, j] = base[(k / k_inner) * k_outer_stride + j * col_stride + k % k_inner]: an NCHW
// tensor as (image, pixel) rows by channel columns. Within an image a column's pixels are
// contiguous, so each image's run of rows packs as ColumnsB does (transposes in registers).
template <class T>
struct PixelRowsB {
    const T* base;
    int64_t k_inner, k_outer_stride, col_stride;

    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t cols, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        for (int64_t k = 0; k < kc;) {
            const int64_t image = (k0 + k) / k_inner, pixel = (k0 + k) % k_inner;
            const int64_t run = std::min(kc - k, k_inner - pixel);
            const T* planes = base + image * k_outer_stride;
            columns_b<T>([&](int64_t j) { return planes + j * col_stride; }).pack_panel(pixel, run, j0, cols, dst + k * NR);
            k += run;
        }
    }
};

inline bool pointwise_weight_grad_applies(const ConvShape& g) {
    return g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.groups == 1;
}

template <class T>
void conv2d_grad_weight_pointwise(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const int64_t HW = g.H * g.W;
    // dw (K x C) = dy (K x (n, p)) x^T ((n, p) x C); the reduction cut in chunks fixed by the
    // shape (the same bits on any number of threads)
    gemm_parallel_split_k<T>(g.K, g.C, g.N * HW, InMatrixA<T>{dy, HW, HW, g.K * HW},
                             PixelRowsB<T>{x, HW, g.C * HW, HW}, dw);
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
