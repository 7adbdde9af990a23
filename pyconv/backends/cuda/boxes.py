"""Boxes on the GPU: pairwise IoU, and non-maximum suppression as a bitmask.

NMS in three steps, all but the sort on the device:
1. sort the boxes by decreasing score (stable: equal scores keep the lower index first; NaN
   scores last), with the array module's argsort;
2. ``nms_mask``: a (n/64) x (n/64) grid of 64-thread blocks; block (row block, column block)
   stages its 64 column boxes in shared memory and thread i of the row block writes ONE 64-bit
   word: bit j set when sorted box i suppresses sorted box j (j > i, IoU > threshold, and for
   batched NMS the same category). Blocks below the diagonal exit at once. n^2/2 IoUs, all
   independent: compute-bound and fully parallel; the mask is n^2/8 bytes (12.5 MB at n = 10k);
3. ``nms_sweep``: the greedy pass is sequential in the box order, so ONE block does it on the
   device (no copy of the mask to the host): for each box in order, all threads read whether it
   is still alive, and if so OR its mask row into the `removed` words, each thread a strided
   share of the words. Two barriers per box; n x n/64 word ORs spread over 256 threads.
batched_nms is the same with the category compared inside the mask kernel (exact, unlike the
trick of offsetting the boxes of each category by a large coordinate, which rounds).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import backend
from ._kernel_util import Kernels, per_dtype
from ._runtime import SIMULATOR, THREADS, blocks_for, dummy, flat, launch, scalar, xp

MASK_BITS = 64  # boxes per mask word = threads per nms_mask block
SWEEP_THREADS = 256


@per_dtype
def kernels(dtype):
    dt = dtype.type
    ks = Kernels(dtype)

    # NaN-propagating min/max (as NumPy's minimum/maximum): a comparison with NaN is false,
    # so each returns its first argument when that is NaN and the second when the second is.
    @cuda.jit(device=True)
    def nan_max(a, b):
        return a if not (a < b) and b == b else b

    @cuda.jit(device=True)
    def nan_min(a, b):
        return a if not (a > b) and b == b else b

    @cuda.jit(device=True)
    def iou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
        """IoU of two (x1, y1, x2, y2) boxes; inverted boxes are empty; 0 for an empty union; a
        NaN coordinate gives NaN (the reference backend's rule)."""
        zero = dt(0)
        area_a = nan_max(ax2 - ax1, zero) * nan_max(ay2 - ay1, zero)
        area_b = nan_max(bx2 - bx1, zero) * nan_max(by2 - by1, zero)
        inter = (nan_max(nan_min(ax2, bx2) - nan_max(ax1, bx1), zero) *
                 nan_max(nan_min(ay2, by2) - nan_max(ay1, by1), zero))
        union = area_a + area_b - inter
        return zero if union == zero else inter / union

    @ks.add("fffnn")
    def box_iou_kernel(a, b, out, N, M):
        for e in range(cuda.grid(1), N * M, cuda.gridsize(1)):
            i = e // M
            j = e - i * M
            out[e] = iou(a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3],
                         b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3])

    @ks.add("flnsnnu")
    def nms_mask(boxes, cats, use_cats, threshold, n, words, mask):
        row_block = cuda.blockIdx.y
        col_block = cuda.blockIdx.x
        if col_block < row_block:  # box j < box i never gets suppressed by i
            return
        col = cuda.shared.array((MASK_BITS, 4), dt)
        col_cat = cuda.shared.array(MASK_BITS, np.int64)
        t = cuda.threadIdx.x
        j0 = col_block * MASK_BITS
        if j0 + t < n:
            for k in range(4):
                col[t, k] = boxes[4 * (j0 + t) + k]
            col_cat[t] = cats[j0 + t] if use_cats != 0 else 0
        cuda.syncthreads()
        i = row_block * MASK_BITS + t
        if i < n:
            x1 = boxes[4 * i]
            y1 = boxes[4 * i + 1]
            x2 = boxes[4 * i + 2]
            y2 = boxes[4 * i + 3]
            cat = cats[i] if use_cats != 0 else 0
            bits = np.uint64(0)
            start = t + 1 if col_block == row_block else 0
            for jj in range(start, min(MASK_BITS, n - j0)):
                if cat == col_cat[jj] and iou(x1, y1, x2, y2, col[jj, 0], col[jj, 1], col[jj, 2],
                                              col[jj, 3]) > threshold:
                    bits |= np.uint64(1) << np.uint64(jj)
            mask[i * words + col_block] = bits

    @ks.add("unnub")
    def nms_sweep(mask, n, words, removed, keep):
        # removed (words,) must be zero. keep[i] = 1 for the boxes that survive.
        t = cuda.threadIdx.x
        for i in range(n):
            word = i // MASK_BITS
            alive = ((removed[word] >> np.uint64(i % MASK_BITS)) & np.uint64(1)) == np.uint64(0)
            cuda.syncthreads()  # every thread has read removed[word] before anyone updates it
            if alive:
                for w in range(word + t, words, SWEEP_THREADS):
                    removed[w] |= mask[i * words + w]
            if t == 0:
                keep[i] = 1 if alive else 0
            cuda.syncthreads()

    return ks


@backend.register
def box_iou(boxes1, boxes2):
    N, M = boxes1.shape[0], boxes2.shape[0]
    out = xp.empty((N, M), boxes1.dtype)
    if N and M:
        launch(kernels(out.dtype).box_iou_kernel, blocks_for(N * M), THREADS,
               flat(boxes1), flat(boxes2), flat(out), N, M)
    return out


def _score_order(scores):
    # NumPy and CuPy both sort NaN last; CuPy's argsort is always stable (and takes no kind).
    if SIMULATOR:
        return xp.argsort(-scores, kind="stable")
    return xp.argsort(-scores)


def _nms(boxes, scores, cats, iou_threshold):
    n = boxes.shape[0]
    if n == 0:
        return xp.zeros(0, np.int64)
    order = _score_order(scores)
    sorted_boxes = xp.ascontiguousarray(boxes[order])
    sorted_cats = dummy(np.int64) if cats is None else xp.ascontiguousarray(cats[order])
    words = -(-n // MASK_BITS)
    mask = xp.empty(n * words, np.uint64)  # words below the diagonal are never read
    removed = xp.zeros(words, np.uint64)
    keep = xp.empty(n, np.uint8)
    ks = kernels(boxes.dtype)
    launch(ks.nms_mask, (words, words), MASK_BITS, flat(sorted_boxes), sorted_cats,
           int(cats is not None), scalar(boxes.dtype, iou_threshold), n, words, mask)
    launch(ks.nms_sweep, 1, SWEEP_THREADS, mask, n, words, removed, keep)
    return order[xp.flatnonzero(keep)].astype(np.int64)


@backend.register
def nms(boxes, scores, iou_threshold):
    return _nms(boxes, scores, None, iou_threshold)


@backend.register
def batched_nms(boxes, scores, idxs, iou_threshold):
    return _nms(boxes, scores, idxs, iou_threshold)
