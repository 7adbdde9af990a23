"""Post-processing of a YOLO-style detector's grid output (Redmon et al. 2016): the image is
divided into an S x S grid; for each cell and each of its B anchor boxes the network predicts
(p_c, b_x, b_y, b_h, b_w, c_1 .. c_K):

- p_c the probability that the box holds an object;
- b_x, b_y the box centre as a fraction of the cell (0..1, from the cell's top-left corner);
- b_h, b_w its height and width as fractions of the whole image;
- c_1 .. c_K the class probabilities given an object.

Each box's score for its best class is p_c * max_k c_k. Boxes scoring below a threshold are
dropped, and non-maximum suppression removes, within each class, every box that overlaps a
better one by more than an IoU threshold -- or, with the other methods, every box that a
better one's distance-IoU exceeds it for (DIoU-NMS), or the scores of overlapping boxes are
decayed instead (soft-NMS, Matrix NMS) and boxes whose decayed score falls to the threshold
are dropped.
"""
from __future__ import annotations

import numpy as np

from .. import ops

__all__ = ["detect_postprocess", "decode_boxes"]


def decode_boxes(pred):
    """Grid predictions (S, S, B, 5 + K) -> (boxes (S*S*B, 4) as (x1, y1, x2, y2) in image
    fractions, scores (S*S*B,), classes (S*S*B,) int64)."""
    pred = np.asarray(pred, np.float64)
    S_rows, S_cols = pred.shape[:2]
    rows, cols = np.meshgrid(np.arange(S_rows), np.arange(S_cols), indexing="ij")
    cx = (cols[:, :, None] + pred[..., 1]) / S_cols
    cy = (rows[:, :, None] + pred[..., 2]) / S_rows
    h, w = pred[..., 3], pred[..., 4]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1).reshape(-1, 4)
    class_probs = pred[..., 5:].reshape(-1, pred.shape[-1] - 5)
    classes = class_probs.argmax(axis=1)
    scores = pred[..., 0].reshape(-1) * class_probs[np.arange(len(classes)), classes]
    return boxes, scores, classes.astype(np.int64)


METHODS = ("nms", "soft", "diou", "matrix")


def _per_class(nms, boxes, scores, classes):
    """Runs nms(boxes, scores) -> (kept indices, their scores) on each class's boxes; -> the
    kept indices of all classes and their scores, by decreasing score (ties: lower index)."""
    keep, kept_scores = [], []
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        k, s = nms(boxes[members], scores[members])
        keep.append(members[k])
        kept_scores.append(s)
    keep, kept_scores = np.concatenate(keep), np.concatenate(kept_scores)
    by_score = np.lexsort((keep, -kept_scores))
    return keep[by_score], kept_scores[by_score]


def _suppress(method, boxes, scores, classes, score_threshold, iou_threshold):
    """-> (indices of the detections kept, their final scores), by decreasing score."""
    if method == "nms":
        kept = ops.batched_nms(boxes, scores, classes, iou_threshold)
        return kept, scores[kept]
    # Decayed scores must still exceed score_threshold: soft_nms keeps scores >= its
    # threshold, so it gets the next float above.
    above = float(np.nextafter(score_threshold, np.inf))
    if method == "diou":
        return _per_class(lambda b, s: (lambda k: (k, s[k]))(ops.diou_nms(b, s, iou_threshold)),
                          boxes, scores, classes)
    if method == "soft":
        return _per_class(lambda b, s: ops.soft_nms(b, s, score_threshold=above), boxes, scores,
                          classes)
    decayed = ops.matrix_nms(boxes, scores, classes)
    kept = np.flatnonzero(decayed > score_threshold)
    kept = kept[np.argsort(-decayed[kept], kind="stable")]
    return kept, decayed[kept]


def detect_postprocess(pred, score_threshold=0.5, iou_threshold=0.5, image_size=None, method="nms"):
    """Detections from YOLO-style grid output.

    pred: (S, S, B, 5 + K) for one image, or (N, S, S, B, 5 + K) for a batch (see the module
    docstring for the layout). Keeps the boxes whose score exceeds score_threshold, then
    suppresses within each class by `method`:

    - "nms": greedy NMS (``ops.batched_nms``) with iou_threshold;
    - "diou": greedy DIoU-NMS (``ops.diou_nms``) with iou_threshold;
    - "soft": Gaussian soft-NMS (``ops.soft_nms``, sigma 0.5): the kept boxes carry their
      decayed scores, which must still exceed score_threshold; iou_threshold is unused;
    - "matrix": Matrix NMS (``ops.matrix_nms``, Gaussian, sigma 2): likewise.

    image_size (height, width) or an int scales the boxes to pixels; by default they are
    image fractions.

    -> for one image a dict {"boxes" (M, 4) as (x1, y1, x2, y2), "scores" (M,), "classes"
    (M,)} by decreasing score; for a batch a list of such dicts."""
    if method not in METHODS:
        raise ValueError(f"detect_postprocess: method must be one of {', '.join(map(repr, METHODS))}, "
                         f"got {method!r}")
    pred = np.asarray(pred)
    if pred.ndim == 5:
        return [detect_postprocess(p, score_threshold, iou_threshold, image_size, method) for p in pred]
    if pred.ndim != 4 or pred.shape[-1] < 6:
        raise ValueError(f"detect_postprocess: pred must be (S, S, B, 5 + K) or (N, S, S, B, 5 + K) "
                         f"with K >= 1 classes, got shape {pred.shape}")
    boxes, scores, classes = decode_boxes(pred)
    keep = scores > score_threshold
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    if len(boxes):
        kept, scores = _suppress(method, boxes, scores, classes, score_threshold, iou_threshold)
        boxes, classes = boxes[kept], classes[kept]
    if image_size is not None:
        height, width = (image_size, image_size) if np.isscalar(image_size) else image_size
        boxes = boxes * np.array([width, height, width, height])
    return {"boxes": boxes, "scores": scores, "classes": classes}
