// IoU and greedy non-maximum suppression of rotated boxes (cx, cy, w, h, angle in degrees).
//
// Semantics (the reference backend's, step for step, in double whatever T is):
// - the angle is reduced to quarter turns plus a remainder of at most 45 degrees, so that
//   multiples of 90 degrees give exact sines and cosines; the width runs along (cos, -sin) and
//   the height along (sin, cos) (counter-clockwise as seen on an image, y pointing down);
// - a box with a NaN or infinite value has NaN IoU with every box; otherwise a box with
//   w <= 0 or h <= 0 is empty and has IoU 0;
// - boxes whose circumscribed circles are apart have IoU 0 without further work; otherwise the
//   rectangle of the first box (in coordinates centred on it, for precision) is clipped by the
//   four edges of the second (Sutherland-Hodgman) and the clipped polygon's shoelace area,
//   clamped to [0, min(area1, area2)], is the intersection;
// - the IoU is rounded to T; greedy NMS compares it exactly with the threshold (a NaN IoU
//   suppresses nothing) and visits boxes as nms.h does (decreasing score, ties by index).
//
// NMS: the boxes are prepared once (corners, area, radius) in visiting order; each kept box
// sweeps the remaining candidates and compacts the survivors, as nms.h does. Most pairs of a
// detector's output are far apart, so the sweep is mostly the circle test on a structure of
// arrays; the polygon clip runs only for the pairs whose circles meet.
#pragma once

#include "common/prelude.h"
#include "common/denormals.h"
#include "nms/nms.h"

namespace pyconv {
namespace PYCONV_ISA {

// A rotated box, ready for pairwise tests: corners relative to its centre, counter-clockwise.
struct RotatedBox {
    double cx, cy, area, radius;
    double kx[4], ky[4];
    bool finite, empty;
};

template <class T>
static inline RotatedBox prepare_rotated(const T* b) {
    RotatedBox r;
    const double cx = b[0], cy = b[1], w = b[2], h = b[3], angle = b[4];
    r.cx = cx, r.cy = cy;
    r.finite = std::isfinite(cx) && std::isfinite(cy) && std::isfinite(w) && std::isfinite(h) &&
               std::isfinite(angle);
    r.empty = !(w > 0 && h > 0);
    r.area = w * h;
    r.radius = 0.5 * std::sqrt(w * w + h * h);
    double c = 1, s = 0;
    if (r.finite) {
        const double a = std::fmod(angle, 360.0);
        const double q = std::floor(a / 90.0 + 0.5);
        const double t = (a - 90.0 * q) * (M_PI / 180.0);
        const double c0 = std::cos(t), s0 = std::sin(t);
        switch (((int(q) % 4) + 4) % 4) {
            case 0: c = c0, s = s0; break;
            case 1: c = -s0, s = c0; break;
            case 2: c = -c0, s = -s0; break;
            default: c = s0, s = -c0; break;
        }
    }
    const double hw = 0.5 * w, hh = 0.5 * h;
    const double ux = c * hw, uy = -s * hw, vx = s * hh, vy = c * hh;
    r.kx[0] = -ux - vx, r.ky[0] = -uy - vy;
    r.kx[1] = ux - vx, r.ky[1] = uy - vy;
    r.kx[2] = ux + vx, r.ky[2] = uy + vy;
    r.kx[3] = -ux + vx, r.ky[3] = -uy + vy;
    return r;
}

// Exact clipping of a quadrilateral by four half-planes leaves at most 8 vertices. Rounding can
// give a sliver lying along a clipping line alternating signs, and so more crossings: as every
// backend does, only the first 8 are kept (a sliver's area is within rounding of 0 anyway).
constexpr int max_polygon_vertices = 8;

// Clips the convex polygon (x, y)[0, n) to the left of (or on) the line a -> b into (ox, oy);
// returns the new vertex count.
static inline int clip_polygon(const double* x, const double* y, int n, double ax, double ay,
                               double bx, double by, double* ox, double* oy) {
    const double ex = bx - ax, ey = by - ay;
    double side[max_polygon_vertices];
    for (int k = 0; k < n; ++k) side[k] = ex * (y[k] - ay) - ey * (x[k] - ax);
    int m = 0;
    for (int k = 0; k < n && m < max_polygon_vertices; ++k) {
        const int k1 = k + 1 == n ? 0 : k + 1;
        const double sc = side[k], sn = side[k1];
        if (sc >= 0) ox[m] = x[k], oy[m] = y[k], ++m;
        if (m < max_polygon_vertices && ((sc > 0 && sn < 0) || (sc < 0 && sn > 0))) {
            const double t = sc / (sc - sn);
            ox[m] = x[k] + t * (x[k1] - x[k]);
            oy[m] = y[k] + t * (y[k1] - y[k]);
            ++m;
        }
    }
    return m;
}

// Intersection area of a and b, given that both are finite and non-empty.
static inline double rotated_intersection(const RotatedBox& a, const RotatedBox& b, double dx,
                                          double dy) {
    double px[max_polygon_vertices], py[max_polygon_vertices], qx[max_polygon_vertices],
        qy[max_polygon_vertices];
    int n = 4;
    for (int k = 0; k < 4; ++k) px[k] = a.kx[k], py[k] = a.ky[k];
    for (int k = 0; k < 4 && n > 0; ++k) {
        const int k1 = (k + 1) & 3;
        n = clip_polygon(px, py, n, dx + b.kx[k], dy + b.ky[k], dx + b.kx[k1], dy + b.ky[k1],
                         qx, qy);
        std::swap_ranges(qx, qx + n, px);
        std::swap_ranges(qy, qy + n, py);
    }
    double twice = 0;
    for (int k = 0; k < n; ++k) {
        const int k1 = k + 1 == n ? 0 : k + 1;
        twice += px[k] * py[k1] - px[k1] * py[k];
    }
    return std::min(std::min(std::max(0.5 * twice, 0.0), a.area), b.area);
}

static inline double rotated_iou(const RotatedBox& a, const RotatedBox& b) {
    if (!a.finite || !b.finite) return std::numeric_limits<double>::quiet_NaN();
    if (a.empty || b.empty) return 0;
    const double dx = b.cx - a.cx, dy = b.cy - a.cy, reach = a.radius + b.radius;
    if (dx * dx + dy * dy > reach * reach) return 0;
    const double inter = rotated_intersection(a, b, dx, dy);
    const double uni = a.area + b.area - inter;
    return uni <= 0 ? 0 : inter / uni;
}

template <class T>
void box_iou_rotated(const T* a, int64_t n, const T* b, int64_t m, T* iou) {
    std::vector<RotatedBox> pb(m);
    for (int64_t j = 0; j < m; ++j) pb[j] = prepare_rotated(b + 5 * j);
    FlushDenormals ftz;  // for the caller and the pool's workers (common/thread_pool.h)
    parallel_ranges(n, (n + 3) / 4, num_threads(), [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) {
            const RotatedBox pa = prepare_rotated(a + 5 * i);
            T* row = iou + i * m;
            for (int64_t j = 0; j < m; ++j) row[j] = T(rotated_iou(pa, pb[j]));
        }
    });
}

template <class T>
int64_t nms_rotated(const T* boxes, const T* scores, int64_t n, double iou_threshold,
                    int64_t* keep) {
    if (n == 0) return 0;
    std::vector<int64_t> order;
    visiting_order(scores, n, order);
    const T thr = floor_to<T>(iou_threshold);
    // box[r]: the prepared box of rank r (position in the visiting order). The candidates
    // still alive are a list of ranks with the circle test's operands beside them (a structure
    // of arrays), compacted as boxes are suppressed; the prepared boxes themselves stay put.
    std::vector<RotatedBox> box(n);
    std::vector<double> cx(n), cy(n), radius(n);
    std::vector<int64_t> rank(n);
    for (int64_t r = 0; r < n; ++r) {
        box[r] = prepare_rotated(boxes + 5 * order[r]);
        cx[r] = box[r].cx, cy[r] = box[r].cy, radius[r] = box[r].radius;
        rank[r] = r;
    }
    // With a threshold >= 0, an IoU of 0 (circles apart, an empty box) or NaN (a box that is
    // not finite) suppresses nothing, so those pairs need no clipping and such a kept box no
    // sweep; a negative threshold is passed by IoU 0 too, so then every pair is computed.
    const bool zero_passes = thr >= T(0);
    std::vector<uint8_t> kept(n, 0);
    FlushDenormals ftz;
    for (int64_t head = 0, end = n; head < end; ++head) {
        const RotatedBox& k = box[rank[head]];
        kept[rank[head]] = 1;
        if (zero_passes && (!k.finite || k.empty)) continue;
        int64_t w = head + 1;
        for (int64_t j = head + 1; j < end; ++j) {
            const double dx = cx[j] - k.cx, dy = cy[j] - k.cy, reach = k.radius + radius[j];
            const bool survives = (zero_passes && dx * dx + dy * dy > reach * reach) ||
                                  !(T(rotated_iou(k, box[rank[j]])) > thr);
            if (survives) {
                cx[w] = cx[j], cy[w] = cy[j], radius[w] = radius[j], rank[w] = rank[j];
                ++w;
            }
        }
        end = w;
    }
    int64_t count = 0;
    for (int64_t r = 0; r < n; ++r)
        if (kept[r]) keep[count++] = order[r];
    return count;
}

}  // namespace PYCONV_ISA
}  // namespace pyconv
