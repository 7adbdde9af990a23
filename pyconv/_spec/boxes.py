"""Boxes: IoU and non-maximum suppression (greedy, batched, soft, distance-IoU and Matrix NMS)."""
from __future__ import annotations

import math

import numpy as np

from .core import (MAX_BOXES, check_allocatable, check_array, check_float_dtypes, check_index_dtype, real, shape_of)


def _boxes(op, name, boxes):
    check_array(op, name, boxes, 2)
    if boxes.shape[1] != 4:
        raise ValueError(f"{op}: {name} must have shape (N, 4) as (x1, y1, x2, y2), got {shape_of(boxes)}")


def _pairwise(op, boxes1, boxes2, check_boxes):
    """The checks of an operator that compares every box of boxes1 with every box of boxes2."""
    check_boxes(op, "boxes1", boxes1)
    check_boxes(op, "boxes2", boxes2)
    dtype = check_float_dtypes(op, boxes1=boxes1, boxes2=boxes2)
    check_allocatable(op, "output", (boxes1.shape[0], boxes2.shape[0]), dtype)


def box_iou(boxes1, boxes2):
    _pairwise("box_iou", boxes1, boxes2, _boxes)


def _boxes_and_scores(op, boxes, scores, check_boxes=_boxes):
    """The checks every NMS operator makes of its boxes and their scores (one per box)."""
    check_boxes(op, "boxes", boxes)
    check_array(op, "scores", scores, 1)
    check_float_dtypes(op, boxes=boxes, scores=scores)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: scores must have one entry per box: boxes {shape_of(boxes)}, scores {shape_of(scores)}"
        )
    if boxes.shape[0] > MAX_BOXES:
        raise ValueError(f"{op}: at most 2**31 - 1 boxes are supported, got {boxes.shape[0]}")


def nms(boxes, scores, iou_threshold):
    _boxes_and_scores("nms", boxes, scores)
    return real("nms", "iou_threshold", iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold, class_agnostic=False):
    op = "batched_nms"
    _boxes_and_scores(op, boxes, scores)
    thr = real(op, "iou_threshold", iou_threshold)
    if not isinstance(class_agnostic, (bool, np.bool_)):
        raise TypeError(f"{op}: class_agnostic must be a bool, got {class_agnostic!r}")
    if idxs is None and class_agnostic:
        return thr
    check_array(op, "idxs", idxs, 1)
    check_index_dtype(op, "idxs", idxs)
    if idxs.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: idxs must have one category per box: boxes {shape_of(boxes)}, idxs {shape_of(idxs)}"
        )
    return thr


# Rotated boxes (cx, cy, w, h, angle in degrees).


def _rotated_boxes(op, name, boxes):
    check_array(op, name, boxes, 2)
    if boxes.shape[1] != 5:
        raise ValueError(
            f"{op}: {name} must have shape (N, 5) as (cx, cy, w, h, angle), got {shape_of(boxes)}"
        )


def box_iou_rotated(boxes1, boxes2):
    _pairwise("box_iou_rotated", boxes1, boxes2, _rotated_boxes)


def nms_rotated(boxes, scores, iou_threshold):
    _boxes_and_scores("nms_rotated", boxes, scores, check_boxes=_rotated_boxes)
    return real("nms_rotated", "iou_threshold", iou_threshold)


# --------------------------------------------------------------------------------------------
# The NMS family: soft-NMS, DIoU-NMS, Matrix NMS.

SOFT_NMS_METHODS = ("gaussian", "linear")
MATRIX_NMS_KERNELS = ("gaussian", "linear")


def _choice(op, name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _finite(op, name, value):
    v = real(op, name, value)
    if not math.isfinite(v):
        raise ValueError(f"{op}: {name} must be finite, got {value!r}")
    return v


def _positive(op, name, value):
    v = _finite(op, name, value)
    if not v > 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value!r}")
    return v


def soft_nms(boxes, scores, sigma, iou_threshold, score_threshold, method):
    """-> (sigma, iou_threshold, score_threshold, method), checked."""
    op = "soft_nms"
    _boxes_and_scores(op, boxes, scores)
    return (_positive(op, "sigma", sigma), _finite(op, "iou_threshold", iou_threshold),
            _finite(op, "score_threshold", score_threshold),
            _choice(op, "method", method, SOFT_NMS_METHODS))


def diou_nms(boxes, scores, iou_threshold):
    op = "diou_nms"
    _boxes_and_scores(op, boxes, scores)
    return _finite(op, "iou_threshold", iou_threshold)


def matrix_nms(boxes, scores, labels, kernel, sigma):
    """-> (kernel, sigma), checked."""
    op = "matrix_nms"
    _boxes_and_scores(op, boxes, scores)
    check_array(op, "labels", labels, 1)
    check_index_dtype(op, "labels", labels)
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: labels must have one label per box: boxes {shape_of(boxes)}, labels {shape_of(labels)}"
        )
    return _choice(op, "kernel", kernel, MATRIX_NMS_KERNELS), _positive(op, "sigma", sigma)
