"""Rotated boxes on the GPU: pairwise IoU, and non-maximum suppression as a bitmask.

Boxes are (cx, cy, w, h, angle in degrees); each IoU follows the reference backend's steps in
float64. The boxes are first prepared by array operations (``prepare``: centre, area,
circumscribed radius, corners relative to the centre, and whether the box is empty or not
finite; 13 float64 per box), which also keeps the sines and cosines out of the kernels (their
large-argument path needs a stack frame). Then:

``box_iou_rotated_kernel``: one pair per thread (grid-stride): the first rectangle clipped by
the four edges of the second (Sutherland-Hodgman), unless the circumscribed circles are apart.
NMS is boxes.py's bitmask NMS with this IoU: ``nms_rotated_mask`` is its ``nms_mask`` (a block
per 64 x 64 tile of sorted boxes, the tile's 64 column boxes staged in shared memory, one
64-bit word of "row box suppresses column box" bits per thread), and the greedy pass is
boxes.py's one-block ``nms_sweep``. The threshold arrives rounded down to the boxes' dtype, so
comparing the IoU rounded to that dtype with it is the exact comparison with the threshold.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import backend
from . import boxes as _boxes
from ._kernel_util import Kernels, per_dtype
from ._runtime import blocks_for, flat, launch, xp

MASK_BITS = _boxes.MASK_BITS
SWEEP_THREADS = _boxes.SWEEP_THREADS
# Columns of a prepared box.
CX, CY, AREA, RADIUS, KX, KY, STATE = 0, 1, 2, 3, 4, 8, 12
PREPARED = 13
FINITE, EMPTY, NOT_FINITE = 0.0, 1.0, 2.0
MAX_VERTICES = 8
COLUMN_BOXES = MASK_BITS * PREPARED  # the prepared column boxes of an NMS mask tile
# Threads per block of box_iou_rotated_kernel (its polygon scratch: 256 bytes per thread).
IOU_THREADS = 128


def prepare(boxes):
    """(n, 5) boxes -> (n, PREPARED) float64, computed as the other backends do per box."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf boxes: their rows are unused
        return _prepare(boxes.astype(np.float64))


def _prepare(b):
    cx, cy, w, h, angle = (b[:, k] for k in range(5))
    finite = xp.isfinite(b).all(axis=1)
    # Quarter turns plus a remainder of at most 45 degrees: exact at multiples of 90.
    a = xp.fmod(xp.where(finite, angle, 0.0), 360.0)
    q = xp.floor(a / 90.0 + 0.5)
    t = (a - 90.0 * q) * (math.pi / 180.0)
    c0, s0 = xp.cos(t), xp.sin(t)
    quarter = q.astype(np.int64) % 4
    c = xp.where(quarter == 0, c0, xp.where(quarter == 1, -s0, xp.where(quarter == 2, -c0, s0)))
    s = xp.where(quarter == 0, s0, xp.where(quarter == 1, c0, xp.where(quarter == 2, -s0, -c0)))
    hw, hh = 0.5 * w, 0.5 * h
    ux, uy, vx, vy = c * hw, -s * hw, s * hh, c * hh
    state = xp.where(~finite, NOT_FINITE, xp.where((w > 0) & (h > 0), FINITE, EMPTY))
    columns = (cx, cy, w * h, 0.5 * xp.sqrt(w * w + h * h),
               -ux - vx, ux - vx, ux + vx, -ux + vx, -uy - vy, uy - vy, uy + vy, -uy + vy, state)
    return xp.ascontiguousarray(xp.stack(columns, axis=1))


@cuda.jit(device=True)
def side_of(poly, t, src, k, ax, ay, ex, ey):
    return ex * (poly[t, src + 1, k] - ay) - ey * (poly[t, src, k] - ax)


@cuda.jit(device=True)
def clip(poly, t, src, dst, n, ax, ay, bx, by):
    """Thread t's convex polygon in poly[t, src:src+2, :n] (x then y rows) cut to the left of (or
    on) the line a -> b, into poly[t, dst:dst+2]; returns its vertex count (at most
    MAX_VERTICES: see the reference backend). Sides are recomputed rather than stored."""
    ex = bx - ax
    ey = by - ay
    m = 0
    for k in range(n):
        k1 = 0 if k + 1 == n else k + 1
        sc = side_of(poly, t, src, k, ax, ay, ex, ey)
        sn = side_of(poly, t, src, k1, ax, ay, ex, ey)
        if sc >= 0 and m < MAX_VERTICES:
            poly[t, dst, m] = poly[t, src, k]
            poly[t, dst + 1, m] = poly[t, src + 1, k]
            m += 1
        if ((sc > 0 and sn < 0) or (sc < 0 and sn > 0)) and m < MAX_VERTICES:
            f = sc / (sc - sn)
            poly[t, dst, m] = poly[t, src, k] + f * (poly[t, src, k1] - poly[t, src, k])
            poly[t, dst + 1, m] = (poly[t, src + 1, k] +
                                   f * (poly[t, src + 1, k1] - poly[t, src + 1, k]))
            m += 1
    return m


@cuda.jit(device=True)
def rotated_iou(A, a, B, b, poly, t):
    """IoU, in float64, of the prepared boxes at offsets a of A and b of B (flat arrays);
    poly[t] (4 x MAX_VERTICES) is the calling thread's scratch for the polygon being clipped."""
    if A[a + STATE] == NOT_FINITE or B[b + STATE] == NOT_FINITE:
        return math.nan
    if A[a + STATE] == EMPTY or B[b + STATE] == EMPTY:
        return 0.0
    dx = B[b + CX] - A[a + CX]
    dy = B[b + CY] - A[a + CY]
    reach = A[a + RADIUS] + B[b + RADIUS]
    if dx * dx + dy * dy > reach * reach:
        return 0.0
    for k in range(4):
        poly[t, 0, k] = A[a + KX + k]
        poly[t, 1, k] = A[a + KY + k]
    n = 4
    src = 0
    for k in range(4):
        if n > 0:
            k1 = (k + 1) % 4
            n = clip(poly, t, src, 2 - src, n, dx + B[b + KX + k], dy + B[b + KY + k],
                     dx + B[b + KX + k1], dy + B[b + KY + k1])
            src = 2 - src
    twice = 0.0
    for k in range(n):
        k1 = 0 if k + 1 == n else k + 1
        twice += poly[t, src, k] * poly[t, src + 1, k1] - poly[t, src, k1] * poly[t, src + 1, k]
    inter = min(min(max(0.5 * twice, 0.0), A[a + AREA]), B[b + AREA])
    union = A[a + AREA] + B[b + AREA] - inter
    return 0.0 if union <= 0 else inter / union


@per_dtype
def kernels(dtype):
    dt = dtype.type
    ks = Kernels(dtype)

    # The polygon scratch of each thread lives in shared memory: indexed by loop counters, it
    # would otherwise be a local-memory stack frame.

    @ks.add("ddfnn")
    def box_iou_rotated_kernel(pa, pb, out, N, M):
        poly = cuda.shared.array((IOU_THREADS, 4, MAX_VERTICES), np.float64)
        t = cuda.threadIdx.x
        for e in range(cuda.grid(1), N * M, cuda.gridsize(1)):
            i = e // M
            j = e - i * M
            out[e] = dt(rotated_iou(pa, i * PREPARED, pb, j * PREPARED, poly, t))

    @ks.add("dsnnu")
    def nms_rotated_mask(prepared, threshold, n, words, mask):
        row_block = cuda.blockIdx.y
        col_block = cuda.blockIdx.x
        if col_block < row_block:  # box j < box i never gets suppressed by i
            return
        col = cuda.shared.array(COLUMN_BOXES, np.float64)
        poly = cuda.shared.array((MASK_BITS, 4, MAX_VERTICES), np.float64)
        t = cuda.threadIdx.x
        j0 = col_block * MASK_BITS
        if j0 + t < n:
            for k in range(PREPARED):
                col[t * PREPARED + k] = prepared[(j0 + t) * PREPARED + k]
        cuda.syncthreads()
        i = row_block * MASK_BITS + t
        if i < n:
            bits = np.uint64(0)
            start = t + 1 if col_block == row_block else 0
            for jj in range(start, min(MASK_BITS, n - j0)):
                if dt(rotated_iou(prepared, i * PREPARED, col, jj * PREPARED, poly, t)) > threshold:
                    bits |= np.uint64(1) << np.uint64(jj)
            mask[i * words + col_block] = bits

    return ks


def _threshold_below(dtype, threshold):
    """The largest value of `dtype` <= threshold: for any IoU x of that dtype, x > it exactly
    when x > threshold."""
    t = np.dtype(dtype).type(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, np.dtype(dtype).type(-np.inf))
    return t


@backend.register
def box_iou_rotated(boxes1, boxes2):
    N, M = boxes1.shape[0], boxes2.shape[0]
    out = xp.empty((N, M), boxes1.dtype)
    if N and M:
        launch(kernels(out.dtype).box_iou_rotated_kernel, blocks_for(N * M, IOU_THREADS),
               IOU_THREADS, flat(prepare(boxes1)), flat(prepare(boxes2)), flat(out), N, M)
    return out


@backend.register
def nms_rotated(boxes, scores, iou_threshold):
    n = boxes.shape[0]
    if n == 0:
        return xp.zeros(0, np.int64)
    order = _boxes._score_order(scores)
    words = -(-n // MASK_BITS)
    mask = xp.empty(n * words, np.uint64)  # words below the diagonal are never read
    removed = xp.zeros(words, np.uint64)
    keep = xp.empty(n, np.uint8)
    launch(kernels(boxes.dtype).nms_rotated_mask, (words, words), MASK_BITS,
           flat(prepare(boxes[order])), _threshold_below(boxes.dtype, iou_threshold), n, words,
           mask)
    launch(_boxes.kernels(boxes.dtype).nms_sweep, 1, SWEEP_THREADS, mask, n, words, removed, keep)
    return order[xp.flatnonzero(keep)].astype(np.int64)
