// Weight gradient vectorised along output pixels, with no im2col: for layers with few channels
// and many pixels (SegNet's 16 -> 16 channels on 32x32 images, a DCGAN discriminator's first
// layer 1 -> 64 with 4x4 windows at stride 2), where dw is small (K x C R S) and the reduction
// over pixels long.
//
//   dw[k, (c,r,s)] = sum_{n, ho, wo} dy[n, k, ho, wo] x_padded[n, c, ho*sh + r*dh, wo*sw + s*dw]
//
// The rows of each image are cut into blocks (or, for small images, a block is a few whole
// images, each with its own runs). Per block and image, x is copied once per row phase rh and
// column shift s into xs[c][rh][s]: row i of it holds input row (ho0 + i)*sh + rh (padded
// coordinates) at columns wo*sw + s*dw, wo < Wo (zero-padded). Tap (c, r, s), with
// r*dh = qh*sh + rh, of the block's output pixel j = i*Wo + wo is then xs[c][rh][s][qh*Wo + j]:
// as flat as dy's rows, which are used in place (at stride 1, rh = 0 and qh = r*dh). Each
// entry of dw is then a dot product of two contiguous runs; the micro-kernel loads KB runs of
// dy and TB of xs one vector at a time and keeps KB x TB vector accumulators in registers
// (KB + TB loads per KB TB FMAs). The lanes hold partial sums, added across once per chunk.
//
// A block's dy rows and xs fit in L2, and every (KB, TB) tile of dw sweeps it while the
// tile's KB dy runs stay in L1. Blocks are grouped into chunks (gemm/chunked_reduction.h),
// each reduced into its own partial dw by one thread, summed in chunk order at the end: block,
// chunk and tile bounds follow from the shape alone, so the result does not depend on the
// thread count.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "gemm/chunked_reduction.h"
#include "conv/im2col.h"

namespace pyconv {
namespace PYCONV_ISA {

// The register tile: KB output channels x TB taps of vector accumulators, plus KB dy vectors
// and one x vector live: 29 of AVX-512's 32 registers, 15 of AVX2's (and SSE2's) 16.
template <class T>
struct RowsTile {
    static constexpr int KB = PYCONV_ISA_LEVEL == 2 ? 4 : 2, TB = 6;
};

// Lanes j = row[from + j] where 0 <= from + j < width, zeros in the others; nothing outside
// the row is read.
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V load_inside(const T* row, int64_t from,
                                                                             int64_t width) {
    using V = typename Simd<T>::V;
    constexpr int L = Simd<T>::lanes;
    const int lo = static_cast<int>(std::clamp<int64_t>(-from, 0, L));
    const int hi = static_cast<int>(std::clamp<int64_t>(width - from, lo, L));
#if PYCONV_ISA_LEVEL == 2
    const unsigned mask = ((1u << hi) - 1) & ~((1u << lo) - 1);
    // Masked-off lanes are not accessed (their addresses may lie outside the row).
    const T* p = reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(row) + from * int64_t(sizeof(T)));
    if constexpr (sizeof(T) == 4) return V(_mm512_maskz_loadu_ps(__mmask16(mask), p));
    else return V(_mm512_maskz_loadu_pd(__mmask8(mask), p));
#elif PYCONV_ISA_LEVEL == 1
    const auto i = Simd<T>::iota();
    const auto mask = (i >= Simd<T>::splat_int(lo)) & (i < Simd<T>::splat_int(hi));
    const T* p = reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(row) + from * int64_t(sizeof(T)));
    if constexpr (sizeof(T) == 4) return V(_mm256_maskload_ps(p, __m256i(mask)));
    else return V(_mm256_maskload_pd(p, __m256i(mask)));
#else
    V v{};
    for (int j = lo; j < hi; ++j) v[j] = row[from + j];
    return v;
#endif
}

// acc[k][t] += sum_{j < len} dy_k[j] x_t[j] with dy_k = dy + dy_at[k], x_t = x + x_at[t]: a
// block's rows run on from one to the next in both operands, so this is one flat loop. The
// last vector loads only its `len % lanes` lanes (of both operands: a zero lane of dy times
// an inf of x past the end would be NaN).
template <class T>
static inline __attribute__((always_inline)) void rows_run(const T* dy, const int64_t* dy_at, const T* x,
                                                           const int64_t* x_at, int64_t len,
                                                           typename Simd<T>::V (&a)[RowsTile<T>::KB][RowsTile<T>::TB]) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes, KB = RowsTile<T>::KB, TB = RowsTile<T>::TB;
    const T* dk[KB];
    const T* xt[TB];
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k) dk[k] = dy + dy_at[k];
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) xt[t] = x + x_at[t];
    const int64_t full = len / L * L;
    for (int64_t j = 0; j < full; j += L) {
        V d[KB];
#pragma GCC unroll 8
        for (int k = 0; k < KB; ++k) d[k] = S::load(dk[k] + j);
#pragma GCC unroll 8
        for (int t = 0; t < TB; ++t) {
            const V xv = S::load(xt[t] + j);
#pragma GCC unroll 8
            for (int k = 0; k < KB; ++k) a[k][t] = S::fma(d[k], xv, a[k][t]);
        }
    }
    if (const int tail = static_cast<int>(len - full)) {
        V d[KB];
#pragma GCC unroll 8
        for (int k = 0; k < KB; ++k) d[k] = load_first(dk[k] + full, tail);
#pragma GCC unroll 8
        for (int t = 0; t < TB; ++t) {
            const V xv = load_first(xt[t] + full, tail);
#pragma GCC unroll 8
            for (int k = 0; k < KB; ++k) a[k][t] = S::fma(d[k], xv, a[k][t]);
        }
    }
}

// rows_run over a block's images (`images` runs, dy's and xs's each `dy_image` and `x_image`
// elements after the one before), the tile's accumulators loaded (or, for a chunk's first
// block, started at zero) and stored once.
template <class T>
static inline __attribute__((always_inline)) void rows_tile(const T* dy, const int64_t* dy_at, int64_t dy_image,
                                                            const T* x, const int64_t* x_at, int64_t x_image,
                                                            int64_t images, int64_t len, bool first, T* acc) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes, KB = RowsTile<T>::KB, TB = RowsTile<T>::TB;
    V a[KB][TB];
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k)
#pragma GCC unroll 8
        for (int t = 0; t < TB; ++t) a[k][t] = first ? S::zero() : S::load(acc + (k * TB + t) * L);
    for (int64_t m = 0; m < images; ++m) rows_run<T>(dy + m * dy_image, dy_at, x + m * x_image, x_at, len, a);
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k)
#pragma GCC unroll 8
        for (int t = 0; t < TB; ++t) S::store(acc + (k * TB + t) * L, a[k][t]);
}

// Whole images in one block at most (see RowBlocks).
constexpr int64_t kMaxImagesPerRowBlock = 4;

// How the reduction over pixels is cut, from the shape alone: the rows of each image into
// blocks of at most `budget_bytes` of dy rows and shifted x rows, shared out evenly; where a
// whole image is less than half of that, a block is several whole images, so that each tile's
// accumulators are loaded and stored once per block (on 16x16 images a run of 16 vectors
// per image is too short to hide that).
struct RowBlocks {
    int64_t rows;       // output rows per block (of each of its images)
    int64_t per_image;  // blocks per image
    int64_t images;     // images per block (1 where per_image > 1)
    int64_t x_rows;     // rows of each xs[c][rh][s]: the block's rows and the last tap's shift qh
    int64_t copies;     // xs[c][rh][s] per input channel: row phases x column shifts

    RowBlocks(const ConvShape& g, size_t element_bytes, double budget_bytes) {
        const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
        copies = g.sh * g.S;
        const double per_row = double(Kg + Cg * copies) * double(g.Wo) * double(element_bytes);
        const int64_t most = std::max<int64_t>(1, int64_t(budget_bytes / per_row));
        per_image = (g.Ho + std::min(g.Ho, most) - 1) / std::min(g.Ho, most);
        rows = (g.Ho + per_image - 1) / per_image;
        x_rows = rows + (g.R - 1) * g.dh / g.sh;
        images = per_image == 1 ? std::clamp<int64_t>(most / g.Ho, 1, kMaxImagesPerRowBlock) : 1;
    }
    int64_t count(int64_t N) const { return per_image > 1 ? N * per_image : (N + images - 1) / images; }
    // Block b: its first image, its number of images, its first output row.
    int64_t first_image(int64_t b) const { return per_image > 1 ? b / per_image : b * images; }
    int64_t images_in(int64_t b, int64_t N) const { return std::min(images, N - first_image(b)); }
    int64_t first_row(int64_t b) const { return per_image > 1 ? b % per_image * rows : 0; }
};

// The cache lines of a block's operands as they lie in x and dy (per image: its input rows in
// every channel, then its dy rows in every output channel), walked a few at a time while the
// block before is computed. The operands stream from memory once, in runs of a few rows per
// channel: too short for the hardware prefetchers to run ahead (on this project's 2-core
// AVX-512 host, spreading these prefetches over the previous block's tiles made the 16 -> 16
// layer on 32x32 images 15-18% faster, one prefetch of the whole block at its start nothing).
template <class T>
class BlockLines {
  public:
    BlockLines(const ConvShape& g, const RowBlocks& rb, int64_t grp, int64_t block, const T* dy, const T* x) {
        if (block >= rb.count(g.N)) return;
        const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
        const int64_t n = rb.first_image(block), ho0 = rb.first_row(block);
        const int64_t rows = std::min(rb.rows, g.Ho - ho0);
        const int64_t h0 = std::max<int64_t>(0, ho0 * g.sh - g.ph);
        const int64_t h1 = std::min(g.H, (ho0 + rows - 1) * g.sh - g.ph + (g.R - 1) * g.dh + 1);
        x0_ = reinterpret_cast<const char*>(x + ((n * g.C + grp * Cg) * g.H + h0) * g.W);
        dy0_ = reinterpret_cast<const char*>(dy + ((n * g.K + grp * Kg) * g.Ho + ho0) * g.Wo);
        x_stride_ = g.H * g.W * int64_t(sizeof(T));
        dy_stride_ = g.Ho * g.Wo * int64_t(sizeof(T));
        x_image_ = g.C * x_stride_;
        dy_image_ = g.K * dy_stride_;
        x_lines_ = h1 > h0 ? (h1 - h0) * g.W * int64_t(sizeof(T)) / kLine + 2 : 0;  // + 2: unaligned ends
        dy_lines_ = rows * g.Wo * int64_t(sizeof(T)) / kLine + 2;
        x_runs_ = x_lines_ > 0 ? Cg : 0;
        runs_ = x_runs_ + Kg;
        images_ = rb.images_in(block, g.N);
        count_ = images_ * (x_runs_ * x_lines_ + Kg * dy_lines_);
        at_ = x_runs_ > 0 ? x0_ : dy0_;
    }
    int64_t count() const { return count_; }
    // Asks for the next `lines` lines to be brought into the caches (a line past a run's end
    // is harmless: prefetches do not fault).
    void prefetch(int64_t lines) {
        for (; lines > 0 && image_ < images_; --lines) {
            __builtin_prefetch(at_ + line_ * kLine, 0, 2);
            if (++line_ < (run_ < x_runs_ ? x_lines_ : dy_lines_)) continue;
            line_ = 0;
            if (++run_ == runs_) {
                run_ = 0;
                if (++image_ == images_) return;
            }
            at_ = run_ < x_runs_ ? x0_ + image_ * x_image_ + run_ * x_stride_
                                 : dy0_ + image_ * dy_image_ + (run_ - x_runs_) * dy_stride_;
        }
    }

  private:
    static constexpr int64_t kLine = 64;
    const char *x0_ = nullptr, *dy0_ = nullptr, *at_ = nullptr;
    int64_t x_stride_ = 0, dy_stride_ = 0, x_image_ = 0, dy_image_ = 0, x_lines_ = 0, dy_lines_ = 0;
    int64_t x_runs_ = 0, runs_ = 0, images_ = 0, count_ = 0;
    int64_t image_ = 0, run_ = 0, line_ = 0;  // the cursor
};

// A block's dy rows and shifted x rows, the data every tile of dw sweeps: sized for a share
// of a typical 1-2 MiB L2 (the block size changes the summation order, so it is fixed here,
// not read from the machine). One thread, batch 64, 3x3 p1: 384 KiB (three 16x16 images of
// 32 -> 32 per block) against 192 KiB (one): 32 -> 32 on 16x16 3.8 against 4.5 ms, 16 -> 32
// 1.95 against 2.03, 16 -> 16 on 32x32 3.9 against 4.1; 768 KiB measured about as 384.
constexpr double kRowBlockBytes = 384.0 * 1024;

// One image's xs for the block from output row ho0 (x_rows rows of each of Cg channels):
// xs[c][rh][s] row i = input row (ho0 + i) sh + rh - ph at columns wo sw + s dw - pw, wo < Wo,
// zeros outside x. The shape is a copy: the vector stores may alias anything, and fields read
// through a reference would be reloaded on every row.
template <class T>
static void copy_shifted_rows(const ConvShape g, int64_t Cg, int64_t x_rows, const T* x_image, int64_t ho0, T* xs) {
    using V = typename Simd<T>::V;
    constexpr int L = Simd<T>::lanes;
    const int64_t shifted = x_rows * g.Wo;
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t rh = 0; rh < g.sh; ++rh)
            for (int64_t i = 0; i < x_rows; ++i) {
                const int64_t h = (ho0 + i) * g.sh + rh - g.ph;
                const bool inside = h >= 0 && h < g.H;
                const T* src = x_image + (c * g.H + (inside ? h : 0)) * g.W;
                for (int64_t s = 0; s < g.S; ++s) {
                    T* dst = xs + ((c * g.sh + rh) * g.S + s) * shifted + i * g.Wo;
                    const int64_t first = s * g.dw - g.pw;
                    if (!inside) {
                        std::fill(dst, dst + g.Wo, T(0));
                    } else if (g.sw > 1) {
                        gather_row(src, g.W, first, g.sw, g.Wo, dst, 1);
                    } else {
                        for (int64_t w = 0; w < g.Wo; w += L) {
                            const V v = load_inside(src, first + w, g.W);
                            if (w + L <= g.Wo) Simd<T>::store(dst + w, v);
                            else store_first<T>(dst + w, v, static_cast<int>(g.Wo - w));
                        }
                    }
                }
            }
}

template <class T>
void conv2d_grad_weight_rows(const ConvShape& g, const T* dy, const T* x, T* dw) {
    constexpr int L = Simd<T>::lanes, KB = RowsTile<T>::KB, TB = RowsTile<T>::TB;
    const int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S, taps_n = Cg * RS;
    const int64_t HoWo = g.Ho * g.Wo, outputs = Kg * taps_n;
    const int64_t k_tiles = (Kg + KB - 1) / KB, t_tiles = (taps_n + TB - 1) / TB;
    const RowBlocks rb(g, sizeof(T), kRowBlockBytes);
    const int64_t shifted = rb.x_rows * g.Wo;  // one xs[c][rh][s]
    // At least 8 blocks per chunk, a block of several whole images counting as that many: a
    // chunk ends with a flush of its vector accumulators (lanes added across) that costs about
    // as much as a block's FMAs (one 16x16 image's).
    const ReductionChunks chunks = reduction_chunks(rb.count(g.N), outputs, 1, (8 + rb.images - 1) / rb.images);

    // Offsets of the tiles' operands (a partial last tile repeats its last channel or tap):
    // dy channel k from the block's first dy row, tap (c, r, s) from the block's xs.
    std::vector<int64_t> dy_at(k_tiles * KB), x_at(t_tiles * TB);
    for (int64_t k = 0; k < k_tiles * KB; ++k) dy_at[k] = std::min(k, Kg - 1) * HoWo;
    for (int64_t t = 0; t < t_tiles * TB; ++t) {
        const int64_t tap = std::min(t, taps_n - 1), c = tap / RS, r = tap % RS / g.S, s = tap % g.S;
        const int64_t qh = r * g.dh / g.sh, rh = r * g.dh % g.sh;
        x_at[t] = ((c * g.sh + rh) * g.S + s) * shifted + qh * g.Wo;
    }

    const int64_t acc_size = k_tiles * t_tiles * KB * TB * L;
    const int64_t xs_image = Cg * rb.copies * shifted;  // one image's xs
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads(), chunks.count)));
    // Per thread (allocated here: an exception must not leave a pool thread): the vector
    // accumulators of every tile, and one block's xs.
    std::vector<Scratch<T>> accs, xss;
    for (int t = 0; t < threads; ++t) {
        accs.push_back(scratch<T>(acc_size));
        xss.push_back(scratch<T>(checked_mul(rb.images, xs_image)));
    }
    Scratch<T> partial = scratch<T>(checked_mul(chunks.count, outputs));
    for (int64_t grp = 0; grp < g.groups; ++grp) {
        FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
        parallel_tasks(chunks.count, threads, [&](int64_t ch, int worker) {
            T* acc = accs[size_t(worker)].get();
            T* xs = xss[size_t(worker)].get();
            for (int64_t block = chunks.begin(ch); block < chunks.end(ch); ++block) {
                const int64_t n0 = rb.first_image(block), images = rb.images_in(block, g.N), ho0 = rb.first_row(block);
                const int64_t rows = std::min(rb.rows, g.Ho - ho0);
                for (int64_t m = 0; m < images; ++m)
                    copy_shifted_rows<T>(g, Cg, rb.x_rows, x + ((n0 + m) * g.C + grp * Cg) * g.H * g.W, ho0,
                                         xs + m * xs_image);
                const T* dy_block = dy + (n0 * g.K + grp * Kg) * HoWo + ho0 * g.Wo;
                BlockLines<T> next(g, rb, grp, block + 1, dy, x);
                const int64_t per_tile = (next.count() + k_tiles * t_tiles - 1) / (k_tiles * t_tiles);
                for (int64_t kt = 0; kt < k_tiles; ++kt)
                    for (int64_t tt = 0; tt < t_tiles; ++tt) {
                        next.prefetch(per_tile);
                        rows_tile<T>(dy_block, dy_at.data() + kt * KB, g.K * HoWo, xs, x_at.data() + tt * TB,
                                     xs_image, images, rows * g.Wo, block == chunks.begin(ch),
                                     acc + (kt * t_tiles + tt) * KB * TB * L);
                    }
            }
            // The chunk's partial dw: each accumulator's lanes added across.
            T* out = partial.get() + ch * outputs;
            for (int64_t kt = 0; kt < k_tiles; ++kt)
                for (int64_t tt = 0; tt < t_tiles; ++tt)
                    for (int k = 0; k < KB; ++k)
                        for (int t = 0; t < TB; ++t) {
                            const int64_t kk = kt * KB + k, tap = tt * TB + t;
                            if (kk >= Kg || tap >= taps_n) continue;
                            const T* a = acc + (((kt * t_tiles + tt) * KB + k) * TB + t) * L;
                            out[kk * taps_n + tap] = Simd<T>::sum(Simd<T>::load(a));
                        }
        });
        // dw of the group: the chunks' partials in chunk order.
        parallel_ranges(outputs, threads, [&](int64_t begin, int64_t end, int) {
            for (int64_t e = begin; e < end; ++e) {
                T sum = partial[e];
                for (int64_t ch = 1; ch < chunks.count; ++ch) sum += partial[ch * outputs + e];
                dw[grp * outputs + e] = sum;
            }
        });
    }
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
