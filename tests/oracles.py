"""Plain-loop oracles the tests compare kernels with: box IoU and greedy NMS, written as directly
as their definitions so that they are easy to trust.

The arithmetic happens in the dtype of the boxes passed in (NumPy scalars keep it): pass
float64 boxes for an exact oracle, or the kernel's float32 boxes to round as the kernel does.
"""
import math
from fractions import Fraction

import numpy as np


def box_area(box):
    """Width x height, an empty box (x2 < x1 or y2 < y1) having area 0."""
    zero = box.dtype.type(0)
    return max(zero, box[2] - box[0]) * max(zero, box[3] - box[1])


def iou(a, b):
    """Intersection over union of two boxes (x1, y1, x2, y2); an empty union gives 0."""
    zero = a.dtype.type(0)
    w = max(zero, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(zero, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else zero


def iou_matrix(a, b):
    """iou of every box of `a` with every box of `b`, shape (len(a), len(b))."""
    return np.array([[iou(p, q) for q in b] for p in a], a.dtype).reshape(len(a), len(b))


def score_order(scores):
    """Indices by decreasing score; equal scores by increasing index; NaN scores last."""
    return sorted(range(len(scores)),
                  key=lambda i: (bool(np.isnan(scores[i])), -np.nan_to_num(scores[i]), i))


def nms(boxes, scores, threshold, categories=None):
    """Greedy NMS: visit the boxes in score_order and keep one unless a kept box of the same
    category overlaps it with IoU > threshold (the IoU in the boxes' dtype, the comparison in
    float64). Returns the kept indices (int64) in that order."""
    same = (lambda i, k: True) if categories is None else (lambda i, k: categories[i] == categories[k])
    keep = []
    for i in score_order(scores):
        if not any(same(i, k) and float(iou(boxes[k], boxes[i])) > threshold for k in keep):
            keep.append(i)
    return np.array(keep, np.int64)


# Rotated boxes (cx, cy, w, h, angle in degrees, counter-clockwise on an image). A different
# algorithm from the backends' polygon clipping, in exact rational arithmetic on the corners:
# the intersection of two convex polygons is the convex hull of the corners of each that lie in
# the other and of the points where their edges cross.


def rotated_corners(box):
    """The corners (as exact Fractions of their float64 values), counter-clockwise: the width
    runs along (cos, -sin) of the angle and the height along (sin, cos)."""
    cx, cy, w, h, angle = (float(v) for v in box)
    t = math.radians(math.fmod(angle, 360.0))
    c, s = math.cos(t), math.sin(t)
    u = (c * w / 2, -s * w / 2)
    v = (s * h / 2, c * h / 2)
    signs = ((-1, -1), (1, -1), (1, 1), (-1, 1))
    return [(Fraction(cx + a * u[0] + b * v[0]), Fraction(cy + a * u[1] + b * v[1])) for a, b in signs]


def _cross(o, p, q):
    return (p[0] - o[0]) * (q[1] - o[1]) - (p[1] - o[1]) * (q[0] - o[0])


def _inside(p, polygon):
    n = len(polygon)
    return all(_cross(polygon[k], polygon[(k + 1) % n], p) >= 0 for k in range(n))


def _edge_crossings(P, Q):
    out = []
    for k in range(len(P)):
        p1, p2 = P[k], P[(k + 1) % len(P)]
        for m in range(len(Q)):
            q1, q2 = Q[m], Q[(m + 1) % len(Q)]
            d = (p2[0] - p1[0]) * (q2[1] - q1[1]) - (p2[1] - p1[1]) * (q2[0] - q1[0])
            if d == 0:  # parallel: an overlap's ends are corners inside the other polygon
                continue
            t = ((q1[0] - p1[0]) * (q2[1] - q1[1]) - (q1[1] - p1[1]) * (q2[0] - q1[0])) / d
            u = ((q1[0] - p1[0]) * (p2[1] - p1[1]) - (q1[1] - p1[1]) * (p2[0] - p1[0])) / d
            if 0 <= t <= 1 and 0 <= u <= 1:
                out.append((p1[0] + t * (p2[0] - p1[0]), p1[1] + t * (p2[1] - p1[1])))
    return out


def _hull_area(points):
    """Area of the convex hull of exact points (Andrew's monotone chain, then the shoelace)."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return Fraction(0)

    def half(seq):
        chain = []
        for p in seq:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = half(pts) + half(pts[::-1])
    return sum(_cross((0, 0), hull[k], hull[(k + 1) % len(hull)]) for k in range(len(hull))) / 2


def rotated_iou(a, b):
    """IoU of two rotated boxes, as a float: NaN if a value is not finite, 0 if a box has w <= 0
    or h <= 0, else exact for the quadrilaterals of the float64 corners of both."""
    if not np.all(np.isfinite(np.concatenate([a, b]).astype(np.float64))):
        return math.nan
    if not (a[2] > 0 and a[3] > 0 and b[2] > 0 and b[3] > 0):
        return 0.0
    P, Q = rotated_corners(a), rotated_corners(b)
    if (max(p[0] for p in P) < min(q[0] for q in Q) or max(q[0] for q in Q) < min(p[0] for p in P)
            or max(p[1] for p in P) < min(q[1] for q in Q) or max(q[1] for q in Q) < min(p[1] for p in P)):
        return 0.0  # the bounding boxes are apart
    points = [p for p in P if _inside(p, Q)] + [q for q in Q if _inside(q, P)] + _edge_crossings(P, Q)
    # Areas of the same float corners, so that identical boxes give exactly 1.
    inter = _hull_area(points)
    union = _hull_area(P) + _hull_area(Q) - inter
    return float(inter / union) if union > 0 else 0.0


def rotated_iou_matrix(a, b=None):
    """rotated_iou of every pair of `a` and `b` (of `a` with itself, computed once per pair,
    when b is None)."""
    if b is not None:
        return np.array([[rotated_iou(p, q) for q in b] for p in a], np.float64).reshape(len(a), len(b))
    out = np.empty((len(a), len(a)))
    for i in range(len(a)):
        for j in range(i, len(a)):
            out[i, j] = out[j, i] = rotated_iou(a[i], a[j])
    return out


def nms_rotated(boxes, scores, threshold, iou=None):
    """Greedy NMS with rotated_iou (or the given matrix of it) rounded to the boxes' dtype and
    compared in float64."""
    if iou is None:
        iou = rotated_iou_matrix(boxes)
    keep = []
    for i in score_order(scores):
        if not any(float(boxes.dtype.type(iou[k, i])) > threshold for k in keep):
            keep.append(i)
    return np.array(keep, np.int64)

# The NMS family, each from its paper, one box pair at a time. Like nms above: arithmetic in
# the boxes' dtype, threshold comparisons in float64, a NaN IoU suppresses or decays nothing.


def soft_nms(boxes, scores, sigma, iou_threshold, score_threshold, method):
    """Soft-NMS (Bodla et al. 2017, Algorithm 1): while boxes remain, move the one of highest
    score (the lowest index among equal ones) to the output, then rescore each remaining box by
    its IoU with it; boxes under score_threshold leave. -> (indices, scores at their pick)."""
    dt = boxes.dtype.type
    remaining = {i: scores[i] for i in range(len(scores)) if scores[i] >= score_threshold}
    keep, kept_scores = [], []
    while remaining:
        best = None
        for i in sorted(remaining):
            if best is None or remaining[i] > remaining[best]:
                best = i
        keep.append(best)
        kept_scores.append(remaining.pop(best))
        for i in list(remaining):
            overlap = iou(boxes[best], boxes[i])
            if np.isnan(overlap):
                continue
            if method == "gaussian":
                remaining[i] = remaining[i] * dt(np.exp(-(overlap * overlap) / dt(sigma)))
            elif float(overlap) > iou_threshold:
                remaining[i] = remaining[i] * (dt(1) - overlap)
            if not remaining[i] >= score_threshold:
                del remaining[i]
    return np.array(keep, np.int64), np.array(kept_scores, scores.dtype)


def diou(a, b):
    """Distance-IoU (Zheng et al. 2020): IoU - (centre distance)^2 / (enclosing diagonal)^2,
    the penalty taken as 0 when the enclosing box is a point."""
    zero, half = a.dtype.type(0), a.dtype.type(0.5)
    centre_dx = (a[0] + a[2]) * half - (b[0] + b[2]) * half
    centre_dy = (a[1] + a[3]) * half - (b[1] + b[3]) * half
    enclosing_w = max(a[2], b[2]) - min(a[0], b[0])
    enclosing_h = max(a[3], b[3]) - min(a[1], b[1])
    diagonal2 = enclosing_w * enclosing_w + enclosing_h * enclosing_h
    penalty = zero if diagonal2 == 0 else (centre_dx * centre_dx + centre_dy * centre_dy) / diagonal2
    return iou(a, b) - penalty


def diou_nms(boxes, scores, threshold):
    """Greedy NMS (as nms) with DIoU in place of IoU."""
    keep = []
    for i in score_order(scores):
        if not any(float(diou(boxes[k], boxes[i])) > threshold for k in keep):
            keep.append(i)
    return np.array(keep, np.int64)


def matrix_nms(boxes, scores, labels, kernel, sigma):
    """Matrix NMS (Wang et al. 2020, SOLOv2, its Algorithm 1 on boxes), written per box: for
    box j, each higher-ranked box i of its label would decay it by f(iou_ij), compensated by
    how much i is itself suppressed, f(comp_i), comp_i being i's largest IoU with a box ranked
    above it; the decay is the smallest such ratio (at most 1)."""
    dt = boxes.dtype.type
    f = (lambda x: np.exp(-dt(sigma) * x * x)) if kernel == "gaussian" else (lambda x: dt(1) - x)
    order = score_order(scores)
    rank = {i: r for r, i in enumerate(order)}
    out = np.empty(len(scores), scores.dtype)

    def above(j):
        return [i for i in order[:rank[j]] if labels[i] == labels[j]]

    def comp(i):
        overlaps = [iou(boxes[k], boxes[i]) for k in above(i)]
        return dt(np.max(overlaps)) if overlaps else dt(0)  # np.max propagates NaN

    for j in range(len(scores)):
        decay = dt(1)
        for i in above(j):
            c = comp(i)
            overlap = iou(boxes[i], boxes[j])
            if kernel == "linear" and c == 1:
                continue  # box i is certainly suppressed: it decays nothing
            ratio = f(overlap) / f(c)
            decay = ratio if np.isnan(ratio) or ratio < decay else decay
            if np.isnan(decay):
                break
        out[j] = scores[j] * decay
    return out
