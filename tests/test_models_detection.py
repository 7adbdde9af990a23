"""YOLO-style post-processing on a hand-built 2 x 2 grid with 2 anchors and 2 classes."""
import numpy as np
import pytest

from pyconv.models import detect_postprocess


def box(p, bx, by, bh, bw, *classes):
    return [p, bx, by, bh, bw, *classes]


def hand_built_grid():
    pred = np.zeros((2, 2, 2, 7))
    # cell (row 0, col 0): two boxes of class 0 around (0.25, 0.25); the second overlaps the
    # first with IoU 0.78 and scores less (0.76 < 0.81): suppressed
    pred[0, 0, 0] = box(0.9, 0.5, 0.5, 0.4, 0.4, 0.9, 0.1)
    pred[0, 0, 1] = box(0.8, 0.6, 0.5, 0.4, 0.4, 0.95, 0.05)
    # cell (0, 1): two boxes of class 1; the 0.855 one suppresses the 0.56 one (IoU 0.78)
    pred[0, 1, 0] = box(0.7, 0.1, 0.5, 0.4, 0.4, 0.2, 0.8)
    pred[0, 1, 1] = box(0.95, 0.2, 0.5, 0.4, 0.4, 0.1, 0.9)
    # cell (1, 0): the same flat box twice, as class 0 (score 0.56) and class 1 (0.54): NMS
    # works within a class, so both stay
    pred[1, 0, 0] = box(0.8, 0.5, 0.5, 0.2, 0.3, 0.7, 0.3)
    pred[1, 0, 1] = box(0.9, 0.5, 0.5, 0.2, 0.3, 0.4, 0.6)
    # cell (1, 1): a confident class but an unlikely object: score 0.3, below the threshold
    pred[1, 1, 0] = box(0.3, 0.5, 0.5, 0.5, 0.5, 1.0, 0.0)
    return pred


def test_hand_built_example():
    out = detect_postprocess(hand_built_grid(), score_threshold=0.5, iou_threshold=0.5)
    np.testing.assert_allclose(out["scores"], [0.855, 0.81, 0.56, 0.54])
    np.testing.assert_array_equal(out["classes"], [1, 0, 0, 1])
    np.testing.assert_allclose(out["boxes"], [[0.4, 0.05, 0.8, 0.45],
                                              [0.05, 0.05, 0.45, 0.45],
                                              [0.1, 0.65, 0.4, 0.85],
                                              [0.1, 0.65, 0.4, 0.85]], atol=1e-12)


def test_thresholds_and_scaling():
    grid = hand_built_grid()
    # a looser IoU threshold keeps the overlapping boxes; a higher score threshold drops more
    assert len(detect_postprocess(grid, 0.5, iou_threshold=0.9)["scores"]) == 6
    assert list(detect_postprocess(grid, 0.8, 0.5)["scores"]) == [0.855, pytest.approx(0.81)]
    scaled = detect_postprocess(grid, 0.5, 0.5, image_size=(100, 200))
    np.testing.assert_allclose(scaled["boxes"][0], [80, 5, 160, 45])
    batch = detect_postprocess(np.stack([grid, np.zeros_like(grid)]), 0.5, 0.5)
    assert len(batch) == 2 and len(batch[0]["scores"]) == 4 and len(batch[1]["scores"]) == 0
    with pytest.raises(ValueError, match="pred"):
        detect_postprocess(np.zeros((2, 2, 5)), 0.5, 0.5)
