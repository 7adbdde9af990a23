// Strided 1x1 convolutions without padding: output (ho, wo) reads only input pixel
// (ho*sh, wo*sw), so each pass is the stride-1 1x1 convolution of the subsampled input
// xs[n, c, ho, wo] = x[n, c, ho*sh, wo*sw] (a plain GEMM per image, w (K x C) times
// xs (C x Ho Wo)). The forward gathers xs straight into the GEMM's packed B panels; the weight
// gradient reads a gathered copy of xs; the input gradient computes dxs and scatters it into
// a zeroed grad_x. The general kernels instead build the whole sh*sw-phase grid of x (or
// gather B through im2col) to use one phase of it.
#pragma once

#include "common/prelude.h"
#include "common/scratch.h"
#include "gemm/driver.h"
#include "gemm/operands.h"

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
    parallel_for(g.N * g.C, num_threads(), [&](int64_t p, int) {
        for (int64_t ho = 0; ho < g.Ho; ++ho) {
                const T* row = x + (p * g.H + ho * g.sh) * g.W;
                T* d = out + (p * g.Ho + ho) * g.Wo;
                for (int64_t wo = 0; wo < g.Wo; ++wo) d[wo] = row[wo * g.sw];
            }
    });
    return xs;
}

// B of the forward, B[c, (n, ho, wo)] = x[n, c, ho*sh, wo*sw], gathered from x in place while
// packing: each pixel is read once, into a panel that stays in cache, where a copy of xs went
// to memory and was packed again from there.
template <class T>
struct SubsampledB {
    const T* x;
    int64_t image, plane, W, Wo, HoWo, sh, sw;

    // dst[k * NR + j] = B[k0 + k, j0 + j] for j < cols, 0 for cols <= j < NR.
    using V = Simd<T>;
    static constexpr int L = V::lanes;

    // p[0], p[2], ..., p[2 (L - 1)] from two vector loads, the second from p + L - 1 so that
    // nothing past p[2 (L - 1)] is read.
    static typename V::reg even_lanes(const T* p) {
        typename V::I pick = V::iota() * 2;
        for (int i = L / 2; i < L; ++i) pick[i] += 1;
        return __builtin_shuffle(V::load(p), V::load(p + L - 1), pick);
    }

    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t cols, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        // The panel's columns as runs along output rows (at most NR of them).
        int64_t run_offset[NR], run_length[NR], runs = 0;
        for (int64_t j = 0; j < cols; ++runs) {
            const int64_t p = j0 + j, q = p % HoWo, wo = q % Wo;
            run_offset[runs] = (p / HoWo) * image + (q / Wo) * sh * W + wo * sw;
            run_length[runs] = std::min(cols - j, Wo - wo);
            j += run_length[runs];
        }
        for (int64_t k = 0; k < kc; ++k) {
            const T* channel = x + (k0 + k) * plane;
            T* d = dst + k * NR;
            for (int64_t r = 0; r < runs; ++r) {
                const T* src = channel + run_offset[r];
                const int64_t n = run_length[r];
                int64_t t = 0;
                if (sw == 2)
                    for (; t + L <= n; t += L) V::store(d + t, even_lanes(src + 2 * t));
                for (; t < n; ++t) d[t] = src[t * sw];
                d += n;
            }
            for (int64_t j = cols; j < NR; ++j) dst[k * NR + j] = T(0);
        }
    }
};

// The forward with multiply-adds this many or more runs on the whole team (the general GEMM
// waits for kGemmParallelMacs, which kept ResNet's 2.1M-multiply-add shortcuts on one
// thread while ONNX Runtime ran them on two). Its reduction is short (C taps), so the work is
// mostly moving x and y, and between a graph's layers the pool's workers are still polling
// (common/thread_pool.h). Not yet measured on a quiet 2-core host: results do not depend on it.
constexpr int64_t kSubsampledParallelMacs = int64_t(1) << 20;

template <class T>
void conv2d_forward_subsampled(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    const int64_t HoWo = g.Ho * g.Wo;
    const PrepackedA<T> A(g.K, g.C, InMatrixA<T>::plain(w, g.C, g.C));
    const SubsampledB<T> B{x, g.C * g.H * g.W, g.H * g.W, g.W, g.Wo, HoWo, g.sh, g.sw};
    OutMatrix<T> C{y, HoWo, HoWo, 1, 1, 0, g.K * HoWo};
    C.bias = bias;
    gemm_parallel<T>(g.K, g.N * HoWo, g.C, A, B, C, Store::overwrite, kSubsampledParallelMacs);
}

// grad_x = 0 except at the read pixels, where it is dxs.
template <class T>
void scatter_subsampled(const ConvShape& g, const T* dxs, T* dx) {
    parallel_for(g.N * g.C, num_threads(), [&](int64_t p, int) {
        T* plane = dx + p * g.H * g.W;
        std::fill(plane, plane + g.H * g.W, T(0));
        for (int64_t ho = 0; ho < g.Ho; ++ho) {
            const T* src = dxs + (p * g.Ho + ho) * g.Wo;
            T* row = plane + ho * g.sh * g.W;
            for (int64_t wo = 0; wo < g.Wo; ++wo) row[wo * g.sw] = src[wo];
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
