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

// w (Kg, taps) of one group as NR-channel panels [panel][tap][NR], zero-padded past Kg.
template <class T, int NR>
Scratch<T> channel_panels(const T* w, int64_t Kg, int64_t taps_n) {
    const int64_t panels = (Kg + NR - 1) / NR;
    Scratch<T> packed = scratch<T>(panels * taps_n * NR);
    // A transpose, 16 taps at a time: each weight row is read a cache line at a time (rows a
    // power of two apart would otherwise evict each other from L1 on every tap).
    constexpr int64_t step = 16;
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t k0 = 0; k0 < taps_n; k0 += step) {
            const int64_t kn = std::min(step, taps_n - k0);
            T* dst = packed.get() + (p * taps_n + k0) * NR;
            for (int64_t j = 0; j < NR; ++j) {
                const T* src = p * NR + j < Kg ? w + (p * NR + j) * taps_n + k0 : nullptr;
                for (int64_t k = 0; k < kn; ++k) dst[k * NR + j] = src ? src[k] : T(0);
            }
        }
    return packed;
}

// Forward convolution vectorised over output channels: the GEMM transposed,
//   y^T[(n,ho,wo), k] = sum_{(c,r,s)} X^T[(n,ho,wo), (c,r,s)] w^T[(c,r,s), k],
// so a micro-tile is MR pixels x NR output channels. x is not packed at all: the micro-kernel
// broadcasts each pixel's tap straight from the padded input (tap offset + pixel offset), and
// only the weights are packed, once. The MR pixels of a tile are any consecutive outputs, so
// nothing is wasted at row or image ends, where the pixel-vectorised GEMM drops grid columns
// and stores tiles through the edge buffer in runs of Wo. The price: tiles are stored
// transposed (output channels are HoWo apart in NCHW), once per MC pixels after the whole
// reduction, from a per-thread accumulator that stays in cache.
template <class T>
void conv2d_forward_by_channels(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = Simd<T>::lanes, NR = NV * L;
    // A weight panel of KC x NR (32 KiB) is shared by the MC pixels of a block (smaller and
    // larger KC measured the same).
    constexpr int64_t KC = 128, MC = 16 * MR, tiles_max = MC / MR;
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps_n = Cg * g.R * g.S, HoWo = g.Ho * g.Wo;
    const int64_t M = g.N * HoWo, blocks = (M + MC - 1) / MC, panels = (Kg + NR - 1) / NR;
    const int64_t k_blocks = std::max<int64_t>(1, (taps_n + KC - 1) / KC);
    const int64_t kc_step = std::max<int64_t>(1, (taps_n + k_blocks - 1) / k_blocks);
    const PaddedInput<T> xp(g, x);
    const std::vector<int64_t> offsets = tap_offsets(g, xp);
    std::vector<Scratch<T>> weights;
    for (int64_t grp = 0; grp < g.groups; ++grp) weights.push_back(channel_panels<T, NR>(w + grp * Kg * taps_n, Kg, taps_n));
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), blocks * g.groups)));
    // Per-thread accumulators, allocated here: an exception must not leave a parallel region.
    std::vector<Scratch<T>> accs;
    for (int t = 0; t < threads; ++t) accs.push_back(scratch<T>(tiles_max * panels * MR * NR));
    // Every group's GEMM in one parallel region; threads move on to the next group without waiting.
    FlushDenormals ftz;  // on every thread of the team (common/denormals.h)
#pragma omp parallel num_threads(threads) firstprivate(ftz)
    {
        const Scratch<T>& acc = accs[omp_get_thread_num()];
        OffsetCols<T, MR> tiles[tiles_max];
        for (int64_t grp = 0; grp < g.groups; ++grp) {
#pragma omp for schedule(static) nowait
            for (int64_t block = 0; block < blocks; ++block) {
                const int64_t i0 = block * MC, mc = std::min(MC, M - i0), n_tiles = (mc + MR - 1) / MR;
                // Offsets of the block's pixels; a last partial tile repeats its last pixel.
                for (int64_t t = 0; t < n_tiles; ++t) {
                    tiles[t].base = xp.data + grp * Cg * xp.plane;
                    for (int i = 0; i < MR; ++i) tiles[t].i_offsets[i] = xp.pixel(g, std::min(i0 + t * MR + i, i0 + mc - 1));
                }
                for (int64_t pc = 0; pc < taps_n; pc += kc_step) {
                    const int64_t kc = std::min(kc_step, taps_n - pc);
                    const Store store = pc == 0 ? Store::overwrite : Store::accumulate;
                    for (int64_t jp = 0; jp < panels; ++jp) {
                        const int nv = static_cast<int>((std::min<int64_t>(NR, Kg - jp * NR) + L - 1) / L);
                        const PackedRows<T, NR> b{weights[grp].get() + (jp * taps_n + pc) * NR};
                        for (int64_t t = 0; t < n_tiles; ++t) {
                            tiles[t].k_offsets = offsets.data() + pc;
                            micro_kernel_cols<T, NV>(nv, kc, tiles[t], b, acc.get() + (t * panels + jp) * MR * NR,
                                                     NR, store, nullptr);
                        }
                    }
                }
                // Transposed store: channel by channel, the tile's pixels are (mostly) adjacent in y.
                for (int64_t t = 0; t < n_tiles; ++t) {
                    const int rows = static_cast<int>(std::min<int64_t>(MR, mc - t * MR));
                    T* dst[MR];
                    for (int i = 0; i < rows; ++i) {
                        const int64_t p = i0 + t * MR + i;
                        dst[i] = y + ((p / HoWo) * g.K + grp * Kg) * HoWo + p % HoWo;
                    }
                    for (int64_t k = 0; k < Kg; ++k) {
                        const T* src = acc.get() + (t * panels + k / NR) * MR * NR + k % NR;
                        const T b = bias ? bias[grp * Kg + k] : T(0);
                        for (int i = 0; i < rows; ++i) dst[i][k * HoWo] = src[i * NR] + b;
                    }
                }
            }
        }
    }
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
        FlushDenormals ftz;  // on every thread of the team (common/denormals.h)
#pragma omp parallel num_threads(threads) firstprivate(ftz)
        {
            // dy^T panels: dyt[(jp * P + p) * NR + j] = dy[n, grp*Kg + jp*NR + j, q], zero past Kg.
            // By chunks of 64 pixels of one image: each channel's chunk is read contiguously and
            // the chunk's panel rows (64 x NR) stay in L1 while every channel is written in.
            constexpr int64_t chunk = 64;
            const int64_t chunks_per_image = (HoWo + chunk - 1) / chunk;
#pragma omp for schedule(static)
            for (int64_t job = 0; job < g.N * chunks_per_image; ++job) {
                const int64_t n = job / chunks_per_image, q0 = job % chunks_per_image * chunk,
                              len = std::min(chunk, HoWo - q0);
                T* dst = dyt.get() + (n * HoWo + q0) * NR;
                for (int64_t k = 0; k < panels * NR; ++k) {
                    T* d = dst + (k / NR) * P * NR + k % NR;
                    const T* src = dy + ((n * g.K + grp * Kg + k) * HoWo + q0);
                    if (k < Kg) for (int64_t q = 0; q < len; ++q) d[q * NR] = src[q];
                    else for (int64_t q = 0; q < len; ++q) d[q * NR] = T(0);
                }
            }
            // Job (chunk, tile): the tile's partial sums over the chunk's pixels. Each thread
            // takes a contiguous run of jobs and, within each chunk of it, sweeps the chunk's
            // pixels block by block with all of its tiles, so that a block's dy panel (KC x NR,
            // 32 KiB) is read from L1 by every tile instead of the chunk's whole panel (up to
            // megabytes) streaming from L3 once per tile. Each element still sums its chunk's
            // blocks in order, so the result is the same whatever the thread count.
            OffsetCols<T, MR> a{};
            a.base = xp.data + grp * Cg * xp.plane;
            const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
            const int64_t first = jobs * me / team, last = jobs * (me + 1) / team;
            for (int64_t job = first; job < last;) {
                const int64_t ch = job / tiles, tile0 = job % tiles;
                const int64_t tile1 = std::min(tiles, tile0 + (last - job));
                for (int64_t pc = chunks.begin(ch); pc < chunks.end(ch); pc += KC) {
                    const int64_t kc = std::min(KC, chunks.end(ch) - pc);
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
#pragma omp barrier
            // dw[grp*Kg + k, tap]: the chunks' partial sums in chunk order, added into chunk 0's
            // tile (element by element, vectorisable), then the tile stored transposed: MR taps
            // of each of its channels are adjacent in dw. (Going tap by tap over all channels
            // instead wrote dw a row apart at every step, a cache miss per element: a tenth of
            // the whole gradient's time for 64 -> 128 channels 4x4 on 14x14.)
#pragma omp for schedule(static)
            for (int64_t tile = 0; tile < tiles; ++tile) {
                T* sum = dwt.get() + tile * tile_size;
                for (int64_t ch = 1; ch < chunks.count; ++ch) {
                    const T* part = dwt.get() + (ch * tiles + tile) * tile_size;
                    for (int64_t e = 0; e < tile_size; ++e) sum[e] += part[e];
                }
                const int rows = static_cast<int>(std::min<int64_t>(MR, taps_n - tile * MR));
                for (int64_t k = 0; k < Kg; ++k) {
                    const T* src = sum + (k / NR) * MR * NR + k % NR;
                    T* dst = dw + (grp * Kg + k) * taps_n + tile * MR;
                    for (int i = 0; i < rows; ++i) dst[i] = src[i * NR];
                }
            }
        }
    }
}

// grad_x vectorised over input channels, for the transpose convolutions of generators (stride
// 2, 64+ channels): per image, the GEMM dy^T[pixels, k] w[k, (r, s, c)] in tiles of 6 dy pixels
// x 64 channels c of one tap (r, s), dy broadcast straight from NCHW. Each tile row is the
// contribution of one dy pixel through one tap to 64 channels of one grad_x position, so it
// is added into a per-thread channels-last copy of those channels of the image's grad_x with
// 4 vector adds; that copy, padded so every position any tap reaches exists, goes to NCHW once
// at the end. A job is one image and one panel of channels, computed by one thread in a fixed
// order: the result does not depend on the number of threads.
template <class T>
void conv2d_grad_input_channels_last(const ConvShape& g, const T* dy, const T* w, T* dx) {
    constexpr int MR = ChannelTile<T>::MR, NV = ChannelTile<T>::NV, L = Simd<T>::lanes, NR = NV * L;
    constexpr int64_t KC = 128;  // a weight panel block of KC x NR (32 KiB)
    const int64_t HoWo = g.Ho * g.Wo, RS = g.R * g.S, c_panels = (g.C + NR - 1) / NR;
    const PaddedPlane pp(g);  // every grad_x position a tap reaches, from (-ph, -pw)
    // w as B: per block of NR channels and tap (r, s), a K x NR panel [k][NR] (zero past C).
    Scratch<T> B = scratch<T>(RS * c_panels * g.K * NR);
    for (int64_t cp = 0; cp < c_panels; ++cp)
        for (int64_t rs = 0; rs < RS; ++rs)
            for (int64_t k = 0; k < g.K; ++k) {
                T* dst = B.get() + ((cp * RS + rs) * g.K + k) * NR;
                for (int64_t j = 0; j < NR; ++j) {
                    const int64_t c = cp * NR + j;
                    dst[j] = c < g.C ? w[(k * g.C + c) * RS + rs] : T(0);
                }
            }
    std::vector<int64_t> channel_offsets(g.K);  // dy's channel k of an image, for the broadcasts
    for (int64_t k = 0; k < g.K; ++k) channel_offsets[k] = k * HoWo;
    const int64_t tiles = (HoWo + MR - 1) / MR, jobs = g.N * c_panels;
    // Per thread, NR channels of one image's grad_x, channels last (allocated outside the
    // parallel region, which an exception must not leave).
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), jobs)));
    std::vector<Scratch<T>> accs;
    for (int t = 0; t < threads; ++t) accs.push_back(scratch<T>(checked_mul(pp.size(), NR)));
    FlushDenormals ftz;  // on every thread of the team (common/denormals.h)
#pragma omp parallel num_threads(threads) firstprivate(ftz)
    {
        const Scratch<T>& acc = accs[omp_get_thread_num()];
        alignas(64) T tile[MR * NR];
#pragma omp for schedule(static)
        for (int64_t job = 0; job < jobs; ++job) {
            const int64_t n = job / c_panels, cp = job % c_panels;
            const int nv = static_cast<int>((std::min<int64_t>(NR, g.C - cp * NR) + L - 1) / L);
            std::fill(acc.get(), acc.get() + pp.size() * NR, T(0));
            OffsetCols<T, MR> a{};
            a.base = dy + n * g.K * HoWo;
            for (int64_t rs = 0; rs < RS; ++rs) {
                const int64_t tap = (rs / g.S) * g.dh * pp.Wp + (rs % g.S) * g.dw;
                const T* panel = B.get() + (cp * RS + rs) * g.K * NR;
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
                            T* dst = acc.get() + pos * NR;
                            for (int v = 0; v < nv; ++v)
                                Simd<T>::store(dst + v * L, Simd<T>::load(dst + v * L) + Simd<T>::load(tile + i * NR + v * L));
                        }
                    }
                }
            }
            // Channels last -> NCHW, dropping the padding; grad_x rows or columns no tap reaches are 0.
            for (int64_t c = cp * NR; c < std::min(g.C, (cp + 1) * NR); ++c) {
                T* out = dx + (n * g.C + c) * g.H * g.W;
                for (int64_t h = 0; h < g.H; ++h)
                    for (int64_t x = 0; x < g.W; ++x) {
                        const int64_t hp = h + g.ph, wp = x + g.pw;
                        out[h * g.W + x] = hp < pp.Hp && wp < pp.Wp ? acc[(hp * pp.Wp + wp) * NR + c - cp * NR] : T(0);
                    }
            }
        }
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
