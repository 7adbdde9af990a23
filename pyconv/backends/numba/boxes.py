"""Boxes on the "numba" backend: pairwise IoU and greedy non-maximum suppression.

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
