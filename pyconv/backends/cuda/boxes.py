"""Boxes on the GPU: pairwise IoU, non-maximum suppression as a bitmask, and the NMS family
(soft-NMS, DIoU-NMS, Matrix NMS; see the section at the end).

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
batched_nms runs that NMS on each category's boxes (a mask the size of the category squared),
then lists the survivors in score order: no work across categories, and exact (unlike the
trick of offsetting the boxes of each category by a large coordinate, which rounds).
"""
from __future__ import annotations

import math

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

    ks.nan_max, ks.nan_min, ks.iou = nan_max, nan_min, iou  # device functions, for nms_family

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


def _label_groups(labels):
    """(positions -> box, each label's boxes in index order; the start of each group on the
    host), from one stable sort."""
    by_label = xp.argsort(labels, kind="stable") if SIMULATOR else xp.argsort(labels)
    sorted_labels = labels[by_label]
    starts = xp.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1
    starts = starts.get() if hasattr(starts, "get") else starts
    return by_label, [0, *starts.tolist(), labels.shape[0]]


@backend.register
def batched_nms(boxes, scores, idxs, iou_threshold):
    """The bitmask NMS of each category on its own (its mask is its size squared), then the
    survivors in score order: work within categories only."""
    n = boxes.shape[0]
    if n == 0:
        return xp.zeros(0, np.int64)
    by_label, bounds = _label_groups(idxs)
    kept = xp.zeros(n, np.bool_)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        members = by_label[lo:hi]
        kept[members[_nms(boxes[members], scores[members], None, iou_threshold)]] = True
    order = _score_order(scores)
    return order[kept[order]].astype(np.int64)


# --------------------------------------------------------------------------------------------
# The NMS family: soft-NMS, DIoU-NMS, Matrix NMS (semantics: pyconv.ops and the reference).
# soft_nms runs its sequential picks in ONE block (each pick: a block-wide argmax, then every
# thread decays its share of the boxes); diou_nms is the bitmask NMS above with the DIoU;
# matrix_nms runs one thread per box for each of its two passes over the pairs of a label.

# Fewer threads in the simulator, where each is a Python thread (any power of two works).
SOFT_NMS_THREADS = 32 if SIMULATOR else 256


@per_dtype
def nms_family_kernels(dtype):
    dt = dtype.type
    ks = Kernels(dtype)
    base = kernels(dtype)
    nan_max, nan_min, iou = base.nan_max, base.nan_min, base.iou

    @cuda.jit(device=True)
    def diou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
        """IoU - d^2 / c^2, in the order of operations of pyconv.ops.diou_nms."""
        half = dt(0.5)
        dx = (ax1 + ax2) * half - (bx1 + bx2) * half
        dy = (ay1 + ay2) * half - (by1 + by2) * half
        cw = nan_max(ax2, bx2) - nan_min(ax1, bx1)
        ch = nan_max(ay2, by2) - nan_min(ay1, by1)
        d2 = dx * dx + dy * dy
        c2 = cw * cw + ch * ch
        penalty = dt(0) if c2 == dt(0) else d2 / c2
        return iou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2) - penalty

    @ks.add("fsnnu")
    def diou_mask(boxes, threshold, n, words, mask):
        # As nms_mask, without categories: bit j of row i's words set when sorted box i
        # suppresses sorted box j (j > i, DIoU > threshold).
        row_block = cuda.blockIdx.y
        col_block = cuda.blockIdx.x
        if col_block < row_block:
            return
        col = cuda.shared.array((MASK_BITS, 4), dt)
        t = cuda.threadIdx.x
        j0 = col_block * MASK_BITS
        if j0 + t < n:
            for k in range(4):
                col[t, k] = boxes[4 * (j0 + t) + k]
        cuda.syncthreads()
        i = row_block * MASK_BITS + t
        if i < n:
            x1 = boxes[4 * i]
            y1 = boxes[4 * i + 1]
            x2 = boxes[4 * i + 2]
            y2 = boxes[4 * i + 3]
            bits = np.uint64(0)
            start = t + 1 if col_block == row_block else 0
            for jj in range(start, min(MASK_BITS, n - j0)):
                if diou(x1, y1, x2, y2, col[jj, 0], col[jj, 1], col[jj, 2], col[jj, 3]) > threshold:
                    bits |= np.uint64(1) << np.uint64(jj)
            mask[i * words + col_block] = bits

    @ks.add("ffnsssnblfl")
    def soft_nms_picks(boxes, current, n, sigma, lower, score_floor, gaussian, live, keep, kept,
                       count):
        # One block. current: the scores, decayed in place; live[j] = 1 while box j may be
        # picked. Thread t owns boxes t, t + THREADS, ...; the argmax is a tree over the
        # threads' own bests, equal scores going to the lower index. lower: an IoU must be
        # above it to decay; score_floor: the least score a box keeps (the threshold rounded
        # up to the dtype).
        best_score = cuda.shared.array(SOFT_NMS_THREADS, dt)
        best_index = cuda.shared.array(SOFT_NMS_THREADS, np.int64)
        t = cuda.threadIdx.x
        picks = 0
        while True:
            bs = dt(0)
            bi = -1
            for j in range(t, n, SOFT_NMS_THREADS):
                if live[j] != 0 and (bi < 0 or current[j] > bs):
                    bs = current[j]
                    bi = j
            best_score[t] = bs
            best_index[t] = bi
            cuda.syncthreads()
            step = SOFT_NMS_THREADS // 2
            while step > 0:
                if t < step:
                    oi = best_index[t + step]
                    mi = best_index[t]
                    if oi >= 0 and (mi < 0 or best_score[t + step] > best_score[t] or
                                    (best_score[t + step] == best_score[t] and oi < mi)):
                        best_score[t] = best_score[t + step]
                        best_index[t] = oi
                cuda.syncthreads()
                step //= 2
            k = best_index[0]
            cuda.syncthreads()  # every thread has read k before the next round writes
            if k < 0:
                break
            if t == 0:
                keep[picks] = k
                kept[picks] = current[k]
            picks += 1
            kx1 = boxes[4 * k]
            ky1 = boxes[4 * k + 1]
            kx2 = boxes[4 * k + 2]
            ky2 = boxes[4 * k + 3]
            for j in range(t, n, SOFT_NMS_THREADS):
                if j == k:
                    live[j] = 0
                elif live[j] != 0:
                    o = iou(kx1, ky1, kx2, ky2, boxes[4 * j], boxes[4 * j + 1], boxes[4 * j + 2],
                            boxes[4 * j + 3])
                    if o > lower:  # only an IoU > 0 changes a score; NaN is > nothing
                        w = dt(math.exp(-(o * o) / sigma)) if gaussian != 0 else dt(1) - o
                        s = current[j] * w
                        current[j] = s
                        if not s >= score_floor:
                            live[j] = 0
            cuda.syncthreads()
        if t == 0:
            count[0] = picks

    @cuda.jit(device=True)
    def iou_at(boxes, i, j):
        return iou(boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3],
                   boxes[4 * j], boxes[4 * j + 1], boxes[4 * j + 2], boxes[4 * j + 3])

    @ks.add("flnf")
    def matrix_comp(boxes, group_start, n, comp):
        # comp[j] = max(0, max of IoU(i, j) over i in [group_start[j], j)); NaN propagates.
        for j in range(cuda.grid(1), n, cuda.gridsize(1)):
            m = dt(0)
            for i in range(group_start[j], j):
                m = nan_max(m, iou_at(boxes, i, j))
            comp[j] = m

    @ks.add("flfnnsf")
    def matrix_decay(boxes, group_start, comp, n, gaussian, sigma, decay):
        # gaussian: exp(-sigma max(0, max_i (iou^2 - comp_i^2))), the min of the ratios as exp
        # is increasing; linear: min(1, min_i (1 - iou) / (1 - comp_i)) over comp_i != 1.
        for j in range(cuda.grid(1), n, cuda.gridsize(1)):
            acc = dt(0) if gaussian != 0 else dt(1)
            for i in range(group_start[j], j):
                o = iou_at(boxes, i, j)
                if gaussian != 0:
                    acc = nan_max(acc, o * o - comp[i] * comp[i])
                elif not comp[i] == dt(1):
                    acc = nan_min(acc, (dt(1) - o) / (dt(1) - comp[i]))
            decay[j] = dt(math.exp(-sigma * acc)) if gaussian != 0 else acc

    return ks


def _floor_to(dtype, v):
    """The largest value of dtype <= v: `x > v` exactly iff `x > _floor_to(dtype, v)`."""
    f = np.dtype(dtype).type(v)
    return np.nextafter(f, f.dtype.type(-np.inf)) if float(f) > v else f


def _ceil_to(dtype, v):
    """The least value of dtype >= v: `x >= v` exactly iff `x >= _ceil_to(dtype, v)`."""
    f = np.dtype(dtype).type(v)
    return np.nextafter(f, f.dtype.type(np.inf)) if float(f) < v else f


@backend.register
def soft_nms(boxes, scores, sigma, iou_threshold, score_threshold, method):
    n = boxes.shape[0]
    dtype = boxes.dtype
    gaussian = method == "gaussian"
    lower = dtype.type(0) if gaussian else max(_floor_to(dtype, iou_threshold), dtype.type(0))
    score_floor = _ceil_to(dtype, score_threshold)
    current = scores.copy()
    live = (scores >= score_floor).astype(np.uint8)
    keep = xp.empty(max(n, 1), np.int64)
    kept = xp.empty(max(n, 1), dtype)
    count = xp.zeros(1, np.int64)
    if n:
        launch(nms_family_kernels(dtype).soft_nms_picks, 1, SOFT_NMS_THREADS, flat(boxes), current,
               n, scalar(dtype, sigma), lower, score_floor, int(gaussian), live, keep, kept, count)
    picked = int(count[0])
    return keep[:picked].copy(), kept[:picked].copy()


@backend.register
def diou_nms(boxes, scores, iou_threshold):
    n = boxes.shape[0]
    if n == 0:
        return xp.zeros(0, np.int64)
    order = _score_order(scores)
    sorted_boxes = xp.ascontiguousarray(boxes[order])
    words = -(-n // MASK_BITS)
    mask = xp.empty(n * words, np.uint64)
    removed = xp.zeros(words, np.uint64)
    keep = xp.empty(n, np.uint8)
    launch(nms_family_kernels(boxes.dtype).diou_mask, (words, words), MASK_BITS, flat(sorted_boxes),
           _floor_to(boxes.dtype, iou_threshold), n, words, mask)
    launch(kernels(boxes.dtype).nms_sweep, 1, SWEEP_THREADS, mask, n, words, removed, keep)
    return order[xp.flatnonzero(keep)].astype(np.int64)


@backend.register
def matrix_nms(boxes, scores, labels, kernel, sigma):
    n = boxes.shape[0]
    out = xp.empty(n, scores.dtype)
    if n == 0:
        return out
    order = _score_order(scores)
    by_label = xp.argsort(labels[order], kind="stable") if SIMULATOR else xp.argsort(labels[order])
    grouped = order[by_label]  # position -> box: by label, then by rank
    sorted_labels = labels[grouped]
    group_start = xp.searchsorted(sorted_labels, sorted_labels, side="left").astype(np.int64)
    sorted_boxes = xp.ascontiguousarray(boxes[grouped])
    comp = xp.empty(n, boxes.dtype)
    decay = xp.empty(n, boxes.dtype)
    ks = nms_family_kernels(boxes.dtype)
    launch(ks.matrix_comp, blocks_for(n), THREADS, flat(sorted_boxes), group_start, n, comp)
    launch(ks.matrix_decay, blocks_for(n), THREADS, flat(sorted_boxes), group_start, comp, n,
           int(kernel == "gaussian"), scalar(boxes.dtype, sigma), decay)
    out[grouped] = scores[grouped] * decay
    return out
