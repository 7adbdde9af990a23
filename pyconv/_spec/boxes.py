"""Boxes: IoU and non-maximum suppression."""
from __future__ import annotations

from .core import (MAX_BOXES, check_allocatable, check_array, check_float_dtypes, check_index_dtype, real, shape_of)


def _boxes(op, name, boxes):
    check_array(op, name, boxes, 2)
    if boxes.shape[1] != 4:
        raise ValueError(f"{op}: {name} must have shape (N, 4) as (x1, y1, x2, y2), got {shape_of(boxes)}")


def box_iou(boxes1, boxes2):
    op = "box_iou"
    _boxes(op, "boxes1", boxes1)
    _boxes(op, "boxes2", boxes2)
    dtype = check_float_dtypes(op, boxes1=boxes1, boxes2=boxes2)
    check_allocatable(op, "output", (boxes1.shape[0], boxes2.shape[0]), dtype)


def nms(boxes, scores, iou_threshold, op="nms"):
    _boxes(op, "boxes", boxes)
    check_array(op, "scores", scores, 1)
    check_float_dtypes(op, boxes=boxes, scores=scores)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: scores must have one entry per box: boxes {shape_of(boxes)}, scores {shape_of(scores)}"
        )
    if boxes.shape[0] > MAX_BOXES:
        raise ValueError(f"{op}: at most 2**31 - 1 boxes are supported, got {boxes.shape[0]}")
    return real(op, "iou_threshold", iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold):
    op = "batched_nms"
    thr = nms(boxes, scores, iou_threshold, op=op)
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
    op = "box_iou_rotated"
    _rotated_boxes(op, "boxes1", boxes1)
    _rotated_boxes(op, "boxes2", boxes2)
    dtype = check_float_dtypes(op, boxes1=boxes1, boxes2=boxes2)
    check_allocatable(op, "output", (boxes1.shape[0], boxes2.shape[0]), dtype)


def nms_rotated(boxes, scores, iou_threshold):
    op = "nms_rotated"
    _rotated_boxes(op, "boxes", boxes)
    check_array(op, "scores", scores, 1)
    check_float_dtypes(op, boxes=boxes, scores=scores)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: scores must have one entry per box: boxes {shape_of(boxes)}, scores {shape_of(scores)}"
        )
    if boxes.shape[0] > MAX_BOXES:
        raise ValueError(f"{op}: at most 2**31 - 1 boxes are supported, got {boxes.shape[0]}")
    return real(op, "iou_threshold", iou_threshold)
