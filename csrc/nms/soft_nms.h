// Soft-NMS (Bodla et al. 2017): repeatedly pick the box of highest current score (equal
// scores: the lower index), decay every other box's score by its IoU with it -- by
// exp(-iou^2 / sigma) (gaussian) or by 1 - iou where iou > threshold (linear) -- and drop the
// boxes whose score is no longer >= score_threshold (NaN included). A NaN IoU decays nothing.
//
// Algorithm. A decay changes a score only where the IoU is > 0, and on detector output a box
// overlaps few others, so each pick sweeps the live boxes with a vectorised IoU and handles
// only the lanes that overlap, one at a time. The next pick comes from a heap of (score,
// index) entries: a decayed box gets a new entry and its old ones are discarded when they
// surface (their score is no longer the box's). The live list is compacted when half of it is
// dead. Work: (picks x live boxes) vector IoUs, plus a heap operation per decay.
#pragma once

#include <queue>

#include "common/prelude.h"
#include "common/denormals.h"
#include "common/simd.h"
#include "nms/nms.h"

namespace pyconv {
namespace PYCONV_ISA {

template <class T>
struct SoftNmsEntry {
    T score;
    int64_t index;
    // Heap order: the top is the highest score, and among equal scores the lowest index.
    bool operator<(const SoftNmsEntry& o) const {
        return score < o.score || (score == o.score && index > o.index);
    }
};

// Keeps the boxes of `list` [0, n) that are live, in order; returns how many.
template <class T>
static int64_t compact_live(Candidates<T>& c, int64_t n, const std::vector<uint8_t>& live) {
    int64_t w = 0;
    for (int64_t j = 0; j < n; ++j)
        if (live[c.rank[j]]) c.move(j, w++);
    return w;
}

template <class T>
int64_t soft_nms(const T* boxes, const T* scores, int64_t n, double sigma, double iou_threshold,
                 double score_threshold, bool gaussian, int64_t* keep, T* kept_scores) {
    using S = Simd<T>;
    using V = typename S::V;
    FlushDenormals ftz;
    std::vector<T> current(scores, scores + n);
    std::vector<uint8_t> live(n, 0);
    std::vector<int64_t> alive_ids;
    std::priority_queue<SoftNmsEntry<T>> heap;
    for (int64_t i = 0; i < n; ++i)
        if (double(scores[i]) >= score_threshold) {
            live[i] = 1;
            alive_ids.push_back(i);
            heap.push({scores[i], i});
        }
    // The candidate list holds box indices in `rank` (the identity order: index order).
    Candidates<T> c;
    std::vector<int64_t> identity(n);
    std::iota(identity.begin(), identity.end(), int64_t(0));
    int64_t len = int64_t(alive_ids.size()), dead = 0;
    c.fill(boxes, identity.data(), alive_ids.data(), len);
    // Padding so that the last vector of the sweep may read past the list.
    for (auto* v : {&c.x1, &c.y1, &c.x2, &c.y2, &c.area}) v->resize(len + S::lanes, T(0));
    // Only an IoU above both 0 and the threshold changes a score (a linear decay of an IoU of 0
    // multiplies by 1); NaN is above nothing.
    const T lower = gaussian ? T(0) : std::max(floor_to<T>(iou_threshold), T(0));
    const T sig = T(sigma), zero = T(0);
    int64_t count = 0;
    while (!heap.empty()) {
        const SoftNmsEntry<T> top = heap.top();
        heap.pop();
        const int64_t k = top.index;
        if (!live[k] || !(top.score == current[k])) continue;  // a stale entry
        keep[count] = k;
        kept_scores[count++] = current[k];
        live[k] = 0;
        ++dead;
        const T* b = boxes + 4 * k;
        const T kx1 = b[0], ky1 = b[1], kx2 = b[2], ky2 = b[3], karea = box_area(kx1, ky1, kx2, ky2);
        const V vx1 = S::splat(kx1), vy1 = S::splat(ky1), vx2 = S::splat(kx2), vy2 = S::splat(ky2),
                varea = S::splat(karea), vlower = S::splat(lower), vzero = S::splat(zero);
        for (int64_t j0 = 0; j0 < len; j0 += S::lanes) {
            const V x1 = S::load(&c.x1[j0]), y1 = S::load(&c.y1[j0]), x2 = S::load(&c.x2[j0]),
                    y2 = S::load(&c.y2[j0]), area = S::load(&c.area[j0]);
            const V iw = clamp0_nan(min_nan(vx2, x2) - max_nan(vx1, x1), vzero);
            const V ih = clamp0_nan(min_nan(vy2, y2) - max_nan(vy1, y1), vzero);
            const V inter = iw * ih;
            const V uni = varea + area - inter;
            const V iou = uni == vzero ? vzero : inter / uni;
            const auto hit = iou > vlower;
            bool any = false;
            for (int l = 0; l < S::lanes; ++l) any |= hit[l] != 0;
            if (!any) continue;
            for (int l = 0; l < S::lanes && j0 + l < len; ++l) {
                const int64_t i = c.rank[j0 + l];
                if (!hit[l] || !live[i]) continue;
                const T o = iou[l];
                const T w = gaussian ? T(std::exp(-(o * o) / sig)) : T(1) - o;
                const T s = current[i] * w;
                if (s == current[i]) continue;
                current[i] = s;
                if (double(s) >= score_threshold) {
                    heap.push({s, i});
                } else {
                    live[i] = 0;
                    ++dead;
                }
            }
        }
        if (2 * dead > len) {
            len = compact_live(c, len, live);
            dead = 0;
        }
    }
    return count;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
