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
