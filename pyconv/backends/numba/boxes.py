"""Boxes on the "numba" backend: pairwise IoU, greedy non-maximum suppression, and the NMS
family (soft-NMS, DIoU-NMS, Matrix NMS).

Boxes are (x1, y1, x2, y2). Widths and heights are clamped at 0, so a box with x2 < x1 or
y2 < y1 is empty; the IoU of two boxes whose union is empty is 0. IoUs are computed in the
boxes' dtype and compared with the threshold in float64, as torchvision.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from . import backend
from ._jit import driver, helper, kernel


# `zero` is 0 in the boxes' precision, so float32 math stays float32.


@helper
def _area(x1, y1, x2, y2, zero):
    return max(x2 - x1, zero) * max(y2 - y1, zero)


@helper
def _iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, zero):
    inter = _area(max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2), zero)
    union = area_a + area_b - inter
    # A NaN coordinate makes its box's area NaN (Numba's max propagates a NaN first argument),
    # so the union and the IoU are NaN, and a NaN IoU never suppresses (NaN > threshold is
    # False). `union == zero`, not `union > zero`: a NaN union must stay NaN, not become 0.
    return zero if union == zero else inter / union


@kernel
def _box_iou(a, b, out):
    zero = a.dtype.type(0)
    for i in prange(a.shape[0]):
        area_a = _area(a[i, 0], a[i, 1], a[i, 2], a[i, 3], zero)
        for j in range(b.shape[0]):
            area_b = _area(b[j, 0], b[j, 1], b[j, 2], b[j, 3], zero)
            out[i, j] = _iou(a[i, 0], a[i, 1], a[i, 2], a[i, 3], area_a,
                             b[j, 0], b[j, 1], b[j, 2], b[j, 3], area_b, zero)


@driver
def _greedy_nms(boxes, scores, categories, iou_threshold):
    """Greedy NMS within categories -> kept indices by decreasing score.

    Visiting order: a stable sort of -scores (ties keep the lower index; NaN sorts last).
    Boxes of different categories never interact, so the boxes are grouped by category
    (a stable sort again, which keeps the visiting order inside each group), gathered into one
    array per coordinate, and each group runs its own greedy NMS (_nms_group). The kept boxes
    of all groups are then listed in the visiting order. It runs on one thread: each sweep
    depends on the ones before, and one sweep is too short to share."""
    order = np.argsort(-scores, kind="mergesort")  # rank -> box
    grouped = np.argsort(categories[order], kind="mergesort")  # position -> rank
    n = order.shape[0]
    zero = boxes.dtype.type(0)
    x1, y1 = np.empty(n, boxes.dtype), np.empty(n, boxes.dtype)
    x2, y2 = np.empty(n, boxes.dtype), np.empty(n, boxes.dtype)
    area = np.empty(n, boxes.dtype)
    for i in range(n):
        k = order[grouped[i]]
        x1[i], y1[i], x2[i], y2[i] = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        area[i] = _area(x1[i], y1[i], x2[i], y2[i], zero)
    suppressed = np.zeros(n, np.bool_)
    start = 0
    while start < n:
        category = categories[order[grouped[start]]]
        end = start + 1
        while end < n and categories[order[grouped[end]]] == category:
            end += 1
        group = slice(start, end)
        _nms_group(x1[group], y1[group], x2[group], y2[group], area[group], iou_threshold,
                   suppressed[group])
        start = end
    kept_by_rank = np.zeros(n, np.bool_)
    for i in range(n):
        kept_by_rank[grouped[i]] = not suppressed[i]
    return order[kept_by_rank]


@helper
def _nms_group(x1, y1, x2, y2, area, iou_threshold, suppressed):
    """Greedy NMS of boxes given in visiting order: each kept box sweeps the boxes after it and
    marks those it suppresses. The sweep runs over views that start at 0 and has no branch but
    a masked store, so LLVM vectorises it; suppressed boxes never sweep, so the work is
    (kept boxes) x N, not N^2, when few boxes survive."""
    zero = x1.dtype.type(0)
    n = x1.shape[0]
    for i in range(n):
        if suppressed[i]:
            continue
        rest = slice(i + 1, n)
        _suppress(x1[i], y1[i], x2[i], y2[i], area[i], x1[rest], y1[rest], x2[rest], y2[rest],
                  area[rest], iou_threshold, suppressed[rest], zero)


@helper
def _suppress(kx1, ky1, kx2, ky2, k_area, x1, y1, x2, y2, area, iou_threshold, suppressed, zero):
    """Marks the boxes whose IoU with the kept box k exceeds the threshold."""
    for j in range(x1.shape[0]):
        iou = _iou(kx1, ky1, kx2, ky2, k_area, x1[j], y1[j], x2[j], y2[j], area[j], zero)
        if iou > iou_threshold:
            suppressed[j] = True


@backend.register
def box_iou(boxes1, boxes2):
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), boxes1.dtype)
    _box_iou(boxes1, boxes2, out)
    return out


@backend.register
def nms(boxes, scores, iou_threshold):
    one_category = np.zeros(boxes.shape[0], np.int64)
    return _greedy_nms(boxes, scores, one_category, float(iou_threshold))


@backend.register
def batched_nms(boxes, scores, idxs, iou_threshold):
    return _greedy_nms(boxes, scores, idxs, float(iou_threshold))


# --------------------------------------------------------------------------------------------
# The NMS family: soft-NMS, DIoU-NMS, Matrix NMS (semantics: pyconv.ops and the reference).


@helper
def _max_nan(a, b):
    """max(a, b), NaN if either is (as np.maximum)."""
    return a if a > b or a != a else b


@helper
def _min_nan(a, b):
    return a if a < b or a != a else b


@helper
def _intersect(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2, zero):
    """Whether the intersection of boxes a and b (as _iou computes it) has width and height > 0;
    False where it is empty or NaN, which gives an IoU of 0 or NaN."""
    return min(ax2, bx2) - max(ax1, bx1) > zero and min(ay2, by2) - max(ay1, by1) > zero


@driver
def _soft_nms(boxes, scores, sigma, iou_threshold, score_threshold, gaussian):
    """Each pick sweeps the live boxes (kept in index order, compacted as they go): it decays
    those it overlaps, drops those under the threshold and finds the next pick, the first
    (lowest-index) box of the highest score, in the same sweep."""
    n = boxes.shape[0]
    zero, one = boxes.dtype.type(0), boxes.dtype.type(1)
    current = scores.copy()
    area = np.empty(n, boxes.dtype)
    ids = np.empty(n, np.int64)
    m = 0
    best = -1
    for i in range(n):
        area[i] = _area(boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], zero)
        if np.float64(scores[i]) >= score_threshold:
            ids[m] = i
            m += 1
            if best < 0 or current[i] > current[best]:
                best = i
    keep = np.empty(m, np.int64)
    kept = np.empty(m, scores.dtype)
    count = 0
    while best >= 0:
        k = best
        keep[count] = k
        kept[count] = current[k]
        count += 1
        best = -1
        w = 0
        for t in range(m):
            j = ids[t]
            if j == k:
                continue
            # Only an IoU > 0 changes a score (NaN is > nothing), which needs the boxes to
            # intersect: test that first, without the division.
            if _intersect(boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3],
                          boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3], zero):
                iou = _iou(boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3], area[k],
                           boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3], area[j], zero)
            else:
                iou = zero
            if iou > zero and (gaussian or np.float64(iou) > iou_threshold):
                weight = np.exp(-(iou * iou) / sigma) if gaussian else one - iou
                current[j] = current[j] * weight
                if not np.float64(current[j]) >= score_threshold:
                    continue
            ids[w] = j
            w += 1
            if best < 0 or current[j] > current[best]:
                best = j
        m = w
    return keep[:count].copy(), kept[:count].copy()


@helper
def _diou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, zero):
    """IoU - d^2 / c^2 in the order of operations of pyconv.ops.diou_nms."""
    iou = _iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, zero)
    half = zero + 0.5
    dx = (ax1 + ax2) * half - (bx1 + bx2) * half
    dy = (ay1 + ay2) * half - (by1 + by2) * half
    cw = _max_nan(ax2, bx2) - _min_nan(ax1, bx1)
    ch = _max_nan(ay2, by2) - _min_nan(ay1, by1)
    d2 = dx * dx + dy * dy
    c2 = cw * cw + ch * ch
    return iou - (zero if c2 == zero else d2 / c2)


@driver
def _diou_nms(boxes, scores, iou_threshold):
    """Greedy DIoU-NMS over the boxes in visiting order (see _greedy_nms)."""
    order = np.argsort(-scores, kind="mergesort")
    n = order.shape[0]
    zero = boxes.dtype.type(0)
    ranked = np.empty((n, 4), boxes.dtype)
    area = np.empty(n, boxes.dtype)
    for r in range(n):
        ranked[r] = boxes[order[r]]
        area[r] = _area(ranked[r, 0], ranked[r, 1], ranked[r, 2], ranked[r, 3], zero)
    suppressed = np.zeros(n, np.bool_)
    # DIoU <= IoU: with a threshold >= 0 only intersecting boxes can be suppressed.
    only_overlaps = iou_threshold >= 0
    for i in range(n):
        if suppressed[i]:
            continue
        for j in range(i + 1, n):
            if suppressed[j] or (only_overlaps and not _intersect(
                    ranked[i, 0], ranked[i, 1], ranked[i, 2], ranked[i, 3],
                    ranked[j, 0], ranked[j, 1], ranked[j, 2], ranked[j, 3], zero)):
                continue
            if _diou(ranked[i, 0], ranked[i, 1], ranked[i, 2], ranked[i, 3], area[i], ranked[j, 0],
                     ranked[j, 1], ranked[j, 2], ranked[j, 3], area[j], zero) > iou_threshold:
                suppressed[j] = True
    return order[~suppressed]


@kernel
def _matrix_nms_passes(x1, y1, x2, y2, area, group_start, gaussian, sigma, comp, decay):
    """Boxes in ranked order within groups; the two passes of Matrix NMS, parallel over j."""
    n = x1.shape[0]
    zero, one = x1.dtype.type(0), x1.dtype.type(1)
    for j in prange(n):
        m = zero
        for i in range(group_start[j], j):
            m = _max_nan(m, _iou(x1[i], y1[i], x2[i], y2[i], area[i],
                                 x1[j], y1[j], x2[j], y2[j], area[j], zero))
        comp[j] = m
    for j in prange(n):
        # gaussian: min_i exp(-sigma (iou^2 - comp_i^2)) = exp(-sigma max_i (...)), exp being
        # increasing; linear: min_i (1 - iou) / (1 - comp_i) over comp_i != 1.
        acc = zero if gaussian else one
        for i in range(group_start[j], j):
            iou = _iou(x1[i], y1[i], x2[i], y2[i], area[i], x1[j], y1[j], x2[j], y2[j], area[j], zero)
            if gaussian:
                acc = _max_nan(acc, iou * iou - comp[i] * comp[i])
            elif not comp[i] == one:
                acc = _min_nan(acc, (one - iou) / (one - comp[i]))
        decay[j] = np.exp(-sigma * acc) if gaussian else acc


@driver
def _matrix_nms(boxes, scores, labels, gaussian, sigma):
    order = np.argsort(-scores, kind="mergesort")  # rank -> box
    grouped = order[np.argsort(labels[order], kind="mergesort")]  # position -> box
    n = order.shape[0]
    zero = boxes.dtype.type(0)
    x1, y1 = np.empty(n, boxes.dtype), np.empty(n, boxes.dtype)
    x2, y2 = np.empty(n, boxes.dtype), np.empty(n, boxes.dtype)
    area = np.empty(n, boxes.dtype)
    group_start = np.empty(n, np.int64)
    for p in range(n):
        k = grouped[p]
        x1[p], y1[p], x2[p], y2[p] = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        area[p] = _area(x1[p], y1[p], x2[p], y2[p], zero)
        same = p > 0 and labels[k] == labels[grouped[p - 1]]
        group_start[p] = group_start[p - 1] if same else p
    comp = np.empty(n, boxes.dtype)
    decay = np.empty(n, boxes.dtype)
    _matrix_nms_passes(x1, y1, x2, y2, area, group_start, gaussian, sigma, comp, decay)
    out = np.empty_like(scores)
    for p in range(n):
        out[grouped[p]] = scores[grouped[p]] * decay[p]
    return out


@backend.register
def soft_nms(boxes, scores, sigma, iou_threshold, score_threshold, method):
    return _soft_nms(boxes, scores, boxes.dtype.type(sigma), float(iou_threshold),
                     float(score_threshold), method == "gaussian")


@backend.register
def diou_nms(boxes, scores, iou_threshold):
    return _diou_nms(boxes, scores, float(iou_threshold))


@backend.register
def matrix_nms(boxes, scores, labels, kernel, sigma):
    return _matrix_nms(boxes, scores, labels, kernel == "gaussian", boxes.dtype.type(sigma))
