"""soft_nms, diou_nms, matrix_nms and batched_nms(class_agnostic=): hand-computed examples,
the plain-loop oracles of tests/oracles.py on random and adversarial boxes, OpenCV's soft-NMS,
and the edge cases (no box, one box, identical boxes, zero area, NaN and inf) on every
backend that takes NumPy arrays. (tests/test_conformance.py compares every backend with the
reference; this file checks the reference and the backends against the definitions.)"""
import math

import numpy as np
import pytest
from conftest import assert_close, numpy_backends_with

import oracles
from pyconv import ops
from pyconv.models import detect_postprocess

DTYPES = [np.float32, np.float64]
SOFT = numpy_backends_with("soft_nms")
DIOU = numpy_backends_with("diou_nms")
MATRIX = numpy_backends_with("matrix_nms")

# Boxes 0 and 2 are the same; box 1 is box 0 moved right by 1 (IoU 9/11); box 3 is apart.
HAND_BOXES = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 55, 55]])
HAND_SCORES = np.array([0.9, 0.8, 0.9, 0.3])
IOU_01 = 9 / 11


def random_boxes(rng, n, dtype, adversarial=False):
    """Integer-grid boxes (overlaps, degenerate ones) plus a random fraction; adversarial adds
    identical copies, nested boxes, translated copies and zero-area boxes."""
    corner = rng.integers(0, 10, (n, 2))
    b = np.concatenate([corner, corner + rng.integers(-1, 8, (n, 2))], axis=1)
    b = (b + rng.random((n, 4)) * 0.5).astype(dtype)
    if adversarial:
        for i in range(0, n - 3, 4):
            b[i + 1] = b[i]
            b[i + 2] = b[i] + np.array([0.25, 0.25, -0.25, -0.25], dtype)
            b[i + 3] = b[i] + np.array([3, 0, 3, 0], dtype)
        b[-1, 2:] = b[-1, :2]
    return b


def random_scores(rng, n, dtype, ties):
    if not ties:
        return rng.random(n).astype(dtype)
    s = (rng.integers(1, 4, n) / 4).astype(dtype)
    near = rng.random(n) < 0.3
    s[near] = np.nextafter(s[near], dtype(1))  # one ulp above a tied value
    return s


def problems(count=12):
    """(boxes, scores, labels) for random and adversarial sets, float32 and float64."""
    rng = np.random.default_rng(7)
    for dtype in DTYPES:
        for k in range(count):
            n = int(rng.integers(2, 40))
            b = random_boxes(rng, n, dtype, adversarial=k % 2 == 1)
            yield b, random_scores(rng, n, dtype, ties=k % 3 != 0), rng.integers(0, 3, n)


# --------------------------------------------------------------------------------------------
# soft_nms


@pytest.mark.parametrize("backend", SOFT)
@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_nms_hand_computed(backend, dtype):
    boxes, scores = HAND_BOXES.astype(dtype), HAND_SCORES.astype(dtype)
    # gaussian: 0 (first of the tied 0.9s) decays 2 by exp(-1/0.5) and 1 by exp(-IOU_01^2/0.5);
    # 3 (0.3) overlaps nothing; then 1, which decays 2 once more.
    g = math.exp(-IOU_01**2 / 0.5)
    keep, kept = ops.soft_nms(boxes, scores, backend=backend)
    np.testing.assert_array_equal(keep, [0, 3, 1, 2])
    assert keep.dtype == np.int64 and kept.dtype == dtype
    assert_close(kept, np.array([0.9, 0.3, 0.8 * g, 0.9 * math.exp(-2) * g], dtype))
    # linear, threshold 0.3: box 2 (IoU 1) goes to 0 and is dropped; 1 keeps 0.8 * (1 - 9/11)
    keep, kept = ops.soft_nms(boxes, scores, method="linear", backend=backend)
    np.testing.assert_array_equal(keep, [0, 3, 1])
    assert_close(kept, np.array([0.9, 0.3, 0.8 * (1 - IOU_01)], dtype))
    # a score threshold above 0.3 drops box 3 from the start, and the decayed ones
    keep, kept = ops.soft_nms(boxes, scores, score_threshold=0.35, backend=backend)
    np.testing.assert_array_equal(keep, [0])


@pytest.mark.parametrize("backend", SOFT)
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_matches_the_oracle(backend, method):
    for boxes, scores, _ in problems():
        for sigma, thr, score_thr in ((0.5, 0.3, 0.001), (0.1, 0.0, 0.3), (2.0, 0.6, 0.0)):
            keep, kept = ops.soft_nms(boxes, scores, sigma, thr, score_thr, method, backend=backend)
            want_keep, want_kept = oracles.soft_nms(boxes, scores, sigma, thr, score_thr, method)
            np.testing.assert_array_equal(keep, want_keep)
            assert_close(kept, want_kept, boxes.dtype)


@pytest.mark.parametrize("backend", SOFT)
def test_soft_nms_as_opencv(backend):
    """cv2.dnn.softNMSBoxes on integer (x, y, w, h) rectangles: the same picks, in the same
    order, with the same scores (OpenCV keeps them in float32)."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 60, (80, 2))
    wh = rng.integers(1, 20, (80, 2))
    boxes = np.concatenate([centres, centres + wh], axis=1).astype(np.float32)
    scores = rng.random(80).astype(np.float32)
    scores[5] = scores[6]  # a tie
    xywh = [tuple(r) for r in np.concatenate([centres, wh], axis=1).tolist()]
    for method, cv_method in (("gaussian", cv2.dnn.SOFT_NMSMETHOD_SOFTNMS_GAUSSIAN),
                              ("linear", cv2.dnn.SOFT_NMSMETHOD_SOFTNMS_LINEAR)):
        cv_scores, cv_keep = cv2.dnn.softNMSBoxes(xywh, scores.tolist(), 0.01, 0.3, sigma=0.5,
                                                  method=cv_method)
        keep, kept = ops.soft_nms(boxes, scores, 0.5, 0.3, 0.01, method, backend=backend)
        np.testing.assert_array_equal(keep, cv_keep)
        assert_close(kept, cv_scores)


@pytest.mark.parametrize("backend", SOFT)
@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_nms_edge_cases(backend, dtype):
    keep, kept = ops.soft_nms(np.zeros((0, 4), dtype), np.zeros(0, dtype), backend=backend)
    assert keep.shape == kept.shape == (0,) and keep.dtype == np.int64 and kept.dtype == dtype
    one = np.array([[0, 0, 1, 1]], dtype)
    assert ops.soft_nms(one, np.array([0.5], dtype), backend=backend)[0].tolist() == [0]
    assert ops.soft_nms(one, np.array([0.0005], dtype), backend=backend)[0].tolist() == []
    # identical boxes with equal scores: picked by index, each decayed once more than the last
    same = np.repeat(one, 4, axis=0)
    keep, kept = ops.soft_nms(same, np.full(4, 0.5, dtype), backend=backend)
    np.testing.assert_array_equal(keep, [0, 1, 2, 3])
    assert_close(kept, (0.5 * np.exp(-2.0) ** np.arange(4)).astype(dtype))
    # zero-area boxes overlap nothing: no decay; NaN scores are never kept
    flat = np.array([[0, 0, 0, 5], [0, 0, 0, 5], [0, 0, 1, 1]], dtype)
    keep, kept = ops.soft_nms(flat, np.array([0.5, np.nan, 0.4], dtype), backend=backend)
    np.testing.assert_array_equal(keep, [0, 2])
    assert_close(kept, np.array([0.5, 0.4], dtype))


@pytest.mark.parametrize("backend", SOFT)
@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_soft_nms_nan_and_inf_boxes_decay_nothing(backend):
    boxes = np.array([[0, 0, 2, 2], [np.nan, 0, 2, 2], [0, 0, 2, 2], [0, 0, np.inf, 2]], np.float64)
    scores = np.array([0.9, 0.95, 0.8, 0.7])
    keep, kept = ops.soft_nms(boxes, scores, method="linear", backend=backend)
    # the NaN box (picked first) decays nothing; box 0 zeroes its copy 2; the infinitely wide
    # box has IoU 0 with box 0
    np.testing.assert_array_equal(keep, [1, 0, 3])
    np.testing.assert_array_equal(kept, [0.95, 0.9, 0.7])
    np.testing.assert_array_equal(keep, ops.soft_nms(boxes, scores, method="linear", backend="reference")[0])


# --------------------------------------------------------------------------------------------
# diou_nms


@pytest.mark.parametrize("backend", DIOU)
@pytest.mark.parametrize("dtype", DTYPES)
def test_diou_nms_hand_computed(backend, dtype):
    # IoU 2/6; centres 1 apart; enclosing box 3 x 2: DIoU = 1/3 - 1/13 = 0.256
    boxes = np.array([[0, 0, 2, 2], [1, 0, 3, 2]], dtype)
    scores = np.array([0.9, 0.8], dtype)
    assert ops.nms(boxes, scores, 0.3, backend=backend).tolist() == [0]
    assert ops.diou_nms(boxes, scores, 0.3, backend=backend).tolist() == [0, 1]
    assert ops.diou_nms(boxes, scores, 0.25, backend=backend).tolist() == [0]
    # nested boxes with the same centre: DIoU = IoU = 1/4
    nested = np.array([[0, 0, 4, 4], [1, 1, 3, 3]], dtype)
    assert ops.diou_nms(nested, scores, 0.24, backend=backend).tolist() == [0]
    assert ops.diou_nms(nested, scores, 0.25, backend=backend).tolist() == [0, 1]


@pytest.mark.parametrize("backend", DIOU)
def test_diou_nms_matches_the_oracle(backend):
    for boxes, scores, _ in problems():
        for thr in (-0.3, 0.0, 0.3, 0.6):
            keep = ops.diou_nms(boxes, scores, thr, backend=backend)
            np.testing.assert_array_equal(keep, oracles.diou_nms(boxes, scores, thr))


@pytest.mark.parametrize("backend", DIOU)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_diou_nms_edge_cases(backend, dtype):
    empty = ops.diou_nms(np.zeros((0, 4), dtype), np.zeros(0, dtype), 0.5, backend=backend)
    assert empty.shape == (0,) and empty.dtype == np.int64
    one = np.array([[0, 0, 1, 1]], dtype)
    assert ops.diou_nms(one, np.array([0.5], dtype), 0.5, backend=backend).tolist() == [0]
    # identical boxes: DIoU 1; ties keep the lower index; at threshold 1 nothing is dropped
    same = np.repeat(one, 3, axis=0)
    assert ops.diou_nms(same, np.full(3, 0.5, dtype), 0.5, backend=backend).tolist() == [0]
    assert ops.diou_nms(same, np.full(3, 0.5, dtype), 1.0, backend=backend).tolist() == [0, 1, 2]
    # two copies of one point: IoU 0 (empty union), penalty 0 (c = 0): DIoU 0
    point = np.array([[1, 1, 1, 1], [1, 1, 1, 1]], dtype)
    assert ops.diou_nms(point, np.array([0.5, 0.4], dtype), -0.1, backend=backend).tolist() == [0]
    assert ops.diou_nms(point, np.array([0.5, 0.4], dtype), 0.0, backend=backend).tolist() == [0, 1]
    # a NaN box suppresses nothing and is suppressed by nothing
    nan = np.array([[0, 0, 2, 2], [np.nan, 0, 2, 2], [0, 0, 2, 2]], dtype)
    scores = np.array([0.9, 0.8, 0.7], dtype)
    assert ops.diou_nms(nan, scores, -0.5, backend=backend).tolist() == [0, 1]


# --------------------------------------------------------------------------------------------
# matrix_nms


@pytest.mark.parametrize("backend", MATRIX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_nms_hand_computed(backend, dtype):
    boxes, scores = HAND_BOXES.astype(dtype), HAND_SCORES.astype(dtype)
    labels = np.zeros(4, np.int64)
    # ranked 0, 2, 1, 3 (0 before 2: equal scores, lower index). comp: 0 -> 0, 2 -> 1,
    # 1 -> 9/11. Box 2: f(1)/f(0); box 1: min(f(9/11)/f(0), f(9/11)/f(1)) = f(9/11); box 3: 1.
    f = lambda x: math.exp(-2.0 * x * x)  # noqa: E731
    want = [0.9, 0.8 * f(IOU_01), 0.9 * f(1), 0.3]
    assert_close(ops.matrix_nms(boxes, scores, labels, backend=backend), np.array(want, dtype))
    # linear: box 2 gets 1 - 1 = 0; for box 1 the term of box 2 (comp 1) is left out
    want = [0.9, 0.8 * (1 - IOU_01), 0.0, 0.3]
    assert_close(ops.matrix_nms(boxes, scores, labels, "linear", backend=backend), np.array(want, dtype))
    # labels apart: boxes 0 and 1 (label 0) never meet 2 and 3 (label 1)
    split = np.array([0, 0, 1, 1])
    want = [0.9, 0.8 * f(IOU_01), 0.9, 0.3]
    assert_close(ops.matrix_nms(boxes, scores, split, backend=backend), np.array(want, dtype))


@pytest.mark.parametrize("backend", MATRIX)
@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_matches_the_oracle(backend, kernel):
    for boxes, scores, labels in problems(8):
        for sigma in (0.5, 2.0):
            got = ops.matrix_nms(boxes, scores, labels, kernel, sigma, backend=backend)
            assert got.dtype == scores.dtype and got.shape == scores.shape
            assert_close(got, oracles.matrix_nms(boxes, scores, labels, kernel, sigma), boxes.dtype)


@pytest.mark.parametrize("backend", MATRIX)
def test_matrix_nms_answers_in_input_order(backend):
    rng = np.random.default_rng(11)
    boxes = random_boxes(rng, 30, np.float64, adversarial=True)
    scores, labels = rng.random(30), rng.integers(0, 2, 30)
    perm = rng.permutation(30)
    got = ops.matrix_nms(boxes, scores, labels, backend=backend)
    assert_close(ops.matrix_nms(boxes[perm], scores[perm], labels[perm], backend=backend), got[perm])
    assert np.all(got <= scores)


@pytest.mark.parametrize("backend", MATRIX)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_matrix_nms_edge_cases(backend, dtype):
    out = ops.matrix_nms(np.zeros((0, 4), dtype), np.zeros(0, dtype), np.zeros(0, np.int64), backend=backend)
    assert out.shape == (0,) and out.dtype == dtype
    one = np.array([[0, 0, 1, 1]], dtype)
    assert ops.matrix_nms(one, np.array([0.5], dtype), np.array([3]), backend=backend).tolist() == [0.5]
    # identical boxes, equal scores: the first is kept whole, every other fully overlaps it
    same = np.repeat(one, 3, axis=0)
    got = ops.matrix_nms(same, np.full(3, 0.5, dtype), np.zeros(3, np.int64), "linear", backend=backend)
    np.testing.assert_array_equal(got, np.array([0.5, 0, 0], dtype))
    # zero-area boxes decay nothing; int32 labels are accepted
    flat = np.array([[0, 0, 0, 5], [0, 0, 0, 5]], dtype)
    got = ops.matrix_nms(flat, np.array([0.5, 0.4], dtype), np.zeros(2, np.int32), backend=backend)
    np.testing.assert_array_equal(got, np.array([0.5, 0.4], dtype))
    # NaN coordinates: NaN for the boxes ranked after the NaN box in its label, not before
    nan = np.array([[0, 0, 2, 2], [np.nan, 0, 2, 2], [0, 0, 2, 2], [5, 5, 6, 6]], dtype)
    got = ops.matrix_nms(nan, np.array([0.9, 0.8, 0.7, 0.6], dtype), np.array([0, 0, 0, 1]), backend=backend)
    assert got[0] == dtype(0.9) and np.isnan(got[1]) and np.isnan(got[2]) and got[3] == dtype(0.6)


# --------------------------------------------------------------------------------------------
# batched_nms(class_agnostic=), and detect_postprocess(method=)


@pytest.mark.parametrize("backend", numpy_backends_with("batched_nms"))
def test_batched_nms_class_agnostic_is_nms(backend):
    for boxes, scores, labels in problems(4):
        want = ops.nms(boxes, scores, 0.4, backend="reference")
        np.testing.assert_array_equal(
            ops.batched_nms(boxes, scores, labels, 0.4, class_agnostic=True, backend=backend), want)
        np.testing.assert_array_equal(
            ops.batched_nms(boxes, scores, None, 0.4, class_agnostic=True, backend=backend), want)
        np.testing.assert_array_equal(ops.batched_nms(boxes, scores, labels, 0.4, backend=backend),
                                      oracles.nms(boxes, scores, 0.4, labels))


def test_detect_postprocess_methods():
    """Three boxes of one class on a 1 x 1 grid: A (score 0.9), B overlapping A with IoU 0.6
    and centres 0.1 apart (0.8), C apart (0.7). The smallest box enclosing A and B is 0.5 x
    0.4, so their DIoU is 0.6 - 0.01 / 0.41 = 0.576."""
    pred = np.zeros((1, 1, 3, 6))
    pred[0, 0, 0] = [0.9, 0.3, 0.5, 0.4, 0.4, 1.0]
    pred[0, 0, 1] = [0.8, 0.4, 0.5, 0.4, 0.4, 1.0]  # IoU with A: 0.12 / 0.2 = 0.6
    pred[0, 0, 2] = [0.7, 0.9, 0.9, 0.1, 0.1, 1.0]
    # NMS drops B up to a threshold of 0.6, DIoU-NMS up to 0.576
    assert detect_postprocess(pred, 0.5, 0.58)["scores"].tolist() == [0.9, 0.7]
    assert detect_postprocess(pred, 0.5, 0.57, method="diou")["scores"].tolist() == [0.9, 0.7]
    assert detect_postprocess(pred, 0.5, 0.58, method="diou")["scores"].tolist() == [0.9, 0.8, 0.7]
    # soft: B decays to 0.8 exp(-0.36 / 0.5) = 0.389 (under the score threshold 0.5)
    out = detect_postprocess(pred, 0.5, 0.5, method="soft")
    np.testing.assert_allclose(out["scores"], [0.9, 0.7])
    out = detect_postprocess(pred, 0.3, 0.5, method="soft")
    np.testing.assert_allclose(out["scores"], [0.9, 0.7, 0.8 * math.exp(-0.72)])
    np.testing.assert_allclose(out["boxes"][2], [0.2, 0.3, 0.6, 0.7])
    # matrix (gaussian, sigma 2): B decays to 0.8 exp(-2 * 0.36) = 0.389
    out = detect_postprocess(pred, 0.3, 0.5, method="matrix")
    np.testing.assert_allclose(out["scores"], [0.9, 0.7, 0.8 * math.exp(-0.72)])
    with pytest.raises(ValueError, match="detect_postprocess: method"):
        detect_postprocess(pred, 0.5, 0.5, method="fast")
