// Direct forward convolution vectorised over output channels, for layers of exactly 16 output
// channels at stride 1 without padding (LeNet's conv2: 6 -> 16 channels, 5x5 on 14x14).
//
// The direct forward on the phase grid (conv/direct_grid.h) vectorises along grid pixels and
// computes the Wq - Wo grid columns of every output row that it then drops: on small images
// with wide kernels a large share (LeNet's conv2: 14 columns computed for 10 kept). The GEMM
// by channels (conv/by_channels.h) wastes nothing but holds 4 vectors of channels per pixel,
// 3 of them empty for 16 channels. Here the 16 output channels fill the vectors exactly, and
// a register tile holds a block of ROWS output rows x P consecutive columns of one image: for
// every tap (c, r, s) one load of the tap's 16 weights and, per pixel, one broadcast of the
// pixel's input element, which sits at a constant distance from the tap's first one (stride 1
// along a row), and an FMA. No column is computed that is not kept, except where the last
// block of columns or rows overlaps the one before it (Wo or Ho not a multiple of the block):
// those outputs are computed twice, the same sum in the same order, so the same value.
//
// Each thread writes one image's outputs channels-last into a buffer of its own (in cache),
// then transposes it into y's NCHW planes by register blocks. Every output is bias plus its
// taps in (c, r, s) order in one accumulator, computed whole by one thread: the result does
// not depend on the thread count.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

// The output channels this forward computes: one AVX-512 vector of floats.
constexpr int64_t kDirectChannels = 16;
// Accumulator vectors per register tile (the rest of the 32 registers hold the weights and a
// broadcast), and the widest block of columns.
constexpr int kDirectChannelsAccumulators = 24;
constexpr int kDirectChannelsMaxColumns = 12;
constexpr int kDirectChannelsMaxRows = 4;

// Output rows of a tile P columns wide holding NV vectors of channels per pixel.
constexpr int direct_channels_rows(int P, int NV) {
    const int rows = kDirectChannelsAccumulators / (P * NV);
    return rows < 1 ? 1 : rows > kDirectChannelsMaxRows ? kDirectChannelsMaxRows : rows;
}

// Columns per tile: Wo in equal blocks of at most kDirectChannelsMaxColumns.
inline int direct_channels_columns(const ConvShape& g) {
    const int64_t blocks = (g.Wo + kDirectChannelsMaxColumns - 1) / kDirectChannelsMaxColumns;
    return int((g.Wo + blocks - 1) / blocks);
}

// Whether this forward can run g: AVX-512 (its 32 registers), one group of exactly 16 output
// channels, stride 1 along rows, no padding, and at least as many output rows as a tile.
inline bool direct_channels_applies(const ConvShape& g) {
    return PYCONV_ISA_LEVEL == 2 && g.groups == 1 && g.K == kDirectChannels && g.C > 0 && g.sw == 1 &&
           g.ph == 0 && g.pw == 0 && g.Ho >= kDirectChannelsMaxRows && g.Wo >= 1;
}

// One tile: ROWS output rows x P columns from input element x0 (the tile's first pixel, tap
// (0, 0, 0)), its outputs channels-last to out (pixel (i, p) at out + (i * Wo + p) * 16).
template <class T, int P>
static inline __attribute__((always_inline)) void direct_channels_tile(
    const T* x0, int64_t row_stride, const int64_t* offsets, int64_t taps, const T* wpack,
    const typename Simd<T>::V* bias, int64_t Wo, T* out) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int NV = int(kDirectChannels) / S::lanes, ROWS = direct_channels_rows(P, NV);
    V acc[ROWS][P][NV];
#pragma GCC unroll 4
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 12
        for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][p][v] = bias[v];
    for (int64_t t = 0; t < taps; ++t) {
        const T* xt = x0 + offsets[t];
        V wv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) wv[v] = S::load(wpack + t * kDirectChannels + v * S::lanes);
#pragma GCC unroll 4
        for (int i = 0; i < ROWS; ++i) {
            const T* xi = xt + i * row_stride;
#pragma GCC unroll 12
            for (int p = 0; p < P; ++p) {
                const V b = S::broadcast(xi + p);
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) acc[i][p][v] = S::fma(wv[v], b, acc[i][p][v]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 12
        for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) S::store(out + (i * Wo + p) * kDirectChannels + v * S::lanes, acc[i][p][v]);
}

// One image's outputs, channels-last in buf ([Ho Wo][16]), into its 16 planes of y: blocks of
// `lanes` pixels x `lanes` channels transposed in registers, the last pixels element by element.
template <class T>
void store_channels_last(const T* buf, int64_t pixels, T* y) {
    using S = Simd<T>;
    constexpr int L = S::lanes;
    int64_t q0 = 0;
    for (; q0 + L <= pixels; q0 += L)
        for (int64_t k0 = 0; k0 < kDirectChannels; k0 += L) {
            typename S::V block[L];
#pragma GCC unroll 16
            for (int i = 0; i < L; ++i) block[i] = S::load(buf + (q0 + i) * kDirectChannels + k0);
            transpose_block<T>(block);
#pragma GCC unroll 16
            for (int j = 0; j < L; ++j) S::store(y + (k0 + j) * pixels + q0, block[j]);
        }
    for (; q0 < pixels; ++q0)
        for (int64_t k = 0; k < kDirectChannels; ++k) y[k * pixels + q0] = buf[q0 * kDirectChannels + k];
}

template <class T, int P>
void conv2d_forward_direct_channels_with(const ConvShape& g, const T* x, const T* wpack, const int64_t* offsets,
                                         const typename Simd<T>::V* bias, T* y, int threads) {
    using S = Simd<T>;
    constexpr int NV = int(kDirectChannels) / S::lanes, ROWS = direct_channels_rows(P, NV);
    const int64_t taps = g.C * g.R * g.S, pixels = g.Ho * g.Wo, row_stride = g.sh * g.W;
    const int64_t buffer = (pixels * kDirectChannels + 15) / 16 * 16;  // a thread's, in whole cache lines
    const Scratch<T> buffers = scratch<T>(checked_mul(int64_t(threads), buffer));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(g.N, threads, [&](int64_t n, int worker) {
        T* out = buffers.get() + worker * buffer;
        const T* xn = x + n * g.C * g.H * g.W;
        // The last block of rows (columns) starts early enough to end at Ho (Wo).
        for (int64_t h = 0; h < g.Ho; h += ROWS) {
            const int64_t ho = std::min<int64_t>(h, g.Ho - ROWS);
            for (int64_t c = 0; c < g.Wo; c += P) {
                const int64_t wo = std::min<int64_t>(c, g.Wo - P);
                direct_channels_tile<T, P>(xn + ho * row_stride + wo, row_stride, offsets, taps, wpack, bias,
                                           g.Wo, out + (ho * g.Wo + wo) * kDirectChannels);
            }
        }
        store_channels_last(out, pixels, y + n * kDirectChannels * pixels);
    });
}

// The forward instantiated for exactly P columns per tile (P = cols, counting down).
template <class T, int P = kDirectChannelsMaxColumns>
void conv2d_forward_direct_channels_p(int cols, const ConvShape& g, const T* x, const T* wpack,
                                      const int64_t* offsets, const typename Simd<T>::V* bias, T* y, int threads) {
    if constexpr (P > 1) {
        if (cols < P) return conv2d_forward_direct_channels_p<T, P - 1>(cols, g, x, wpack, offsets, bias, y, threads);
    }
    conv2d_forward_direct_channels_with<T, P>(g, x, wpack, offsets, bias, y, threads);
}

// team: the most threads (conv/direct_grid.h's direct_grid_threads: the same work per output).
template <class T>
void conv2d_forward_direct_channels(const ConvShape& g, const T* x, const T* w, const T* bias, T* y, int team) {
    using S = Simd<T>;
    constexpr int NV = int(kDirectChannels) / S::lanes;
    if (!direct_channels_applies(g)) throw std::invalid_argument("conv2d: the direct forward by channels cannot run this shape");
    const int64_t taps = g.C * g.R * g.S;
    // The weights tap-major, [tap][16]; the tap offsets within an image.
    const Scratch<T> wpack = scratch<T>(checked_mul(taps, kDirectChannels));
    for (int64_t t = 0; t < taps; ++t)
        for (int64_t k = 0; k < kDirectChannels; ++k) wpack.get()[t * kDirectChannels + k] = w[k * taps + t];
    std::vector<int64_t> offsets(static_cast<size_t>(taps));
    for (int64_t c = 0, t = 0; c < g.C; ++c)
        for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s, ++t) offsets[size_t(t)] = (c * g.H + r * g.dh) * g.W + s * g.dw;
    typename S::V bias_v[NV];
    for (int v = 0; v < NV; ++v)
        for (int i = 0; i < S::lanes; ++i) bias_v[v][i] = bias ? bias[v * S::lanes + i] : T(0);
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(team, g.N)));
    conv2d_forward_direct_channels_p<T>(direct_channels_columns(g), g, x, wpack.get(), offsets.data(), bias_v, y,
                                        threads);
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
