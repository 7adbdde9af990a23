// The input gradient as col2im: col[(c,r,s), (n,ho,wo)] = sum_k w[k, (c,r,s)] dy[k, (n,ho,wo)],
// a GEMM whose tiles are added into grad_x where they belong instead of being stored.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "gemm/chunked_reduction.h"
#include "gemm/micro_kernel.h"
#include "gemm/operands.h"
#include "gemm/driver.h"
#include "conv/im2col.h"

namespace pyconv {
namespace PYCONV_ISA {

// A row (c, r, s) of the input-gradient GEMM, seen from grad_x: the plane it adds into, its
// offsets, and the output columns [wo_lo, wo_hi) whose input column lies inside the image
// (precomputed: a division per tile row would cost as much as the tile's arithmetic).
struct ScatterTap {
    int64_t plane, dh, dw, wo_lo, wo_hi;
};

inline void scatter_taps(const ConvShape& g, ScatterTap* taps) {
    const int64_t Cg = g.C / g.groups;
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s) {
                const int64_t dw = s * g.dw - g.pw;
                int64_t lo, hi;
                inside(dw, g.sw, g.W, g.Wo, lo, hi);
                *taps++ = ScatterTap{c * g.H * g.W, r * g.dh - g.ph, dw, lo, hi};
            }
}

// The destination of the input-gradient GEMM: C[(c,r,s), (n,ho,wo)] is added to
// dx[n, c, ho*sh - ph + r*dh, wo*sw - pw + s*dw] where that lies inside the image (col2im).
// Tiles are never stored in place; the caller zeroes dx first.
template <class T>
struct Col2im {
    T* dx;                 // channel 0 of the group in image 0
    int64_t image_stride;  // C * H * W
    int64_t H, W, Ho, Wo, sh, sw;
    const ScatterTap* rows;
    static constexpr int64_t row_stride = 0;
    static constexpr const T* bias = nullptr;

    T* tile_ptr(int64_t, int64_t, int64_t) const { return nullptr; }

    void scatter(int64_t i0, int64_t j0, int64_t mr, int64_t nr, const T* tile, int64_t ld,
                 Store) const {
        PixelRun runs[gemm_nr<T>()];
        const int64_t n_runs = pixel_runs(j0, nr, Ho, Wo, runs);
        for (int64_t i = 0; i < mr; ++i) {
            const ScatterTap& tap = rows[i0 + i];
            for (int64_t r = 0; r < n_runs; ++r) {
                const PixelRun& run = runs[r];
                const int64_t h = run.a * sh + tap.dh;
                if (h < 0 || h >= H) continue;
                T* drow = dx + run.n * image_stride + tap.plane + h * W;
                const T* src = tile + i * ld + run.pos - run.b0;  // indexed by wo
                const int64_t lo = std::max(tap.wo_lo, run.b0), hi = std::min(tap.wo_hi, run.b0 + run.len);
                if (sw == 1) {
                    for (int64_t wo = lo; wo < hi; ++wo) drow[wo + tap.dw] += src[wo];
                } else {
                    for (int64_t wo = lo; wo < hi; ++wo) drow[wo * sw + tap.dw] += src[wo];
                }
            }
        }
    }
};

// The input gradient's work units, fixed by the shape and never by the thread count: a unit
// is a run of images and, when the batch alone gives too few units, a run of channels. Each
// unit is one GEMM block per group whose tiles add into grad_x elements that no other unit
// touches, in an order that the unit alone fixes, so grad_x has the same bits on any number
// of threads. Units are shares of the images and channels as equal as whole ones allow.
struct Col2imUnits {
    int64_t N, Cg, image_units, channel_units;
    int64_t count() const { return image_units * channel_units; }
    int64_t image_begin(int64_t unit) const { return N * (unit / channel_units) / image_units; }
    int64_t image_end(int64_t unit) const { return N * (unit / channel_units + 1) / image_units; }
    int64_t channel_begin(int64_t unit) const { return Cg * (unit % channel_units) / channel_units; }
    int64_t channel_end(int64_t unit) const { return Cg * (unit % channel_units + 1) / channel_units; }
};

inline Col2imUnits col2im_units(const ConvShape& g) {
    constexpr int64_t kUnits = 16;          // enough to share among the threads of a large machine
    constexpr int64_t kMinColumns = 1024;   // GEMM columns (n, ho, wo) per unit: its last column
                                            // panel is partly wasted
    constexpr int64_t kMinRows = 64;        // GEMM rows (c, r, s) per unit: each unit packs its
                                            // own copy of dy
    const int64_t Cg = g.C / g.groups, RS = g.R * g.S;
    // Powers of two of each, so that the units share out evenly among the usual thread counts.
    const int64_t by_columns = g.N * g.Ho * g.Wo / kMinColumns;
    const int64_t image_units = power_of_two_floor(std::max<int64_t>(1, std::min({kUnits, by_columns, g.N})));
    const int64_t wanted = kUnits / image_units;
    const int64_t channel_units = power_of_two_floor(std::max<int64_t>(1, std::min({wanted, Cg, Cg * RS / kMinRows})));
    return Col2imUnits{g.N, Cg, image_units, channel_units};
}

// grad_x = col2im(W^T dy), per group: a GEMM with rows (c, r, s) and columns (n, ho, wo) whose
// tiles are added into grad_x, shared out among threads by the units above. This is also the
// transpose convolution's forward pass, which is why it must be fast for one output channel
// too.
template <class T>
void conv2d_grad_input_col2im(const ConvShape& g, const T* dy, const T* w, T* dx) {
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S, rows = Cg * RS;
    const int64_t HW = g.H * g.W, HoWo = g.Ho * g.Wo;
    std::vector<ScatterTap> taps(rows);
    scatter_taps(g, taps.data());
    // w^T per group, as a plain (c, r, s) x k matrix.
    Scratch<T> wt = scratch<T>(g.K * rows);
    for (int64_t grp = 0; grp < g.groups; ++grp)
        for (int64_t k = 0; k < Kg; ++k)
            for (int64_t i = 0; i < rows; ++i)
                wt[grp * rows * Kg + i * Kg + k] = w[(grp * Kg + k) * rows + i];
    const Col2imUnits units = col2im_units(g);
    const int threads = static_cast<int>(std::min<int64_t>(num_threads(), units.count()));
    std::vector<GemmBuffers<T>> bufs(threads);
    FlushDenormals ftz;  // on every thread of the team (common/denormals.h)
#pragma omp parallel num_threads(threads) firstprivate(ftz)
    {
        GemmBuffers<T>& buf = bufs[omp_get_thread_num()];
#pragma omp for schedule(static)
        for (int64_t unit = 0; unit < units.count(); ++unit) {
            const int64_t n0 = units.image_begin(unit), n1 = units.image_end(unit);
            const int64_t c0 = units.channel_begin(unit), c1 = units.channel_end(unit);
            for (int64_t n = n0; n < n1; ++n)
                for (int64_t grp = 0; grp < g.groups; ++grp)
                    std::fill(dx + (n * g.C + grp * Cg + c0) * HW, dx + (n * g.C + grp * Cg + c1) * HW, T(0));
            for (int64_t grp = 0; grp < g.groups && c0 < c1 && n0 < n1; ++grp) {
                const InMatrixA<T> A = InMatrixA<T>::plain(wt.get() + grp * rows * Kg, Kg, Kg);
                const InMatrixB<T> B{dy + grp * Kg * HoWo, HoWo, HoWo, g.K * HoWo};
                const Col2im<T> C{dx + grp * Cg * HW, g.C * HW, g.H, g.W, g.Ho, g.Wo, g.sh, g.sw, taps.data()};
                gemm_block<T>(c0 * RS, c1 * RS, n0 * HoWo, n1 * HoWo, 0, Kg, A, B, C, Store::accumulate, buf);
            }
        }
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
