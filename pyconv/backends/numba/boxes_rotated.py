"""Rotated boxes on the "numba" backend: pairwise IoU and greedy non-maximum suppression.

Boxes are (cx, cy, w, h, angle in degrees); the steps are the reference backend's, in float64:
each box is prepared once (``_prepare``: centre, area, circumscribed radius, corners relative to
the centre, and whether it is empty or not finite), and the IoU of a pair is the area of the
first rectangle clipped by the four edges of the second (Sutherland-Hodgman), unless the
circumscribed circles are apart. NMS visits the boxes as ``nms`` does and sweeps the remaining
candidates of each kept box, compacting the survivors.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from . import backend
from ._jit import driver, helper, kernel

# Columns of a prepared box.
CX, CY, AREA, RADIUS, KX, KY, STATE = 0, 1, 2, 3, 4, 8, 12
PREPARED = 13
FINITE, EMPTY, NOT_FINITE = 0.0, 1.0, 2.0
MAX_VERTICES = 8


@helper
def _prepare_one(b, out):
    cx, cy, w, h, angle = float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(b[4])
    finite = (math.isfinite(cx) and math.isfinite(cy) and math.isfinite(w) and math.isfinite(h)
              and math.isfinite(angle))
    out[CX], out[CY], out[AREA] = cx, cy, w * h
    out[RADIUS] = 0.5 * math.sqrt(w * w + h * h)
    out[STATE] = NOT_FINITE if not finite else (FINITE if w > 0 and h > 0 else EMPTY)
    c, s = 1.0, 0.0
    if finite:
        # Quarter turns plus a remainder of at most 45 degrees: exact at multiples of 90.
        a = np.fmod(angle, 360.0)  # exact
        q = math.floor(a / 90.0 + 0.5)
        t = (a - 90.0 * q) * (math.pi / 180.0)
        c0, s0 = math.cos(t), math.sin(t)
        quarter = int(q) % 4
        if quarter == 0:
            c, s = c0, s0
        elif quarter == 1:
            c, s = -s0, c0
        elif quarter == 2:
            c, s = -c0, -s0
        else:
            c, s = s0, -c0
    hw, hh = 0.5 * w, 0.5 * h
    ux, uy, vx, vy = c * hw, -s * hw, s * hh, c * hh
    out[KX], out[KY] = -ux - vx, -uy - vy
    out[KX + 1], out[KY + 1] = ux - vx, uy - vy
    out[KX + 2], out[KY + 2] = ux + vx, uy + vy
    out[KX + 3], out[KY + 3] = -ux + vx, -uy + vy


@kernel
def _prepare(boxes, out):
    for i in prange(boxes.shape[0]):
        _prepare_one(boxes[i], out[i])


def prepare(boxes):
    out = np.empty((boxes.shape[0], PREPARED), np.float64)
    _prepare(boxes, out)
    return out


@helper
def _clip(x, y, n, ax, ay, bx, by, ox, oy, side):
    """The convex polygon (x, y)[:n] cut to the left of (or on) the line a -> b, into (ox, oy);
    returns its vertex count (at most MAX_VERTICES: see the reference backend)."""
    ex, ey = bx - ax, by - ay
    for k in range(n):
        side[k] = ex * (y[k] - ay) - ey * (x[k] - ax)
    m = 0
    for k in range(n):
        k1 = 0 if k + 1 == n else k + 1
        sc, sn = side[k], side[k1]
        if sc >= 0 and m < MAX_VERTICES:
            ox[m], oy[m] = x[k], y[k]
            m += 1
        if ((sc > 0 and sn < 0) or (sc < 0 and sn > 0)) and m < MAX_VERTICES:
            t = sc / (sc - sn)
            ox[m] = x[k] + t * (x[k1] - x[k])
            oy[m] = y[k] + t * (y[k1] - y[k])
            m += 1
    return m


@helper
def _iou(a, b, buf):
    """IoU of two prepared boxes; buf is (5, MAX_VERTICES) float64 scratch."""
    if a[STATE] == NOT_FINITE or b[STATE] == NOT_FINITE:
        return math.nan
    if a[STATE] == EMPTY or b[STATE] == EMPTY:
        return 0.0
    dx, dy = b[CX] - a[CX], b[CY] - a[CY]
    reach = a[RADIUS] + b[RADIUS]
    if dx * dx + dy * dy > reach * reach:
        return 0.0
    px, py, qx, qy, side = buf[0], buf[1], buf[2], buf[3], buf[4]
    for k in range(4):
        px[k], py[k] = a[KX + k], a[KY + k]
    n = 4
    for k in range(4):
        if n == 0:
            break
        k1 = (k + 1) % 4
        n = _clip(px, py, n, dx + b[KX + k], dy + b[KY + k], dx + b[KX + k1], dy + b[KY + k1],
                  qx, qy, side)
        for v in range(n):
            px[v], py[v] = qx[v], qy[v]
    twice = 0.0
    for k in range(n):
        k1 = 0 if k + 1 == n else k + 1
        twice += px[k] * py[k1] - px[k1] * py[k]
    inter = min(min(max(0.5 * twice, 0.0), a[AREA]), b[AREA])
    union = a[AREA] + b[AREA] - inter
    return 0.0 if union <= 0 else inter / union


@kernel
def _box_iou_rotated(pa, pb, out):
    for i in prange(pa.shape[0]):
        buf = np.empty((5, MAX_VERTICES), np.float64)
        for j in range(pb.shape[0]):
            out[i, j] = _iou(pa[i], pb[j], buf)


@driver
def _greedy_nms_rotated(prepared, order, threshold, single):
    """Greedy NMS of the prepared boxes visited in `order` -> kept indices. With `single` (float32
    boxes) each IoU is rounded to float32 before the comparison, as box_iou_rotated returns it.

    The candidates still alive are a list of indices with the circle test's operands beside
    them, compacted as boxes are suppressed; the prepared rows themselves stay put."""
    n = order.shape[0]
    alive = order.copy()
    cx, cy, radius = np.empty(n), np.empty(n), np.empty(n)
    for k in range(n):
        cx[k], cy[k], radius[k] = prepared[alive[k], CX], prepared[alive[k], CY], prepared[alive[k], RADIUS]
    kept = np.zeros(n, np.bool_)  # by box index
    buf = np.empty((5, MAX_VERTICES), np.float64)
    # With a threshold >= 0, an IoU of 0 (circles apart, an empty box) or NaN suppresses nothing.
    zero_passes = threshold >= 0
    end = n
    head = 0
    while head < end:
        k = prepared[alive[head]]
        kept[alive[head]] = True
        if not (zero_passes and k[STATE] != FINITE):
            w = head + 1
            for j in range(head + 1, end):
                dx, dy = cx[j] - k[CX], cy[j] - k[CY]
                reach = k[RADIUS] + radius[j]
                if zero_passes and dx * dx + dy * dy > reach * reach:
                    survives = True
                else:
                    iou = _iou(k, prepared[alive[j]], buf)
                    if single:
                        iou = float(np.float32(iou))
                    survives = not (iou > threshold)
                if survives:
                    cx[w], cy[w], radius[w], alive[w] = cx[j], cy[j], radius[j], alive[j]
                    w += 1
            end = w
        head += 1
    return order[kept[order]]


@backend.register
def box_iou_rotated(boxes1, boxes2):
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), np.float64)
    if out.size:
        _box_iou_rotated(prepare(boxes1), prepare(boxes2), out)
    return out.astype(boxes1.dtype)


@backend.register
def nms_rotated(boxes, scores, iou_threshold):
    order = np.argsort(-scores, kind="stable")  # ties keep the lower index; NaN sorts last
    return _greedy_nms_rotated(prepare(boxes), order, float(iou_threshold),
                               boxes.dtype == np.float32).astype(np.int64)
