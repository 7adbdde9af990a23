// DIoU-NMS (Zheng et al. 2020): greedy NMS (nms/nms.h's visiting order, ties and NaN rules)
// in which a box is dropped when its distance-IoU with a kept box, IoU - d^2 / c^2, is >
// the threshold; d is the distance between the centres, c the diagonal of the smallest box
// enclosing both, and the penalty is 0 when c is 0. A NaN DIoU suppresses nothing.
//
// Algorithm: as nms, a candidate list in visiting order swept once per kept box, compacting
// the survivors in place. With a threshold >= 0 only intersecting boxes can be suppressed, so
// the sweep first tests blocks of boxes for an intersection (vectorised) and computes DIoUs
// only in the blocks that have one.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/simd.h"
#include "nms/nms.h"

namespace pyconv {
namespace PYCONV_ISA {

// DIoU of box a with box b (areas given), in the formula's order of operations.
template <class T>
static inline T diou_of(T ax1, T ay1, T ax2, T ay2, T aarea, T bx1, T by1, T bx2, T by2, T barea) {
    const T iou = iou_of(ax1, ay1, ax2, ay2, aarea, bx1, by1, bx2, by2, barea);
    const T half = T(0.5);
    const T dx = (ax1 + ax2) * half - (bx1 + bx2) * half;
    const T dy = (ay1 + ay2) * half - (by1 + by2) * half;
    const T cw = max_nan(ax2, bx2) - min_nan(ax1, bx1);
    const T ch = max_nan(ay2, by2) - min_nan(ay1, by1);
    const T d2 = dx * dx + dy * dy;
    const T c2 = cw * cw + ch * ch;
    return iou - (c2 == T(0) ? T(0) : d2 / c2);
}

// Vectors per block of the sweep's overlap test.
constexpr int kDiouBlock = 4;

template <class T>
int64_t diou_nms(const T* boxes, const T* scores, int64_t n, double iou_threshold, int64_t* keep) {
    using S = Simd<T>;
    using V = typename S::V;
    constexpr int64_t block = kDiouBlock * S::lanes;
    if (n == 0) return 0;
    FlushDenormals ftz;
    std::vector<int64_t> order, ranks(n);
    visiting_order(scores, n, order);
    std::iota(ranks.begin(), ranks.end(), int64_t(0));
    Candidates<T> c;
    c.fill(boxes, order.data(), ranks.data(), n);
    for (auto* v : {&c.x1, &c.y1, &c.x2, &c.y2, &c.area}) v->resize(n + block, T(0));
    const T thr = floor_to<T>(iou_threshold);
    // DIoU <= IoU, so with a threshold >= 0 only boxes that intersect the kept one can go:
    // blocks of boxes without an intersection (a vector test) survive whole.
    const bool only_overlaps = thr >= T(0);
    const V zero = S::splat(T(0));
    int64_t count = 0;
    for (int64_t head = 0, end = n; head < end; ++head) {
        keep[count++] = order[c.rank[head]];
        const T hx1 = c.x1[head], hy1 = c.y1[head], hx2 = c.x2[head], hy2 = c.y2[head],
                harea = c.area[head];
        const V vx1 = S::splat(hx1), vy1 = S::splat(hy1), vx2 = S::splat(hx2), vy2 = S::splat(hy2);
        int64_t w = head + 1;
        for (int64_t j0 = head + 1; j0 < end; j0 += block) {
            const int64_t stop = std::min(j0 + block, end);
            if (only_overlaps) {
                auto overlap = zero < zero;
                for (int v = 0; v < kDiouBlock; ++v) {
                    const int64_t j = j0 + v * S::lanes;
                    const V iw = min_nan(vx2, S::load(&c.x2[j])) - max_nan(vx1, S::load(&c.x1[j]));
                    const V ih = min_nan(vy2, S::load(&c.y2[j])) - max_nan(vy1, S::load(&c.y1[j]));
                    overlap |= (iw > zero) & (ih > zero);
                }
                bool any = false;
                for (int l = 0; l < S::lanes; ++l) any |= overlap[l] != 0;
                if (!any) {
                    if (w != j0)
                        for (int64_t j = j0; j < stop; ++j) c.move(j, w + (j - j0));
                    w += stop - j0;
                    continue;
                }
            }
            for (int64_t j = j0; j < stop; ++j) {
                const T d = diou_of(hx1, hy1, hx2, hy2, harea, c.x1[j], c.y1[j], c.x2[j], c.y2[j],
                                    c.area[j]);
                c.move(j, w);  // always write, advance only for survivors
                w += !(d > thr);
            }
        }
        end = w;
    }
    return count;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
