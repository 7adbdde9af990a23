// Direct forward convolution on the phase grid (conv/phase_grid.h), for layers whose GEMM
// would be small in one dimension: few output channels (LeNet: 6 or 16) or few taps per output
// (first layers on 1-3 channel images). There the GEMM forms spend more time packing B (one
// copy of the grid per tap) or filling micro-tiles with padding than multiplying; this kernel
// reads the grid in place.
//
// The kernel reads either the phase grid, whose rows are Wq >= Wo wide (it computes and drops
// the Wq - Wo columns of every row), or the column copies below, whose rows are Wo wide (none
// dropped, for S times the copy): see direct_grid_column_copies_pay in conv/dispatch.h.
//
// A register tile holds KB output channels x NV vectors of consecutive grid pixels. Each tap
// (c, r, s) reads one run of the grid (the phase grid makes every tap's pixels contiguous, for
// any stride and dilation), loads it once into NV vectors and multiplies it with KB broadcast
// weights: KB * NV FMAs per NV + KB loads, the weights of a channel block packed tap-major so
// that they stream through the cache in order. Every output sums bias, then its taps in
// (c, r, s) order, in one accumulator: the result does not depend on the thread count.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "conv/epilogue.h"
#include "conv/im2col.h"
#include "conv/phase_grid.h"

namespace pyconv {
namespace PYCONV_ISA {

// Vectors of pixels per register tile (NV), and the most output channels a tile holds: the
// accumulators (KB * NV) plus NV loaded vectors must fit the register file (32 vector
// registers with AVX-512: 12 x 2 or 8 x 3; 16 with AVX2 and SSE2: 6 x 2).
constexpr bool kDirectGridWideTiles = PYCONV_ISA_LEVEL >= 2;
constexpr int direct_grid_max_channels(int NV) {
    return PYCONV_ISA_LEVEL >= 2 ? (NV == 3 ? 8 : 12) : 6;
}

// Tiles of 3 vectors by 8 channels (AVX-512) at stride 1 from 32 output channels per group:
// 11 loads per 24 FMAs where 2 x 12 takes 14 per 24 (13 per 22 for 64 channels in blocks of 11,
// whose 66th channels are computed and dropped). Measured against 2 x 12 on one AVX-512 thread
// (process CPU time, best of 5 interleaved rounds, batch as given): 3 -> 64 3x3 p1 on 32x32
// (16) 1.075x, 1 -> 64 7x7 p3 on 28x28 (32) 1.01x, 3 -> 32 5x5 p2 on 32x32 (16) 1.02x; lost at
// stride 2 (1 -> 64 4x4 s2 p1 on 28x28, 64 images: 0.93x) and with 16 channels (3 -> 16 3x3 p1
// on 64x64: 0.975x); 6 channels (LeNet's conv1) even.
inline int direct_grid_vectors(const ConvShape& g) {
    return g.sh == 1 && g.sw == 1 && g.K / g.groups >= 32 ? 3 : 2;
}

// Whether the grid (with the tile's read-ahead) stays within the scratch budget.
inline bool direct_grid_fits(const ConvShape& g) {
    return scratch_fits(g, PhaseGrid::elements(g) + 64);
}

// Column copies of x: for each channel c, kernel column s and row phase rh < sh, a plane of Hq
// rows and Wo columns holding x[hq*sh + rh - ph, wo*sw + s*dw - pw] (zero outside x). Tap
// (c, r, s), with r*dh = qh*sh + rh, reads for output q = ho*Wo + wo the element q + qh*Wo of
// plane (c, s, rh): every tap's run covers whole output rows, so no column is dropped.
struct ColumnCopies {
    int64_t Hq, copies, plane, image;
    explicit ColumnCopies(const ConvShape& g)
        : Hq(g.Ho + (g.R - 1) * g.dh / g.sh),
          copies(checked_mul(g.S, g.sh)),
          plane(checked_mul(Hq, g.Wo)),
          image(checked_mul(g.C, copies, plane)) {}
    // One image's copies as a double, for the rule that weighs them before building any.
    static double elements(const ConvShape& g) {
        return double(g.C) * double(g.S) * double(g.sh) * double(g.Ho + (g.R - 1) * g.dh / g.sh) * double(g.Wo);
    }
    int64_t pixels(const ConvShape& g) const { return g.Ho * g.Wo; }
    int64_t tap_offset(const ConvShape& g, int64_t c, int64_t r, int64_t s) const {
        return ((c * g.S + s) * g.sh + r * g.dh % g.sh) * plane + (r * g.dh / g.sh) * g.Wo;
    }
};

// The longest zero-padded input row (the columns the copies read) that fill_column_copies
// builds on the stack; wider rows go through gather_row.
constexpr int64_t kColumnRowMax = 1024;

// One image's column copies (x_image: its C planes) into dst (cc.image elements). Each input
// row is zero-padded once into a buffer, with whole vectors, from which every kernel column's
// copy is a read with no bounds to test (gather_row per copy tests them, and with stride 1
// calls memcpy for rows of a few elements). Stride 1 copies whole vectors: a row's last vector
// runs on into the next rows of its plane, which are written after it, so only a vector that
// would run past the plane's end needs a masked store; strided copies likewise, from the
// padded row split once by column phase. The copy loops stay loops: GCC would otherwise make
// them calls per row.
template <class T>
PYCONV_KEEP_LOOPS void fill_column_copies(
    const ConvShape& g, const ColumnCopies& cc, const T* x_image, T* dst) {
    using S = Simd<T>;
    const int64_t span = (g.Wo - 1) * g.sw + (g.S - 1) * g.dw + 1;  // padded columns read
    const bool buffered = span <= kColumnRowMax;
    // The row, then zeros for the last vector's read-ahead (and room for the vectors below).
    alignas(64) T padded[kColumnRowMax + 3 * S::lanes];
    const typename S::V zero = S::splat(T(0));
    // Strided copies read phases of the padded row (each copy then a contiguous run, copied as
    // at stride 1) where the phases, each with a vector of zeros after it, fit their buffer.
    const int64_t phase_cols = (span + g.sw - 1) / g.sw, phase_len = phase_cols + S::lanes;
    const int64_t vector_cols = (phase_cols + S::lanes - 1) / S::lanes * S::lanes;
    const bool phased = buffered && g.sw > 1 && g.sw <= S::lanes && g.sw * phase_len <= 2 * kColumnRowMax;
    alignas(64) T phases[2 * kColumnRowMax];
    const int64_t lo = std::clamp<int64_t>(g.pw, 0, span), hi = std::clamp<int64_t>(g.pw + g.W, lo, span);
    for (int64_t c = 0; c < g.C; ++c) {
        const T* src = x_image + c * g.H * g.W;
        for (int64_t rh = 0; rh < g.sh; ++rh)
            for (int64_t hq = 0; hq < cc.Hq; ++hq) {
                const int64_t h = hq * g.sh + rh - g.ph;
                const bool outside = h < 0 || h >= g.H;
                if (!buffered) {
                    for (int64_t s = 0; s < g.S; ++s) {
                        T* d = dst + ((c * g.S + s) * g.sh + rh) * cc.plane + hq * g.Wo;
                        if (outside) std::fill(d, d + g.Wo, T(0));
                        else gather_row(src + h * g.W, g.W, s * g.dw - g.pw, g.sw, g.Wo, d, 1);
                    }
                    continue;
                }
                // Whole vectors: zeros up to lo, then the row from lo (load_first zeroes the lanes
                // past hi), then zeros.
                int64_t t = 0;
                if (!outside) {
                    const T* row = src + h * g.W - g.pw;
                    for (; t < lo; t += S::lanes) S::store(padded + t, zero);
                    for (t = lo; t < hi; t += S::lanes)
                        S::store(padded + t, load_first<T>(row + t, int(std::min<int64_t>(S::lanes, hi - t))));
                }
                for (; t < span + 2 * S::lanes; t += S::lanes) S::store(padded + t, zero);
                if (phased) {  // the row split by column phase: phase r's element i is padded[i sw + r]
                    for (int64_t r = 0; r < g.sw; ++r) {
                        T* ph = phases + r * phase_len;
                        if (g.sw == 2)  // a constant stride, which GCC vectorises as a de-interleave,
                            // over whole vectors (short rows would otherwise take its scalar loop;
                            // the zeros after the row reach that far)
                            for (int64_t i = 0; i < vector_cols; ++i) ph[i] = padded[2 * i + r];
                        else
                            for (int64_t i = 0; i < phase_cols; ++i) ph[i] = padded[i * g.sw + r];
                        for (int64_t i = phase_cols; i < phase_len; ++i) ph[i] = T(0);
                    }
                }
                for (int64_t s = 0; s < g.S; ++s) {
                    T* d = dst + ((c * g.S + s) * g.sh + rh) * cc.plane + hq * g.Wo;
                    const T* p = padded + s * g.dw;
                    if (phased) {
                        p = phases + (s * g.dw % g.sw) * phase_len + s * g.dw / g.sw;
                    } else if (g.sw != 1) {
                        for (int64_t t = 0; t < g.Wo; ++t) d[t] = p[t * g.sw];
                        continue;
                    }
                    t = 0;
                    for (; t + S::lanes <= g.Wo; t += S::lanes) S::store(d + t, S::load(p + t));
                    if (t == g.Wo) continue;
                    if ((hq * g.Wo + t) + S::lanes > cc.plane) store_first<T>(d + t, S::load(p + t), int(g.Wo - t));
                    else S::store(d + t, S::load(p + t));  // past the row: later rows of the plane
                }
            }
    }
}

// Where a tile's vectors go in y. Vector v of tile t holds grid pixels q = t * wide + v * lanes
// + i (lane i); those of grid row ho with wo = q - ho * Wq < Wo are y[ho, wo], at plane offset
// `offset` + i: one masked store per grid row the vector touches (lane i stored where bit i of
// `mask` is set), or one for all of them where their offsets agree (column copies, Wq = Wo:
// a vector is then one store, a plain one when all its lanes are kept). The plan is the same
// for every image, group and channel block.
struct GridStore {
    int64_t offset;
    uint32_t mask;
};
struct GridStorePlan {
    std::vector<GridStore> stores;
    std::vector<int64_t> first;  // stores of vector (t, v): [first[t*NV + v], first[t*NV + v + 1])
};

inline GridStorePlan grid_store_plan(const ConvShape& g, int64_t Wq, int64_t pixels, int64_t tiles, int lanes,
                                     int vectors) {
    GridStorePlan plan;
    plan.first.push_back(0);
    const int64_t Wo = g.Wo;
    plan.first.reserve(size_t(tiles * vectors + 1));
    for (int64_t vec = 0; vec < tiles * vectors; ++vec) {
        // The vector's lanes [q0, end) taken a grid row at a time (lane by lane, the plan was a
        // fifth of a one-image LeNet-5 conv1 call): the row's columns wo < Wo are kept, at plane
        // offset ho (Wo - Wq) + q0 from lane 0; rows with equal offsets share a store.
        const int64_t q0 = vec * lanes, end = std::min<int64_t>(q0 + lanes, pixels);
        int64_t offset = 0;
        uint32_t mask = 0;
        for (int64_t q = q0; q < end;) {
            const int64_t ho = q / Wq, row_end = std::min(end, (ho + 1) * Wq), kept_end = std::min(row_end, ho * Wq + Wo);
            if (q < kept_end) {
                const int64_t row_offset = ho * (Wo - Wq) + q0;
                if (mask != 0 && row_offset != offset) {
                    plan.stores.push_back({offset, mask});
                    mask = 0;
                }
                offset = row_offset;
                // lanes [q - q0, kept_end - q0), at most 16 of a 32-bit mask
                mask |= uint32_t((uint64_t(1) << (kept_end - q0)) - (uint64_t(1) << (q - q0)));
            }
            q = row_end;
        }
        if (mask != 0) plan.stores.push_back({offset, mask});
        plan.first.push_back(int64_t(plan.stores.size()));
    }
    return plan;
}

template <class T>
struct DirectGridArgs {
    const ConvShape* g;
    const T* x;                // each thread fills one image's grid (`grid`) or column copies
    const PhaseGrid* grid;     // (`columns`) from x as its jobs reach that image
    const ColumnCopies* columns;
    int64_t slack;             // zeros the kernel reads past an image's planes (the grid's)
    int64_t image, group;      // elements from one image's planes to the next, one group's
    int64_t pixels;            // grid pixels per image (Ho rows of Wq or Wo)
    const int64_t* offsets;    // of each tap (c, r, s) within a group's planes
    const T* wpack;            // [group][channel block][tap][KB], zero past Kg
    const T* bias;             // (K,) or nullptr
    T* y;
    int64_t channel_blocks;    // per group
    const GridStorePlan* plan;
    int threads;               // the most threads the call may use
    bool relu;                 // max(y, 0) as the tiles store
};

// The lanes of v selected by `mask` to p[i] (the others are neither read nor written, so p + i
// may lie outside y for them).
template <class T>
static inline __attribute__((always_inline)) void store_lanes(T* p, uint32_t mask, typename Simd<T>::V v) {
#if PYCONV_ISA_LEVEL >= 2
    if constexpr (sizeof(T) == 4) _mm512_mask_storeu_ps(p, __mmask16(mask), __m512(v));
    else _mm512_mask_storeu_pd(p, __mmask8(mask), __m512d(v));
#elif PYCONV_ISA_LEVEL == 1
    using S = Simd<T>;
    const typename S::I selected = -((S::splat_int(typename S::Int(mask)) >> S::iota()) & 1);
    if constexpr (sizeof(T) == 4) _mm256_maskstore_ps(p, __m256i(selected), __m256(v));
    else _mm256_maskstore_pd(p, __m256i(selected), __m256d(v));
#else
    for (int i = 0; i < Simd<T>::lanes; ++i)
        if (mask >> i & 1) p[i] = v[i];
#endif
}

// The taps a tile multiplies: for each input channel c < channels, taps c * per_channel + [lo, hi)
// of the (c, r, s) order, i.e. the kernel rows r with lo <= r * S < hi. Rows whose taps fall on
// padding for every output row of the tile are left out (their products are zeros of the
// padding; a 7x7 layer with padding 3 on 28x28 images multiplies padding rows in 6% of its
// products); the others keep their order, so each output's sum does not depend on the tiling.
struct TapRuns {
    int64_t channels, per_channel, lo, hi;
};

// The kernel rows that read x (not the padding above or below it) for some output row in
// [ho_lo, ho_hi], as taps [r_lo S, r_hi S) of each channel.
inline TapRuns tap_runs_for_rows(const ConvShape& g, int64_t ho_lo, int64_t ho_hi) {
    int64_t r_lo = g.R, r_hi = 0;
    for (int64_t r = 0; r < g.R; ++r) {
        // Input row of output row ho: ho sh - ph + r dh, increasing in ho.
        const bool reads_x = ho_hi * g.sh - g.ph + r * g.dh >= 0 && ho_lo * g.sh - g.ph + r * g.dh < g.H;
        if (reads_x) r_lo = std::min(r_lo, r), r_hi = r + 1;
    }
    if (r_hi <= r_lo) r_lo = r_hi = 0;
    return {g.C / g.groups, g.R * g.S, r_lo * g.S, r_hi * g.S};
}

// One register tile: KB channels x NV vectors of pixels from grid pixel q0 of an image's group
// planes `xg`, stored by `stores` (the plan's entries from this tile's first vector) into the
// planes yk + j * plane of its `channels` valid channels.
template <class T, int KB, int NV>
static inline __attribute__((always_inline)) void direct_grid_tile(const T* xg, const int64_t* offsets,
                                                                   const TapRuns& runs, const T* wb,
                                                                   const T* bias_block, const GridStore* stores,
                                                                   const int64_t* first, int64_t channels,
                                                                   int64_t plane, bool relu, T* yk) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr uint32_t full = uint32_t((uint64_t(1) << S::lanes) - 1);
    V acc[KB][NV];
#pragma GCC unroll 16
    for (int j = 0; j < KB; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[j][v] = S::splat(bias_block[j]);
    for (int64_t c = 0; c < runs.channels; ++c)
    for (int64_t t = c * runs.per_channel + runs.lo; t < c * runs.per_channel + runs.hi; ++t) {
        const T* xt = xg + offsets[t];
        V xv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) xv[v] = S::load(xt + v * S::lanes);
        const T* wt = wb + t * KB;
#pragma GCC unroll 16
        for (int j = 0; j < KB; ++j) {
            const V wj = S::broadcast(wt + j);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[j][v] = S::fma(wj, xv[v], acc[j][v]);
        }
    }
    if (relu)
#pragma GCC unroll 16
        for (int j = 0; j < KB; ++j)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[j][v] = Relu<T>{}(acc[j][v]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
        for (int64_t e = first[v]; e < first[v + 1]; ++e) {
            T* p = yk + stores[e].offset;
            const uint32_t mask = stores[e].mask;
            if (mask == full) {  // every lane kept (column copies: all but an image's last vector)
#pragma GCC unroll 16
                for (int j = 0; j < KB; ++j)
                    if (j < channels) S::store(p + j * plane, acc[j][v]);
                continue;
            }
#pragma GCC unroll 16
            for (int j = 0; j < KB; ++j)
                if (j < channels) store_lanes<T>(p + j * plane, mask, acc[j][v]);
        }
}

// Below this many multiply-adds the direct forward (its phase-grid copy included) runs on the
// calling thread: waking a sleeping worker and waiting for it cost more than the second core
// gives back. With the workers' short spin after each job (common/thread_pool.h) a worker is
// still awake between the layers of a network, and the second thread pays from about a
// million (measured when the kernels ran on OpenMP with a similar spin). Measured on a 2-vCPU KVM guest, quiet,
// wall time of the call against a one-node ONNX Runtime session (2 threads each), floor 2^23
// against 2^20: ResNet's stem (3 -> 16 3x3 p1 on 32x32, batch 16, 7.1M multiply-adds) 198
// against 151-154 us (ONNX Runtime 150), LeNet's conv1 (1 -> 6 5x5 on 32x32, batch 64, 7.5M)
// 203 against 125-131 us, LeNet's conv2 at batch 8 (2.4M) 63 against 44 us; below 2^20 (conv1
// at batch 8, 0.94M, and batch 1) a floor of 2^17 changed nothing beyond the noise. Results do
// not depend on it: every output is summed whole by one thread.
constexpr double kDirectGridParallelMacs = double(int64_t(1) << 20);

inline int direct_grid_threads(const ConvShape& g) {
    const double macs = double(g.N) * double(g.K) * double(g.Ho) * double(g.Wo) * double(g.C / g.groups) *
                        double(g.R) * double(g.S);
    return macs < kDirectGridParallelMacs ? 1 : num_threads();
}

// Tiles of pixels per job: a few grid rows' worth, so a job's share of the grid stays in cache
// while the channel block's weights stream.
constexpr int64_t kDirectGridTilesPerJob = 8;

template <class T, int KB, int NV>
void conv2d_forward_direct_grid_with(const DirectGridArgs<T>& a) {
    using S = Simd<T>;
    constexpr int64_t wide = NV * S::lanes;
    const ConvShape& g = *a.g;
    const int64_t Kg = g.K / g.groups, taps = (g.C / g.groups) * g.R * g.S;
    const int64_t pixels = a.pixels, plane = g.Ho * g.Wo, row = g.Ho > 0 ? pixels / g.Ho : 1;
    const int64_t tiles = (pixels + wide - 1) / wide;
    const int64_t chunks = (tiles + kDirectGridTilesPerJob - 1) / kDirectGridTilesPerJob;
    const int64_t jobs = checked_mul(g.N, g.groups, a.channel_blocks, chunks);
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(a.threads, jobs)));
    // Jobs are handed out in small batches as threads come free, not split in halves up front:
    // each output is computed whole within one job, so which thread runs a job changes no bit,
    // and a thread the OS deschedules for a while (a loaded machine) holds back one batch
    // (a 32nd of the call per thread) instead of its whole share.
    const int64_t batch = std::max<int64_t>(1, jobs / (int64_t(threads) * 32));
    // The grid or column copies are filled image by image into a buffer of each thread's, which
    // stays in its cache while the jobs of that image read it; the whole batch's column copies
    // filled up front measured slower than the phase grid (LeNet's conv2 at batch 64: 1.07 MB
    // of copies, more than a core's L2), and the whole batch's grid, filled by a parallel region
    // of its own before this one, even on one thread and slower on two, where the extra region
    // waited for both threads twice (2 threads, wall time, medians of 5 rounds on a loaded host:
    // 3 -> 64 3x3 p1 on 32x32, batch 16, 1.37x; 256 -> 16 3x3 p1 on 14x14, batch 8, 1.24x;
    // 2 -> 32 3x3 s2 p1 on 32x32, batch 64, 1.12x). Jobs run image after image, so a thread fills
    // an image about once (two threads on one image both fill it: the same values, so no bit
    // changes).
    const int64_t buffer = (a.image + a.slack + wide + 15) / 16 * 16;  // a thread's, in whole cache lines
    // Allocated here: an exception must not leave a pool thread. Past each image: the
    // zeros that the last taps and a tile's read-ahead reach.
    const Scratch<T> buffers = scratch<T>(checked_mul(int64_t(threads), buffer));
    for (int i = 0; i < threads; ++i) std::fill(buffers.get() + i * buffer + a.image, buffers.get() + (i + 1) * buffer, T(0));
    std::vector<int64_t> filled(size_t(threads), -1);  // the image in each thread's copies
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(jobs, (jobs + batch - 1) / batch, threads, [&](int64_t begin, int64_t end, int worker) {
    T* copies = buffers.get() + worker * buffer;
    for (int64_t job = begin; job < end; ++job) {
        const int64_t chunk = job % chunks, block = job / chunks % a.channel_blocks;
        const int64_t grp = job / chunks / a.channel_blocks % g.groups, n = job / chunks / a.channel_blocks / g.groups;
        const int64_t k0 = grp * Kg + block * KB, channels = std::min<int64_t>(KB, Kg - block * KB);
        if (filled[size_t(worker)] != n) {
            if (a.columns) fill_column_copies(g, *a.columns, a.x + n * g.C * g.H * g.W, copies);
            else fill_phase_grid_image(g, *a.grid, a.x + n * g.C * g.H * g.W, copies);
            filled[size_t(worker)] = n;
        }
        const T* xg = copies + grp * a.group;
        const T* wb = a.wpack + (grp * a.channel_blocks + block) * taps * KB;
        alignas(64) T bias_block[KB] = {};
        for (int64_t j = 0; a.bias && j < channels; ++j) bias_block[j] = a.bias[k0 + j];
        T* yk = a.y + (n * g.K + k0) * plane;
        const int64_t t1 = std::min(tiles, (chunk + 1) * kDirectGridTilesPerJob);
        for (int64_t t = chunk * kDirectGridTilesPerJob; t < t1; ++t) {
            const int64_t q0 = t * wide;
            const GridStore* stores = a.plan->stores.data();
            const int64_t* first = a.plan->first.data() + t * NV;
            const int64_t last = std::min(pixels, q0 + wide) - 1;
            const TapRuns runs = tap_runs_for_rows(g, q0 / row, last / row);
            // The image's last pixels may fill fewer vectors.
            const int64_t vectors = (last - q0) / S::lanes + 1;
            if (NV >= 3 && vectors == 3)
                direct_grid_tile<T, KB, 3>(xg + q0, a.offsets, runs, wb, bias_block, stores, first, channels, plane, a.relu, yk);
            else if (NV >= 2 && vectors == 2)
                direct_grid_tile<T, KB, 2>(xg + q0, a.offsets, runs, wb, bias_block, stores, first, channels, plane, a.relu, yk);
            else if (vectors == 1)
                direct_grid_tile<T, KB, 1>(xg + q0, a.offsets, runs, wb, bias_block, stores, first, channels, plane, a.relu, yk);
            else
                direct_grid_tile<T, KB, NV>(xg + q0, a.offsets, runs, wb, bias_block, stores, first, channels, plane, a.relu, yk);
        }
    }
    });
}

// The kernel instantiated for exactly KB channels per tile (KB = kb, counting down).
template <class T, int NV, int KB>
void conv2d_forward_direct_grid_kb(int64_t kb, const DirectGridArgs<T>& a) {
    if constexpr (KB > 1) {
        if (kb < KB) return conv2d_forward_direct_grid_kb<T, NV, KB - 1>(kb, a);
    }
    conv2d_forward_direct_grid_with<T, KB, NV>(a);
}

// The kernel over `source`: the phase grid (PhaseGrid), filled here, or column copies
// (ColumnCopies), which the kernel fills image by image.
template <class T, int NV, class Source>
void conv2d_forward_direct_tiles(const ConvShape& g, const Source& source, int64_t row, const T* x, const T* w,
                              const T* bias, T* y, bool relu) {
    constexpr int64_t wide = NV * Simd<T>::lanes;
    constexpr int max_channels = direct_grid_max_channels(NV);
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps = Cg * g.R * g.S;
    // Equal channel blocks, as few as the register file allows (Kg = 16 -> 2 x 8 with AVX-512,
    // 64 -> 6 x 11 on 2 vectors, the last with 2 zero channels that are computed and not stored).
    const int64_t blocks = (Kg + max_channels - 1) / max_channels;
    const int64_t kb = (Kg + blocks - 1) / blocks;
    const int team = direct_grid_threads(g);
    const PhaseGrid* grid = nullptr;
    const ColumnCopies* columns = nullptr;
    int64_t slack = 0;
    if constexpr (std::is_same_v<Source, PhaseGrid>) grid = &source, slack = source.slack;
    else columns = &source;
    Scratch<T> wpack = scratch<T>(checked_mul(g.groups, blocks, kb, taps));
    for (int64_t grp = 0; grp < g.groups; ++grp)
        for (int64_t block = 0; block < blocks; ++block) {
            T* dst = wpack.get() + (grp * blocks + block) * taps * kb;
            for (int64_t t = 0; t < taps; ++t)
                for (int64_t j = 0; j < kb; ++j) {
                    const int64_t k = block * kb + j;
                    dst[t * kb + j] = k < Kg ? w[(grp * Kg + k) * taps + t] : T(0);
                }
        }
    const std::vector<int64_t> offsets = tap_offsets(g, source);
    const int64_t pixels = source.pixels(g), tiles = (pixels + wide - 1) / wide;
    const GridStorePlan plan = grid_store_plan(g, row, pixels, tiles, Simd<T>::lanes, NV);
    const int64_t group = source.image / g.C * Cg;
    const DirectGridArgs<T> a{&g, x, grid, columns, slack, source.image, group, pixels, offsets.data(), wpack.get(),
                              bias, y, blocks, &plan, team, relu};
    conv2d_forward_direct_grid_kb<T, NV, max_channels>(kb, a);
}

// The kernel on `source` with the tile shape direct_grid_vectors picks; relu applied as the
// tiles store (the same bits as a pass of its own afterwards, without the pass).
template <class T, class Source>
void conv2d_forward_direct_on(const ConvShape& g, const Source& source, int64_t row, const T* x, const T* w,
                              const T* bias, T* y, bool relu) {
    if constexpr (kDirectGridWideTiles) {
        if (direct_grid_vectors(g) == 3) return conv2d_forward_direct_tiles<T, 3>(g, source, row, x, w, bias, y, relu);
    }
    conv2d_forward_direct_tiles<T, 2>(g, source, row, x, w, bias, y, relu);
}

template <class T>
void conv2d_forward_direct_grid(const ConvShape& g, const T* x, const T* w, const T* bias, T* y, bool relu = false) {
    const PhaseGrid pg(g);
    conv2d_forward_direct_on(g, pg, pg.Wq, x, w, bias, y, relu);
}

template <class T>
void conv2d_forward_direct_columns(const ConvShape& g, const T* x, const T* w, const T* bias, T* y,
                                   bool relu = false) {
    const ColumnCopies cc(g);
    conv2d_forward_direct_on(g, cc, g.Wo, x, w, bias, y, relu);
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
