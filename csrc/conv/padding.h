// Zero-padded copies of the input, for the kernels whose inner loops must not test bounds.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

// Padded plane geometry: every input position any output reads, padding included.
// Rows are widened so that whole vectors of outputs (a last one past Wo included) read inside.
struct PaddedPlane {
    int64_t Hp, Wp;
    PaddedPlane(const ConvShape& g, int64_t lanes = 1)
        : Hp(checked_add(checked_mul(g.Ho - 1, g.sh), checked_mul(g.R - 1, g.dh), 1)),
          Wp(checked_add(checked_mul((g.Wo + lanes - 1) / lanes * lanes - 1, g.sw),
                         checked_mul(g.S - 1, g.dw), 1)) {}
    int64_t size() const { return checked_mul(Hp, Wp); }
    // The size as a double, for the rules that weigh it (never overflows).
    double area() const { return double(Hp) * double(Wp); }
};

// Whether scratch of `elements` (estimated in double, which cannot overflow) stays within a
// small multiple of the call's own operands. Padded copies and phase grids grow with padding,
// dilation and stride, not with the data alone: a stride or dilation far beyond the input
// would make them huge (or their size overflow) for a tiny convolution. Algorithms whose
// scratch fails this give way to im2col / col2im, whose scratch is a few GEMM tiles.
inline bool scratch_fits(const ConvShape& g, double elements) {
    const double operands = double(g.N) * double(g.C) * double(g.H) * double(g.W) +
                            double(g.N) * double(g.K) * double(g.Ho) * double(g.Wo) +
                            double(g.K) * double(g.C / g.groups) * double(g.R) * double(g.S);
    return elements <= 16.0 * operands + double(1 << 20);
}

// Whether `copies` zero-padded input planes fit that budget (rows widened for up to 16 lanes).
inline bool padded_planes_fit(const ConvShape& g, double copies) {
    const double Hp = double(g.Ho - 1) * double(g.sh) + double(g.R - 1) * double(g.dh) + 1;
    const double Wp = double(g.Wo + 15) * double(g.sw) + double(g.S - 1) * double(g.dw) + 1;
    return scratch_fits(g, copies * Hp * Wp);
}

// dst (Hp x Wp) = plane (H x W) shifted by the top/left padding, zeros around. Rows are copied
// by whole vectors and one masked vector: a library copy per row cost as much as the rest of
// the padding (32-column rows of 16x32x32x32 -> 64 3x3 stride 2: 7% of the forward by channels).
template <class T>
void pad_plane(const ConvShape& g, const PaddedPlane& p, const T* plane, T* dst) {
    using S = Simd<T>;
    constexpr int64_t L = S::lanes;
    // Columns [lo, hi) of a padded row hold x's columns [lo - pw, hi - pw).
    const int64_t lo = std::clamp<int64_t>(g.pw, 0, p.Wp), hi = std::clamp<int64_t>(g.pw + g.W, lo, p.Wp);
    for (int64_t hp = 0; hp < p.Hp; ++hp) {
        const int64_t h = hp - g.ph;
        T* d = dst + hp * p.Wp;
        if (h < 0 || h >= g.H) {
            std::fill(d, d + p.Wp, T(0));
            continue;
        }
        const T* row = plane + h * g.W - g.pw;
        for (int64_t t = 0; t < lo; ++t) d[t] = T(0);
        int64_t t = lo;
        for (; t + L <= hi; t += L) S::store(d + t, S::load(row + t));
        if (t < hi) store_first<T>(d + t, load_first<T>(row + t, int(hi - t)), int(hi - t));
        for (t = hi; t < p.Wp; ++t) d[t] = T(0);
    }
}

// x zero-padded for the channel-vectorised kernels, which read single elements and so need
// no phase split for strides: planes of Hp x Wp covering every position an output reads
// (padding included), or x itself when nothing is padded. Input (c, h, w) of image n, counted
// from the top-left padding, is at data + n*image + c*plane + h*row + w.
template <class T>
struct PaddedInput {
    const T* data;
    int64_t image, plane, row;
    Scratch<T> storage;

    PaddedInput(const ConvShape& g, const T* x) {
        const PaddedPlane pp(g);
        if (g.ph == 0 && g.pw == 0 && pp.Hp <= g.H && pp.Wp <= g.W) {
            data = x, image = g.C * g.H * g.W, plane = g.H * g.W, row = g.W;
            return;
        }
        storage = scratch<T>(checked_mul(g.N, g.C, pp.size()));
        data = storage.get(), image = g.C * pp.size(), plane = pp.size(), row = pp.Wp;
        FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
        parallel_for(g.N * g.C, num_threads(), [&](int64_t p, int) { pad_plane(g, pp, x + p * g.H * g.W, storage.get() + p * plane); });
    }
    int64_t tap_offset(const ConvShape& g, int64_t c, int64_t r, int64_t s) const {
        return c * plane + r * g.dh * row + s * g.dw;
    }
    // Offset of output pixel p = (n, ho, wo), counted over the whole batch.
    int64_t pixel(const ConvShape& g, int64_t p) const {
        const int64_t HoWo = g.Ho * g.Wo, q = p % HoWo;
        return (p / HoWo) * image + (q / g.Wo) * g.sh * row + (q % g.Wo) * g.sw;
    }
};

}  // namespace PYCONV_ISA
}  // namespace pyconv
