"""soft_nms, diou_nms, matrix_nms and the per-category batched_nms of the 'cuda' backend under
the CUDA simulator, against the plain-loop oracles and the reference."""
import numpy as np
import pytest

import oracles
from cuda_sim_util import assert_close, poison_outputs, requires_simulator  # noqa: F401

from pyconv import ops  # noqa: E402

pytestmark = requires_simulator


def _boxes(rng, n, dtype):
    """Overlapping boxes with an identical copy, a nested box and a zero-area box."""
    corner = rng.uniform(0, 8, (n, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0.5, 4, (n, 2))], axis=1).astype(dtype)
    boxes[1] = boxes[0]
    boxes[2] = boxes[0] + np.array([0.25, 0.25, -0.25, -0.25], dtype)
    boxes[3, 2:] = boxes[3, :2]
    return boxes


def _tied_scores(rng, n, dtype):
    s = (rng.integers(1, 4, n) / 4).astype(dtype)
    s[::3] = np.nextafter(s[::3], dtype(1))  # near-ties
    return s


@pytest.mark.parametrize("dtype,method", [(np.float32, "gaussian"), (np.float64, "linear")])
def test_soft_nms(dtype, method):
    rng = np.random.default_rng(40)
    boxes, scores = _boxes(rng, 12, dtype), _tied_scores(rng, 12, dtype)
    keep, kept = ops.soft_nms(boxes, scores, 0.5, 0.3, 0.05, method, backend="cuda")
    want_keep, want_kept = oracles.soft_nms(boxes, scores, 0.5, 0.3, 0.05, method)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, want_keep)
    assert_close(kept, want_kept, dtype)
    empty = ops.soft_nms(boxes[:0], scores[:0], backend="cuda")
    assert empty[0].shape == empty[1].shape == (0,)


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
def test_diou_nms(dtype):
    rng = np.random.default_rng(41)
    boxes, scores = _boxes(rng, 70, dtype), _tied_scores(rng, 70, dtype)  # two mask words
    for thr in (-0.2, 0.3):
        np.testing.assert_array_equal(ops.diou_nms(boxes, scores, thr, backend="cuda"),
                                      oracles.diou_nms(boxes, scores, thr))
    assert ops.diou_nms(boxes[:0], scores[:0], 0.5, backend="cuda").shape == (0,)


@pytest.mark.parametrize("dtype,kernel", [(np.float32, "gaussian"), (np.float64, "linear")])
def test_matrix_nms(dtype, kernel):
    rng = np.random.default_rng(42)
    boxes, scores = _boxes(rng, 20, dtype), _tied_scores(rng, 20, dtype)
    labels = rng.integers(0, 3, 20)
    got = ops.matrix_nms(boxes, scores, labels, kernel, 2.0, backend="cuda")
    assert_close(got, oracles.matrix_nms(boxes, scores, labels, kernel, 2.0), dtype)
    assert ops.matrix_nms(boxes[:0], scores[:0], labels[:0], backend="cuda").shape == (0,)


def test_batched_nms_by_category():
    rng = np.random.default_rng(43)
    boxes, scores = _boxes(rng, 40, np.float32), _tied_scores(rng, 40, np.float32)
    cats = rng.integers(0, 4, 40)
    np.testing.assert_array_equal(ops.batched_nms(boxes, scores, cats, 0.3, backend="cuda"),
                                  oracles.nms(boxes, scores, 0.3, cats))
    np.testing.assert_array_equal(
        ops.batched_nms(boxes, scores, None, 0.3, class_agnostic=True, backend="cuda"),
        oracles.nms(boxes, scores, 0.3))


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_nan_and_inf_follow_the_reference():
    rng = np.random.default_rng(44)
    boxes = rng.choice([0, 1, 2, 3, np.nan, np.inf, -np.inf], (16, 4)).astype(np.float32)
    boxes[:3] = [[0, 0, 2, 2], [np.nan, 0, 2, 2], [0, 0, 2, 2]]
    scores = rng.random(16).astype(np.float32)
    labels = rng.integers(0, 2, 16)
    for method in ("gaussian", "linear"):
        got = ops.soft_nms(boxes, scores, method=method, backend="cuda")
        want = ops.soft_nms(boxes, scores, method=method, backend="reference")
        np.testing.assert_array_equal(got[0], want[0])
        assert_close(got[1], want[1])
    np.testing.assert_array_equal(ops.diou_nms(boxes, scores, 0.0, backend="cuda"),
                                  ops.diou_nms(boxes, scores, 0.0, backend="reference"))
    assert_close(ops.matrix_nms(boxes, scores, labels, backend="cuda"),
                 ops.matrix_nms(boxes, scores, labels, backend="reference"))
