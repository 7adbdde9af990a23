"""Rotated boxes: box_iou_rotated and nms_rotated on every NumPy backend, against an exact
oracle of another algorithm (tests/oracles.py), against cases worked out by hand, against the
axis-aligned box_iou, and nms_rotated against OpenCV's NMSBoxesRotated."""
import functools
import math

import numpy as np
import pytest

import oracles
from conftest import assert_close, numpy_backends_with
from pyconv import ops

BACKENDS = numpy_backends_with("box_iou_rotated")
NMS_BACKENDS = numpy_backends_with("nms_rotated")
DTYPES = [np.float32, np.float64]


def iou(a, b, backend, dtype=np.float64):
    return ops.box_iou_rotated(np.asarray(a, dtype).reshape(-1, 5), np.asarray(b, dtype).reshape(-1, 5),
                               backend=backend)


def random_boxes(rng, n, spread=20.0, dtype=np.float64):
    centres = rng.uniform(0, spread, (n, 2))
    sizes = rng.uniform(1, 10, (n, 2))
    angles = rng.uniform(-400, 400, (n, 1))
    return np.concatenate([centres, sizes, angles], axis=1).astype(dtype)


def adversarial_boxes(rng, dtype=np.float64):
    """Pairs that stress the clipping: near-identical boxes, shared edges, containment, tiny and
    far-off boxes, angle wrap-arounds, empty and non-finite boxes."""
    a = random_boxes(rng, 6)
    rows = [a]
    rows.append(a + rng.normal(0, 1e-9, a.shape))                          # nearly identical
    rows.append(a * [1, 1, 1, 1, 1] + [0, 0, 0, 0, 180])                   # half turn
    rows.append(a[:, [0, 1, 3, 2, 4]] + [0, 0, 0, 0, 90])                  # quarter turn, w <-> h
    t = np.radians(a[:, 4])
    along = np.stack([a[:, 2] * np.cos(t), -a[:, 2] * np.sin(t)], axis=1)
    rows.append(np.concatenate([a[:, :2] + along, a[:, 2:]], axis=1))      # neighbour along width
    rows.append(a * [1, 1, 0.3, 0.4, 1] + [0, 0, 0, 0, 17])                # inside, rotated
    rows.append(np.array([[3, 3, 2, 2, 0], [5, 3, 2, 2, 0], [4, 4, 2, 2, 90], [3, 3, 2, 2, 45],
                          [3, 3, 0, 2, 0], [3, 3, 2, -1, 30], [3, 3, 1e-6, 1e-6, 10],
                          [1e6 + 1, 1e6, 3, 2, 33], [1e6, 1e6, 3, 2, 123], [3, 3, 2, 2, -45],
                          [3, 3, 2, 2, 360], [3, 3, 2, 2, -270], [3, 3, 2, 2, 1e9]], float))
    return np.concatenate(rows).astype(dtype)


# ------------------------------------------------------------------------------------------
# Cases worked out by hand


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_unit_squares_at_45_degrees(backend, dtype):
    # The overlap of a unit square and the same square turned 45 degrees about its centre is a
    # regular octagon: the square less four corner triangles with legs 1 - sqrt(2)/2, area
    # 1 - 2 (1 - sqrt(2)/2)^2 = 2 (sqrt(2) - 1); the IoU is that over 2 - that = 1 / sqrt(2).
    got = iou([0, 0, 1, 1, 0], [0, 0, 1, 1, 45], backend, dtype)
    assert_close(got, np.array([[1 / math.sqrt(2)]], dtype))
    # Off-centre and bigger: the same shape, scaled and moved, has the same IoU.
    got = iou([100, -7, 3, 3, 10], [100, -7, 3, 3, 55], backend, dtype)
    assert_close(got, np.array([[1 / math.sqrt(2)]], dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_overlaps(backend):
    cases = [
        ([0, 0, 2, 2, 0], [1, 0, 2, 2, 0], 1 / 3),        # half overlap: 2 / (4 + 4 - 2)
        ([0, 0, 2, 2, 0], [2, 0, 2, 2, 0], 0.0),          # shared edge
        ([0, 0, 2, 2, 0], [2, 2, 2, 2, 0], 0.0),          # shared corner
        ([0, 0, 4, 4, 0], [0, 0, 2, 2, 30], 0.25),        # inside: 4 / 16
        ([0, 0, 4, 2, 90], [0, 0, 2, 4, 0], 1.0),         # a quarter turn swaps w and h
        ([0, 0, 4, 2, 0], [0, 0, 4, 2, 90], 4 / 12),      # a cross: 2x2 of 8 + 8 - 4
        ([0, 0, 4, 2, -180], [0, 0, 4, 2, 540], 1.0),
        ([0, 0, 0, 2, 0], [0, 0, 0, 2, 0], 0.0),          # empty, not 0 / 0
        ([0, 0, -1, -1, 0], [0, 0, 1, 1, 0], 0.0),        # negative sizes are empty
    ]
    for a, b, expected in cases:
        assert_close(iou(a, b, backend), np.array([[expected]]))
        assert_close(iou(b, a, backend), np.array([[expected]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_angles_turn_counter_clockwise_on_an_image(backend):
    # At 30 degrees the width of a 10 x 1 box runs along (cos 30, -sin 30): up and to the right
    # on an image (y points down), as detectron2's rotated boxes.
    long = [0, 0, 10, 1, 30]
    end = 4.5 * math.cos(math.radians(30)), 4.5 * math.sin(math.radians(30))
    assert iou(long, [end[0], -end[1], 0.5, 0.5, 0], backend)[0, 0] > 0.02
    assert iou(long, [end[0], end[1], 0.5, 0.5, 0], backend)[0, 0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_unrotated_boxes_match_box_iou(backend, dtype):
    rng = np.random.default_rng(3)
    rot = random_boxes(rng, 25, spread=10, dtype=dtype)
    rot[:, 4] = rng.choice([0, 180, -180, 360, 720], 25)
    xyxy = np.concatenate([rot[:, :2] - rot[:, 2:4] / 2, rot[:, :2] + rot[:, 2:4] / 2], axis=1)
    assert_close(ops.box_iou_rotated(rot, rot, backend=backend),
                 ops.box_iou(xyxy.astype(np.float64), xyxy.astype(np.float64)).astype(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrapped_angles_give_the_same_boxes(backend):
    rng = np.random.default_rng(4)
    a = random_boxes(rng, 20, spread=8)
    base = ops.box_iou_rotated(a, a, backend=backend)
    for turn in (360, -360, 720, 180, -180):
        assert_close(ops.box_iou_rotated(a + [0, 0, 0, 0, turn], a, backend=backend), base)
    quarter = a[:, [0, 1, 3, 2, 4]] + [0, 0, 0, 0, 90]
    assert_close(ops.box_iou_rotated(quarter, a, backend=backend), base)
    # Multiples of 90 degrees are exact: no sliver of overlap between neighbours.
    side_by_side = np.array([[0, 0, 2, 2, 90], [2, 0, 2, 2, -90], [0, 2, 2, 2, 270]], float)
    assert np.count_nonzero(ops.box_iou_rotated(side_by_side, side_by_side, backend=backend)
                            - np.eye(3)) == 0


# ------------------------------------------------------------------------------------------
# Against the exact oracle


@functools.lru_cache(maxsize=None)
def oracle_case(dtype):
    """Random and adversarial boxes, and the oracle's IoU matrix of them (slow: computed once)."""
    rng = np.random.default_rng(5)
    boxes = np.concatenate([random_boxes(rng, 24, spread=15, dtype=dtype), adversarial_boxes(rng, dtype)])
    return boxes, oracles.rotated_iou_matrix(boxes)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_random_and_adversarial_boxes_match_the_oracle(backend, dtype):
    boxes, expected = oracle_case(dtype)
    got = ops.box_iou_rotated(boxes, boxes, backend=backend)
    assert got.dtype == dtype and got.shape == (len(boxes), len(boxes))
    # The oracle's corners come from unreduced angles: agreement to ~1e-12 in float64.
    tol = 1e-9 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol, equal_nan=True)
    assert np.all((got >= 0) & (got <= 1) | np.isnan(got))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_give_nan_for_every_pair_of_their_box(backend):
    boxes = np.array([[0, 0, 2, 2, 0], [np.nan, 0, 2, 2, 0], [0, 0, 2, np.inf, 0],
                      [0, 0, 2, 2, -np.inf], [0, 0, 0, 0, 0], [1e300, 0, 1, 1, 0]], float)
    got = ops.box_iou_rotated(boxes, boxes, backend=backend)
    bad = np.zeros(len(boxes), bool)
    bad[1:4] = True
    np.testing.assert_array_equal(np.isnan(got), bad[:, None] | bad[None, :])
    assert got[0, 0] == 1 and got[0, 4] == 0 and got[4, 4] == 0 and got[0, 5] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    none = np.zeros((0, 5), np.float32)
    assert ops.box_iou_rotated(none, np.ones((3, 5), np.float32), backend=backend).shape == (0, 3)
    assert ops.box_iou_rotated(np.ones((2, 5), np.float32), none, backend=backend).shape == (2, 0)


# ------------------------------------------------------------------------------------------
# NMS


def scores_with_ties(rng, n, dtype):
    """Scores from a few values (exact ties) and neighbours one ulp apart (near-ties)."""
    s = rng.integers(0, 4, n).astype(dtype) / dtype(4)
    near = rng.random(n) < 0.3
    s[near] = np.nextafter(s[near], dtype(1))
    return s


@pytest.mark.parametrize("backend", NMS_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
def test_nms_matches_the_oracle_with_ties(backend, dtype, threshold):
    boxes, iou = oracle_case(dtype)
    scores = scores_with_ties(np.random.default_rng(6), len(boxes), dtype)
    keep = ops.nms_rotated(boxes, scores, threshold, backend=backend)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, oracles.nms_rotated(boxes, scores, threshold, iou))


@pytest.mark.parametrize("backend", NMS_BACKENDS)
def test_nms_small_and_degenerate_inputs(backend):
    f = np.float32
    assert ops.nms_rotated(np.zeros((0, 5), f), np.zeros(0, f), 0.5, backend=backend).tolist() == []
    one = np.array([[1, 1, 2, 2, 30]], f)
    assert ops.nms_rotated(one, np.array([0.3], f), 0.5, backend=backend).tolist() == [0]
    same = np.repeat(one, 4, axis=0)
    # Identical boxes, equal scores: the lowest index survives; IoU 1 is not > 1.
    assert ops.nms_rotated(same, np.ones(4, f), 0.5, backend=backend).tolist() == [0]
    assert ops.nms_rotated(same, np.ones(4, f), 1.0, backend=backend).tolist() == [0, 1, 2, 3]
    # An empty box neither suppresses nor is suppressed; a NaN box is never suppressed and
    # suppresses nothing; NaN scores come last.
    boxes = np.array([[0, 0, 2, 2, 0], [0, 0, 0, 2, 0], [0, 0, 2, 2, np.nan], [0, 0, 2, 2, 5]], f)
    scores = np.array([1, 2, 3, np.nan], f)
    assert ops.nms_rotated(boxes, scores, 0.5, backend=backend).tolist() == [2, 1, 0]
    # A negative threshold: the top box suppresses every box with a defined IoU, even 0.
    assert ops.nms_rotated(boxes, scores, -0.5, backend=backend).tolist() == [2, 1]


def _opencv_rects(boxes):
    # OpenCV's RotatedRect angle turns the other way: its width runs along (cos a, sin a).
    return [((float(x), float(y)), (float(w), float(h)), -float(a)) for x, y, w, h, a in boxes]


@pytest.mark.parametrize("threshold", [0.1, 0.4, 0.7])
def test_nms_matches_opencv(threshold):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    n = 300
    # Boxes of one size: OpenCV counts a box inside another as IoU 1 whatever the areas, and
    # equal boxes are never strictly inside one another, so there the two definitions agree.
    boxes = np.concatenate([rng.uniform(0, 150, (n, 2)), np.broadcast_to([[24.0, 9.0]], (n, 2)),
                            rng.uniform(-180, 180, (n, 1))], axis=1).astype(np.float32)
    scores = (rng.integers(1, 6, n) / 5).astype(np.float32)  # many exact ties
    expected = np.asarray(cv2.dnn.NMSBoxesRotated(_opencv_rects(boxes), scores.tolist(), 0.0,
                                                  threshold), np.int64).reshape(-1)
    for backend in NMS_BACKENDS:
        if backend != "reference":
            np.testing.assert_array_equal(ops.nms_rotated(boxes, scores, threshold, backend=backend),
                                          expected)


# ------------------------------------------------------------------------------------------
# Bad arguments


def test_bad_arguments_name_the_op_and_argument():
    good = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match=r"box_iou_rotated: boxes2 must have shape \(N, 5\)"):
        ops.box_iou_rotated(good, np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="box_iou_rotated: boxes1 must be float32 or float64"):
        ops.box_iou_rotated(good.astype(np.int64), good)
    with pytest.raises(ValueError, match="nms_rotated: scores must have one entry per box"):
        ops.nms_rotated(good, np.zeros(2, np.float32), 0.5)
    with pytest.raises(TypeError, match="nms_rotated: iou_threshold must be a real number"):
        ops.nms_rotated(good, np.zeros(3, np.float32), float("nan"))
    with pytest.raises(ValueError, match="nms_rotated: boxes must be 2-D"):
        ops.nms_rotated(np.zeros(5, np.float32), np.zeros(1, np.float32), 0.5)
