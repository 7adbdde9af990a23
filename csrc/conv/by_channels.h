// Channel-vectorised convolution kernels: the micro-kernel's vectors run along channels (output
// channels for the forward and the weight gradient, input channels for the input gradient)
// instead of pixels, and one operand is read in place from a zero-padded x or from dy, element
// by element, through OffsetCols (gemm/addressing.h). conv/dispatch.h says when each pays.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "gemm/chunked_reduction.h"
#include "gemm/tile.h"
#include "gemm/micro_kernel.h"
#include "conv/epilogue.h"
#include "conv/grad_input_as_forward.h"
#include "conv/im2col.h"
#include "conv/padding.h"

namespace pyconv {
namespace PYCONV_ISA {

// The register tile: MR pixels x NV vectors of channels. With AVX-512, 6 x 4: 64 channels, so
// the usual channel counts fill every panel.
#if PYCONV_ISA_LEVEL == 2
template <class T> struct ChannelTile { static constexpr int MR = 6, NV = 4; };
#else
template <class T> struct ChannelTile { static constexpr int MR = GemmTile<T>::MR, NV = GemmTile<T>::NV; };
#endif

// Panel p of w (Kg, taps) of one group as NR channels [tap][NR] (tap rows tap_stride apart),
// zero past Kg: a transpose,
// by register blocks of `lanes` rows x `lanes` taps (a vector load per row, one cache line, and
// a vector store per tap). Element by element, 16 taps at a time, the rows of 512 -> 512 3x3
// weights (18 KiB apart) fell into two L1 sets and missed on every load: 2.3 ms of a 21 ms
// forward on 8x512x7x7, one thread.
template <class T, int NR>
void channel_panel(const T* w, int64_t Kg, int64_t taps_n, int64_t p, T* packed, int64_t tap_stride = NR) {
    using S = Simd<T>;
    constexpr int L = S::lanes;
    static_assert(NR % L == 0, "a panel holds whole vectors");
    for (int64_t j0 = 0; j0 < NR; j0 += L) {
        const int64_t row0 = p * NR + j0;
        const int rows = static_cast<int>(std::clamp<int64_t>(Kg - row0, 0, L));
        T* dst = packed + j0;
        int64_t t0 = 0;
        for (; t0 + L <= taps_n; t0 += L) {
            typename S::V block[L];
#pragma GCC unroll 16
            for (int i = 0; i < L; ++i) block[i] = i < rows ? S::load(w + (row0 + i) * taps_n + t0) : S::zero();
            transpose_block<T>(block);
#pragma GCC unroll 16
            for (int t = 0; t < L; ++t) S::store(dst + (t0 + t) * tap_stride, block[t]);
        }
        for (; t0 < taps_n; ++t0)
            for (int i = 0; i < L; ++i) dst[t0 * tap_stride + i] = i < rows ? w[(row0 + i) * taps_n + t0] : T(0);
    }
}

// Panel p of the input gradient's weights as the forward's (conv/grad_input_as_forward.h): w
// (Kg, Cg, R, S) of one group flipped in space and transposed in channels, NR input channels
// c over the taps (k, r, s):
//   packed[(k * RS + rs)][j] = w[k, p * NR + j, RS - 1 - rs], zero past Cg.
// Straight from w: for each k the panel's source rows are one contiguous run.
template <class T, int NR>
void flipped_channel_panel(const T* w, int64_t Cg, int64_t Kg, int64_t RS, int64_t p, T* packed) {
    const int64_t rows = std::min<int64_t>(NR, Cg - p * NR);
    for (int64_t k = 0; k < Kg; ++k) {
        const T* src = w + (k * Cg + p * NR) * RS;
        T* dst = packed + k * RS * NR;
        for (int64_t rs = 0; rs < RS; ++rs)
            for (int64_t j = 0; j < NR; ++j) dst[rs * NR + j] = j < rows ? src[j * RS + RS - 1 - rs] : T(0);
    }
}

// The forward's transposed store of one block: y[n, grp*Kg + k, q] = acc + bias[k] for the
// block's pixels i0 .. i0 + mc (p = (n, q)), from the accumulators [tile][panel][MR][NR] of
// conv2d_forward_by_channels. Runs of up to `lanes` pixels of one image by `lanes` channels go
// through a register transpose: a vector load per pixel, a vector store per channel (masked
// for a run shorter than a vector: a block's or an image's last pixels), where element by
// element every store went to a different output plane (with the per-job padding of the
// forward below, 32 -> 64 channels 4x4 stride 2 on 16x16, batch 64, 1 thread: the forward 1.9
// against 2.1-2.4 ms). Channels past the last whole vector element by element. (Element by
// element, the short runs of 16x32x32x32 -> 64 3x3 stride 2, blocks of 90 pixels, kept the
// store at 8% of a profile's samples, 5% with masks; the forward's time did not measurably
// change.)
// The epilogue (conv/epilogue.h: a residual added, relu) is applied on the way, in the order
// of its separate pass over y, which it saves.
template <class T, int MR, int NR>
void store_block_transposed(const ConvShape& g, int64_t grp, int64_t panels, int64_t i0, int64_t mc,
                            const T* acc, const T* bias, T* y, const Epilogue<T>& ep) {
    using S = Simd<T>;
    constexpr int L = S::lanes;
    const int64_t Kg = g.K / g.groups, HoWo = g.Ho * g.Wo, whole_vectors = Kg / L * L;
    // Output channel k of pixel p of the block (an NR panel holds whole vectors: NR % L == 0).
    auto at = [&](int64_t p, int64_t k) { return acc + ((p / MR) * panels + k / NR) * MR * NR + (p % MR) * NR + k % NR; };
    for (int64_t p0 = 0, len = 0; p0 < mc; p0 += len) {
        const int64_t n = (i0 + p0) / HoWo, q = (i0 + p0) % HoWo;
        len = std::min<int64_t>({L, mc - p0, HoWo - q});
        T* dst = y + (n * g.K + grp * Kg) * HoWo + q;
        const T* res = ep.residual ? ep.residual + (dst - y) : nullptr;  // the residual at dst
        // Output channel k + j of the run: its vector of sums, then bias and epilogue.
        auto finish = [&](typename S::V v, int64_t k, int j) {
            v = bias ? v + S::splat(bias[grp * Kg + k + j]) : v + T(0);
            if (res) v += len == L ? S::load(res + (k + j) * HoWo) : load_first<T>(res + (k + j) * HoWo, static_cast<int>(len));
            return ep.relu ? Relu<T>{}(v) : v;
        };
        int64_t k = 0;
        if (len == L)
            for (; k < whole_vectors; k += L) {
                typename S::V block[L];
#pragma GCC unroll 16
                for (int i = 0; i < L; ++i) block[i] = S::load(at(p0 + i, k));
                transpose_block<T>(block);
#pragma GCC unroll 16
                for (int j = 0; j < L; ++j) S::store(dst + (k + j) * HoWo, finish(block[j], k, j));
            }
        else
            for (; k < whole_vectors; k += L) {
                typename S::V block[L];
#pragma GCC unroll 16
                for (int i = 0; i < L; ++i) block[i] = i < len ? S::load(at(p0 + i, k)) : S::zero();
                transpose_block<T>(block);
#pragma GCC unroll 16
                for (int j = 0; j < L; ++j)
                    store_first<T>(dst + (k + j) * HoWo, finish(block[j], k, j), static_cast<int>(len));
            }
        for (; k < Kg; ++k) {
            const T b = bias ? bias[grp * Kg + k] : T(0);
            for (int64_t i = 0; i < len; ++i) {
                const T v = res ? (*at(p0 + i, k) + b) + res[k * HoWo + i] : *at(p0 + i, k) + b;
                dst[k * HoWo + i] = ep.relu && v < T(0) ? T(0) : v;
            }
        }
    }
}

// Forward convolution vectorised over output channels: the GEMM transposed,
//   y^T[(n,ho,wo), k] = sum_{(c,r,s)} X^T[(n,ho,wo), (c,r,s)] w^T[(c,r,s), k],
// so a micro-tile is MR pixels x NR output channels. x is not packed at all: the micro-kernel
// broadcasts each pixel's tap straight from the (zero-padded) input (tap offset + pixel
// offset), and only the weights are packed, once. The MR pixels of a tile are any consecutive
// outputs, so nothing is wasted at row or image ends, where the pixel-vectorised GEMM drops grid
// columns and stores tiles through the edge buffer in runs of Wo. The price: tiles are stored
// transposed (output channels are HoWo apart in NCHW), once per block of tiles after the whole
// reduction, from a per-thread accumulator that stays in cache.
//
// A job is a block of tiles of a group of whole images (below). Each thread zero-pads its
// job's images (the group's channels) into a buffer of its own, which stays in cache for the
// job's tiles and for its next jobs on the same images; a padded copy of the whole batch made up front went to memory and came back (32 -> 64
// channels 4x4 stride 2 on 16x16, batch 64, 1 thread: 0.35 ms of a 2.3 ms forward). Without
// padding x is read in place. Each pixel's sums run in the same order whichever job computes
// it, so the result does not depend on the thread count.
//
// The weights are packed per group as panels of NR output channels, [tap][NR] each
// (pack_channel_panels), by the threads before the products, or once for many calls
// (PreparedChannelPanels).
//
// Tile MR x NV of the panels' NR_PANEL channels; the accumulators hold NV vectors per pixel.
template <class T, int MR, int NV, int NR_PANEL>
void conv2d_forward_by_channels_tiles(const ConvShape& g, const T* x, const std::vector<Scratch<T>>& weights,
                                      const T* bias, T* y, const Epilogue<T>& ep) {
    constexpr int L = Simd<T>::lanes, NR = NV * L;
    // A weight panel of KC x NR (32 KiB) is shared by the tiles of a block (smaller and
    // larger KC measured the same).
    constexpr int64_t KC = 128, MC = 16 * MR, tiles_max = MC / MR;
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S, HoWo = g.Ho * g.Wo;
    const int64_t panels = (Kg + NR_PANEL - 1) / NR_PANEL;
    const int64_t k_blocks = std::max<int64_t>(1, (taps_n + KC - 1) / KC);
    const int64_t kc_step = std::max<int64_t>(1, (taps_n + k_blocks - 1) / k_blocks);
    // Jobs: blocks of at most tiles_max tiles of a group of whole images of up to 4 MC pixels
    // (at least one image), the groups and the blocks of a group as equal as whole images and
    // tiles allow. A tile may span two images, so small images waste only the group's last
    // tile (7x7 images alone: 9 tiles of 6 for 49 pixels, a tenth wasted) and a block shares
    // each weight panel read from L2 or L3 among more tiles. 8x512x7x7, one thread: 19.4
    // against 21.0 ms with a job per image (two groups of 4 images, 3 blocks of 11 tiles each).
    // Groups of equal size where a divisor of N from half the largest group up allows it, else
    // the last group is smaller and its thread idles for part of the time: 16 images of 8x8
    // outputs (at most 6 per group) go as 4 groups of 4 in 12 equal jobs, not as 6, 6, 4 in 11.
    const int64_t max_images = std::clamp<int64_t>(4 * MC / HoWo, 1, g.N);
    int64_t group_size = max_images;
    for (int64_t d = max_images; d > 0 && 2 * d >= max_images; --d)
        if (g.N % d == 0) {
            group_size = d;
            break;
        }
    const int64_t image_groups = (g.N + group_size - 1) / group_size;
    const int64_t images_per_job = (g.N + image_groups - 1) / image_groups;
    const int64_t group_tiles = (images_per_job * HoWo + MR - 1) / MR;
    // Fewer groups of images than threads (a batch of one image, say): the blocks are cut
    // smaller, into a multiple of the threads, and each is a task of its own, so that every
    // thread has a share (each pads its own copy of the images). Where a tile's pixels go
    // changes nothing in their sums.
    const int team = num_threads();
    const bool few_images = g.groups * image_groups < team;
    int64_t blocks_per_group = (group_tiles + tiles_max - 1) / tiles_max;
    if (few_images) blocks_per_group = std::min(group_tiles, (blocks_per_group + team - 1) / team * team);
    const int64_t block_tiles = (group_tiles + blocks_per_group - 1) / blocks_per_group;
    const int64_t jobs = image_groups * blocks_per_group;
    // The source's layout: x itself, or each job's padded planes (Hp x Wp), Cg per image.
    const PaddedPlane pp(g);
    const bool in_place = g.ph == 0 && g.pw == 0 && pp.Hp <= g.H && pp.Wp <= g.W;
    const int64_t plane = in_place ? g.H * g.W : pp.size(), row = in_place ? g.W : pp.Wp;
    const int64_t image = in_place ? g.C * plane : Cg * plane;
    std::vector<int64_t> offsets;  // of tap (c, r, s) from a pixel's top-left input
    offsets.reserve(taps_n);
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s) offsets.push_back(c * plane + r * g.dh * row + s * g.dw);
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(team, jobs * g.groups)));
    // Per-thread accumulators and padded images, allocated here: an exception must not leave a
    // pool thread.
    std::vector<Scratch<T>> accs, pads;
    for (int t = 0; t < threads; ++t) {
        accs.push_back(scratch<T>(block_tiles * panels * MR * NR));
        if (!in_place) pads.push_back(scratch<T>(checked_mul(images_per_job, Cg, plane)));
    }
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    // Every group's jobs in one pool call, a task per group of images (its blocks share the
    // padded copy), so that a thread the OS deschedules holds back one group, not half the call.
    std::vector<int64_t> padded_grp(size_t(threads), -1), padded_images(size_t(threads), -1);  // what pads hold
    parallel_ranges(g.groups * jobs, g.groups * (few_images ? jobs : image_groups), threads,
                    [&](int64_t first, int64_t last, int worker) {
        const Scratch<T>& acc = accs[size_t(worker)];
        T* pad = in_place ? nullptr : pads[size_t(worker)].get();
        OffsetCols<T, MR> tiles[tiles_max];
        for (int64_t u = first; u < last; ++u) {
            const int64_t grp = u / jobs, job = u % jobs;
            const int64_t ig = job / blocks_per_group, n0 = ig * images_per_job;
            const int64_t end = std::min(g.N, n0 + images_per_job) * HoWo;
            const int64_t i0 = n0 * HoWo + job % blocks_per_group * block_tiles * MR;
            if (i0 >= end) continue;  // the last group of images has fewer blocks
            const int64_t mc = std::min(block_tiles * MR, end - i0), n_tiles = (mc + MR - 1) / MR;
            const T* source = x + (n0 * g.C + grp * Cg) * g.H * g.W;
            if (!in_place) {
                if (padded_grp[size_t(worker)] != grp || padded_images[size_t(worker)] != ig) {
                    for (int64_t n = n0; n < end / HoWo; ++n)
                        for (int64_t c = 0; c < Cg; ++c)
                            pad_plane(g, pp, x + (n * g.C + grp * Cg + c) * g.H * g.W, pad + ((n - n0) * Cg + c) * plane);
                    padded_grp[size_t(worker)] = grp, padded_images[size_t(worker)] = ig;
                }
                source = pad;
            }
            // Offsets of the block's pixels from image n0; a last partial tile repeats its last pixel.
            for (int64_t t = 0; t < n_tiles; ++t) {
                tiles[t].base = source;
                for (int i = 0; i < MR; ++i) {
                    const int64_t p = std::min(i0 + t * MR + i, i0 + mc - 1) - n0 * HoWo, q = p % HoWo;
                    tiles[t].i_offsets[i] = (p / HoWo) * image + (q / g.Wo) * g.sh * row + (q % g.Wo) * g.sw;
                }
            }
            for (int64_t pc = 0; pc < taps_n; pc += kc_step) {
                const int64_t kc = std::min(kc_step, taps_n - pc);
                const Store store = pc == 0 ? Store::overwrite : Store::accumulate;
                for (int64_t jp = 0; jp < panels; ++jp) {
                    const int nv = static_cast<int>((std::min<int64_t>(NR, Kg - jp * NR_PANEL) + L - 1) / L);
                    const PackedRows<T, NR_PANEL> b{weights[grp].get() + (jp * taps_n + pc) * NR_PANEL};
                    for (int64_t t = 0; t < n_tiles; ++t) {
                        tiles[t].k_offsets = offsets.data() + pc;
                        micro_kernel_cols<T, NV>(nv, kc, tiles[t], b, acc.get() + (t * panels + jp) * MR * NR,
                                                 NR, store, nullptr);
                    }
                }
            }
            store_block_transposed<T, MR, NR>(g, grp, panels, i0, mc, acc.get(), bias, y, ep);
        }
    });
}

// At most half a panel of output channels per group (11 -> 32 4x4 stride 2 with AVX-512's
// 64-channel panels) runs a tile of twice the pixels by half the vectors: as many accumulators,
// but each broadcast feeds the vectors that hold channels, not zeros. 11 -> 32 4x4 stride 2 on
// 32x32, batch 64, two threads: 0.91 -> 0.85 ms. For float32 with AVX-512 only: elsewhere half a
// panel is at most 16 channels, which dispatch.h sends to the direct forward.
template <class T>
void conv2d_forward_by_channels_packed(const ConvShape& g, const T* x, const std::vector<Scratch<T>>& weights,
                                       const T* bias, T* y, const Epilogue<T>& ep = {}) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, NR = NV * Simd<T>::lanes;
    if constexpr (NR == 64)
        if (g.K / g.groups <= NR / 2)
            return conv2d_forward_by_channels_tiles<T, 2 * MR, NV / 2, NR>(g, x, weights, bias, y, ep);
    conv2d_forward_by_channels_tiles<T, MR, NV, NR>(g, x, weights, bias, y, ep);
}

// pack_panel(grp, p, dst): group grp's weight panel p into dst; every panel, shared out among
// the threads (on two threads the forward of 8x512x7x7 packed 9.4 MB on one thread while the
// other waited).
template <class T, class PackPanel>
std::vector<Scratch<T>> pack_channel_panels(const ConvShape& g, const PackPanel& pack_panel) {
    constexpr int NR = ChannelTile<T>::NV * Simd<T>::lanes;
    const int64_t taps_n = (g.C / g.groups) * g.R * g.S, panels = (g.K / g.groups + NR - 1) / NR;
    std::vector<Scratch<T>> weights;
    for (int64_t grp = 0; grp < g.groups; ++grp) weights.push_back(scratch<T>(checked_mul(panels, taps_n, NR)));
    FlushDenormals ftz;
    parallel_for(g.groups * panels, threads_if(g.groups * panels > 1), [&](int64_t u, int) {
        pack_panel(u / panels, u % panels, weights[size_t(u / panels)].get() + (u % panels) * taps_n * NR);
    });
    return weights;
}

template <class T, class PackPanel>
void conv2d_forward_by_channels_packing(const ConvShape& g, const T* x, const PackPanel& pack_panel,
                                        const T* bias, T* y, const Epilogue<T>& ep = {}) {
    conv2d_forward_by_channels_packed(g, x, pack_channel_panels<T>(g, pack_panel), bias, y, ep);
}

// w's panels (K x C/groups x R x S filters), kept for later calls (kernels.h, PreparedFilters).
template <class T>
struct PreparedChannelPanels final : PreparedFilters {
    int64_t K, C, R, S, groups;
    std::vector<Scratch<T>> weights;

    PreparedChannelPanels(const ConvShape& g, const T* w)
        : K(g.K), C(g.C), R(g.R), S(g.S), groups(g.groups), weights(pack_channel_panels<T>(g, panel_of(g, w))) {}

    static auto panel_of(const ConvShape& g, const T* w) {
        constexpr int NR = ChannelTile<T>::NV * Simd<T>::lanes;
        const int64_t Kg = g.K / g.groups, taps_n = (g.C / g.groups) * g.R * g.S;
        return [=](int64_t grp, int64_t p, T* dst) { channel_panel<T, NR>(w + grp * Kg * taps_n, Kg, taps_n, p, dst); };
    }

    // `prepared`'s panels where it was made by these kernels for filters of g's shape.
    static const std::vector<Scratch<T>>* find(const PreparedFilters* prepared, const ConvShape& g) {
        const auto* p = dynamic_cast<const PreparedChannelPanels*>(prepared);
        return p != nullptr && p->K == g.K && p->C == g.C && p->R == g.R && p->S == g.S && p->groups == g.groups
                   ? &p->weights
                   : nullptr;
    }
};

// The panels from `prepared` where that holds them, else packed here.
template <class T>
void conv2d_forward_by_channels(const ConvShape& g, const T* x, const T* w, const T* bias, T* y,
                                const Epilogue<T>& ep = {}, const PreparedFilters* prepared = nullptr) {
    if (const auto* weights = PreparedChannelPanels<T>::find(prepared, g))
        return conv2d_forward_by_channels_packed(g, x, *weights, bias, y, ep);
    conv2d_forward_by_channels_packing(g, x, PreparedChannelPanels<T>::panel_of(g, w), bias, y, ep);
}

// The store of a block of tiles across images (the forward and input gradient below): tile t's
// row i is image n0 + i (rows past the batch are dropped) at pixel q0 + t of a `plane`-pixel
// output with `channels` channels, its NR-channel panels at acc[((t * panels + jp) * MR + i) * NR].
// Blocks of L pixels by L channels go through a register transpose into the output planes;
// the rest element by element.
template <class T, int MR, int NR>
void store_tiles_across_images(const T* acc, int64_t panels, int64_t n0, int64_t N, int64_t q0, int64_t len,
                               int64_t channels, int64_t plane, const T* bias, T* y) {
    using S = Simd<T>;
    constexpr int L = S::lanes;
    const int64_t whole_vectors = channels / L * L;
    auto at = [&](int64_t t, int64_t i, int64_t k) { return acc + ((t * panels + k / NR) * MR + i) * NR + k % NR; };
    for (int64_t i = 0; i < MR && n0 + i < N; ++i) {
        T* out = y + (n0 + i) * channels * plane + q0;
        int64_t t0 = 0;
        for (; t0 + L <= len; t0 += L)
            for (int64_t k = 0; k < whole_vectors; k += L) {
                typename S::V block[L];
#pragma GCC unroll 16
                for (int j = 0; j < L; ++j) block[j] = S::load(at(t0 + j, i, k));
                transpose_block<T>(block);
#pragma GCC unroll 16
                for (int j = 0; j < L; ++j)
                    S::store(out + (k + j) * plane + t0, bias ? block[j] + S::splat(bias[k + j]) : block[j] + T(0));
            }
        for (int64_t k = 0; k < channels; ++k) {
            const T bk = bias ? bias[k] : T(0);
            for (int64_t t = k < whole_vectors ? t0 : 0; t < len; ++t) out[k * plane + t] = *at(t, i, k) + bk;
        }
    }
}

// Where kernel taps land for a strided, padded convolution along one axis: the valid taps
// t of output o are those with 0 <= o * stride - pad + t * step < extent (one run [lo, hi)).
struct ValidTaps {
    int64_t lo = 0, hi = 0;
    ValidTaps() = default;
    ValidTaps(int64_t o, int64_t stride, int64_t pad, int64_t taps, int64_t step, int64_t extent) {
        const int64_t start = o * stride - pad;
        lo = 0, hi = taps;
        while (lo < taps && start + lo * step < 0) ++lo;
        while (hi > lo && start + (hi - 1) * step >= extent) --hi;
    }
};

// The jobs of the kernels with tiles across images: blocks of MR consecutive images by blocks
// of at most tiles_max consecutive pixels (of `pixels`, in equal lengths but the last), and a
// team no larger than there are jobs.
struct AcrossImagesJobs {
    int64_t pixels, pixel_blocks, block_len, count;
    int threads;
    AcrossImagesJobs(int64_t N, int64_t pixels_, int64_t MR, int64_t tiles_max) : pixels(pixels_) {
        pixel_blocks = (pixels + tiles_max - 1) / tiles_max;
        block_len = (pixels + pixel_blocks - 1) / pixel_blocks;
        count = (N + MR - 1) / MR * pixel_blocks;
        threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), count)));
    }
    int64_t first_image(int64_t job, int64_t MR) const { return job / pixel_blocks * MR; }
    int64_t first_pixel(int64_t job) const { return job % pixel_blocks * block_len; }
    int64_t length(int64_t job) const { return std::min(block_len, pixels - first_pixel(job)); }
};

// The forward by channels with tiles across images: a tile is one output pixel (ho, wo) of MR
// consecutive images (a last partial tile repeats its last image), so that every pixel of a
// tile reads the same taps, and the taps that fall on padding are skipped instead of multiplied
// by zeros. Taps run in (r, s, c) order, so the valid taps of a tile are one run of whole
// (s, c) rows per valid kernel row r; x is read in place, without a padded copy. On small
// padded images the skipped share is large: 4x4 stride 2 padding 1 on 14x14 -> 7x7 reads
// padding for (26/28)^2 of its taps, 14% of the products. groups == 1. A job is a block of
// images by a range of pixels; each output's sum runs over its taps in the same order whichever
// job computes it, so the result does not depend on the thread count.
template <class T>
void conv2d_forward_by_channels_across_images(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    using S = Simd<T>;
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = S::lanes, NR = NV * L;
    constexpr int64_t KC = 128, tiles_max = 16;
    const int64_t RS = g.R * g.S, taps_n = g.C * RS, HW = g.H * g.W, HoWo = g.Ho * g.Wo;
    const int64_t panels = (g.K + NR - 1) / NR;
    // w as panels of NR output channels over the taps (r, s, c), zero past K.
    Scratch<T> packed = scratch<T>(checked_mul(panels, taps_n, NR));
    std::vector<int64_t> offsets(taps_n);  // of tap (r, s, c) from a pixel's top-left input
    for (int64_t rs = 0; rs < RS; ++rs)
        for (int64_t c = 0; c < g.C; ++c)
            offsets[rs * g.C + c] = c * HW + (rs / g.S) * g.dh * g.W + (rs % g.S) * g.dw;
    const AcrossImagesJobs jobs(g.N, HoWo, MR, tiles_max);
    std::vector<Scratch<T>> accs;
    for (int t = 0; t < jobs.threads; ++t) accs.push_back(scratch<T>(jobs.block_len * panels * MR * NR));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_for(panels * RS, jobs.threads, [&](int64_t u, int) {
        const int64_t p = u / RS, rs = u % RS;
        for (int64_t c = 0; c < g.C; ++c) {
            T* dst = packed.get() + (p * taps_n + rs * g.C + c) * NR;
            for (int64_t j = 0; j < NR; ++j) {
                const int64_t k = p * NR + j;
                dst[j] = k < g.K ? w[(k * g.C + c) * RS + rs] : T(0);
            }
        }
    });
    parallel_tasks(jobs.count, jobs.threads, [&](int64_t job, int worker) {
        T* acc = accs[size_t(worker)].get();
        OffsetCols<T, MR> tiles[tiles_max];
        ValidTaps runs[tiles_max];  // the tile's valid kernel rows ...
        ValidTaps cols[tiles_max];  // ... and columns
        const int64_t n0 = jobs.first_image(job, MR), q0 = jobs.first_pixel(job), len = jobs.length(job);
        if (len <= 0) return;
        for (int64_t t = 0; t < len; ++t) {
            const int64_t q = q0 + t, hi = (q / g.Wo) * g.sh - g.ph, wi = (q % g.Wo) * g.sw - g.pw;
            runs[t] = ValidTaps(q / g.Wo, g.sh, g.ph, g.R, g.dh, g.H);
            cols[t] = ValidTaps(q % g.Wo, g.sw, g.pw, g.S, g.dw, g.W);
            tiles[t].base = x;
            for (int i = 0; i < MR; ++i)
                tiles[t].i_offsets[i] = std::min(n0 + i, g.N - 1) * g.C * HW + hi * g.W + wi;
        }
        for (int64_t pc = 0; pc < taps_n; pc += KC) {
            const int64_t pe = std::min(taps_n, pc + KC);
            for (int64_t jp = 0; jp < panels; ++jp) {
                const int nv = static_cast<int>((std::min<int64_t>(NR, g.K - jp * NR) + L - 1) / L);
                for (int64_t t = 0; t < len; ++t)
                    for (int64_t r = runs[t].lo; r < runs[t].hi; ++r) {
                        // The run of taps (r, s0 .. s1, all c), cut to this block of taps.
                        const int64_t a = std::max(pc, (r * g.S + cols[t].lo) * g.C);
                        const int64_t b = std::min(pe, (r * g.S + cols[t].hi) * g.C);
                        if (a >= b) continue;
                        tiles[t].k_offsets = offsets.data() + a;
                        micro_kernel_cols<T, NV>(nv, b - a, tiles[t], PackedRows<T, NR>{packed.get() + (jp * taps_n + a) * NR},
                                                 acc + (t * panels + jp) * MR * NR, NR,
                                                 a == (runs[t].lo * g.S + cols[t].lo) * g.C ? Store::overwrite
                                                                                            : Store::accumulate,
                                                 nullptr);
                    }
            }
        }
        // A window entirely on padding: its sums are zero.
        for (int64_t t = 0; t < len; ++t)
            if (runs[t].lo >= runs[t].hi || cols[t].lo >= cols[t].hi) std::fill(acc + t * panels * MR * NR, acc + (t + 1) * panels * MR * NR, T(0));
        store_tiles_across_images<T, MR, NR>(acc, panels, n0, g.N, q0, len, g.K, HoWo, bias, y);
    });
}

// The input gradient with tiles across images, the forward's counterpart
// (conv2d_forward_by_channels_across_images): a tile is one grad_x pixel (h, w) of MR
// consecutive images by NR input channels, gathered over the taps (r, s) that reach it from a
// dy pixel, h = ho sh - ph + r dh and w = wo sw - pw + s dw with (ho, wo) inside dy; each such
// tap is a product over the K output channels, dy broadcast straight from NCHW and w packed
// once as (K x NR) panels per tap. So no tap is multiplied whose dy pixel would be padding or
// whose grad_x position falls on the padded border, and nothing is scattered: each tile is
// stored once, transposed into the planes. (The channels-last input gradient instead adds
// every dy pixel's contributions into a padded copy and drops its border: on 64 -> 128 4x4
// stride 2 padding 1 on 14x14, 14% of its products.) groups == 1. A job is a block of images by
// a range of grad_x pixels; each element sums its taps and channel blocks in the same order
// whichever job computes it, so the result does not depend on the thread count.
template <class T>
void conv2d_grad_input_across_images(const ConvShape& g, const T* dy, const T* w, T* dx) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = Simd<T>::lanes, NR = NV * L;
    constexpr int64_t KC = 128, tiles_max = 16;
    const int64_t RS = g.R * g.S, HW = g.H * g.W, HoWo = g.Ho * g.Wo, panels = (g.C + NR - 1) / NR;
    // dy pixel row ho reaching grad_x row h through kernel row r (-1: none), and alike for columns.
    auto sources = [](int64_t extent, int64_t out, int64_t stride, int64_t pad, int64_t taps, int64_t step) {
        std::vector<int64_t> src(extent * taps, -1);
        for (int64_t o = 0; o < out; ++o)
            for (int64_t t = 0; t < taps; ++t) {
                const int64_t i = o * stride - pad + t * step;
                if (i >= 0 && i < extent) src[i * taps + t] = o;
            }
        return src;
    };
    const std::vector<int64_t> rows = sources(g.H, g.Ho, g.sh, g.ph, g.R, g.dh);
    const std::vector<int64_t> cols = sources(g.W, g.Wo, g.sw, g.pw, g.S, g.dw);
    std::vector<int64_t> channel_offsets(g.K);  // of dy's channel k in an image
    for (int64_t k = 0; k < g.K; ++k) channel_offsets[k] = k * HoWo;
    Scratch<T> packed = scratch<T>(checked_mul(panels * RS, g.K, NR));
    const AcrossImagesJobs jobs(g.N, HW, MR, tiles_max);
    std::vector<Scratch<T>> accs;
    for (int t = 0; t < jobs.threads; ++t) accs.push_back(scratch<T>(jobs.block_len * panels * MR * NR));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    // w as panels [cp][rs][k][NR]: packed[((cp * RS + rs) * K + k) * NR + j] = w[k, cp*NR + j, rs], zero past C.
    parallel_for(panels * RS, jobs.threads, [&](int64_t u, int) {
        const int64_t cp = u / RS, rs = u % RS;
        for (int64_t k = 0; k < g.K; ++k) {
            T* dst = packed.get() + (u * g.K + k) * NR;
            for (int64_t j = 0; j < NR; ++j) {
                const int64_t c = cp * NR + j;
                dst[j] = c < g.C ? w[(k * g.C + c) * RS + rs] : T(0);
            }
        }
    });
    parallel_tasks(jobs.count, jobs.threads, [&](int64_t job, int worker) {
        T* acc = accs[size_t(worker)].get();
        OffsetCols<T, MR> a{};
        a.base = dy;
        a.k_offsets = channel_offsets.data();
        const int64_t n0 = jobs.first_image(job, MR), q0 = jobs.first_pixel(job), len = jobs.length(job);
        if (len <= 0) return;
        std::fill(acc, acc + len * panels * MR * NR, T(0));  // pixels no tap reaches stay 0
        for (int64_t cp = 0; cp < panels; ++cp) {
            const int nv = static_cast<int>((std::min<int64_t>(NR, g.C - cp * NR) + L - 1) / L);
            for (int64_t rs = 0; rs < RS; ++rs) {
                const T* panel = packed.get() + (cp * RS + rs) * g.K * NR;
                for (int64_t t = 0; t < len; ++t) {
                    const int64_t q = q0 + t;
                    const int64_t ho = rows[(q / g.W) * g.R + rs / g.S], wo = cols[(q % g.W) * g.S + rs % g.S];
                    if (ho < 0 || wo < 0) continue;
                    for (int i = 0; i < MR; ++i)
                        a.i_offsets[i] = std::min(n0 + i, g.N - 1) * g.K * HoWo + ho * g.Wo + wo;
                    for (int64_t pc = 0; pc < g.K; pc += KC) {
                        a.k_offsets = channel_offsets.data() + pc;
                        micro_kernel_cols<T, NV>(nv, std::min(KC, g.K - pc), a, PackedRows<T, NR>{panel + pc * NR},
                                                 acc + (t * panels + cp) * MR * NR, NR, Store::accumulate, nullptr);
                    }
                }
            }
        }
        store_tiles_across_images<T, MR, NR>(acc, panels, n0, g.N, q0, len, g.C, HW, static_cast<const T*>(nullptr), dx);
    });
}

// The weight gradient with tiles across images: a tile is MR input channels c of one tap (r, s)
// by NR output channels, reduced over the pixels, which run in (image group, ho, wo, n) order
// (groups of about KC / Wo consecutive images, images innermost; dy is transposed into
// NR-channel panels in that order). All rows of a tile then read the same window positions,
// and the pixels whose tap (r, s) falls on the image are one run per group and valid output
// row ho, (wo0 .. wo1) x the group's images: the others (zeros multiplied in
// conv2d_grad_weight_by_channels, which reads a padded copy) are skipped, and x is read in
// place. A group's row is swept in blocks of at most KC pixels, each block's dy panel (KC x NR)
// read from L1 by every tile of the thread, and the x rows a group's row reads stay in L2
// (with all images innermost, 64 x 64 x 14 x 14 inputs, they did not: 8.6 ms against 8.0 for
// the padded form). groups == 1. Each thread owns a contiguous range of
// tiles and sums every element over the same pixels in the same order whatever the thread
// count.
template <class T>
void conv2d_grad_weight_across_images(const ConvShape& g, const T* dy, const T* x, T* dw) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = Simd<T>::lanes, NR = NV * L;
    constexpr int64_t KC = 128;
    const int64_t RS = g.R * g.S, HW = g.H * g.W, HoWo = g.Ho * g.Wo, P = g.N * HoWo;
    const int64_t panels = (g.K + NR - 1) / NR, c_tiles = (g.C + MR - 1) / MR, tiles = RS * c_tiles;
    const int64_t tile_size = panels * MR * NR;
    const int64_t groups = (g.N + std::clamp<int64_t>(KC / g.Wo, 1, g.N) - 1) / std::clamp<int64_t>(KC / g.Wo, 1, g.N);
    const int64_t group_n = (g.N + groups - 1) / groups;  // images per group; the last may have fewer
    std::vector<ValidTaps> r_valid, s_valid;  // per output row ho / column wo
    for (int64_t ho = 0; ho < g.Ho; ++ho) r_valid.emplace_back(ho, g.sh, g.ph, g.R, g.dh, g.H);
    for (int64_t wo = 0; wo < g.Wo; ++wo) s_valid.emplace_back(wo, g.sw, g.pw, g.S, g.dw, g.W);
    // Tap (r, s) reaches the image from the output columns [wo_lo[s], wo_hi[s]) (one run).
    std::vector<int64_t> wo_lo(g.S, g.Wo), wo_hi(g.S, 0);
    for (int64_t wo = 0; wo < g.Wo; ++wo)
        for (int64_t s = s_valid[wo].lo; s < s_valid[wo].hi; ++s)
            wo_lo[s] = std::min(wo_lo[s], wo), wo_hi[s] = std::max(wo_hi[s], wo + 1);
    // Pixel (n, q)'s place in the reduction order and its top-left window position in x.
    auto place = [&](int64_t n, int64_t q) {
        const int64_t n0 = n / group_n * group_n, gn = std::min(group_n, g.N - n0);
        return n0 * HoWo + q * gn + n - n0;
    };
    std::vector<int64_t> pixels(P);
    for (int64_t n = 0; n < g.N; ++n)
        for (int64_t q = 0; q < HoWo; ++q) pixels[place(n, q)] = n * g.C * HW + (q / g.Wo) * g.sh * g.W + (q % g.Wo) * g.sw;
    Scratch<T> dyt = scratch<T>(checked_mul(panels, P, NR)), dwt = scratch<T>(checked_mul(tiles, tile_size, 1));
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), tiles)));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    // dy^T panels: dyt[(jp * P + place(n, q)) * NR + j] = dy[n, jp*NR + j, q], zero past K;
    // an image's dy (K x HoWo) stays in cache while its pixels are written channel-contiguous.
    parallel_for(g.N, threads, [&](int64_t n, int) {
        for (int64_t q = 0; q < HoWo; ++q) {
            const int64_t p = place(n, q);
            for (int64_t k = 0; k < panels * NR; ++k)
                dyt[((k / NR) * P + p) * NR + k % NR] = k < g.K ? dy[(n * g.K + k) * HoWo + q] : T(0);
        }
    });
    // A run of tiles per task, each swept over all pixels: dyt's blocks are read once per run.
    parallel_ranges(tiles, threads, threads, [&](int64_t first, int64_t last, int) {
        std::fill(dwt.get() + first * tile_size, dwt.get() + last * tile_size, T(0));  // taps never on the image stay 0
        OffsetCols<T, MR> a{};
        a.base = x;
        for (int64_t n0 = 0; n0 < g.N; n0 += group_n)
        for (int64_t ho = 0; ho < g.Ho; ++ho) {
            // The group's row of pixels in equal blocks of at most KC.
            const int64_t gn = std::min(group_n, g.N - n0), row_len = g.Wo * gn, row0 = n0 * HoWo + ho * row_len;
            const int64_t blocks = (row_len + KC - 1) / KC, step = (row_len + blocks - 1) / blocks;
            for (int64_t b0 = row0; b0 < row0 + row_len; b0 += step) {
                const int64_t b1 = std::min(b0 + step, row0 + row_len);
                for (int64_t jp = 0; jp < panels; ++jp) {
                    const int nv = static_cast<int>((std::min<int64_t>(NR, g.K - jp * NR) + L - 1) / L);
                    for (int64_t tile = first; tile < last; ++tile) {
                        const int64_t rs = tile / c_tiles, c0 = tile % c_tiles * MR, r = rs / g.S, s = rs % g.S;
                        if (r < r_valid[ho].lo || r >= r_valid[ho].hi) continue;
                        const int64_t p0 = std::max(b0, row0 + wo_lo[s] * gn);
                        const int64_t p1 = std::min(b1, row0 + wo_hi[s] * gn);
                        if (p0 >= p1) continue;
                        for (int i = 0; i < MR; ++i)
                            a.i_offsets[i] = std::min(c0 + i, g.C - 1) * HW + (r * g.dh - g.ph) * g.W + s * g.dw - g.pw;
                        a.k_offsets = pixels.data() + p0;
                        micro_kernel_cols<T, NV>(nv, p1 - p0, a, PackedRows<T, NR>{dyt.get() + (jp * P + p0) * NR},
                                                 dwt.get() + tile * tile_size + jp * MR * NR, NR, Store::accumulate,
                                                 nullptr);
                    }
                }
            }
        }
    });
    // dw[k, c, r, s] from tile (rs, c / MR), row c % MR, column k.
    parallel_for(g.K, threads, [&](int64_t k, int) {
        for (int64_t c = 0; c < g.C; ++c)
            for (int64_t rs = 0; rs < RS; ++rs)
                dw[(k * g.C + c) * RS + rs] =
                    dwt[(rs * c_tiles + c / MR) * tile_size + (k / NR) * MR * NR + (c % MR) * NR + k % NR];
    });
}

// grad_x at stride 1 as the forward convolution of dy (conv/grad_input_as_forward.h) on the
// kernel above, its flipped weights packed straight from w.
template <class T>
void conv2d_grad_input_by_channels(const ConvShape& g, const T* dy, const T* w, T* dx) {
    constexpr int NR = ChannelTile<T>::NV * Simd<T>::lanes;
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
    conv2d_forward_by_channels_packing(
        grad_input_as_forward_shape(g), dy,
        [&](int64_t grp, int64_t p, T* dst) { flipped_channel_panel<T, NR>(w + grp * Kg * Cg * RS, Cg, Kg, RS, p, dst); },
        static_cast<const T*>(nullptr), dx);
}

// Weight gradient vectorised over output channels, the forward's counterpart:
//   dw^T[(c,r,s), k] = sum_{(n,ho,wo)} X[(c,r,s), (n,ho,wo)] dy^T[(n,ho,wo), k],
// a micro-tile is MR taps x NR output channels and the reduction runs over pixels. The
// micro-kernel broadcasts X straight from the padded input (pixel offset + tap offset: the
// forward's addressing with the roles of the two offsets swapped); dy is transposed once into
// NR-channel panels. The work is tap tiles x chunks of the pixels (gemm/chunked_reduction.h:
// chunk bounds follow from the shape, and the chunks' partial sums are added in chunk order, so
// the result does not depend on the thread count). Splitting the taps alone left first layers
// unbalanced: 16 taps are 3 tiles of 6, one thread's against the other's 2.
template <class T>
void conv2d_grad_weight_by_channels(const ConvShape& g, const T* dy, const T* x, T* dw) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = Simd<T>::lanes, NR = NV * L;
    constexpr int64_t KC = 128;  // pixels per reduction block: a dy panel block is KC x NR
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S;
    const int64_t HoWo = g.Ho * g.Wo, P = g.N * HoWo, panels = (Kg + NR - 1) / NR;
    const int64_t tiles = (taps_n + MR - 1) / MR, tile_size = panels * MR * NR;
    // At least 8 blocks (1024 pixels) per chunk: below that the partial sums cost more than
    // the balance gains.
    const ReductionChunks chunks = reduction_chunks(P, tiles * tile_size, KC, 8);
    const PaddedInput<T> xp(g, x);
    std::vector<int64_t> taps = tap_offsets(g, xp), pixels(P);
    taps.resize(tiles * MR, taps.back());  // a partial last tile repeats the last tap
    for (int64_t p = 0; p < P; ++p) pixels[p] = xp.pixel(g, p);
    Scratch<T> dyt = scratch<T>(panels * P * NR), dwt = scratch<T>(chunks.count * tiles * tile_size);
    const int64_t jobs = chunks.count * tiles;
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), jobs)));
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
        // dy^T panels: dyt[(jp * P + p) * NR + j] = dy[n, grp*Kg + jp*NR + j, q], zero past Kg.
        // By chunks of 64 pixels of one image: each channel's chunk is read contiguously and
        // the chunk's panel rows (64 x NR) stay in L1 while every channel is written in.
        constexpr int64_t chunk = 64;
        const int64_t chunks_per_image = (HoWo + chunk - 1) / chunk;
        parallel_for(g.N * chunks_per_image, threads, [&](int64_t job, int) {
            const int64_t n = job / chunks_per_image, q0 = job % chunks_per_image * chunk,
                          len = std::min(chunk, HoWo - q0);
            T* dst = dyt.get() + (n * HoWo + q0) * NR;
            for (int64_t k = 0; k < panels * NR; ++k) {
                T* d = dst + (k / NR) * P * NR + k % NR;
                const T* src = dy + ((n * g.K + grp * Kg + k) * HoWo + q0);
                if (k < Kg) for (int64_t q = 0; q < len; ++q) d[q * NR] = src[q];
                else for (int64_t q = 0; q < len; ++q) d[q * NR] = T(0);
            }
        });
        // Job (chunk, tile): the tile's partial sums over the chunk's pixels. Each task
        // takes a contiguous run of jobs and, within each chunk of it, sweeps the chunk's
        // pixels block by block with all of its tiles, so that a block's dy panel (KC x NR,
        // 32 KiB) is read from L1 by every tile instead of the chunk's whole panel (up to
        // megabytes) streaming from L3 once per tile. Each element still sums its chunk's
        // blocks in order, so the result is the same whatever the thread count.
        parallel_ranges(jobs, threads, threads, [&](int64_t first, int64_t last, int) {
            OffsetCols<T, MR> a{};
            a.base = xp.data + grp * Cg * xp.plane;
            for (int64_t job = first; job < last;) {
                const int64_t ch = job / tiles, tile0 = job % tiles;
                const int64_t tile1 = std::min(tiles, tile0 + (last - job));
                // The chunk in equal blocks of at most KC pixels: a short last block (8 of the
                // 392 pixels of 8x512x7x7) would load and store every tile for little arithmetic.
                const int64_t len = chunks.end(ch) - chunks.begin(ch), blocks = (len + KC - 1) / KC;
                const int64_t step = std::max<int64_t>(1, (len + blocks - 1) / blocks);
                for (int64_t pc = chunks.begin(ch); pc < chunks.end(ch); pc += step) {
                    const int64_t kc = std::min(step, chunks.end(ch) - pc);
                    const Store store = pc == chunks.begin(ch) ? Store::overwrite : Store::accumulate;
                    a.k_offsets = pixels.data() + pc;
                    for (int64_t jp = 0; jp < panels; ++jp) {
                        const int nv = static_cast<int>((std::min<int64_t>(NR, Kg - jp * NR) + L - 1) / L);
                        const PackedRows<T, NR> b{dyt.get() + (jp * P + pc) * NR};
                        for (int64_t tile = tile0; tile < tile1; ++tile) {
                            T* part = dwt.get() + (ch * tiles + tile) * tile_size;
                            for (int i = 0; i < MR; ++i) a.i_offsets[i] = taps[tile * MR + i];
                            micro_kernel_cols<T, NV>(nv, kc, a, b, part + jp * MR * NR, NR, store, nullptr);
                        }
                    }
                }
                job += tile1 - tile0;
            }
        });
        // The chunks' partial sums in chunk order, added into chunk 0's tile (element by
        // element, vectorisable).
        if (chunks.count > 1) {
            parallel_for(tiles, threads, [&](int64_t tile, int) {
                T* sum = dwt.get() + tile * tile_size;
                for (int64_t ch = 1; ch < chunks.count; ++ch) {
                    const T* part = dwt.get() + (ch * tiles + tile) * tile_size;
                    for (int64_t e = 0; e < tile_size; ++e) sum[e] += part[e];
                }
            });
        }
        // dw[grp*Kg + k, tap] from the tiles, which hold dw^T (tap t at row t % MR of tile
        // t / MR, its channels along the row): blocks of `lanes` taps x `lanes` channels go
        // through a register transpose, a vector load per tap and a vector store per
        // channel. (Element by element, MR taps of each channel at a time, the stores went
        // to rows of dw 18 KiB apart, a sixth of the weight gradient's time on 8x512x7x7.)
        constexpr int64_t ld = NR;
        const int64_t tap_blocks = (taps_n + L - 1) / L, rows_alloc = tiles * MR;
        parallel_for(tap_blocks, threads, [&](int64_t tb, int) {
            const int64_t t0 = tb * L;
            const int len = static_cast<int>(std::min<int64_t>(L, taps_n - t0));
            for (int64_t k0 = 0; k0 < Kg; k0 += L) {
                typename Simd<T>::V block[L];
#pragma GCC unroll 16
                for (int i = 0; i < L; ++i) {
                    const int64_t t = t0 + i;
                    block[i] = t < rows_alloc ? Simd<T>::load(dwt.get() + (t / MR) * tile_size + (k0 / NR) * MR * NR +
                                                               (t % MR) * ld + k0 % NR)
                                               : Simd<T>::zero();
                }
                transpose_block<T>(block);
                const int64_t channels = std::min<int64_t>(L, Kg - k0);
                for (int64_t j = 0; j < channels; ++j) {
                    T* dst = dw + (grp * Kg + k0 + j) * taps_n + t0;
                    if (len == L) Simd<T>::store(dst, block[j]);
                    else store_first<T>(dst, block[j], len);
                }
            }
        });
    }
}

// The channels-last copy of conv2d_grad_input_channels_last -> `channels` NCHW planes:
// out[c][h][x] = acc[((h + ph) * Wp + x + pw) * row + c], dropping the padding, and 0 where
// (h + ph, x + pw) lies past the padded plane (grad_x rows or columns no tap reaches). Blocks
// of `lanes` consecutive outputs (row-major over H x W, so any image width) by `lanes` channels
// go through a register transpose: a vector load per output, a vector store per channel, where
// element by element each store read a different cache line (32 channels of 16x16 images,
// batch 64, 1 thread: the copy 0.14 against 0.38 ms; 64 of 8x8: 0.05 against 0.19 ms). The rest
// (channels past the last whole vector, a last partial block, blocks reaching past the
// padded plane) element by element.
template <class T>
void channels_last_to_planes(const ConvShape& g, const PaddedPlane& pp, const T* acc, int64_t row, int64_t channels,
                             T* out) {
    using S = Simd<T>;
    constexpr int L = S::lanes;
    const int64_t HW = g.H * g.W, whole_vectors = channels / L * L;
    int64_t rows[L];  // acc offsets of the block's outputs, -1 past the padded plane
    for (int64_t p0 = 0; p0 < HW; p0 += L) {
        const int64_t len = std::min<int64_t>(L, HW - p0);
        bool inside = len == L;
        for (int64_t i = 0; i < len; ++i) {
            const int64_t hp = (p0 + i) / g.W + g.ph, wp = (p0 + i) % g.W + g.pw;
            rows[i] = hp < pp.Hp && wp < pp.Wp ? (hp * pp.Wp + wp) * row : -1;
            inside = inside && rows[i] >= 0;
        }
        int64_t c = 0;
        if (inside)
            for (; c < whole_vectors; c += L) {
                typename S::V block[L];
#pragma GCC unroll 16
                for (int i = 0; i < L; ++i) block[i] = S::load(acc + rows[i] + c);
                transpose_block<T>(block);
#pragma GCC unroll 16
                for (int j = 0; j < L; ++j) S::store(out + (c + j) * HW + p0, block[j]);
            }
        for (; c < channels; ++c)
            for (int64_t i = 0; i < len; ++i) out[c * HW + p0 + i] = rows[i] >= 0 ? acc[rows[i] + c] : T(0);
    }
}

// w (K, C, R, S) as the channels-last input gradient's B: per block of NR channels and tap
// (r, s), a K x NR panel [k][NR] (zero past C): w[k] (C x RS) transposed by register blocks
// (channel_panel), its tap rows going to the panels, shared out among the threads. Element by
// element on one thread this packing was most of a one-image call (64 -> 32 channels 4x4
// stride 2 on 4x4: 70% of 61 us).
template <class T>
Scratch<T> pack_tap_panels(const ConvShape& g, const T* w) {
    constexpr int NR = ChannelTile<T>::NV * Simd<T>::lanes;
    const int64_t RS = g.R * g.S, c_panels = (g.C + NR - 1) / NR;
    Scratch<T> B = scratch<T>(checked_mul(RS * c_panels, g.K, NR));
    parallel_for(c_panels * g.K, threads_if(c_panels * g.K * RS * NR >= (int64_t(1) << 15)), [&](int64_t u, int) {
        const int64_t cp = u / g.K, k = u % g.K;
        channel_panel<T, NR>(w + k * g.C * RS, g.C, RS, cp, B.get() + (cp * RS * g.K + k) * NR, g.K * NR);
    });
    return B;
}

// pack_tap_panels' result for K x C x R x S filters, kept for later calls (kernels.h,
// PreparedFilters): a transposed convolution with constant weights packs them once.
template <class T>
struct PreparedTapPanels final : PreparedFilters {
    int64_t K, C, R, S;
    Scratch<T> B;
    PreparedTapPanels(const ConvShape& g, const T* w) : K(g.K), C(g.C), R(g.R), S(g.S), B(pack_tap_panels(g, w)) {}

    // `prepared`'s panels where they were made by these kernels for g's filters, else nullptr.
    static const T* find(const PreparedFilters* prepared, const ConvShape& g) {
        const auto* p = dynamic_cast<const PreparedTapPanels*>(prepared);
        return p != nullptr && p->K == g.K && p->C == g.C && p->R == g.R && p->S == g.S ? p->B.get() : nullptr;
    }
};

// grad_x vectorised over input channels, for the transpose convolutions of generators (stride
// 2, 64+ channels): per image, the GEMM dy^T[pixels, k] w[k, (r, s, c)] in tiles of 6 dy pixels
// x 64 channels c of one tap (r, s), dy broadcast straight from NCHW. Each tile row is the
// contribution of one dy pixel through one tap to 64 channels of one grad_x position, so it
// is added into a per-thread channels-last copy of those channels of the image's grad_x with
// 4 vector adds; that copy, padded so every position any tap reaches exists, goes to NCHW once
// at the end. A job is one image and one panel of channels (or a part of its vectors, below),
// computed by one thread in a fixed order: the result does not depend on the number of
// threads. The panels come from `prepared` where it holds them, else are packed here.
template <class T>
void conv2d_grad_input_channels_last(const ConvShape& g, const T* dy, const T* w, T* dx,
                                     const PreparedFilters* prepared = nullptr) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = Simd<T>::lanes, NR = NV * L;
    constexpr int64_t KC = 128;  // a weight panel block of KC x NR (32 KiB)
    const int64_t HoWo = g.Ho * g.Wo, RS = g.R * g.S, c_panels = (g.C + NR - 1) / NR;
    const PaddedPlane pp(g);  // every grad_x position a tap reaches, from (-ph, -pw)
    Scratch<T> packed;
    const T* B = PreparedTapPanels<T>::find(prepared, g);
    if (B == nullptr) B = (packed = pack_tap_panels(g, w)).get();
    std::vector<int64_t> channel_offsets(g.K);  // dy's channel k of an image, for the broadcasts
    for (int64_t k = 0; k < g.K; ++k) channel_offsets[k] = k * HoWo;
    // Fewer panels of images than threads (a generator's layer at one image: one panel, one
    // thread): each panel's vectors of channels cut into parts, a job each. Every channel is
    // the same sum whichever part holds it.
    const int team = num_threads();
    const int64_t parts = g.N * c_panels < team ? std::min<int64_t>(team, NV) : 1;
    const int64_t tiles = (HoWo + MR - 1) / MR, jobs = g.N * c_panels * parts;
    // Per thread, NR channels of one image's grad_x, channels last (allocated before the tasks
    // run).
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(team, jobs)));
    std::vector<Scratch<T>> accs;
    for (int t = 0; t < threads; ++t) accs.push_back(scratch<T>(checked_mul(pp.size(), NR)));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(jobs, threads, [&](int64_t job, int worker) {
        const Scratch<T>& acc = accs[worker];
        alignas(64) T tile[MR * NR];
        const int64_t n = job / parts / c_panels, cp = job / parts % c_panels, part = job % parts;
        const int used = static_cast<int>((std::min<int64_t>(NR, g.C - cp * NR) + L - 1) / L);
        const int v0 = static_cast<int>(used * part / parts), nv = static_cast<int>(used * (part + 1) / parts) - v0;
        if (nv == 0) return;
        const int64_t c0 = cp * NR + v0 * L;  // the part's first channel
        // Rows of the copy as long as the panel's used vectors: with 32 channels (nv = 2) the
        // copy of a 16x16 image is 41 instead of 83 KiB, within L1 for the adds below.
        const int64_t row = nv * L;
        std::fill(acc.get(), acc.get() + pp.size() * row, T(0));
        OffsetCols<T, MR> a{};
        a.base = dy + n * g.K * HoWo;
        for (int64_t rs = 0; rs < RS; ++rs) {
            const int64_t tap = (rs / g.S) * g.dh * pp.Wp + (rs % g.S) * g.dw;
            const T* panel = B + (cp * RS + rs) * g.K * NR + v0 * L;
            for (int64_t t = 0; t < tiles; ++t) {
                const int rows = static_cast<int>(std::min<int64_t>(MR, HoWo - t * MR));
                for (int i = 0; i < MR; ++i) a.i_offsets[i] = t * MR + std::min(i, rows - 1);
                for (int64_t pc = 0; pc < g.K; pc += KC) {
                    a.k_offsets = channel_offsets.data() + pc;
                    micro_kernel_cols<T, NV>(nv, std::min(KC, g.K - pc), a,
                                             PackedRows<T, NR>{panel + pc * NR}, tile, NR,
                                             Store::overwrite, nullptr);
                    // Row i: dy pixel (ho, wo) through tap (r, s) to position
                    // (ho*sh + r*dh, wo*sw + s*dw) of the padded image.
                    for (int i = 0; i < rows; ++i) {
                        const int64_t q = t * MR + i, pos = (q / g.Wo) * g.sh * pp.Wp + (q % g.Wo) * g.sw + tap;
                        T* dst = acc.get() + pos * row;
                        for (int v = 0; v < nv; ++v)
                            Simd<T>::store(dst + v * L, Simd<T>::load(dst + v * L) + Simd<T>::load(tile + i * NR + v * L));
                    }
                }
            }
        }
        channels_last_to_planes<T>(g, pp, acc.get(), row, std::min<int64_t>(row, g.C - c0),
                                   dx + (n * g.C + c0) * g.H * g.W);
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
