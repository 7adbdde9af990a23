// Matrix NMS (SOLOv2, Wang et al. 2020) on boxes: within each label, boxes ranked by
// decreasing score (nms/nms.h's visiting order); comp_i = the largest IoU of box i with a box
// ranked before it (0 for none); box j's decay = min(1, min over boxes i ranked before it of
// f(iou_ij) / f(comp_i)), with f(x) = exp(-sigma x^2) (gaussian) or 1 - x (linear, leaving out
// the terms with comp_i == 1); out_j = score_j * decay_j. Max and min propagate NaN.
//
// Algorithm: two passes over the pairs i < j of each label, each parallel over j and
// vectorised over i (structure of arrays in ranked order): the first computes comp, the
// second the decay. The gaussian ratio is exp(-sigma (iou_ij^2 - comp_i^2)), and exp is
// increasing, so its minimum is exp(-sigma * max(0, max_i (iou_ij^2 - comp_i^2))): one exp
// per box, none per pair.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/simd.h"
#include "nms/nms.h"

namespace pyconv {
namespace PYCONV_ISA {

// What a pass reduces over the boxes i ranked before box j.
enum class MatrixPass {
    comp,      // max of iou_ij                                   (from 0)
    gaussian,  // max of iou_ij^2 - comp_i^2                      (from 0)
    linear,    // min of (1 - iou_ij) / (1 - comp_i), comp_i != 1 (from 1)
};

template <MatrixPass P, class V>
static inline V pair_value(V iou, V comp_i, V one) {
    if constexpr (P == MatrixPass::comp) return iou;
    else if constexpr (P == MatrixPass::gaussian) return iou * iou - comp_i * comp_i;
    else return comp_i == one ? one : (one - iou) / (one - comp_i);
}

template <MatrixPass P, class V>
static inline V reduce_values(V acc, V v) {
    if constexpr (P == MatrixPass::linear) return min_nan(acc, v);
    else return max_nan(acc, v);
}

// The reduction of pass P over i in [lo, j): vectors of boxes i against box j, then the tail.
// comp must hold S::lanes readable entries past every i it is read at.
template <MatrixPass P, class T>
static T reduce_pairs(const Candidates<T>& c, const T* comp, int64_t lo, int64_t j) {
    using S = Simd<T>;
    using V = typename S::V;
    const T init = P == MatrixPass::linear ? T(1) : T(0);
    const V bx1 = S::splat(c.x1[j]), by1 = S::splat(c.y1[j]), bx2 = S::splat(c.x2[j]),
            by2 = S::splat(c.y2[j]), barea = S::splat(c.area[j]), zero = S::splat(T(0)),
            one = S::splat(T(1));
    V acc = S::splat(init);
    int64_t i = lo;
    for (; i + S::lanes <= j; i += S::lanes) {
        const V x1 = S::load(&c.x1[i]), y1 = S::load(&c.y1[i]), x2 = S::load(&c.x2[i]),
                y2 = S::load(&c.y2[i]), area = S::load(&c.area[i]);
        const V iw = clamp0_nan(min_nan(x2, bx2) - max_nan(x1, bx1), zero);
        const V ih = clamp0_nan(min_nan(y2, by2) - max_nan(y1, by1), zero);
        const V inter = iw * ih;
        const V uni = area + barea - inter;
        const V iou = uni == zero ? zero : inter / uni;
        acc = reduce_values<P>(acc, pair_value<P>(iou, S::load(comp + i), one));
    }
    T r = init;
    for (int l = 0; l < S::lanes; ++l) r = reduce_values<P>(r, T(acc[l]));
    for (; i < j; ++i) {
        const T iou = iou_of(c.x1[i], c.y1[i], c.x2[i], c.y2[i], c.area[i], c.x1[j], c.y1[j],
                             c.x2[j], c.y2[j], c.area[j]);
        r = reduce_values<P>(r, pair_value<P>(iou, comp[i], T(1)));
    }
    return r;
}

template <class T>
void matrix_nms(const T* boxes, const T* scores, const int64_t* labels, int64_t n, bool gaussian,
                double sigma, T* out) {
    using S = Simd<T>;
    if (n == 0) return;
    std::vector<int64_t> order, ranks, groups;
    visiting_order(scores, n, order);
    group_by_category(labels, order, ranks, groups);
    Candidates<T> c;
    c.fill(boxes, order.data(), ranks.data(), n);
    std::vector<T> comp(n + S::lanes, T(0));
    std::vector<int64_t> group_start(n);
    for (size_t g = 0; g + 1 < groups.size(); ++g)
        for (int64_t j = groups[g]; j < groups[g + 1]; ++j) group_start[j] = groups[g];
    const T neg_sigma = -T(sigma);
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    const int64_t chunks = (n + 15) / 16;
    parallel_ranges(n, chunks, num_threads(), [&](int64_t begin, int64_t end, int) {
        for (int64_t j = begin; j < end; ++j)
            comp[j] = reduce_pairs<MatrixPass::comp>(c, comp.data(), group_start[j], j);
    });
    // The second pass reads comp of every box.
    parallel_ranges(n, chunks, num_threads(), [&](int64_t begin, int64_t end, int) {
        for (int64_t j = begin; j < end; ++j) {
            const T decay =
                gaussian ? T(std::exp(neg_sigma * reduce_pairs<MatrixPass::gaussian>(
                                                      c, comp.data(), group_start[j], j)))
                         : reduce_pairs<MatrixPass::linear>(c, comp.data(), group_start[j], j);
            const int64_t box = order[c.rank[j]];
            out[box] = scores[box] * decay;
        }
    });
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
