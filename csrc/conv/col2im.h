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
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(units.count(), threads, [&](int64_t unit, int worker) {
        GemmBuffers<T>& buf = bufs[size_t(worker)];
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
    });
}

// The input gradient by whole column blocks (stride 1, no dilation, one group, AVX-512): for a
// few images at a time, the GEMM col = w^T dy is stored in place into a per-thread buffer
// (rows (c, r, s), columns (n, ho, wo)), then each row of grad_x is summed in one register
// from the col rows that reach it, each read as a masked load shifted by its kernel column:
//   dx[n, c, h, w] = sum_{r, s} col[(c, r, s), (n, h + ph - r, w + pw - s)]
// and stored once, where conv2d_grad_input_col2im adds every tile element into grad_x, one
// scalar read-modify-write each, in runs of at most Wo (LeNet's conv2: runs of 10, 0.96 M adds
// for a 15 M multiply-add GEMM). Every element sums its (r, s) terms in one fixed order, whole
// within one job, so grad_x does not depend on the thread count.
constexpr int64_t kColBlockElements = int64_t(1) << 16;  // a job's col block: 256 KiB of floats

// Whether it can run g: the shapes above, with one image's column block within a job's.
inline bool grad_input_col_rows_applies(const ConvShape& g) {
    return PYCONV_ISA_LEVEL == 2 && g.groups == 1 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 &&
           g.C > 0 && g.K > 0 &&
           double(g.C) * double(g.R) * double(g.S) * double(g.Ho) * double(g.Wo) <= double(kColBlockElements);
}

template <class T>
void conv2d_grad_input_col_rows(const ConvShape& g, const T* dy, const T* w, T* dx) {
#if PYCONV_ISA_LEVEL == 2
    using S = Simd<T>;
    constexpr int L = S::lanes;
    const int64_t RS = g.R * g.S, rows = g.C * RS, HoWo = g.Ho * g.Wo, HW = g.H * g.W;
    const int64_t images = std::clamp<int64_t>(kColBlockElements / std::max<int64_t>(1, rows * HoWo), 1, g.N);
    const int64_t jobs = (g.N + images - 1) / images, cols = images * HoWo;
    Scratch<T> wt = scratch<T>(checked_mul(g.K, rows));  // w^T: (c, r, s) x k
    for (int64_t k = 0; k < g.K; ++k)
        for (int64_t i = 0; i < rows; ++i) wt[i * g.K + k] = w[k * rows + i];
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), jobs)));
    std::vector<GemmBuffers<T>> bufs;
    bufs.reserve(size_t(threads));
    for (int i = 0; i < threads; ++i) bufs.emplace_back(rows, cols, g.K);
    const Scratch<T> blocks = scratch<T>(checked_mul(int64_t(threads), rows, cols));
    const InMatrixA<T> A = InMatrixA<T>::plain(wt.get(), g.K, g.K);
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(jobs, threads, [&](int64_t job, int worker) {
        T* col = blocks.get() + worker * rows * cols;
        const int64_t n0 = job * images, n1 = std::min(g.N, n0 + images);
        const InMatrixB<T> B{dy + n0 * g.K * HoWo, HoWo, HoWo, g.K * HoWo};
        gemm_block<T>(0, rows, 0, (n1 - n0) * HoWo, 0, g.K, A, B, OutMatrix<T>::plain(col, cols, cols),
                      Store::overwrite, bufs[size_t(worker)]);
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t c = 0; c < g.C; ++c)
                for (int64_t h = 0; h < g.H; ++h)
                    for (int64_t w0 = 0; w0 < g.W; w0 += L) {
                        typename S::V acc = S::zero();
                        for (int64_t r = 0; r < g.R; ++r) {
                            const int64_t ho = h + g.ph - r;
                            if (ho < 0 || ho >= g.Ho) continue;
                            for (int64_t s = 0; s < g.S; ++s) {
                                // Lane i is w = w0 + i, from wo = w + pw - s where 0 <= wo < Wo.
                                const int64_t shift = g.pw - s + w0;  // wo of lane 0
                                const int64_t lo = std::max<int64_t>(0, -shift);
                                const int64_t hi = std::min<int64_t>({int64_t(L), g.Wo - shift, g.W - w0});
                                if (lo >= hi) continue;
                                const T* src = col + (c * RS + r * g.S + s) * cols + (n - n0) * HoWo + ho * g.Wo + shift;
                                const uint32_t mask = uint32_t(((uint64_t(1) << hi) - 1) & ~((uint64_t(1) << lo) - 1));
                                if constexpr (sizeof(T) == 4)
                                    acc += typename S::V(_mm512_maskz_loadu_ps(__mmask16(mask), src));
                                else
                                    acc += typename S::V(_mm512_maskz_loadu_pd(__mmask8(mask), src));
                            }
                        }
                        const int64_t len = std::min<int64_t>(L, g.W - w0);
                        T* d = dx + (n * g.C + c) * HW + h * g.W + w0;
                        if (len == L) S::store(d, acc);
                        else store_first<T>(d, acc, int(len));
                    }
    });
#else
    conv2d_grad_input_col2im(g, dy, w, dx);
#endif
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
