// Soft-NMS (Bodla et al. 2017): repeatedly pick the box of highest current score (equal
// scores: the lower index), decay every other box's score by its IoU with it -- by
// exp(-iou^2 / sigma) (gaussian) or by 1 - iou where iou > threshold (linear) -- and drop the
// boxes whose score is no longer >= score_threshold (NaN included). A NaN IoU decays nothing.
//
// Algorithm. A decay changes a score only where the IoU is > 0, and on detector output a box
// overlaps few others. So the live boxes are kept sorted by x1, and each pick computes IoUs
// only for the stretch of them whose x1 lets them intersect it (sweep and prune, along x).
// The next pick is the root of a tournament tree over the scores; a decay walks up from the
// box's leaf and stops where the box was not the winner. The sorted list is compacted when
// half of it is dead. Work: one sort, (picks x boxes in a stretch) intersection tests, and an
// IoU and at most log2 n tree steps per decay.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "nms/nms.h"

namespace pyconv {
namespace PYCONV_ISA {

// The boxes a pick may decay: finite and not empty (a box with a non-finite coordinate has an
// IoU of 0 or NaN with every box, an empty one an IoU of 0), sorted by x1. A box intersects
// box k only if its x1 lies in [k.x1 - width, k.x2), width being its own width, at most
// `max_width`: each pick sweeps that stretch of the list only.
template <class T>
struct SortedBoxes {
    std::vector<T> x1, y1, x2, y2, area;
    std::vector<int64_t> id;
    double max_width = 0;

    static bool decayable(const T* b) {
        return std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) &&
               std::isfinite(b[3]) && b[2] > b[0] && b[3] > b[1];
    }

    void fill(const T* boxes, const std::vector<int64_t>& ids) {
        for (int64_t i : ids)
            if (decayable(boxes + 4 * i)) id.push_back(i);
        std::stable_sort(id.begin(), id.end(),
                         [boxes](int64_t a, int64_t b) { return boxes[4 * a] < boxes[4 * b]; });
        for (auto* v : {&x1, &y1, &x2, &y2, &area}) v->resize(id.size());
        for (size_t j = 0; j < id.size(); ++j) {
            const T* b = boxes + 4 * id[j];
            x1[j] = b[0], y1[j] = b[1], x2[j] = b[2], y2[j] = b[3];
            area[j] = box_area(b[0], b[1], b[2], b[3]);
            max_width = std::max(max_width, double(b[2]) - double(b[0]));
        }
    }

    // [lo, hi): the boxes that may intersect (bx1, bx2): x1 in [bx1 - max_width, bx2), less a
    // margin far above the rounding of the widths and of that difference.
    std::pair<int64_t, int64_t> stretch(T bx1, T bx2) const {
        const double from = double(bx1) - max_width * (1 + 1e-4) - std::abs(double(bx1)) * 1e-12;
        const auto lo = std::lower_bound(x1.begin(), x1.end(), from,
                                         [](T v, double t) { return double(v) < t; });
        const auto hi = std::lower_bound(lo, x1.end(), bx2);
        return {lo - x1.begin(), hi - x1.begin()};
    }

    // Keeps the entries whose box is live, in order.
    void compact(const std::vector<uint8_t>& live) {
        size_t w = 0;
        for (size_t j = 0; j < id.size(); ++j)
            if (live[id[j]]) {
                x1[w] = x1[j], y1[w] = y1[j], x2[w] = x2[j], y2[w] = y2[j], area[w] = area[j];
                id[w++] = id[j];
            }
        for (auto* v : {&x1, &y1, &x2, &y2, &area}) v->resize(w);
        id.resize(w);
    }
};

// The next pick: a tournament tree over the boxes whose every node holds the better of its two
// children -- the live box of higher current score, of lower index among equal scores -- so
// the root is the pick, and a changed or dropped box costs at most one walk from its leaf to
// the root.
template <class T>
struct PickTree {
    const std::vector<T>& score;
    const std::vector<uint8_t>& live;
    int64_t size = 1;
    std::vector<int64_t> node;  // a box index, or -1 for none

    PickTree(const std::vector<T>& s, const std::vector<uint8_t>& l) : score(s), live(l) {
        const int64_t n = int64_t(s.size());
        while (size < n) size *= 2;
        node.assign(2 * size, -1);
        for (int64_t i = 0; i < n; ++i) node[size + i] = l[i] ? i : -1;
        for (int64_t p = size - 1; p >= 1; --p) node[p] = better(node[2 * p], node[2 * p + 1]);
    }

    int64_t better(int64_t a, int64_t b) const {
        if (a < 0) return b;
        if (b < 0) return a;
        return score[b] > score[a] || (score[b] == score[a] && b < a) ? b : a;
    }

    // After box i's score or liveness changed. A box that got worse (a lower score, or dead)
    // changes only the nodes it won, which lie on a path up from its leaf: the walk stops at the
    // first node that another box won.
    void update(int64_t i, bool worse) {
        int64_t p = size + i;
        node[p] = live[i] ? i : -1;
        for (p /= 2; p >= 1; p /= 2) {
            if (worse && node[p] != i) break;
            node[p] = better(node[2 * p], node[2 * p + 1]);
        }
    }

    int64_t top() const { return node[1]; }
};

template <class T>
int64_t soft_nms(const T* boxes, const T* scores, int64_t n, double sigma, double iou_threshold,
                 double score_threshold, bool gaussian, int64_t* keep, T* kept_scores) {
    FlushDenormals ftz;
    std::vector<T> current(scores, scores + n);
    std::vector<uint8_t> live(n, 0);
    std::vector<int64_t> alive_ids;
    for (int64_t i = 0; i < n; ++i)
        if (double(scores[i]) >= score_threshold) {
            live[i] = 1;
            alive_ids.push_back(i);
        }
    PickTree<T> picks(current, live);
    SortedBoxes<T> list;
    list.fill(boxes, alive_ids);
    int64_t dead = 0;
    // Only an IoU above both 0 and the threshold changes a score (a linear decay of an IoU of 0
    // multiplies by 1); NaN is above nothing.
    const T lower = gaussian ? T(0) : std::max(floor_to<T>(iou_threshold), T(0));
    const T sig = T(sigma);
    int64_t count = 0;
    for (int64_t k = picks.top(); k >= 0; k = picks.top()) {
        keep[count] = k;
        kept_scores[count++] = current[k];
        live[k] = 0;
        picks.update(k, true);
        ++dead;
        const T* b = boxes + 4 * k;
        if (!SortedBoxes<T>::decayable(b)) continue;  // it decays nothing
        const T karea = box_area(b[0], b[1], b[2], b[3]);
        const auto [lo, hi] = list.stretch(b[0], b[2]);
        for (int64_t j = lo; j < hi; ++j) {
            const int64_t i = list.id[j];
            if (!live[i]) continue;
            // An IoU > lower >= 0 needs a width and a height > 0 (as iou_of computes them):
            // test that first, without a division.
            const T iw = min_nan(b[2], list.x2[j]) - max_nan(b[0], list.x1[j]);
            const T ih = min_nan(b[3], list.y2[j]) - max_nan(b[1], list.y1[j]);
            if (!(iw > T(0) && ih > T(0))) continue;
            const T o = iou_of(b[0], b[1], b[2], b[3], karea, list.x1[j], list.y1[j], list.x2[j],
                               list.y2[j], list.area[j]);
            if (!(o > lower)) continue;
            const T w = gaussian ? T(std::exp(-(o * o) / sig)) : T(1) - o;
            const T s = current[i] * w;
            if (s == current[i]) continue;
            const bool worse = s < current[i];  // a negative score decays upwards
            current[i] = s;
            if (!(double(s) >= score_threshold)) {
                live[i] = 0;
                ++dead;
            }
            picks.update(i, worse || !live[i]);
        }
        if (2 * dead > int64_t(list.id.size())) {
            list.compact(live);
            dead = 0;
        }
    }
    return count;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
