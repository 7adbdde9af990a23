"""Plain-loop oracles the tests compare kernels with: box IoU and greedy NMS, written as directly
as their definitions so that they are easy to trust.

The arithmetic happens in the dtype of the boxes passed in (NumPy scalars keep it): pass
float64 boxes for an exact oracle, or the kernel's float32 boxes to round as the kernel does.
"""
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
