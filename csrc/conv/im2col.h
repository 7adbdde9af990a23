// The implicit im2col matrix X[(c,r,s), (n,ho,wo)] of a convolution, never stored whole: GEMM
// operand sources that gather it while packing, and the tap tables that describe its rows.
// Notation as in conv/dispatch.h.
#pragma once

#include "common/prelude.h"
#include "gemm/tile.h"
#include "gemm/micro_kernel.h"

namespace pyconv {
namespace PYCONV_ISA {

// [lo, hi): the t < len for which first + t * step lies in [0, width). Stride 1, the common
// case, needs no division.
inline void inside(int64_t first, int64_t step, int64_t width, int64_t len, int64_t& lo, int64_t& hi) {
    if (step == 1) {
        lo = std::clamp<int64_t>(-first, 0, len);
        hi = std::clamp<int64_t>(width - first, lo, len);
        return;
    }
    lo = std::min(len, first >= 0 ? 0 : (-first + step - 1) / step);
    hi = std::max(lo, std::min(len, first >= width ? 0 : (width - first + step - 1) / step));
}

// dst[t * dst_step] = row[first + t * step] where that lies in [0, width), else 0, t < len.
template <class T>
inline void gather_row(const T* row, int64_t width, int64_t first, int64_t step, int64_t len,
                       T* dst, int64_t dst_step) {
    int64_t lo, hi;
    inside(first, step, width, len, lo, hi);
    for (int64_t t = 0; t < lo; ++t) dst[t * dst_step] = T(0);
    if (step == 1 && dst_step == 1) {
        if (hi > lo) std::memcpy(dst + lo, row + first + lo, sizeof(T) * (hi - lo));
    } else {
        for (int64_t t = lo; t < hi; ++t) dst[t * dst_step] = row[first + t * step];
    }
    for (int64_t t = hi; t < len; ++t) dst[t * dst_step] = T(0);
}

// Consecutive pixel indices j = (n * rows + a) * cols + b that share an image n and a row a:
// b in [b0, b0 + len), the first of them at position `pos` of the range being split.
struct PixelRun {
    int64_t n, a, b0, len, pos;
};

// Splits pixels [j0, j0 + count) into runs; `out` has room for `count` runs. Returns how many.
inline int64_t pixel_runs(int64_t j0, int64_t count, int64_t rows, int64_t cols, PixelRun* out) {
    int64_t n = j0 / (rows * cols), a = (j0 / cols) % rows, b = j0 % cols, used = 0;
    for (int64_t pos = 0; pos < count;) {
        const int64_t len = std::min(cols - b, count - pos);
        out[used++] = PixelRun{n, a, b, len, pos};
        pos += len;
        b = 0;
        if (++a == rows) a = 0, ++n;
    }
    return used;
}

// One reduction row of the im2col matrix: which source channel plane and which offsets.
struct Tap {
    int64_t plane;       // channel offset within an image of the source, in elements
    int64_t dh, dw;      // source row = a * sh + dh, column = b * sw + dw
};

// The im2col matrix X[tap, pixel] of a source tensor (images of `image_stride` elements, planes
// Hs x Ws), pixels (n, a, b) over an output grid rows x cols, read with strides sh, sw.
template <class T>
struct Im2col {
    const T* src;
    int64_t image_stride, Hs, Ws;
    int64_t rows, cols, sh, sw;
    const Tap* taps;

    // Row `tap` of X over pixels of `run`, into dst (element t at dst[t * dst_step]).
    void gather(const Tap& tap, const PixelRun& run, T* dst, int64_t dst_step) const {
        const int64_t h = run.a * sh + tap.dh;
        if (h < 0 || h >= Hs) {
            for (int64_t t = 0; t < run.len; ++t) dst[t * dst_step] = T(0);
            return;
        }
        const T* row = src + run.n * image_stride + tap.plane + h * Ws;
        gather_row(row, Ws, run.b0 * sw + tap.dw, sw, run.len, dst, dst_step);
    }

    // As GEMM operand B (taps x pixels): dst[k * NR + j] = X[k0 + k, j0 + j].
    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t count, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        PixelRun runs[NR];
        const int64_t n_runs = pixel_runs(j0, count, rows, cols, runs);
        for (int64_t k = 0; k < kc; ++k) {
            T* d = dst + k * NR;
            for (int64_t r = 0; r < n_runs; ++r) gather(taps[k0 + k], runs[r], d + runs[r].pos, 1);
            for (int64_t j = count; j < NR; ++j) d[j] = T(0);
        }
    }
};

// X transposed (pixels x taps): operand B of the weight gradient.
template <class T>
struct Im2colTransposed {
    Im2col<T> x;

    // dst[k * NR + j] = X[j0 + j, k0 + k]: pixels k0.. (the reduction), taps j0...
    void pack_panel(int64_t k0, int64_t kc, int64_t j0, int64_t count, T* dst) const {
        constexpr int NR = gemm_nr<T>();
        PixelRun runs[kGemmMaxKC];  // kc <= kGemmMaxKC (gemm/blocking.h)
        const int64_t n_runs = pixel_runs(k0, kc, x.rows, x.cols, runs);
        for (int64_t j = 0; j < NR; ++j) {
            if (j >= count) {
                for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
                continue;
            }
            for (int64_t r = 0; r < n_runs; ++r)
                x.gather(x.taps[j0 + j], runs[r], dst + runs[r].pos * NR + j, NR);
        }
    }
};

// The taps of a direct convolution over a source with planes H x W: (c, r, s) row-major.
inline void direct_taps(const ConvShape& g, Tap* taps) {
    const int64_t Cg = g.C / g.groups;
    Tap* t = taps;
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s)
                *t++ = Tap{c * g.H * g.W, r * g.dh - g.ph, s * g.dw - g.pw};
}

// Offsets of the taps (c, r, s) of one group, row-major, in a source layout that has
// tap_offset(g, c, r, s) (PhaseGrid, PaddedInput).
template <class Layout>
std::vector<int64_t> tap_offsets(const ConvShape& g, const Layout& source) {
    std::vector<int64_t> offsets;
    offsets.reserve(g.C / g.groups * g.R * g.S);
    for (int64_t c = 0; c < g.C / g.groups; ++c)
        for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s) offsets.push_back(source.tap_offset(g, c, r, s));
    return offsets;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
