"""Rotated-box kernels of the 'cuda' backend under the CUDA simulator: box_iou_rotated against
the exact oracle, nms_rotated against the reference and the oracle on ties and near-ties."""
import numpy as np
import pytest

import oracles
from cuda_sim_util import assert_close, poison_outputs, requires_simulator  # noqa: F401
from test_boxes_rotated import adversarial_boxes, random_boxes, scores_with_ties

from pyconv import ops

pytestmark = requires_simulator


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_iou_rotated_matches_the_oracle(dtype):
    rng = np.random.default_rng(40)
    a = np.concatenate([random_boxes(rng, 5, dtype=dtype), adversarial_boxes(rng, dtype)])
    b = a[::3].copy()
    got = ops.box_iou_rotated(a, b, backend="cuda")
    assert got.dtype == dtype and got.shape == (len(a), len(b))
    tol = 1e-9 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, oracles.rotated_iou_matrix(a, b), rtol=tol, atol=tol, equal_nan=True)
    assert_close(got, ops.box_iou_rotated(a, b, backend="reference"), dtype)
    assert ops.box_iou_rotated(a[:0], b, backend="cuda").shape == (0, len(b))


@pytest.mark.parametrize("dtype,threshold", [(np.float32, 0.3), pytest.param(np.float64, 0.6, marks=pytest.mark.slow),
                                             (np.float32, 0.0)])
def test_nms_rotated_with_ties_matches_reference_and_oracle(dtype, threshold):
    rng = np.random.default_rng(41)
    # More than 64 boxes: several mask words per row and tiles off the diagonal.
    boxes = np.concatenate([random_boxes(rng, 20, spread=12, dtype=dtype), adversarial_boxes(rng, dtype)])
    scores = scores_with_ties(rng, len(boxes), dtype)
    scores[5] = np.nan
    keep = ops.nms_rotated(boxes, scores, threshold, backend="cuda")
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, ops.nms_rotated(boxes, scores, threshold, backend="reference"))
    np.testing.assert_array_equal(keep, oracles.nms_rotated(boxes, scores, threshold))


def test_nms_rotated_small_inputs():
    f = np.float32
    empty = ops.nms_rotated(np.zeros((0, 5), f), np.zeros(0, f), 0.5, backend="cuda")
    assert empty.shape == (0,) and empty.dtype == np.int64
    same = np.repeat(np.array([[1, 1, 2, 2, 30]], f), 3, axis=0)
    assert ops.nms_rotated(same, np.ones(3, f), 0.5, backend="cuda").tolist() == [0]
    assert ops.nms_rotated(same, np.ones(3, f), 1.0, backend="cuda").tolist() == [0, 1, 2]
