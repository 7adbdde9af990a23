// Box IoU and greedy non-maximum suppression.
//
// Semantics (torchvision's, made exact where it leaves them open):
// - boxes are (x1, y1, x2, y2); a box with x2 < x1 or y2 < y1 is empty (width and height are
//   clamped at 0), and the IoU of two boxes whose union is empty is 0;
// - a NaN coordinate makes the IoU of every pair the box is in NaN (minimum, maximum and the
//   clamp at 0 propagate NaN, as NumPy's do), and a NaN IoU suppresses nothing;
// - greedy NMS visits boxes by decreasing score, ties by increasing index, NaN scores after
//   every other score; a box is dropped when its IoU with an already kept box is strictly
//   greater than the threshold. The threshold is compared exactly, as a double, with the IoU
//   computed in the boxes' precision.
//
// Algorithm: one stable radix sort of the scores, then the candidate list (structure of
// arrays, in visiting order) is swept once per kept box: the sweep computes the IoU of the
// kept box with every remaining candidate, a vector of candidates at a time, and compacts the
// survivors in place. The list shrinks as boxes are suppressed, so the work is the sum of the
// list lengths at each kept box rather than all N^2 pairs when few boxes survive.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/simd.h"

namespace pyconv {
namespace PYCONV_ISA {

// Largest T that is <= t: then `iou > t` (exact, in double) is the same as `iou > floor_to(t)`
// computed in T, for every iou representable in T.
template <class T>
static inline T floor_to(double t) {
    T f = static_cast<T>(t);
    if (static_cast<double>(f) > t) f = std::nextafter(f, -std::numeric_limits<T>::infinity());
    return f;
}

// Minimum, maximum and the clamp at 0 that return NaN when an operand is NaN. (std::min,
// std::max and plain selects return one operand or the other depending on the order.) The
// same forms serve scalars and SIMD vectors, whose comparisons yield lane masks.
template <class V>
static inline V min_nan(V a, V b) { return (a < b) | (a != a) ? a : b; }
template <class V>
static inline V max_nan(V a, V b) { return (a > b) | (a != a) ? a : b; }
template <class V>
static inline V clamp0_nan(V v, V zero) { return v < zero ? zero : v; }

template <class T>
static inline T box_area(T x1, T y1, T x2, T y2) {
    return clamp0_nan(x2 - x1, T(0)) * clamp0_nan(y2 - y1, T(0));
}

// IoU of two boxes given with their areas; the vector code below computes the same formula.
template <class T>
static inline T iou_of(T ax1, T ay1, T ax2, T ay2, T aarea, T bx1, T by1, T bx2, T by2, T barea) {
    const T w = clamp0_nan(min_nan(ax2, bx2) - max_nan(ax1, bx1), T(0));
    const T h = clamp0_nan(min_nan(ay2, by2) - max_nan(ay1, by1), T(0));
    const T inter = w * h;
    const T uni = aarea + barea - inter;
    return uni == T(0) ? T(0) : inter / uni;
}

template <class T>
void box_iou(const T* a, int64_t n, const T* b, int64_t m, T* iou) {
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(n, (n + 15) / 16, num_threads(), [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) {
            const T* p = a + 4 * i;
            const T area_a = box_area(p[0], p[1], p[2], p[3]);
            T* row = iou + i * m;
            // Simple enough for the compiler to vectorise (min/max/select, no branches).
            for (int64_t j = 0; j < m; ++j) {
                const T* q = b + 4 * j;
                row[j] = iou_of(p[0], p[1], p[2], p[3], area_a, q[0], q[1], q[2], q[3],
                                box_area(q[0], q[1], q[2], q[3]));
            }
        }
    });
}

// ------------------------------------------------------------------------------------------
// Sorting scores

template <class T>
using UIntOf = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

// Unsigned key whose ascending order is the visiting order: decreasing score, -0 equal to
// +0, every NaN after every number.
template <class T>
static inline UIntOf<T> visiting_key(T score) {
    using U = UIntOf<T>;
    constexpr U sign = U(1) << (8 * sizeof(T) - 1);
    if (std::isnan(score)) return ~U(0);
    U bits;
    std::memcpy(&bits, &score, sizeof bits);
    // -0 -> +0, tested on the bits: the kernels run with denormals-are-zero, under which a
    // subnormal score would compare equal to 0 and lose its rank.
    if ((bits & ~sign) == 0) bits = 0;
    const U ascending = (bits & sign) ? ~bits : (bits | sign);  // order of the float values
    return ~ascending;
}

// order[k] = index of the k-th box to visit. LSD radix sort on 8-bit digits, which is stable,
// so equal scores keep increasing index. Digits every key shares are skipped.
template <class T>
static void visiting_order(const T* scores, int64_t n, std::vector<int64_t>& order) {
    using U = UIntOf<T>;
    std::vector<U> key(n), key_tmp(n);
    std::vector<int64_t> tmp(n);
    order.resize(n);
    for (int64_t i = 0; i < n; ++i) {
        key[i] = visiting_key(scores[i]);
        order[i] = i;
    }
    for (int shift = 0; shift < int(8 * sizeof(U)); shift += 8) {
        int64_t count[257] = {0};
        for (int64_t i = 0; i < n; ++i) ++count[((key[i] >> shift) & 0xff) + 1];
        if (std::any_of(count + 1, count + 257, [n](int64_t c) { return c == n; })) continue;
        for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
        for (int64_t i = 0; i < n; ++i) {
            const int64_t at = count[(key[i] >> shift) & 0xff]++;
            key_tmp[at] = key[i];
            tmp[at] = order[i];
        }
        key.swap(key_tmp);
        order.swap(tmp);
    }
}

// ------------------------------------------------------------------------------------------
// Suppression

// Candidate boxes in visiting order, as a structure of arrays so that a sweep loads one vector
// of each coordinate. `rank` is the candidate's position in the visiting order.
template <class T>
struct Candidates {
    using Int = typename Simd<T>::Int;
    std::vector<T> x1, y1, x2, y2, area;
    std::vector<Int> rank;

    void fill(const T* boxes, const int64_t* order, const int64_t* ranks, int64_t n) {
        for (auto* v : {&x1, &y1, &x2, &y2, &area}) v->resize(n);
        rank.resize(n);
        for (int64_t k = 0; k < n; ++k) {
            const T* b = boxes + 4 * order[ranks[k]];
            x1[k] = b[0], y1[k] = b[1], x2[k] = b[2], y2[k] = b[3];
            area[k] = box_area(b[0], b[1], b[2], b[3]);
            rank[k] = Int(ranks[k]);
        }
    }

    void move(int64_t from, int64_t to) {
        x1[to] = x1[from], y1[to] = y1[from], x2[to] = x2[from], y2[to] = y2[from];
        area[to] = area[from], rank[to] = rank[from];
    }
};

// Compacts the candidates [from, end) that survive box k (IoU <= thr) to [from, from + kept)
// and returns kept: scalar version (tails, and ISAs without a compress instruction).
template <class T>
static int64_t sweep_scalar(Candidates<T>& c, int64_t k, int64_t from, int64_t end, T thr) {
    int64_t w = from;
    for (int64_t j = from; j < end; ++j) {
        const T iou = iou_of(c.x1[k], c.y1[k], c.x2[k], c.y2[k], c.area[k], c.x1[j], c.y1[j],
                             c.x2[j], c.y2[j], c.area[j]);
        c.move(j, w);  // branch-free: always write, advance only for survivors
        w += !(iou > thr);
    }
    return w - from;
}

#if PYCONV_ISA_LEVEL >= 2
// Writes the lanes selected by m to p[0, popcount(m)) -- and garbage after them, up to a full
// vector: callers guarantee the full vector lies in memory they may overwrite. (Compressing
// in a register and storing the whole vector avoids the memory form of vcompress, which is
// microcoded and very slow on some CPUs, e.g. AMD Zen 4.)
static inline void compress_store(float* p, __mmask16 m, Simd<float>::V v) {
    _mm512_storeu_ps(p, _mm512_maskz_compress_ps(m, __m512(v)));
}
static inline void compress_store(double* p, __mmask8 m, Simd<double>::V v) {
    _mm512_storeu_pd(p, _mm512_maskz_compress_pd(m, __m512d(v)));
}
static inline void compress_store(int32_t* p, __mmask16 m, Simd<float>::I v) {
    _mm512_storeu_si512(p, _mm512_maskz_compress_epi32(m, __m512i(v)));
}
static inline void compress_store(int64_t* p, __mmask8 m, Simd<double>::I v) {
    _mm512_storeu_si512(p, _mm512_maskz_compress_epi64(m, __m512i(v)));
}
// Lanes where !(iou > thr): a NaN IoU (from NaN coordinates) suppresses nothing.
static inline __mmask16 survivors(Simd<float>::V iou, Simd<float>::V thr) {
    return _mm512_cmp_ps_mask(__m512(iou), __m512(thr), _CMP_NGT_UQ);
}
static inline __mmask8 survivors(Simd<double>::V iou, Simd<double>::V thr) {
    return _mm512_cmp_pd_mask(__m512d(iou), __m512d(thr), _CMP_NGT_UQ);
}

// AVX-512 sweep: IoU of a vector of candidates, then one compress-store per array writes the
// survivors contiguously. In place is safe: the write position w never passes the read
// position j, so the full-vector store at w ends before j + lanes, inside the vector just read.
template <class T>
static int64_t sweep(Candidates<T>& c, int64_t k, int64_t from, int64_t end, T thr) {
    using S = Simd<T>;
    using V = typename S::V;
    using I = typename S::I;
    using Mask = decltype(survivors(V{}, V{}));
    const V kx1 = S::splat(c.x1[k]), ky1 = S::splat(c.y1[k]), kx2 = S::splat(c.x2[k]),
            ky2 = S::splat(c.y2[k]), karea = S::splat(c.area[k]), vthr = S::splat(thr),
            zero = S::splat(T(0));
    int64_t w = from, j = from;
    for (; j + S::lanes <= end; j += S::lanes) {
        const V x1 = S::load(&c.x1[j]), y1 = S::load(&c.y1[j]), x2 = S::load(&c.x2[j]),
                y2 = S::load(&c.y2[j]), area = S::load(&c.area[j]);
        I rank;
        std::memcpy(&rank, &c.rank[j], sizeof rank);
        const V iw = clamp0_nan(min_nan(x2, kx2) - max_nan(x1, kx1), zero);
        const V ih = clamp0_nan(min_nan(y2, ky2) - max_nan(y1, ky1), zero);
        const V inter = iw * ih;
        const V uni = karea + area - inter;
        const V iou = uni == zero ? zero : inter / uni;
        const Mask m = survivors(iou, vthr);
        compress_store(&c.x1[w], m, x1);
        compress_store(&c.y1[w], m, y1);
        compress_store(&c.x2[w], m, x2);
        compress_store(&c.y2[w], m, y2);
        compress_store(&c.area[w], m, area);
        compress_store(&c.rank[w], m, rank);
        w += __builtin_popcount(unsigned(m));
    }
    // Tail: shift the last few candidates down to w first, then sweep them in place.
    for (int64_t t = j; t < end; ++t) c.move(t, w + (t - j));
    return (w - from) + sweep_scalar(c, k, w, w + (end - j), thr);
}
#else
template <class T>
static int64_t sweep(Candidates<T>& c, int64_t k, int64_t from, int64_t end, T thr) {
    return sweep_scalar(c, k, from, end, thr);
}
#endif

// Greedy suppression over c[0, n): sets kept[rank] = 1 for every kept candidate.
template <class T>
static void suppress(Candidates<T>& c, int64_t n, T thr, uint8_t* kept) {
    for (int64_t head = 0, end = n; head < end; ++head) {
        kept[c.rank[head]] = 1;
        end = head + 1 + sweep(c, head, head + 1, end, thr);
    }
}

// Ranks (positions in the visiting order) grouped by category, each group in visiting order;
// groups[g] .. groups[g+1] delimit group g in `ranks`.
static void group_by_category(const int64_t* category, const std::vector<int64_t>& order,
                              std::vector<int64_t>& ranks, std::vector<int64_t>& groups) {
    const int64_t n = int64_t(order.size());
    ranks.resize(n);
    std::iota(ranks.begin(), ranks.end(), int64_t(0));
    std::stable_sort(ranks.begin(), ranks.end(), [&](int64_t a, int64_t b) {
        return category[order[a]] < category[order[b]];
    });
    groups.assign(1, 0);
    for (int64_t k = 1; k < n; ++k)
        if (category[order[ranks[k]]] != category[order[ranks[k - 1]]]) groups.push_back(k);
    groups.push_back(n);
}

template <class T>
int64_t nms(const T* boxes, const T* scores, const int64_t* category, int64_t n,
            double iou_threshold, int64_t* keep) {
    if (n == 0) return 0;
    std::vector<int64_t> order, ranks, groups;
    visiting_order(scores, n, order);
    if (category) {
        group_by_category(category, order, ranks, groups);
    } else {
        ranks.resize(n);
        std::iota(ranks.begin(), ranks.end(), int64_t(0));
        groups = {0, n};
    }
    const T thr = floor_to<T>(iou_threshold);
    std::vector<uint8_t> kept(n, 0);
    const int64_t n_groups = int64_t(groups.size()) - 1;
    const int threads = threads_if(n_groups > 1);
    auto lists = std::vector<Candidates<T>>(static_cast<size_t>(threads));  // one scratch list per thread, reused across its groups
    auto failures = std::vector<std::exception_ptr>(static_cast<size_t>(n_groups));  // a failed allocation, rethrown after the tasks
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_tasks(n_groups, threads, [&](int64_t gi, int worker) {
        try {
            const int64_t lo = groups[gi], size = groups[gi + 1] - lo;
            Candidates<T>& c = lists[size_t(worker)];
            c.fill(boxes, order.data(), ranks.data() + lo, size);
            suppress(c, size, thr, kept.data());
        } catch (...) {
            failures[size_t(gi)] = std::current_exception();
        }
    });
    for (const std::exception_ptr& failure : failures)
        if (failure) std::rethrow_exception(failure);
    int64_t count = 0;
    for (int64_t r = 0; r < n; ++r)
        if (kept[r]) keep[count++] = order[r];
    return count;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
