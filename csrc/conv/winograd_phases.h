// 4x4 stride-2 convolutions (a DCGAN's down- and upsampling layers) through Winograd
// F(4x4, 2x2) (conv/winograd.h, winograd::F4x2) over the input's four stride phases, the weight
// gradient of 7x7- and 14x14-like outputs and the forward of 7x7 ones through F(7x7, 2x2)
// (winograd::F7x2, by_7x7_tiles, forward_by_7x7_tile).
//
// With xp the zero-padded input, phase (a, b) in {0, 1}^2 of channel c is the plane
//   x'[c,a,b][i, j] = xp[c, 2i + a, 2j + b]        (i in [0, Ho], j in [0, Wo])
// and the weights split alike, w'[k, (c,a,b), u, v] = w[k, c, 2u + a, 2v + b] (u, v in {0, 1}):
// the convolution is the 2x2 stride-1 convolution of x' (4C channels, no padding) with w'. So
//   forward          y  = conv2x2(x', w'), by F(4x4, 2x2)
//   weight gradient  dw' = its weight gradient between dy and x', merged back into dw
//   input gradient   phase (a, b) of dx = dy padded by 1 convolved with the phase's sub-kernel
//                    w'[., (., a, b)] flipped in space and transposed in channels, one
//                    convolution per phase, or the four as one of 4C outputs where that
//                    takes no more tiles, stored to the phase's rows and columns of dx
// Each element of xp belongs to exactly one phase, so the stores add nothing: the result is
// the transform's sums alone, independent of the thread count as they are. Elements of dx
// past phase row (column) Ho (Wo), which no output reads, get a zero gradient.
//
// Against the 16 multiplications per output and channel pair of the direct sum, F(4x4, 2x2)
// needs 100 per 4x4 tile and channel pair (25 for each of the 4 phases: 2.56x fewer), plus the
// copies into the lane layout (BatchLanes) and the transforms. The forward stores whole tile
// rows as runs, the lanes (images) transposed in registers (put_rows), the input gradient's
// four phases together the 8x8 blocks of dx they interleave into (put_phase_block); other
// outputs one at a time (put_each).
#pragma once

#include "common/prelude.h"
#include "common/scratch.h"
#include "conv/epilogue.h"
#include "conv/winograd.h"

namespace pyconv {
namespace PYCONV_ISA {

// Whether the phase split turns g into a convolution F(4x4, 2x2) computes (padding is free).
inline bool winograd_phases_applies(const ConvShape& g) {
    return g.R == 4 && g.S == 4 && g.sh == 2 && g.sw == 2 && g.dh == 1 && g.dw == 1 && g.groups == 1;
}

namespace winograd_phases {

// The 2x2 stride-1 convolution over the phases: x' (N, 4C, Ho + 1, Wo + 1), no padding, the
// same output.
inline ConvShape phase_shape(const ConvShape& g) {
    return ConvShape{g.N, 4 * g.C, g.Ho + 1, g.Wo + 1, g.K, 2, 2, g.Ho, g.Wo, 1, 1, 0, 0, 1, 1, 1, g.algorithm};
}

// Calls f(c', u, v, r, s) for the 16 taps (r, s) = (2u + a, 2v + b) of channel c, c' = 4c + 2a + b
// its channel of the phase split.
template <class F>
inline void for_each_tap(int64_t c, F f) {
    for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b)
            for (int u = 0; u < 2; ++u)
                for (int v = 0; v < 2; ++v) f(4 * c + 2 * a + b, u, v, 2 * u + a, 2 * v + b);
}

// Tap j = 2u + v of w'[k, c'] (c' = 4c + 2a + b), read from w (K, C, 4, 4) in place.
template <class T>
T split_tap(const ConvShape& g, const T* w, int64_t k, int64_t cp, int j) {
    const int64_t c = cp / 4, a = cp % 4 / 2, b = cp % 2, u = j / 2, v = j % 2;
    return w[((k * g.C + c) * 4 + 2 * u + a) * 4 + 2 * v + b];
}

// dw' (K, 4C, 2, 2) -> dw (K, C, 4, 4).
template <class T>
void merge_weights(const ConvShape& g, const T* dws, T* dw) {
    for (int64_t k = 0; k < g.K; ++k)
        for (int64_t c = 0; c < g.C; ++c)
            for_each_tap(c, [&](int64_t cp, int u, int v, int r, int s) {
                dw[((k * g.C + c) * 4 + r) * 4 + s] = dws[((k * 4 * g.C + cp) * 2 + u) * 2 + v];
            });
}

// The layout of the forward and the input gradient: images in the vector lanes. The phase
// planes of these layers are small (8x8 for a 7x7 output: 2x2 tiles), so that transform_input's
// rows of tiles would be two tiles long and each vector of tiles would blend eight of them.
// Here the operand is laid out with groups of `lanes` images innermost,
// X[group][c][r][s][lane] (zeros wherever no input lies, and for the lanes past the batch;
// rows and columns covering every tile's window), and a vector holds one tile position of a
// group's images: the input transform loads its 25 window elements as whole vectors. Tile t is
// lane t % L of vector t / L, which is position (t / L) % P of group (t / L) / P: a block of
// tiles reads and writes a few groups' planes, contiguous in X and y. The input gradient
// mostly copies dy whole (to_batch_lanes: read by four phases); the forward lays out x's rows under
// each block's tiles as it goes, one channel at a time, in a small buffer (fill_lanes), and the
// weight gradient one channel of a group of images at a time.
struct BatchLanes {
    int64_t N, groups;  // images; groups of L of them
    int64_t C, Hx, Wx;  // X's channels, rows and columns
    template <class T>
    static BatchLanes of(int64_t N, int64_t C, int64_t Hx, int64_t Wx) {
        constexpr int64_t L = Simd<T>::lanes;
        return BatchLanes{N, (N + L - 1) / L, C, Hx, Wx};
    }
    template <class T>
    int64_t elements() const { return checked_mul(groups * C, Hx * Wx, int64_t(Simd<T>::lanes)); }
    // Where X's lanes (c, r, s) of group `group` start.
    template <class T>
    int64_t at(int64_t group, int64_t c, int64_t r, int64_t s) const {
        return (((group * C + c) * Hx + r) * Wx + s) * Simd<T>::lanes;
    }
};

// Where a source's pixels go in the lane layout: source (N, channels, H, W); each channel
// becomes step^2 planes of X's rows and columns, pixel (h, w) lying at row r, column s of plane
// a * step + b, where h + pad_h = step * r + a and w + pad_w = step * s + b. step 2: x's stride
// phases (pad: x's padding); step 1: dy shifted by pad rows and columns. Elements of a plane
// with no pixel are zeros.
struct LaneMap {
    int64_t channels, H, W;
    int step;
    int64_t pad_h, pad_w;
    int planes() const { return step * step; }
    static LaneMap phases(const ConvShape& g) { return LaneMap{g.C, g.H, g.W, 2, g.ph, g.pw}; }
    static LaneMap shifted(const ConvShape& g, int64_t shift) { return LaneMap{g.K, g.Ho, g.Wo, 1, shift, shift}; }
};

// Rows [r0, r1) of the planes of source channel c of group `group`'s images, into `out`: the
// map's planes of Hx x Wx lane vectors, [plane][r][s][lane] (lanes past the batch, and elements
// with no pixel, zero). Padding is zeroed where it lies; the pixels of the source rows under
// rows [r0, r1) are read L pixels at a time from each image (one vector per image, the last
// one masked) and transposed in registers, so that each pixel is one vector store. (On 14x14
// planes, 12.25 vectors each, a copy element by element measured faster on a Zen 4 host; on an
// Intel Xeon host it took 14% of the 64 -> 128 4x4 stride-2 forward against the transposes'
// 10%, 2.57-2.64 against 2.38-2.57 ms on two threads, and was dropped.) prefetch: request the
// same rows of channel c + 1 from memory (for a caller that fills channel after channel with
// work in between: the rows come from L image planes, a few short runs each, which the
// hardware prefetchers ramp up on too late).
template <class T>
void fill_lanes(const LaneMap& map, const T* src, int64_t N, int64_t group, int64_t c, int64_t r0, int64_t r1,
                int64_t Hx, int64_t Wx, T* out, bool prefetch = false) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes;
    const int64_t st = map.step, row = Wx * L, plane = Hx * row;
    // The padding: rows and columns with no pixel.
    for (int a = 0; a < st; ++a)
        for (int b = 0; b < st; ++b) {
            T* pl = out + (a * st + b) * plane;
            // Columns s with 0 <= st s + b - pad_w < W: [s_lo, s_hi).
            const int64_t s_lo = std::min(Wx, (map.pad_w - b + st - 1) / st);
            const int64_t s_hi = std::max(s_lo, std::min(Wx, (map.W - 1 + map.pad_w - b) / st + 1));
            for (int64_t r = r0; r < r1; ++r) {
                const int64_t h = st * r + a - map.pad_h;
                if (h < 0 || h >= map.H) {
                    zero_run(row, pl + r * row);
                    continue;
                }
                zero_run(s_lo * L, pl + r * row);
                zero_run((Wx - s_hi) * L, pl + r * row + s_hi * L);
            }
        }
    const int64_t h_begin = std::max<int64_t>(0, st * r0 - map.pad_h), h_end = std::min(map.H, st * r1 - map.pad_h);
    if (h_begin >= h_end) return;
    const int images = int(std::min<int64_t>(L, N - group * L));
    const int64_t HW = map.H * map.W, image_stride = map.channels * HW;
    const T* first = src + (group * L * map.channels + c) * HW;
    const int shift = map.step == 2 ? 1 : 0;  // step 1 or 2: r = hp >> shift, a = hp & shift
    int64_t h = h_begin, w = 0;  // of pixel p0
    for (int64_t p0 = h_begin * map.W, end = h_end * map.W; p0 < end; p0 += L) {
        const int n = int(std::min<int64_t>(L, end - p0));
        V rows[L];
        if (images == L && n == L)
            for (int l = 0; l < L; ++l) rows[l] = S::load(first + l * image_stride + p0);
        else
            for (int l = 0; l < L; ++l) rows[l] = l < images ? load_first<T>(first + l * image_stride + p0, n) : S::zero();
        transpose_block<T>(rows);  // rows[j]: pixel p0 + j of each image
        for (int j = 0; j < n; ++j) {
            const int64_t hp = h + map.pad_h, wp = w + map.pad_w, s = wp >> shift;
            if (s < Wx) S::store(out + (((hp & shift) * st + (wp & shift)) * Hx + (hp >> shift)) * row + s * L, rows[j]);
            if (++w == map.W) w = 0, ++h;
        }
    }
    if (prefetch && c + 1 < map.channels)
        for (int l = 0; l < images; ++l) {
            const char* begin = reinterpret_cast<const char*>(first + l * image_stride + HW + h_begin * map.W);
            const char* end = reinterpret_cast<const char*>(first + l * image_stride + HW + h_end * map.W);
            for (const char* line = begin; line < end; line += 64) __builtin_prefetch(line);
        }
}

// The whole source in the layout bl (X's channel planes() c + plane: the plane of channel c).
template <class T>
Scratch<T> to_batch_lanes(const BatchLanes& bl, const LaneMap& map, const T* src) {
    Scratch<T> X = scratch<T>(bl.elements<T>());
    parallel_for(bl.groups * map.channels, num_threads(), [&](int64_t gc, int) {
        const int64_t group = gc / map.channels, c = gc % map.channels;
        fill_lanes(map, src, bl.N, group, c, 0, bl.Hx, bl.Hx, bl.Wx, X.get() + bl.at<T>(group, map.planes() * c, 0, 0));
    });
    return X;
}

// The transform (InputTransform, or OutputGradTransform for dy: its F::tile^2 tile, the
// window's last row and column unread) of the window whose top-left lane vector is at `base` in a plane
// of Wx columns of lane vectors, into out[F::points].
template <class T, class F, class Transform>
static inline __attribute__((always_inline)) void transform_window(const T* base, int64_t Wx,
                                                                   typename Simd<T>::V* out) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes, A = F::alpha, P = F::points;
    V in[P], mid[P];
    for (int r = 0; r < A; ++r)
        for (int s = 0; s < A; ++s) in[r * A + s] = S::load(base + (r * Wx + s) * L);
    for (int s = 0; s < A; ++s) Transform::apply(in + s, A, mid + s, A);          // B^T d
    for (int a = 0; a < A; ++a) Transform::apply(mid + a * A, 1, out + a * A, 1);  // (.) B
}

// Where the window of tile position p (of `cols` per row, tiles of F::tile) starts in channel c
// of group `group` of X, offset by oh rows and ow columns.
template <class T, class F>
inline const T* window_at(const BatchLanes& bl, const T* X, int64_t group, int64_t c, int64_t p, int64_t cols,
                          int64_t oh, int64_t ow) {
    return X + bl.at<T>(group, c, oh + p / cols * F::tile, ow + p % cols * F::tile);
}

// One output tile of forward_batch_lanes: channel k, images n0 .. n0 + images - 1 (the lanes),
// the rows x columns outputs from (ho0, wo0) that lie in the output.
template <class T>
struct TileOut {
    int64_t k, n0;
    int images;
    int64_t ho0, wo0;
    int rows, columns;
};

// Hands the tile's outputs out[F::tile^2] (lanes: images) to put(n, ho, wo, values, run) as
// runs of at most F::tile along a row (values[e]: output (n, ho, wo + e)). L of the vectors at
// a time are transposed in registers, so that each image's elements q0 .. q0 + L - 1 of the
// tile (whole tile rows, or parts) become one vector, then the runs are copied out of it.
template <class T, class F, class Put>
static inline __attribute__((always_inline)) void put_rows(const TileOut<T>& tile, const typename Simd<T>::V* out,
                                                           const Put& put) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes, kTile = F::tile;
    static_assert(kTile * kTile % L == 0, "a tile is whole vectors");
    alignas(64) T z[std::max(L, kTile)];  // (L would do; the size keeps put's fixed-size copies in bounds)
    for (int q0 = 0; q0 < tile.rows * kTile; q0 += L) {
        V t[L];
        for (int j = 0; j < L; ++j) t[j] = out[q0 + j];
        transpose_block<T>(t);
        for (int l = 0; l < tile.images; ++l) {
            S::store(z, t[l]);
            for (int e = q0; e < q0 + L; e = (e / kTile + 1) * kTile) {  // runs within tile rows
                const int r = e / kTile, s = e % kTile;
                if (r >= tile.rows) break;
                const int run = std::min(tile.columns, std::min(kTile, s + q0 + L - e)) - s;
                if (run > 0) put(tile.n0 + l, tile.ho0 + r, tile.wo0 + s, z + e - q0, run);
            }
        }
    }
}

// Hands the tile's outputs to put(n, ho, wo, value) one at a time, read lane by lane from a
// copy of the F::tile^2 vectors: for outputs that are not contiguous in a row (the input
// gradient's phases, every other column), where runs gain nothing.
template <class T, class F, class Put>
static inline __attribute__((always_inline)) void put_each(const TileOut<T>& tile, const typename Simd<T>::V* out,
                                                           const Put& put) {
    using S = Simd<T>;
    constexpr int L = S::lanes, kTile = F::tile;
    alignas(64) T z[kTile * kTile][L];
    for (int q = 0; q < kTile * kTile; ++q) S::store(z[q], out[q]);
    for (int l = 0; l < tile.images; ++l)
        for (int r = 0; r < tile.rows; ++r)
            for (int s = 0; s < tile.columns; ++s) put(tile.n0 + l, tile.ho0 + r, tile.wo0 + s, z[r * kTile + s][l]);
}

// Hands the tile's outputs to put(n, values, count) as each image's tile^2 outputs in order
// (values[e]: output e of image n), for a tile that is its images' whole output plane: L of the
// vectors at a time transposed in registers, each image's run of them one vector.
template <class T, class F, class Put>
static inline __attribute__((always_inline)) void put_planes(const TileOut<T>& tile, const typename Simd<T>::V* out,
                                                             const Put& put) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes, Q = F::tile * F::tile;
    alignas(64) T z[L];
    for (int q0 = 0; q0 < Q; q0 += L) {
        V t[L];
        for (int j = 0; j < L; ++j) t[j] = q0 + j < Q ? out[q0 + j] : S::zero();
        transpose_block<T>(t);
        const int run = std::min(L, Q - q0);
        for (int l = 0; l < tile.images; ++l) {
            S::store(z, t[l]);
            put(tile.n0 + l, q0, z, run);
        }
    }
}

// Hands out the four stride phases of one 4x4 tile, out[2a + b][4r + s] (images in the lanes),
// as the 8x8 block of dx they interleave into: element (2r + a, 2s + b) at row h0 + 2r + a and
// column w0 + 2s + b of plane (the tile's first image; images image_stride apart), those that
// lie in the H x W plane. The block goes through a buffer, L of its elements at a time
// transposed so that each image's are one vector, and out of it as runs along dx's rows.
template <class T>
static inline __attribute__((always_inline)) void put_phase_block(const TileOut<T>& tile, const typename Simd<T>::V* out,
                                                                  T* plane, int64_t image_stride, int64_t H, int64_t W,
                                                                  int64_t h0, int64_t w0) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes, kTile = winograd::F4x2::tile, B = 2 * kTile;
    static_assert(B * B % L == 0, "the block is whole vectors");
    const int r_lo = int(std::max<int64_t>(0, -h0)), r_hi = int(std::min<int64_t>(B, H - h0));
    const int s_lo = int(std::max<int64_t>(0, -w0)), run = int(std::min<int64_t>(B, W - w0)) - s_lo;
    if (r_lo >= r_hi || run <= 0) return;
    alignas(64) T block[L][B * B];  // [image][row][column]
    for (int q0 = r_lo * B / L * L; q0 < r_hi * B; q0 += L) {
        V t[L];
        for (int j = 0; j < L; ++j) {
            const int r = (q0 + j) / B, c = (q0 + j) % B;
            t[j] = out[(r % 2 * 2 + c % 2) * kTile * kTile + r / 2 * kTile + c / 2];
        }
        transpose_block<T>(t);
        for (int l = 0; l < tile.images; ++l) S::store(block[l] + q0, t[l]);
    }
    for (int l = 0; l < tile.images; ++l) {
        T* image = plane + l * image_stride + (h0 + r_lo) * W + w0 + s_lo;
        for (int r = r_lo; r < r_hi; ++r, image += W)
            for (int e = 0; e < run; e += L)  // one vector unless L < 8
                store_first<T>(image + e, load_first<T>(block[l] + r * B + s_lo + e, std::min(L, run - e)),
                               std::min(L, run - e));
    }
}

// The transformed filters U[xi] of F for the phase split of 4x4 filters, computed position by
// position as a block's products need them, into a buffer of the worker's that stays in its
// cache: for F(7x7, 2x2), whose 64 positions make U 8.4 MB on a 64 -> 128 layer, writing U to
// memory and reading it back (TransformedFilters) took a third of the forward, and two threads
// reading it both waited on memory. U = G w G^T is separable: with H[b][r] = sum_s G[b][s]
// w[r][s] (the filters' rows transformed, alpha x R planes laid out once in U's packed layout,
// TransformedFilters': MR-row panels [c][MR], rows past K zero), U[a alpha + b] = sum_r
// G[a][r] H[b][r], R multiply-adds per element, in T (TransformedFilters computes in double
// and rounds once). The positions are visited b-major (order()), so that the R planes of H[b]
// stay in cache for alpha positions in a row.
template <class T, class F>
struct FiltersOnDemand {
    static constexpr int MR = GemmTile<T>::MR, R = F::R;
    int64_t C, xi_size;
    Scratch<T> rows;  // H: [alpha][R][xi_size]
    T G[F::alpha][R];
    std::vector<Scratch<T>> bufs;  // per worker

    // The phase split (split_tap) of w (K, C, 4, 4): g is phase_shape's (4C channels, 2x2).
    FiltersOnDemand(const ConvShape& g, const T* w, int workers)
        : C(g.C), xi_size(checked_mul((g.K + MR - 1) / MR, int64_t(MR) * g.C)) {
        static_assert(R == 2, "the phase split's 2x2 filters");
        for (int r = 0; r < R; ++r) {
            double unit[R] = {}, column[F::alpha];
            unit[r] = 1.0;
            F::filter(unit, 1, column, 1);
            for (int a = 0; a < F::alpha; ++a) G[a][r] = T(column[a]);
        }
        rows = scratch<T>(checked_mul(int64_t(F::alpha * R), xi_size));
        const int64_t K = g.K, C4 = g.C / 4, panels = (K + MR - 1) / MR, panel_size = int64_t(MR) * g.C;
        // The split's taps first, tap (u, v) of channel 4c + 2a + b being w's (2u + a, 2v + b)
        // of channel c, in the packed layout: [u][v][xi_size].
        const Scratch<T> taps = scratch<T>(checked_mul(int64_t(R * R), xi_size));
        parallel_for(panels, num_threads(), [&](int64_t p, int) {
            for (int64_t c = 0; c < C4; ++c) {
                T filter[16][MR];  // the 4x4 filters of channel c, tap-major
                for (int row = 0; row < MR; ++row) {
                    const int64_t k = p * MR + row;
                    for (int q = 0; q < 16; ++q) filter[q][row] = k < K ? w[(k * C4 + c) * 16 + q] : T(0);
                }
                for (int a = 0; a < 2; ++a)
                    for (int b = 0; b < 2; ++b)
                        for (int u = 0; u < 2; ++u)
                            for (int v = 0; v < 2; ++v)
                                std::copy(filter[(2 * u + a) * 4 + 2 * v + b], filter[(2 * u + a) * 4 + 2 * v + b] + MR,
                                          taps.get() + (2 * u + v) * xi_size + p * panel_size + (4 * c + 2 * a + b) * MR);
            }
        });
        // H[b][u] = G[b][0] tap(u, 0) + G[b][1] tap(u, 1), by panels: a pass of its own over
        // whole panel runs (computed straight from `filter`, in runs of MR into 16 planes, the
        // construction took 19% of the 7x7 forward against 4% in two passes).
        parallel_for(panels, num_threads(), [&](int64_t p, int) {
            for (int b = 0; b < F::alpha; ++b)
                for (int u = 0; u < R; ++u) {
                    const T* __restrict t0 = taps.get() + (2 * u) * xi_size + p * panel_size;
                    const T* __restrict t1 = t0 + xi_size;
                    T* __restrict dst = rows.get() + (b * R + u) * xi_size + p * panel_size;
                    const T g0 = G[b][0], g1 = G[b][1];
                    for (int64_t e = 0; e < panel_size; ++e) dst[e] = g0 * t0[e] + g1 * t1[e];
                }
        });
        for (int t = 0; t < workers; ++t) bufs.push_back(scratch<T>(xi_size));
    }

    // The i-th position to compute.
    static int order(int i) { return i % F::alpha * F::alpha + i / F::alpha; }

    // U[xi], computed into worker's buffer (valid until its next call), as gemm_block's A.
    typename winograd::TransformedFilters<T, F>::Position position(int xi, int worker) const {
        using S = Simd<T>;
        using V = typename S::V;
        constexpr int64_t L = S::lanes;
        const int a = xi / F::alpha, b = xi % F::alpha;
        T* __restrict out = bufs[size_t(worker)].get();
        const int64_t n = xi_size;
        const T* __restrict h0 = rows.get() + b * R * n;
        const T* __restrict h1 = h0 + n;
        const V c0 = S::splat(G[a][0]), c1 = S::splat(G[a][1]);
        int64_t e = 0;
        for (; e + L <= n; e += L) S::store(out + e, fma<T>(S::load(h1 + e), c1, S::load(h0 + e) * c0));
        for (; e < n; ++e) out[e] = std::fma(h1[e], G[a][1], h0[e] * G[a][0]);
        return {out, C};
    }
};

// forward_batch_lanes' blocks of tiles: those of a convolution of groups * L images (Tiling
// counts tiles image by image; only the count and the block size matter here), whole vectors.
template <class T, class F>
winograd::Tiling batch_lanes_tiling(const BatchLanes& bl, int64_t K, int64_t Ho, int64_t Wo) {
    ConvShape gt{};
    gt.N = bl.groups * Simd<T>::lanes, gt.C = bl.C, gt.K = K, gt.Ho = Ho, gt.Wo = Wo;
    return winograd::Tiling::of_forward<T, F>(gt);
}

// One 2x2 stride-1 convolution by the transform set F over X (BatchLanes, the source src laid
// out by map), output (k, n, ho, wo) for
// ho < Ho, wo < Wo computed from X's rows oh + ho + u and columns ow + wo + v, plus bias[k],
// handed to store(tile, out) a tile of L images and KG outputs k0 .. k0 + KG - 1 at a time
// (TileOut, its k = k0; out[KG][F::tile^2], the tile's outputs with images in the lanes: put_rows,
// put_each, put_phase_block; KG divides K). U: the K x C filters transformed, stored whole
// (winograd::TransformedFilters) or per position (FiltersOnDemand): U.position(xi, worker) is
// position xi's, the positions taken in U.order(). Blocks of tiles as
// conv2d_forward_winograd's, each transformed, multiplied and transformed back by one thread:
// the result does not depend on the number of threads. X: the whole source in bl's layout
// (to_batch_lanes), or null: each block then lays out the rows of the source its tiles read,
// one source channel at a time, in a buffer of the thread's (fill_lanes) that stays in cache.
template <int KG = 1, class T, class F, template <class, class> class Filters, class PutTile>
void forward_batch_lanes(const BatchLanes& bl, const LaneMap& map, const T* src, const T* X, int64_t oh,
                         int64_t ow, int64_t K, int64_t Ho,
                         int64_t Wo, const Filters<T, F>& U, const T* bias,
                         const PutTile& store) {
    using namespace winograd;
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes, A = F::alpha, P = F::points, kTile = F::tile;
    constexpr int64_t NR = gemm_nr<T>();
    const Tiling tl = batch_lanes_tiling<T, F>(bl, K, Ho, Wo);
    const int64_t cols = tl.cols, positions = tl.rows * tl.cols, C = bl.C, width = tl.panel_width<T>();
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), tl.blocks)));
    const int64_t v_stride = position_stride<T>(checked_mul(C, tl.capacity<T>()));
    const int64_t m_stride = position_stride<T>(checked_mul(K, tl.block));
    const int64_t planes = map.planes(), plane_size = bl.Hx * bl.Wx * L;
    std::vector<Scratch<T>> vs, ms, xs;
    std::vector<GemmBuffers<T>> bufs;
    for (int t = 0; t < threads; ++t) {
        vs.push_back(scratch<T>(checked_mul(int64_t(P), v_stride)));
        ms.push_back(scratch<T>(checked_mul(int64_t(P), m_stride)));
        if (!X) xs.push_back(scratch<T>(checked_mul(planes, plane_size)));
        bufs.emplace_back(false);
    }
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(tl.blocks, threads, [&](int64_t blk, int worker) {
        T* v = vs[size_t(worker)].get();
        T* m = ms[size_t(worker)].get();
        const int64_t t0 = blk * tl.block, nt = std::min(tl.block, tl.total - t0);  // whole vectors
        // The block's vectors, a run of one group's tile positions at a time.
        for (int64_t vb = t0 / L, ve = (t0 + nt) / L; vb < ve;) {
            const int64_t group = vb / positions, run_end = std::min(ve, (group + 1) * positions);
            // X's rows that the run's windows read.
            const int64_t r0 = oh + vb % positions / cols * kTile, r1 = oh + (run_end - 1) % positions / cols * kTile + A;
            for (int64_t c = 0; c < map.channels; ++c) {
                const T* planes_c = X ? X + bl.at<T>(group, planes * c, 0, 0) : xs[size_t(worker)].get();
                if (!X) fill_lanes(map, src, bl.N, group, c, r0, r1, bl.Hx, bl.Wx, xs[size_t(worker)].get(), true);
                for (int64_t vec = vb; vec < run_end; ++vec) {
                    const int64_t first = vec * L - t0, p = vec % positions;
                    const int64_t at = ((oh + p / cols * kTile) * bl.Wx + ow + p % cols * kTile) * L;
                    for (int64_t j = 0; j < planes; ++j) {
                        V out[P];
                        transform_window<T, F, InputTransform<F>>(planes_c + j * plane_size + at, bl.Wx, out);
                        T* dst = v + (first / NR) * NR * C + (planes * c + j) * width + first % NR;
                        for (int q = 0; q < P; ++q) S::store(dst + q * v_stride, out[q]);
                    }
                }
            }
            vb = run_end;
        }
        for (int i = 0; i < P; ++i) {
            const int xi = U.order(i);
            const TransformedTiles<T> B{v + xi * v_stride, C, width};
            const OutMatrix<T> M = OutMatrix<T>::plain(m + xi * m_stride, tl.block, tl.block);
            multiply_position(U.position(xi, worker), K, nt, C, B, M, bufs[size_t(worker)]);
        }
        for (int64_t k0 = 0; k0 < K; k0 += KG)
            for (int64_t first = 0; first < nt; first += L) {
                const int64_t vec = (t0 + first) / L, group = vec / positions, p = vec % positions;
                const int64_t n0 = group * L, ho0 = p / cols * kTile, wo0 = p % cols * kTile;
                V out[KG * kTile * kTile];
                for (int g = 0; g < KG; ++g) {  // a constant count: every output is seen to be written
                    const int64_t k = k0 + g;
                    V in[P], mid[kTile * A], *o = out + g * kTile * kTile;
                    for (int q = 0; q < P; ++q) in[q] = S::load(m + q * m_stride + k * tl.block + first);
                    for (int s = 0; s < A; ++s) F::output(in + s, A, mid + s, A);                // A^T m
                    for (int r = 0; r < kTile; ++r) F::output(mid + r * A, 1, o + r * kTile, 1);  // (.) A
                    if (bias)
                        for (int q = 0; q < kTile * kTile; ++q) o[q] += bias[k];
                }
                const TileOut<T> tile{k0, n0, int(std::min<int64_t>(L, bl.N - n0)), ho0, wo0,
                                      int(std::min<int64_t>(kTile, Ho - ho0)), int(std::min<int64_t>(kTile, Wo - wo0))};
                store(tile, out);
            }
    });
}

// Whether the weight gradient of g goes by F(7x7, 2x2) rather than F(4x4, 2x2): when its
// products are fewer (per image and channel pair: 7x7 outputs 64 against 100, 14x14 256
// against 400; not 8x8, 256 against 100) by at least 32 per position it adds, over the batch,
// and its 64 position matrices (K x 4C each) take at most 8 MiB. Measured against F(4x4, 2x2),
// 2 threads, float32: 64 x 64 x 14x14 -> 128 1.22-1.25x, 64 x 32 x 28x28 -> 64 1.4x, but
// 12 x 64 x 14x14 -> 128 0.94x (12 images: 432 products saved per pair against 39 more
// positions to sum and transform back) and 64 x 128 x 14x14 -> 256 0.52x (33.5 MB of position
// matrices, read and written again by every chunk of tiles).
//
// The input gradient stays with F(4x4, 2x2): on the 28x28 DCGAN's 64 -> 128 layer (batch 64,
// 2 threads) it took 3.12 against 3.06 ms by F(7x7, 2x2), with 4-6 times the error; the weight
// gradient 3.78 against 3.22 ms (1.17x), its error in the same range (README). (The forward:
// forward_by_7x7_tile.)
template <class T>
inline bool by_7x7_tiles(const ConvShape& g) {
    auto products = [&](int64_t tile, int64_t alpha) {
        return (g.Ho + tile - 1) / tile * alpha * ((g.Wo + tile - 1) / tile * alpha);
    };
    constexpr int64_t added = winograd::F7x2::points - winograd::F4x2::points;
    const int64_t saved = products(4, 5) - products(7, 8);
    const double bytes = double(winograd::F7x2::points) * double(g.K) * double(4 * g.C) * double(sizeof(T));
    return saved > 0 && g.N * saved >= 32 * added && bytes <= 8.0 * (1 << 20);
}

// Whether the forward goes by F(7x7, 2x2) (conv2d_forward_winograd_phases_7x7): a 7x7 output
// (the 28x28 DCGAN's 64 -> 128 layer, and its generator's 128 -> 64 transpose's input
// gradient) is one 7x7 tile, 64 products per channel pair where F(4x4, 2x2) needs 100 for the
// four tiles that cover it, and at least two vectors of images, so that both of two threads
// have a block (one block per vector of 16 images): measured against F(4x4, 2x2), 2 threads,
// float32, ms: 64 x 64 -> 128 2.08-2.16 against 2.79-2.81, 32 x 64 -> 128 1.18-1.19 against
// 1.46, 128 x 64 -> 128 4.03-4.16 against 5.70-5.76, 64 x 128 -> 256 7.97-8.01 against
// 10.3-10.8, 64 x 32 -> 64 0.63-0.64 against 0.83-0.84; 16 images (one block) 1.26-1.31
// against 0.93-0.94, 64 x 16 -> 32 level. Its error is about 3x F(4x4, 2x2)'s (README).
template <class T>
inline bool forward_by_7x7_tile(const ConvShape& g) {
    constexpr int tile = winograd::F7x2::tile;
    return g.Ho == tile && g.Wo == tile && g.N >= 2 * Simd<T>::lanes;
}

}  // namespace winograd_phases

// The forward of a 7x7 output by F(7x7, 2x2): one tile per image, its window the whole 8x8
// phase plane, its outputs the image's whole output plane (put_planes); the transformed filters
// computed per position (FiltersOnDemand).
template <class T>
void conv2d_forward_winograd_phases_7x7(const ConvShape& g, const T* x, const T* w, const T* bias, T* y,
                                        const Epilogue<T>& ep) {
    using namespace winograd_phases;
    using F = winograd::F7x2;
    const BatchLanes bl = BatchLanes::of<T>(g.N, 4 * g.C, F::alpha, F::alpha);
    const LaneMap map = LaneMap::phases(g);
    const FiltersOnDemand<T, F> U(phase_shape(g), w, num_threads());
    forward_batch_lanes(bl, map, x, static_cast<const T*>(nullptr), 0, 0, g.K, g.Ho, g.Wo, U, bias,
                        [&](const TileOut<T>& tile, const typename Simd<T>::V* out) {
                            put_planes<T, F>(tile, out, [&](int64_t n, int64_t q0, const T* v, int run) {
                                const int64_t at = (n * g.K + tile.k) * F::tile * F::tile + q0;
                                store_with(ep, v, run, y + at, at);
                            });
                        });
}

// The forward: X holds the phases of x, (c, a, b) as channel 4c + 2a + b. The epilogue
// `ep` is applied as each output is stored. Tiles whose rows lie whole in y store them as runs
// (put_rows); a tile cut by y's right edge (a 7x7 output's second column of 4x4 tiles: 3 of 4
// columns) one output at a time (put_each), where the transposes measured no cheaper. A 7x7
// output goes by F(7x7, 2x2) where forward_by_7x7_tile says so.
template <class T>
void conv2d_forward_winograd_phases(const ConvShape& g, const T* x, const T* w, const T* bias, T* y,
                                    const Epilogue<T>& ep = {}) {
    using namespace winograd_phases;
    if (winograd_phases::forward_by_7x7_tile<T>(g)) return conv2d_forward_winograd_phases_7x7(g, x, w, bias, y, ep);
    using F = winograd::F4x2;
    constexpr int kTile = F::tile;
    const int64_t rows = (g.Ho + kTile - 1) / kTile, cols = (g.Wo + kTile - 1) / kTile;
    const BatchLanes bl = BatchLanes::of<T>(g.N, 4 * g.C, kTile * rows + 1, kTile * cols + 1);
    const LaneMap map = LaneMap::phases(g);
    auto run = [&](const auto& U) {
        const int64_t HoWo = g.Ho * g.Wo;
        if (ep.any())
            forward_batch_lanes(bl, map, x, static_cast<const T*>(nullptr), 0, 0, g.K, g.Ho, g.Wo, U, bias,
                                [&](const TileOut<T>& tile, const typename Simd<T>::V* out) {
                                    if (tile.columns == kTile)
                                        put_rows<T, F>(tile, out, [&](int64_t n, int64_t ho, int64_t wo, const T* v, int run) {
                                            const int64_t at = (n * g.K + tile.k) * HoWo + ho * g.Wo + wo;
                                            store_with(ep, v, run, y + at, at);
                                        });
                                    else
                                        put_each<T, F>(tile, out, [&](int64_t n, int64_t ho, int64_t wo, T v) {
                                            const int64_t at = (n * g.K + tile.k) * HoWo + ho * g.Wo + wo;
                                            store_with(ep, &v, 1, y + at, at);
                                        });
                                });
        else
            forward_batch_lanes(bl, map, x, static_cast<const T*>(nullptr), 0, 0, g.K, g.Ho, g.Wo, U, bias,
                                [&](const TileOut<T>& tile, const typename Simd<T>::V* out) {
                                    if (tile.columns == kTile)
                                        put_rows<T, F>(tile, out, [&](int64_t n, int64_t ho, int64_t wo, const T* v, int run) {
                                            T* dst = y + (n * g.K + tile.k) * HoWo + ho * g.Wo + wo;
                                            if (run == kTile) std::memcpy(dst, v, kTile * sizeof(T));
                                            else for (int e = 0; e < run; ++e) dst[e] = v[e];
                                        });
                                    else
                                        put_each<T, F>(tile, out, [&](int64_t n, int64_t ho, int64_t wo, T v) {
                                            y[(n * g.K + tile.k) * HoWo + ho * g.Wo + wo] = v;
                                        });
                                });
};
    // Transformed filters computed per position where the tiles make at most two blocks (each
    // computes every position once: as much work as storing them, without the trip to memory),
    // stored once for more (each block would compute them again). 2 threads, float32, the two
    // in one process alternately, median ratios of 15 rounds: 64 x 64 -> 128 on 8x8 (two
    // blocks) 1.11-1.15x faster, 64 x 128 -> 256 on 8x8 1.07x, 16 x 64 -> 128 on 14x14 1.06x;
    // 32 x 64 -> 128 on 16x16 (four blocks) 0.92-0.95x, 64 x 64 -> 128 on 16x16 (eight) 0.94x.
    if (batch_lanes_tiling<T, F>(bl, g.K, g.Ho, g.Wo).blocks <= 2)
        return run(FiltersOnDemand<T, F>(phase_shape(g), w, num_threads()));
    run(winograd::TransformedFilters<T, F>(phase_shape(g), [&](int64_t k, int64_t cp, int j) { return split_tap(g, w, k, cp, j); }));
}

namespace winograd_phases {

// Rows of phase a of a padded extent (dx's rows or columns) that the input gradient computes:
// i with 0 <= 2i + a - pad < extent and i <= out (past the outputs' last row no output reads
// dx), [phase_first, phase_last].
inline int64_t phase_first(int64_t pad, int a) { return std::max<int64_t>(0, (pad - a + 1) / 2); }
inline int64_t phase_last(int64_t pad, int a, int64_t extent, int64_t out) {
    return std::min<int64_t>(out, (extent - 1 + pad - a) / 2);
}

// Tap j = 2u' + v' of the input gradient's sub-kernel of phase (a, b) for dx's channel c and
// dy's channel k: w[k, c, 2u + a, 2v + b] flipped in space (u = 1 - u', v = 1 - v'), read
// from w (K, C, 4, 4) in place.
template <class T>
T flipped_phase_tap(const ConvShape& g, const T* w, int a, int b, int64_t c, int64_t k, int j) {
    const int u = 1 - j / 2, v = 1 - j % 2;
    return w[((k * g.C + c) * 4 + 2 * u + a) * 4 + 2 * v + b];
}

}  // namespace winograd_phases

// The input gradient: phase (a, b) of dx, rows i in [phase_first, phase_last] of the phase
// plane, is the 2x2 convolution of dy padded by 1 (X: dy's rows and columns shifted by one)
// with the phase's sub-kernel flipped, from X's row i. Where the four phases' rows and columns
// together need no more tiles than each phase's own (a 7x7 or 14x14 output of a padding-1
// layer: each phase's 7 rows and their union of 8 are two tiles), the phases go as one
// convolution of 4C outputs over the union: each tile of dy transformed once instead of four
// times, products with four times the rows, and each tile's four phases stored together as
// the 8x8 block of dx they interleave into (put_phase_block). Otherwise each phase is its own
// call, so that its tiles cover only the rows it needs (the union of a 4x4 output's phases is
// 5x5: 2x2 tiles where each phase takes one).
template <class T>
void conv2d_grad_input_winograd_phases(const ConvShape& g, const T* dy, const T* w, T* dx) {
    using namespace winograd_phases;
    using F = winograd::F4x2;
    constexpr int kTile = F::tile;
    auto tiles = [](int64_t n) { return (n + kTile - 1) / kTile; };
    // Phase a's rows [i0[a], i0[a] + rows_of[a]), phase b's columns [j0[b], j0[b] + cols_of[b]).
    int64_t i0[2], rows_of[2], j0[2], cols_of[2];
    for (int a = 0; a < 2; ++a) {
        i0[a] = phase_first(g.ph, a), rows_of[a] = phase_last(g.ph, a, g.H, g.Ho) - i0[a] + 1;
        j0[a] = phase_first(g.pw, a), cols_of[a] = phase_last(g.pw, a, g.W, g.Wo) - j0[a] + 1;
    }
    int64_t apart = 0;
    for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) apart += tiles(rows_of[a]) * tiles(cols_of[b]);
    // The union of the phases' rows and columns.
    const int64_t i_lo = std::min(i0[0], i0[1]), j_lo = std::min(j0[0], j0[1]);
    const int64_t rows = std::max(i0[0] + rows_of[0], i0[1] + rows_of[1]) - i_lo;
    const int64_t cols = std::max(j0[0] + cols_of[0], j0[1] + cols_of[1]) - j_lo;
    const bool together = rows > 0 && cols > 0 && 4 * tiles(rows) * tiles(cols) <= apart;
    // X: dy padded by one on each side, and room for every window the tiles read.
    int64_t Hx = g.Ho + 2, Wx = g.Wo + 2;
    for (int a = 0; a < 2; ++a) {
        Hx = std::max(Hx, i0[a] + tiles(rows_of[a]) * kTile + 1);
        Wx = std::max(Wx, j0[a] + tiles(cols_of[a]) * kTile + 1);
    }
    if (together) {
        Hx = std::max(Hx, i_lo + tiles(rows) * kTile + 1);
        Wx = std::max(Wx, j_lo + tiles(cols) * kTile + 1);
    }
    const BatchLanes bl = BatchLanes::of<T>(g.N, g.K, Hx, Wx);
    const LaneMap map = LaneMap::shifted(g, 1);
    // Apart, the four phases read dy's layout once each: it is copied whole. Together, on at
    // most two rows of tiles, each block lays out the rows its tiles read as it goes
    // (forward_batch_lanes), a fifth of them twice: 64 -> 128 on 14x14, batch 64, 2.42-2.53
    // -> 2.25-2.39 ms, and 3.55-4.12 -> 2.93-3.29 after 64 MB of other traffic. On more rows
    // the blocks' rows overlap more (32 -> 64 on 28x28: 2.76-2.89 -> 3.06-3.26 ms).
    const bool rows_by_block = together && tiles(rows) <= 2;
    const Scratch<T> X = rows_by_block ? Scratch<T>() : to_batch_lanes<T>(bl, map, dy);
    // Elements of dx that no phase row or column reaches (past phase row Ho): zeros.
    if (phase_last(g.ph, 0, g.H, g.H) > g.Ho || phase_last(g.ph, 1, g.H, g.H) > g.Ho ||
        phase_last(g.pw, 0, g.W, g.W) > g.Wo || phase_last(g.pw, 1, g.W, g.W) > g.Wo)
        std::fill(dx, dx + checked_mul(g.N, g.C, g.H * g.W), T(0));
    const int64_t HW = g.H * g.W;
    ConvShape gp{};  // the sub-kernels' shapes: dy's channels in, phases of dx's channels out
    gp.C = g.K, gp.R = gp.S = 2;
    if (together) {
        // Output 4c + 2a + b: phase (a, b) of channel c, so that a group of KG = 4 is one channel's.
        gp.K = 4 * g.C;
        const winograd::TransformedFilters<T, F> U(gp, [&](int64_t out, int64_t k, int j) {
            return flipped_phase_tap(g, w, int(out % 4 / 2), int(out % 2), out / 4, k, j);
        });
        forward_batch_lanes<4>(bl, map, dy, X.get(), i_lo, j_lo, gp.K, rows, cols, U, static_cast<const T*>(nullptr),
                               [&](const TileOut<T>& tile, const typename Simd<T>::V* out) {
                                   put_phase_block<T>(tile, out, dx + (tile.n0 * g.C + tile.k / 4) * HW, g.C * HW, g.H, g.W,
                                                      2 * (i_lo + tile.ho0) - g.ph, 2 * (j_lo + tile.wo0) - g.pw);
                               });
        return;
    }
    gp.K = g.C;
    for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
            if (rows_of[a] <= 0 || cols_of[b] <= 0) continue;
            const winograd::TransformedFilters<T, F> U(
                gp, [&](int64_t c, int64_t k, int j) { return flipped_phase_tap(g, w, a, b, c, k, j); });
            const int64_t h0 = 2 * i0[a] + a - g.ph, w0 = 2 * j0[b] + b - g.pw;
            forward_batch_lanes(bl, map, dy, X.get(), i0[a], j0[b], g.C, rows_of[a], cols_of[b], U,
                                static_cast<const T*>(nullptr),
                                [&](const TileOut<T>& tile, const typename Simd<T>::V* out) {
                                    T* plane = dx + tile.k * HW + h0 * g.W + w0;  // tile.k: dx's channel
                                    put_each<T, F>(tile, out, [&](int64_t n, int64_t i, int64_t j, T v) {
                                        plane[n * g.C * HW + 2 * i * g.W + 2 * j] = v;
                                    });
                                });
        }
}

namespace winograd_phases {

// The weight gradient: the 2x2 weight gradient between dy and the phases x',
//   dw'[k, c'] = G^T [ sum over tiles (A dy[k] A^T) * (B^T x'[c'] B) ] G   (alpha x alpha, F)
// as F::points GEMMs over the tiles (25 for F(4x4, 2x2), 64 for F(7x7, 2x2)),
// M[xi] (K x 4C) = DY[xi] (K x tiles) X[xi] (tiles x 4C), both transformed with images in the
// lanes, so that each channel's transformed tiles are one contiguous row: DY[xi] is read as a
// plain matrix, X[xi] as B's columns (packing transposes them). The tiles go in chunks of a
// size fixed by the shape (below); per chunk the transforms are shared out by channels and
// the products by position, each position's sum on one thread, accumulated over the chunks
// in order: the result does not depend on the number of threads. M is transformed back in
// double precision and rounded once, then merged from dw' into dw.
template <class T, class F>
void grad_weight_phases(const ConvShape& g, const T* dy, const T* x, T* dw) {
    using namespace winograd;
    using S = Simd<T>;
    constexpr int L = S::lanes, P = F::points, kTile = F::tile;
    const int64_t rows = (g.Ho + kTile - 1) / kTile, cols = (g.Wo + kTile - 1) / kTile, positions = rows * cols;
    const int64_t C4 = 4 * g.C, K = g.K;
    const BatchLanes bx = BatchLanes::of<T>(g.N, C4, kTile * rows + 1, kTile * cols + 1);
    const BatchLanes by = BatchLanes::of<T>(g.N, K, kTile * rows + 1, kTile * cols + 1);
    const int64_t vectors = bx.groups * positions;
    const double per_vector = double(P) * double(C4 + K) * double(L) * double(sizeof(T));
    // A chunk's transformed tiles are written and read back once; M, every position's K x 4C
    // sums, is read and written again by each chunk after the first. So a chunk's tiles take
    // twice M's bytes, within 4 to 8 MiB, in equal chunks of whole vectors. Against chunks of
    // 4 MiB, 2 threads, ms: 64 x 64 x 14x14 -> 128 by F(7x7, 2x2) (M 8.4 MB) 2.73-2.76 ->
    // 2.41-2.44 (one chunk); 64 x 64 x 16x16 -> 128 (M 3.3 MB) 3.10-3.12 -> 2.91-2.93;
    // 64 x 128 x 14x14 -> 256 (M 13 MB) 12.2-12.5 -> 11.8-12.0; 128 x 64 x 14x14 -> 128
    // 5.4-5.5 -> 5.0-5.4. Up to 12 MiB was no better (5.1-5.8 on the last).
    const double m_bytes = double(P) * double(K) * double(C4) * double(sizeof(T));
    const double chunk_bytes = std::clamp(2 * m_bytes, 2 * kWeightGradChunkBytes, 4 * kWeightGradChunkBytes);
    const int64_t most = std::clamp<int64_t>(int64_t(chunk_bytes / per_vector), 1, vectors);
    const int64_t chunks = (vectors + most - 1) / most;
    const int64_t chunk = (vectors + chunks - 1) / chunks;  // vectors
    const int64_t ld = chunk * L;  // tiles per row of DY[xi], X[xi]
    const int64_t x_stride = position_stride<T>(checked_mul(C4, ld));
    const int64_t y_stride = position_stride<T>(checked_mul(K, ld));
    const int64_t m_stride = position_stride<T>(checked_mul(K, C4));
    const Scratch<T> vx = scratch<T>(checked_mul(int64_t(P), x_stride));
    const Scratch<T> vy = scratch<T>(checked_mul(int64_t(P), y_stride));
    const Scratch<T> m = scratch<T>(checked_mul(int64_t(P), m_stride));
    const Scratch<T> dws = scratch<T>(checked_mul(K, C4, int64_t(4)));
    const int threads = num_threads();
    std::vector<GemmBuffers<T>> bufs;
    for (int t = 0; t < threads; ++t) bufs.emplace_back(K, C4, ld);
    // The transforms are shared out by channels: each thread writes whole rows of vx and vy
    // (all of a chunk's tiles of its channels). Shared out by vectors of tiles (each thread a
    // 64-byte piece of every row), they took 1.8 times on two threads the CPU time they take on
    // one: 64 -> 128 on 8x8, batch 64, the pass 1.10 -> 0.90 ms on two threads. A job lays out
    // one source channel of one group of images at a time in a buffer of its thread's
    // (fill_lanes) and transforms the windows of the chunk's vectors from there.
    constexpr int64_t kXChannelsPerJob = 2, kYChannelsPerJob = 8;  // 8 rows of vx (4 phases each), 8 of vy
    const int64_t x_jobs = (g.C + kXChannelsPerJob - 1) / kXChannelsPerJob;
    const int64_t y_jobs = (K + kYChannelsPerJob - 1) / kYChannelsPerJob;
    const LaneMap x_map = LaneMap::phases(g), y_map = LaneMap::shifted(g, 0);
    std::vector<Scratch<T>> lanes;
    for (int t = 0; t < threads; ++t)
        lanes.push_back(scratch<T>(std::max(x_map.planes() * bx.Hx * bx.Wx, by.Hx * by.Wx) * L));
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    for (int64_t v0 = 0; v0 < vectors; v0 += chunk) {
        const int64_t nv = std::min(chunk, vectors - v0);
        parallel_tasks(x_jobs + y_jobs, threads, [&](int64_t job, int worker) {
            const bool of_x = job < x_jobs;
            const LaneMap& map = of_x ? x_map : y_map;
            const BatchLanes& bl = of_x ? bx : by;
            const BatchLanes one{bl.N, 1, map.planes(), bl.Hx, bl.Wx};  // the buffer: one group's planes
            const int64_t c0 = of_x ? job * kXChannelsPerJob : (job - x_jobs) * kYChannelsPerJob;
            const int64_t c1 = std::min(c0 + (of_x ? kXChannelsPerJob : kYChannelsPerJob), map.channels);
            T* buf = lanes[size_t(worker)].get();
            typename S::V out[P];
            for (int64_t j0 = 0; j0 < nv;) {  // the chunk's vectors, a group's run at a time
                const int64_t group = (v0 + j0) / positions, j1 = std::min(nv, (group + 1) * positions - v0);
                for (int64_t c = c0; c < c1; ++c) {
                    fill_lanes(map, of_x ? x : dy, bl.N, group, c, 0, bl.Hx, bl.Hx, bl.Wx, buf, true);
                    for (int64_t j = j0; j < j1; ++j)
                        for (int plane = 0; plane < map.planes(); ++plane) {
                            const T* window = window_at<T, F>(one, buf, 0, plane, (v0 + j) % positions, cols, 0, 0);
                            if (of_x) {
                                transform_window<T, F, InputTransform<F>>(window, bl.Wx, out);
                                T* row = vx.get() + (map.planes() * c + plane) * ld + j * L;
                                for (int q = 0; q < P; ++q) S::store(row + q * x_stride, out[q]);
                            } else {
                                transform_window<T, F, OutputGradTransform<F>>(window, bl.Wx, out);
                                T* row = vy.get() + c * ld + j * L;
                                for (int q = 0; q < P; ++q) S::store(row + q * y_stride, out[q]);
                            }
                        }
                }
                j0 = j1;
            }
        });
        parallel_tasks(P, threads, [&](int64_t xi, int worker) {
            const T* bx_rows = vx.get() + xi * x_stride;
            gemm_block<T>(0, K, 0, C4, 0, nv * L, InMatrixA<T>::plain(vy.get() + xi * y_stride, ld, nv * L),
                          columns_b<T>([=](int64_t c) { return bx_rows + c * ld; }),
                          OutMatrix<T>::plain(m.get() + xi * m_stride, C4, C4),
                          v0 == 0 ? Store::overwrite : Store::accumulate, bufs[size_t(worker)]);
        });
    }
    constexpr int64_t D = Simd<double>::lanes;
    const int64_t pairs = K * C4;
    parallel_for((pairs + D - 1) / D, threads,
                 [&](int64_t q, int) { filters_back<T, F>(q * D, pairs, m.get(), m_stride, dws.get()); });
    merge_weights(g, dws.get(), dw);
}

}  // namespace winograd_phases

template <class T>
void conv2d_grad_weight_winograd_phases(const ConvShape& g, const T* dy, const T* x, T* dw) {
    using namespace winograd_phases;
    if (by_7x7_tiles<T>(g)) grad_weight_phases<T, winograd::F7x2>(g, dy, x, dw);
    else grad_weight_phases<T, winograd::F4x2>(g, dy, x, dw);
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
