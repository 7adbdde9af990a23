// The phase grid: x copied once into zero-padded planes split by stride phase, so that every
// tap of the convolution reads a *contiguous* run of the output grid.
//
// Tap (c, r, s) at output (ho, wo) reads x row (ho + qh)*sh + rh - ph with qh = r*dh / sh and
// rh = r*dh % sh (columns alike). Phase plane (c, rh, rw) holds x[h'*sh + rh - ph, w'*sw + rw - pw]
// for h' < Hq, w' < Wq, where Hq = Ho + max qh and Wq = Wo + max qw. On a grid of Wq columns
// per output row, output q = ho*Wq + wo reads plane offset q + qh*Wq + qw: the packing of B is a
// plain copy. Columns wo >= Wo of the grid are computed and dropped (Wq - Wo of every Wq).
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "gemm/operands.h"
#include "gemm/driver.h"
#include "gemm/dot.h"
#include "conv/im2col.h"
#include "conv/padding.h"

namespace pyconv {
namespace PYCONV_ISA {

struct PhaseGrid {
    int64_t phases, Hq, Wq, plane, image, slack;
    explicit PhaseGrid(const ConvShape& g)
        : phases(checked_mul(g.sh, g.sw)),
          Hq(g.Ho + (g.R - 1) * g.dh / g.sh),
          Wq(g.Wo + (g.S - 1) * g.dw / g.sw),
          plane(checked_mul(Hq, Wq)),
          image(checked_mul(g.C, phases, plane)),
          slack((g.S - 1) * g.dw / g.sw) {}  // the last taps read this far past the last plane
    // The grid's size as a double, for the rule that weighs it before building one.
    static double elements(const ConvShape& g) {
        return double(g.N) * double(g.C) * double(g.sh) * double(g.sw) *
               double(g.Ho + (g.R - 1) * g.dh / g.sh) * double(g.Wo + (g.S - 1) * g.dw / g.sw);
    }
    int64_t pixels(const ConvShape& g) const { return g.Ho * Wq; }
    // True when the grid is x itself (1x1, stride 1, no padding): no copy needed.
    bool is_input(const ConvShape& g) const {
        return phases == 1 && g.ph == 0 && g.pw == 0 && Hq == g.H && Wq == g.W && slack == 0;
    }
    int64_t size(const ConvShape& g) const { return checked_add(checked_mul(g.N, image), slack); }

    // Offset of tap (c, r, s) from the start of an image's planes (c counted within the group).
    int64_t tap_offset(const ConvShape& g, int64_t c, int64_t r, int64_t s) const {
        const int64_t phase = (r * g.dh % g.sh) * g.sw + s * g.dw % g.sw;
        return (c * phases + phase) * plane + (r * g.dh / g.sh) * Wq + s * g.dw / g.sw;
    }
};

// The longest grid row (columns per phase) the stride-2 copy splits through a stack buffer.
constexpr int64_t kStride2RowMax = 256;

// Stride 2 (ResNet's downsampling): each row of x, shifted right by pw and zero past its ends,
// split into its even and odd columns (the two column phases) in one loop that the compiler
// vectorises as a de-interleave. The general copy below gathers each phase's row separately
// with stride-2 scalar loads and pads it with library calls, and on the short rows of small
// layers (17 grid columns for 32x32 images) cost as much as half the direct kernel's time.
// One plane of x (src) into its phases' planes of the grid (dst).
template <class T>
void fill_phase_grid_stride2_plane(const ConvShape& g, const PhaseGrid& pg, const T* src, T* dst) {
    const int64_t n = 2 * pg.Wq;
    const int64_t lo = std::min(g.pw, n), hi = std::max(lo, std::min(n, g.pw + g.W));
    alignas(64) T shifted[2 * kStride2RowMax];
    for (int64_t ph_h = 0; ph_h < g.sh; ++ph_h)
        for (int64_t hq = 0; hq < pg.Hq; ++hq) {
            const int64_t h = hq * g.sh + ph_h - g.ph;
            T* d0 = dst + (ph_h * 2) * pg.plane + hq * pg.Wq;  // column phase 0
            T* d1 = d0 + pg.plane;                             // column phase 1
            if (h < 0 || h >= g.H) {
                std::fill(d0, d0 + pg.Wq, T(0));
                std::fill(d1, d1 + pg.Wq, T(0));
                continue;
            }
            const T* row = src + h * g.W;
            for (int64_t t = 0; t < lo; ++t) shifted[t] = T(0);
            for (int64_t t = lo; t < hi; ++t) shifted[t] = row[t - g.pw];
            for (int64_t t = hi; t < n; ++t) shifted[t] = T(0);
            for (int64_t t = 0; t < pg.Wq; ++t) {
                d0[t] = shifted[2 * t];
                d1[t] = shifted[2 * t + 1];
            }
        }
}

// One plane of x (src) into its phases' planes of the grid (dst), any stride.
template <class T>
void fill_phase_grid_plane(const ConvShape& g, const PhaseGrid& pg, const T* src, T* dst) {
    if (g.sw == 2 && pg.Wq <= kStride2RowMax) return fill_phase_grid_stride2_plane(g, pg, src, dst);
    for (int64_t ph_h = 0; ph_h < g.sh; ++ph_h)
        for (int64_t ph_w = 0; ph_w < g.sw; ++ph_w) {
            T* phase = dst + (ph_h * g.sw + ph_w) * pg.plane;
            const int64_t first = ph_w - g.pw;  // input column of grid column 0
            int64_t lo, hi;                     // grid columns inside the input, for every row
            inside(first, g.sw, g.W, pg.Wq, lo, hi);
            for (int64_t hq = 0; hq < pg.Hq; ++hq) {
                const int64_t h = hq * g.sh + ph_h - g.ph;
                T* d = phase + hq * pg.Wq;
                if (h < 0 || h >= g.H) {
                    std::fill(d, d + pg.Wq, T(0));
                    continue;
                }
                const T* row = src + h * g.W;
                std::fill(d, d + lo, T(0));
                if (g.sw == 1) std::copy(row + first + lo, row + first + hi, d + lo);
                else for (int64_t t = lo; t < hi; ++t) d[t] = row[first + t * g.sw];
                std::fill(d + hi, d + pg.Wq, T(0));
            }
        }
}

template <class T>
void fill_phase_grid(const ConvShape& g, const PhaseGrid& pg, const T* x, T* xq, int threads = num_threads()) {
    const int64_t planes = g.N * g.C;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(planes, threads,
                 [&](int64_t p, int) { fill_phase_grid_plane(g, pg, x + p * g.H * g.W, xq + p * pg.phases * pg.plane); });
    std::fill(xq + g.N * pg.image, xq + pg.size(g), T(0));
}

// One image's grid (x_image: its C planes) into dst (pg.image elements, then pg.slack zeros), on
// the calling thread.
template <class T>
void fill_phase_grid_image(const ConvShape& g, const PhaseGrid& pg, const T* x_image, T* dst) {
    for (int64_t c = 0; c < g.C; ++c) fill_phase_grid_plane(g, pg, x_image + c * g.H * g.W, dst + c * pg.phases * pg.plane);
    std::fill(dst + pg.image, dst + pg.image + pg.slack, T(0));
}

// The phase grid of x: x itself where they coincide, else a copy filled into `storage`.
template <class T>
const T* phase_grid_of(const ConvShape& g, const PhaseGrid& pg, const T* x, Scratch<T>& storage) {
    if (pg.is_input(g)) return x;
    storage = scratch<T>(pg.size(g));
    fill_phase_grid(g, pg, x, storage.get());
    return storage.get();
}

// Forward convolution on the phase grid: per group, y[k, (n, ho, wo)] over the grid's columns.
template <class T>
void conv2d_forward_grid(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const int64_t HoWo = g.Ho * g.Wo;
    const PhaseGrid pg(g);
    Scratch<T> storage;
    const T* xq = phase_grid_of(g, pg, x, storage);
    const std::vector<int64_t> offsets = tap_offsets(g, pg);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        const PrepackedA<T> A(Kg, taps_n, InMatrixA<T>::plain(w + grp * Kg * taps_n, taps_n, taps_n));
        InMatrixB<T> B{xq + grp * Cg * pg.phases * pg.plane, 0, pg.pixels(g), pg.image};
        B.row_offsets = offsets.data();
        // Grid column (n, ho, wo) -> y[n, k, ho, wo], dropped when wo >= Wo. With no columns to
        // drop (kernels no wider than the stride, e.g. 1x1) an image's pixels are one contiguous
        // run, so whole tiles store in place instead of going through the edge tile in runs of Wo.
        OutMatrix<T> C{y + grp * Kg * HoWo, HoWo, pg.Wq, 1, g.Ho, g.Wo, g.K * HoWo};
        if (pg.Wq == g.Wo) C = OutMatrix<T>{y + grp * Kg * HoWo, HoWo, HoWo, 1, 1, 0, g.K * HoWo};
        else C.n0_valid = g.Wo;
        C.bias = bias ? bias + grp * Kg : nullptr;
        gemm_parallel<T>(Kg, g.N * pg.pixels(g), taps_n, A, B, C);
    }
}

// Whether every grid element that the dropped columns wo >= Wo read is finite. Those outputs
// meet zeros of dy in the weight gradient, and 0 * inf or 0 * NaN would make NaNs of weights
// that never read the element. They read the grid columns [Wo, Wq) of each row and, past a
// row's end, the first `slack` columns of the rows below.
template <class T>
bool dropped_columns_finite(const ConvShape& g, const PhaseGrid& pg, const T* xq) {
    if (pg.Wq == g.Wo) return true;
    const int64_t rows = g.N * g.C * pg.phases * pg.Hq;
    std::atomic<int64_t> bad{0};
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(rows, num_threads(), [&](int64_t begin, int64_t end, int) {
        int64_t found = 0;
        for (int64_t r = begin; r < end; ++r) {
            const T* row = xq + r * pg.Wq;
            for (int64_t w = 0; w < pg.slack; ++w) found += !(row[w] - row[w] == T(0));  // NaN unless finite
            for (int64_t w = g.Wo; w < pg.Wq; ++w) found += !(row[w] - row[w] == T(0));
        }
        bad += found;
    });
    return bad == 0;
}

// Weight gradient on the phase grid, in the GEMM's dot-product form: both dy and the grid run
// along pixels, so no packing has to transpose. Where the grid has columns wo >= Wo (computed
// and dropped), dy is copied onto the grid's columns first, with zeros in those; else (1x1
// kernels, kernels no wider than the stride) dy is read in place (its copy was 35% of a
// 32 -> 32 1x1 weight gradient on 32x32 images). Returns false, having
// written nothing, when those columns meet an inf or NaN of x (dropped_columns_finite): the
// caller then takes another algorithm.
template <class T>
bool conv2d_grad_weight_grid(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const PhaseGrid pg(g);
    const int64_t pixels = pg.pixels(g);
    Scratch<T> storage;
    const T* xq = phase_grid_of(g, pg, x, storage);
    if (!dropped_columns_finite(g, pg, xq)) return false;
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    Scratch<T> dyq;
    const T* dy_grid = dy;
    if (pg.Wq != g.Wo) {
        dyq = scratch<T>(checked_mul(g.N, g.K, pixels));
        parallel_for(g.N * g.K, num_threads(), [&](int64_t p, int) {
            for (int64_t ho = 0; ho < g.Ho; ++ho) {
                T* d = dyq.get() + p * pixels + ho * pg.Wq;
                std::copy(dy + (p * g.Ho + ho) * g.Wo, dy + (p * g.Ho + ho + 1) * g.Wo, d);
                std::fill(d + g.Wo, d + pg.Wq, T(0));
            }
        });
        dy_grid = dyq.get();
    }
    const std::vector<int64_t> offsets = tap_offsets(g, pg);
    // The dot-product tile pads rows to MR and columns to NR: with few output channels (LeNet's
    // first layer: 6 channels x 25 taps, 8 x 30 slots in AVX-512's 4 x 6 tiles) the transposed
    // product, taps x channels (28 x 6 slots), computes 30% fewer, then is transposed (a few
    // hundred elements). Either way each element sums the same products in the same order.
    constexpr int64_t MR = DotTile<T>::MR, NR = DotTile<T>::NR;
    auto slots = [&](int64_t m, int64_t n) { return (m + MR - 1) / MR * MR * ((n + NR - 1) / NR * NR); };
    const bool transposed = slots(taps_n, Kg) < slots(Kg, taps_n);
    Scratch<T> dwt = scratch<T>(transposed ? taps_n * Kg : 1);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        const PixelRows<T> A{dy_grid + grp * Kg * pixels, pixels, nullptr, pixels, g.K * pixels};
        const PixelRows<T> B{xq + grp * Cg * pg.phases * pg.plane, 0, offsets.data(), pixels,
                             pg.image};
        T* dw_group = dw + grp * Kg * taps_n;
        if (!transposed) {
            gemm_dot_parallel<T>(Kg, taps_n, g.N * pixels, A, B, dw_group);
            continue;
        }
        gemm_dot_parallel<T>(taps_n, Kg, g.N * pixels, B, A, dwt.get());
        for (int64_t k = 0; k < Kg; ++k)
            for (int64_t tap = 0; tap < taps_n; ++tap) dw_group[k * taps_n + tap] = dwt[tap * Kg + k];
    }
    return true;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
