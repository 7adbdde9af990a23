// Depthwise convolution: one input channel per group (Cg = 1), any channel multiplier
// Kg = K / groups, any kernel size, stride, padding and dilation. Each output plane reads one
// input plane, so the work is a few multiply-adds per element moved: the kernels stream each
// plane once, vectorised along output rows, each output vector summing every tap in a
// register (the taps' weights broadcast once per plane), and read x (or dy) in place, the
// padding given by masked loads at the row ends and a row of zeros, not by padded copies.
// Planes are split across threads by their index alone, and each output element (each weight
// gradient) is summed in one fixed order, so results do not depend on the thread count.
//
// All three passes are correlations of planes (DepthwisePass):
//   forward       y[n,k]  = x[n, k/Kg] correlated with w[k] (stride, padding, dilation)
//   input grad    dx[n,c] = sum over the Kg channels k of c: dy[n,k] spread out by the stride
//                 (zeros between its rows and columns) correlated with w[k] flipped, stride 1;
//                 the rows between are skipped by index, the columns between written into a
//                 per-thread copy of the plane (strided layers only)
//   weight grad   dw[k]   = sum over n of dy[n,k] times the shifted x[n, k/Kg] rows
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/scratch.h"
#include "common/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

// Whether g is depthwise: one input channel per group.
inline bool depthwise_applies(const ConvShape& g) {
    return g.groups > 1 && g.C == g.groups && g.K % g.groups == 0;
}

// out(i, j) = sum_{r, s} taps(r, s) in(i*sh + oh + r*dh, j*sw + ow + s*dw), in being zero
// outside its in_h x in_w extent and on the rows that are not a multiple of row_step (the
// input gradient of a row-strided layer, whose spread-out dy is stored without them).
struct DepthwisePass {
    int64_t in_h, in_w, row_step, in_row;  // in_row: elements between two stored input rows
    int64_t out_h, out_w;
    int64_t sh, sw, oh, ow, dh, dw, R, S;
};

inline DepthwisePass depthwise_forward_pass(const ConvShape& g) {
    return {g.H, g.W, 1, g.W, g.Ho, g.Wo, g.sh, g.sw, -g.ph, -g.pw, g.dh, g.dw, g.R, g.S};
}

// The input gradient's pass: dx(h, w) = sum_{r,s} w(r, s) dy_spread(h + ph - r dh, w + pw - s dw)
// with dy_spread(a, b) = dy(a / sh, b / sw) where both divide, else 0; with the taps flipped
// (r -> R-1-r) that is a stride-1 correlation whose offset ph - (R-1) dh may be of either sign.
inline DepthwisePass depthwise_grad_input_pass(const ConvShape& g) {
    // The spread-out dy rows are stored Wo sw wide (stride 1: dy itself).
    return {(g.Ho - 1) * g.sh + 1, (g.Wo - 1) * g.sw + 1, g.sh, g.Wo * g.sw, g.H, g.W, 1, 1,
            g.ph - (g.R - 1) * g.dh, g.pw - (g.S - 1) * g.dw, g.dh, g.dw, g.R, g.S};
}

// p[j] into lane j where bit j of `bits` is set, 0 elsewhere; reads nothing else.
template <class T>
static inline __attribute__((always_inline)) typename Simd<T>::V load_lanes(const T* p, uint64_t bits) {
    using S = Simd<T>;
    using V = typename S::V;
#if PYCONV_ISA_LEVEL >= 2
    if constexpr (sizeof(T) == 4) return V(_mm512_maskz_loadu_ps(__mmask16(bits), p));
    else return V(_mm512_maskz_loadu_pd(__mmask8(bits), p));
#else
    constexpr uint64_t all = (uint64_t(1) << S::lanes) - 1;
    if ((bits & all) == all) return S::load(p);
#if PYCONV_ISA_LEVEL == 1
    const auto in = ((S::splat_int(typename S::Int(bits)) >> S::iota()) & 1) != 0;
    if constexpr (sizeof(T) == 4) return V(_mm256_maskload_ps(p, __m256i(in)));
    else return V(_mm256_maskload_pd(p, __m256i(in)));
#else
    V v{};
    for (int j = 0; j < S::lanes; ++j)
        if ((bits >> j) & 1) v[j] = p[j];
    return v;
#endif
#endif
}

// Output vector v of a row holds outputs v L .. v L + L - 1 (L lanes). For tap column s it
// reads, at strides 1 and 2 (SW = sw), the contiguous run of L sw input columns from
// first(v, s), of which `bits` marks those inside [0, in_w) and before the row's end (the
// vector's lanes past out_w read nothing); stride 2 keeps the even ones (one shuffle). Larger
// strides (SW = 0) read lane by lane and `bits` marks the lanes. The columns do not depend on
// the row, so the vectors whose every tap reads a whole run inside the row (`inner`: plain
// loads, no table) are told apart from the others (`edges`: masked loads) once per call.
template <class T>
struct DepthwiseColumns {
    int64_t vectors;
    std::vector<int64_t> first;
    std::vector<uint64_t> bits;
    std::vector<int64_t> inner, edges;
    int64_t inner_begin, inner_end;

    explicit DepthwiseColumns(const DepthwisePass& p) {
        constexpr int64_t L = Simd<T>::lanes;
        vectors = (p.out_w + L - 1) / L;
        first.resize(size_t(vectors * p.S));
        bits.resize(size_t(vectors * p.S));
        const bool runs = p.sw <= 2;
        const int64_t span = runs ? L * p.sw : L;
        for (int64_t v = 0; v < vectors; ++v) {
            bool whole = p.sw <= 2 && v * L + L <= p.out_w;
            for (int64_t s = 0; s < p.S; ++s) {
                const int64_t start = v * L * p.sw + p.ow + s * p.dw, lanes = std::min(L, p.out_w - v * L);
                uint64_t b = 0;
                for (int64_t t = 0; t < (runs ? lanes * p.sw : lanes); ++t) {
                    const int64_t col = start + (runs ? t : t * p.sw);
                    if (col >= 0 && col < p.in_w) b |= uint64_t(1) << t;
                }
                first[size_t(v * p.S + s)] = start;
                bits[size_t(v * p.S + s)] = b;
                whole = whole && b == (uint64_t(1) << span) - 1;
            }
            (whole ? inner : edges).push_back(v);
        }
        // Inner vectors are taken as one range of each row; where they are not one (tiny
        // planes, dilations wider than the row) every vector goes the masked way.
        if (!inner.empty() && inner.back() - inner.front() + 1 != int64_t(inner.size())) {
            inner.clear();
            edges.clear();
            for (int64_t v = 0; v < vectors; ++v) edges.push_back(v);
        }
        inner_begin = inner.empty() ? 0 : inner.front();
        inner_end = inner.empty() ? 0 : inner.back() + 1;
    }
};

template <class T, int SW>
static inline __attribute__((always_inline)) typename Simd<T>::V load_columns(const T* row, int64_t first,
                                                                              uint64_t bits, int64_t sw) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int L = S::lanes;
    if constexpr (SW == 1) {
        return load_lanes<T>(row + first, bits);
    } else if constexpr (SW == 2) {
        const V a = load_lanes<T>(row + first, bits & ((uint64_t(1) << L) - 1));
        const V b = load_lanes<T>(row + first + L, bits >> L);
        return __builtin_shuffle(a, b, S::iota() * 2);
    } else {
        V v{};
        for (int j = 0; j < L; ++j)
            if ((bits >> j) & 1) v[j] = row[first + j * sw];
        return v;
    }
}

// The same for a vector of `inner`: every column inside the row, plain loads.
template <class T, int SW>
static inline __attribute__((always_inline)) typename Simd<T>::V load_inner_columns(const T* p) {
    using S = Simd<T>;
    static_assert(SW == 1 || SW == 2, "inner vectors are read at strides 1 and 2");
    if constexpr (SW == 1) return S::load(p);
    else return __builtin_shuffle(S::load(p), S::load(p + S::lanes), S::iota() * 2);
}

// For every output row i and tap row r, the input row it reads: rows[i R + r], `outside` where
// that row is padding (or a row the stride spread out).
template <class T>
void depthwise_tap_rows(const DepthwisePass& p, const T* in, const T* outside, const T** rows) {
    for (int64_t i = 0; i < p.out_h; ++i)
        for (int64_t r = 0; r < p.R; ++r) {
            const int64_t a = i * p.sh + p.oh + r * p.dh;
            const bool stored = a >= 0 && a < p.in_h && (p.row_step == 1 || a % p.row_step == 0);
            rows[i * p.R + r] = stored ? in + (p.row_step == 1 ? a : a / p.row_step) * p.in_row : outside;
        }
}

// Row dilation 1: output row i, tap row r reads input row i sh + r + oh, so one table of the
// (out_h - 1) sh + R input rows, rows[i sh + r], serves every pair.
template <class T>
void depthwise_unit_rows(const DepthwisePass& p, const T* in, const T* outside, const T** rows) {
    for (int64_t q = 0; q < (p.out_h - 1) * p.sh + p.R; ++q) {
        const int64_t a = q + p.oh;
        const bool stored = a >= 0 && a < p.in_h && (p.row_step == 1 || a % p.row_step == 0);
        rows[q] = stored ? in + (p.row_step == 1 ? a : a / p.row_step) * p.in_row : outside;
    }
}

// Output vector v of U consecutive output rows from row i: U chains of multiply-adds in
// flight (the rows of a plane outnumber its vectors on the small images of late layers). Each
// tap column's masked load (first, bits) is fetched once for all rows (Masked: v is one of
// the edges), else every load is at a fixed offset from the tap rows (an inner vector).
// `accumulate` adds to what out holds instead of the bias.
template <class T, int R_, int S_, int SW, int U, bool Masked, int SH, bool Skip>
static inline __attribute__((always_inline)) void depthwise_tile(const DepthwisePass& p,
                                                                 const DepthwiseColumns<T>& cols,
                                                                 const T* const* rows, int64_t i, int64_t v,
                                                                 const typename Simd<T>::V* w, T bias,
                                                                 bool accumulate, T* out) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int64_t L = S::lanes;
    const int64_t R = R_ ? R_ : p.R, Sn = S_ ? S_ : p.S;
    const int n = int(std::min(L, p.out_w - v * L));
    const int64_t base = v * L * (SW ? SW : 1) + p.ow;
    V acc[U];
#pragma GCC unroll 8
    for (int j = 0; j < U; ++j) {
        const T* o = out + (i + j) * p.out_w + v * L;
        acc[j] = !accumulate ? S::splat(bias) : Masked ? load_first<T>(o, n) : S::load(o);
    }
#pragma GCC unroll 8
    for (int64_t s = 0; s < Sn; ++s) {
        const int64_t first = Masked ? cols.first[size_t(v * Sn + s)] : base + s * p.dw;
        const uint64_t bits = Masked ? cols.bits[size_t(v * Sn + s)] : 0;
        if constexpr (SH > 0) {
            // Output row i + j, tap row r reads input row (i + j) SH + r: each of the
            // (U - 1) SH + R rows is loaded once and feeds every (j, r) pair that reads it.
            // Skip: the rows between a strided layer's dy rows (input gradient) are null,
            // skipped (elsewhere padding rows point to zeros: a branch per row cost more).
#pragma GCC unroll 16
            for (int64_t q = 0; q < (U - 1) * SH + R; ++q) {
                const T* row = rows[i * SH + q];
                if (Skip && row == nullptr) continue;  // a row the stride spread out
                V xv;
                if constexpr (Masked) xv = load_columns<T, SW>(row, first, bits, p.sw);
                else xv = load_inner_columns<T, SW>(row + first);
#pragma GCC unroll 8
                for (int j = 0; j < U; ++j) {
                    const int64_t r = q - j * SH;
                    if (r >= 0 && r < R) acc[j] = fma<T>(w[r * Sn + s], xv, acc[j]);
                }
            }
        } else {
#pragma GCC unroll 8
            for (int64_t r = 0; r < R; ++r) {
                const V ws = w[r * Sn + s];
#pragma GCC unroll 8
                for (int j = 0; j < U; ++j) {
                    const T* row = rows[(i + j) * R + r];
                    V xv;
                    if constexpr (Masked) xv = load_columns<T, SW>(row, first, bits, p.sw);
                    else xv = load_inner_columns<T, SW>(row + first);
                    acc[j] = fma<T>(ws, xv, acc[j]);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < U; ++j) {
        T* o = out + (i + j) * p.out_w + v * L;
        if (Masked) store_first<T>(o, acc[j], n);
        else S::store(o, acc[j]);
    }
}

// Every vector of output rows i .. i + U - 1.
template <class T, int R_, int S_, int SW, int U, int SH, bool Skip>
void depthwise_rows(const DepthwisePass& p, const DepthwiseColumns<T>& cols, const T* const* rows, int64_t i,
                    const typename Simd<T>::V* w, T bias, bool accumulate, T* out) {
    for (const int64_t v : cols.edges)
        depthwise_tile<T, R_, S_, SW, U, true, SH, Skip>(p, cols, rows, i, v, w, bias, accumulate, out);
    if constexpr (SW != 0)
        for (int64_t v = cols.inner_begin; v < cols.inner_end; ++v)
            depthwise_tile<T, R_, S_, SW, U, false, SH, Skip>(p, cols, rows, i, v, w, bias, accumulate, out);
}

template <class T, int R_, int S_, int SW, int SH, bool Skip>
void depthwise_all_rows(const DepthwisePass& p, const DepthwiseColumns<T>& cols, const T* const* rows,
                        const typename Simd<T>::V* w, T bias, bool accumulate, T* out) {
    int64_t i = 0;
    for (; i + 4 <= p.out_h; i += 4) depthwise_rows<T, R_, S_, SW, 4, SH, Skip>(p, cols, rows, i, w, bias, accumulate, out);
    switch (p.out_h - i) {
        case 3: return depthwise_rows<T, R_, S_, SW, 3, SH, Skip>(p, cols, rows, i, w, bias, accumulate, out);
        case 2: return depthwise_rows<T, R_, S_, SW, 2, SH, Skip>(p, cols, rows, i, w, bias, accumulate, out);
        case 1: return depthwise_rows<T, R_, S_, SW, 1, SH, Skip>(p, cols, rows, i, w, bias, accumulate, out);
        default: return;
    }
}

// One output plane from one input plane: `taps` (R S, already flipped for the input gradient)
// broadcast once (into `wbuf`), then the output rows 4 at a time, `zero_row` standing in for
// the input rows on padding.
template <class T, int R_, int S_, int SW>
void depthwise_plane(const DepthwisePass& p, const DepthwiseColumns<T>& cols, const T* in, const T* taps, T bias,
                     bool accumulate, const T* zero_row, const T** rows, typename Simd<T>::V* wbuf, T* out) {
    using S = Simd<T>;
    for (int64_t t = 0; t < p.R * p.S; ++t) wbuf[t] = S::splat(taps[t]);
    if constexpr (SW == 1) {
        if (p.sh == 1 && p.dh == 1 && p.row_step > 1) {
            depthwise_unit_rows<T>(p, in, nullptr, rows);
            return depthwise_all_rows<T, R_, S_, SW, 1, true>(p, cols, rows, wbuf, bias, accumulate, out);
        }
    }
    if constexpr (SW != 0) {
        if (p.sh == SW && p.dh == 1) {
            depthwise_unit_rows<T>(p, in, zero_row, rows);
            return depthwise_all_rows<T, R_, S_, SW, SW, false>(p, cols, rows, wbuf, bias, accumulate, out);
        }
    }
    depthwise_tap_rows(p, in, zero_row, rows);
    depthwise_all_rows<T, R_, S_, SW, 0, false>(p, cols, rows, wbuf, bias, accumulate, out);
}

// f(R_, S_, SW) with the compile-time kernel size (3x3 and 5x5, else 0: read from the pass)
// and column stride (1, 2, else 0) that fit.
template <class F>
void depthwise_specialised(int64_t R, int64_t S, int64_t sw, F&& f) {
    using std::integral_constant;
    if (sw > 2) return f(integral_constant<int, 0>{}, integral_constant<int, 0>{}, integral_constant<int, 0>{});
    auto by_taps = [&](auto SW) {
        if (R == 3 && S == 3) return f(integral_constant<int, 3>{}, integral_constant<int, 3>{}, SW);
        if (R == 5 && S == 5) return f(integral_constant<int, 5>{}, integral_constant<int, 5>{}, SW);
        return f(integral_constant<int, 0>{}, integral_constant<int, 0>{}, SW);
    };
    if (sw == 1) by_taps(integral_constant<int, 1>{});
    else by_taps(integral_constant<int, 2>{});
}

// Per-thread buffers of the plane kernels.
template <class T>
struct DepthwiseBuffers {
    std::vector<const T*> rows;                 // depthwise_tap_rows
    Scratch<T> vectors;         // R S vectors: taps or accumulators when R, S are not compile-time
    Scratch<T> spread;          // the input gradient's spread-out dy plane
    typename Simd<T>::V* weights() { return reinterpret_cast<typename Simd<T>::V*>(vectors.get()); }
};

template <class T>
std::vector<DepthwiseBuffers<T>> depthwise_buffers(int threads, const DepthwisePass& p, int64_t spread) {
    std::vector<DepthwiseBuffers<T>> b(static_cast<size_t>(threads));
    for (auto& t : b) {
        t.rows.resize(size_t(std::max(checked_mul(p.out_h, p.R), checked_add(checked_mul(p.out_h - 1, p.sh), p.R))));
        t.vectors = scratch<T>(checked_mul(p.R, p.S, Simd<T>::lanes));  // 64-byte aligned, as V needs
        if (spread > 0) t.spread = scratch<T>(spread);
    }
    return b;
}

template <class T>
void conv2d_forward_depthwise(const ConvShape& g, const T* x, const T* w, const T* bias, T* y) {
    const DepthwisePass p = depthwise_forward_pass(g);
    const DepthwiseColumns<T> cols(p);
    const int64_t planes = g.N * g.K, Kg = g.K / g.groups, RS = g.R * g.S;
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), planes)));
    auto buffers = depthwise_buffers<T>(threads, p, 0);
    std::vector<T> zero_row(size_t(g.W), T(0));
    depthwise_specialised(g.R, g.S, g.sw, [&](auto R_, auto S_, auto SW) {
        FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
        parallel_for(planes, threads, [&](int64_t q, int worker) {
            const int64_t n = q / g.K, k = q % g.K;
            auto& b = buffers[size_t(worker)];
            depthwise_plane<T, decltype(R_)::value, decltype(S_)::value, decltype(SW)::value>(
                p, cols, x + (n * g.C + k / Kg) * g.H * g.W, w + k * RS, bias ? bias[k] : T(0), false,
                zero_row.data(), b.rows.data(), b.weights(), y + q * g.Ho * g.Wo);
        });
    });
}

// A dy plane (Ho x Wo) with sw - 1 zero columns after each column, rows Wo sw wide: at stride
// 2 a vector of dy interleaved with zeros into two.
template <class T>
void spread_columns(const ConvShape& g, const T* dy, T* e) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int64_t L = S::lanes;
    if (g.sw != 2) {
        std::fill(e, e + g.Ho * g.Wo * g.sw, T(0));
        for (int64_t i = 0; i < g.Ho * g.Wo; ++i) e[i * g.sw] = dy[i];
        return;
    }
    typename S::I low, high;
    for (int l = 0; l < L; ++l) {
        low[l] = l % 2 ? int(L) : l / 2;
        high[l] = l % 2 ? int(L) : int(L) / 2 + l / 2;
    }
    for (int64_t i = 0; i < g.Ho; ++i) {
        const T* d = dy + i * g.Wo;
        T* out = e + i * g.Wo * 2;
        for (int64_t j = 0; j < g.Wo; j += L) {
            const int lanes = int(std::min(L, g.Wo - j));
            const V v = lanes == L ? S::load(d + j) : load_first<T>(d + j, lanes);
            const V a = __builtin_shuffle(v, S::zero(), low), b = __builtin_shuffle(v, S::zero(), high);
            if (lanes == L) {
                S::store(out + 2 * j, a);
                S::store(out + 2 * j + L, b);
            } else {
                store_first<T>(out + 2 * j, a, std::min<int>(2 * lanes, int(L)));
                if (2 * lanes > L) store_first<T>(out + 2 * j + L, b, 2 * lanes - int(L));
            }
        }
    }
}

template <class T>
void conv2d_grad_input_depthwise(const ConvShape& g, const T* dy, const T* w, T* dx) {
    const DepthwisePass p = depthwise_grad_input_pass(g);
    const DepthwiseColumns<T> cols(p);
    const int64_t planes = g.N * g.C, Kg = g.K / g.groups, RS = g.R * g.S;
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), planes)));
    // dy's columns spread out by the stride into a per-thread plane (rows stay: row_step).
    const bool spread = g.sw > 1;
    auto buffers = depthwise_buffers<T>(threads, p, spread ? checked_mul(g.Ho, p.in_row) : 0);
    std::vector<T> zero_row(size_t(p.in_w), T(0));
    std::vector<T> flipped(size_t(g.K * RS));
    for (int64_t k = 0; k < g.K; ++k)
        for (int64_t t = 0; t < RS; ++t) flipped[size_t(k * RS + t)] = w[k * RS + RS - 1 - t];
    depthwise_specialised(g.R, g.S, 1, [&](auto R_, auto S_, auto SW) {
        FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
        parallel_for(planes, threads, [&](int64_t q, int worker) {
            const int64_t n = q / g.C, c = q % g.C;
            auto& b = buffers[size_t(worker)];
            for (int64_t kk = 0; kk < Kg; ++kk) {
                const int64_t k = c * Kg + kk;
                const T* in = dy + (n * g.K + k) * g.Ho * g.Wo;
                if (spread) {
                    spread_columns(g, in, b.spread.get());
                    in = b.spread.get();
                }
                depthwise_plane<T, decltype(R_)::value, decltype(S_)::value, decltype(SW)::value>(
                    p, cols, in, flipped.data() + k * RS, T(0), kk > 0, zero_row.data(), b.rows.data(),
                    b.weights(), dx + q * g.H * g.W);
            }
        });
    });
}

// dw[k](r, s) = sum over n, ho and the output vectors of dy times the x columns tap (r, s)
// reads for them: R S accumulators (in registers for 3x3), each vector of dy loaded once for
// every tap; rows on padding skipped. Output channels are split across threads, the batch
// summed in order within each.
template <class T, int R_, int S_, int SW, bool Masked>
static inline __attribute__((always_inline)) void depthwise_grad_weight_vector(
    const DepthwisePass& p, const DepthwiseColumns<T>& cols, const T* const* xr, const T* dyrow, int64_t v,
    typename Simd<T>::V* acc) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int64_t L = S::lanes;
    const int64_t R = R_ ? R_ : p.R, Sn = S_ ? S_ : p.S;
    V dv;
    if constexpr (Masked) dv = load_first<T>(dyrow + v * L, int(std::min(L, p.out_w - v * L)));
    else dv = S::load(dyrow + v * L);
    const int64_t base = v * L * (SW ? SW : 1) + p.ow;
#pragma GCC unroll 8
    for (int64_t r = 0; r < R; ++r) {
        const T* row = xr[r];
        if (row == nullptr) continue;
#pragma GCC unroll 8
        for (int64_t s = 0; s < Sn; ++s) {
            V xv;
            if constexpr (Masked) {
                const size_t c = size_t(v * Sn + s);
                xv = load_columns<T, SW>(row, cols.first[c], cols.bits[c], p.sw);
            } else {
                xv = load_inner_columns<T, SW>(row + base + s * p.dw);
            }
            acc[r * Sn + s] = fma<T>(dv, xv, acc[r * Sn + s]);
        }
    }
}

template <class T, int R_, int S_, int SW>
static inline __attribute__((always_inline)) void depthwise_grad_weight_sums(
    const ConvShape& g, const DepthwisePass& p, const DepthwiseColumns<T>& cols, const T* dy, const T* x, int64_t k,
    const T** rows, typename Simd<T>::V* acc) {
    const int64_t Kg = g.K / g.groups;
    for (int64_t n = 0; n < g.N; ++n) {
        depthwise_tap_rows<T>(p, x + (n * g.C + k / Kg) * g.H * g.W, nullptr, rows);
        const T* dyk = dy + (n * g.K + k) * g.Ho * g.Wo;
        for (int64_t i = 0; i < g.Ho; ++i) {
            const T* xr[R_ > 0 ? R_ : 1];
            const T* const* row = R_ > 0 ? xr : rows + i * g.R;
            if constexpr (R_ > 0)
                for (int r = 0; r < R_; ++r) xr[r] = rows[i * R_ + r];
            if constexpr (SW != 0)
                for (int64_t v = cols.inner_begin; v < cols.inner_end; ++v)
                    depthwise_grad_weight_vector<T, R_, S_, SW, false>(p, cols, row, dyk + i * g.Wo, v, acc);
            for (const int64_t v : cols.edges)
                depthwise_grad_weight_vector<T, R_, S_, SW, true>(p, cols, row, dyk + i * g.Wo, v, acc);
        }
    }
}

template <class T, int R_, int S_, int SW>
void depthwise_grad_weight_channel(const ConvShape& g, const DepthwisePass& p, const DepthwiseColumns<T>& cols,
                                   const T* dy, const T* x, int64_t k, DepthwiseBuffers<T>& b, T* dwk) {
    using S = Simd<T>;
    using V = typename S::V;
    if constexpr (R_ > 0 && S_ > 0) {
        V acc[R_ * S_];  // in registers: no pointer to it outlives the inlined loops
#pragma GCC unroll 32
        for (int t = 0; t < R_ * S_; ++t) acc[t] = S::zero();
        depthwise_grad_weight_sums<T, R_, S_, SW>(g, p, cols, dy, x, k, b.rows.data(), acc);
#pragma GCC unroll 32
        for (int t = 0; t < R_ * S_; ++t) dwk[t] = S::sum(acc[t]);
    } else {
        V* acc = b.weights();
        for (int64_t t = 0; t < g.R * g.S; ++t) acc[t] = S::zero();
        depthwise_grad_weight_sums<T, R_, S_, SW>(g, p, cols, dy, x, k, b.rows.data(), acc);
        for (int64_t t = 0; t < g.R * g.S; ++t) dwk[t] = S::sum(acc[t]);
    }
}

template <class T>
void conv2d_grad_weight_depthwise(const ConvShape& g, const T* dy, const T* x, T* dw) {
    const DepthwisePass p = depthwise_forward_pass(g);
    const DepthwiseColumns<T> cols(p);
    const int threads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), g.K)));
    auto buffers = depthwise_buffers<T>(threads, p, 0);
    depthwise_specialised(g.R, g.S, g.sw, [&](auto R_, auto S_, auto SW) {
        FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
        parallel_for(g.K, threads, [&](int64_t k, int worker) {
            depthwise_grad_weight_channel<T, decltype(R_)::value, decltype(S_)::value, decltype(SW)::value>(
                    g, p, cols, dy, x, k, buffers[size_t(worker)], dw + k * g.R * g.S);
        });
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
