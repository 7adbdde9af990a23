"""SegNet (max-unpooling decoder) on synthetic shapes, and the DNA motif CNN on sequences with
planted IUPAC motifs: shapes, data, and losses that fall."""
import numpy as np

import pyconv
import pyconv.nn.functional as F
from pyconv import data
from pyconv.models import MotifCNN, SegNet
from pyconv.models.segnet import segmentation_scores
from pyconv.optim import Adam


def fit(model, x, y, steps, lr, loss_fn=F.cross_entropy):
    opt = Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_synthetic_shapes():
    x, masks = data.synthetic_shapes(20, 16, seed=0)
    assert x.shape == (20, 1, 16, 16) and x.dtype == np.float32 and masks.shape == (20, 16, 16)
    assert set(np.unique(masks)) == {0, 1, 2, 3}
    for k in range(20):  # shapes are brighter than their background
        assert x[k, 0][masks[k] > 0].mean() > x[k, 0][masks[k] == 0].mean() + 0.2


def test_segnet_upsamples_at_the_pooling_positions_and_learns():
    pyconv.manual_seed(0)
    model = SegNet(1, 4, widths=(4, 8))
    x, masks = data.synthetic_shapes(8, 16, seed=1)
    assert model(x).shape == (8, 4, 16, 16)
    losses = fit(model, x, masks, 25, 1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    scores = segmentation_scores(model.predict(x), masks, 4)
    assert scores["pixel_accuracy"] > 0.8


def test_segmentation_scores():
    predicted = np.array([[0, 1], [1, 1]])
    target = np.array([[0, 1], [0, 1]])
    s = segmentation_scores(predicted, target, 2)
    assert s["pixel_accuracy"] == 0.75 and s["iou"] == [0.5, 2 / 3]


def test_synthetic_dna_plants_the_motif():
    x, y, seqs = data.synthetic_dna(60, 30, motifs=("TGASTCA",), seed=0)
    assert x.shape == (60, 4, 30) and set(np.unique(y)) == {0, 1}
    planted = [s for s, label in zip(seqs, y) if label == 1]
    assert all("TGACTCA" in s or "TGAGTCA" in s for s in planted)  # S is C or G
    np.testing.assert_array_equal(x[0], data.one_hot_dna(seqs[0]))


def test_motif_cnn_learns_and_shows_its_filters():
    pyconv.manual_seed(0)
    x, y, _ = data.synthetic_dna(96, 40, motifs=("TGASTCA",), seed=1)
    model = MotifCNN(num_classes=2, n_filters=6, filter_size=8)
    assert model(x).shape == (96, 2) and model.filters().shape == (6, 4, 8)
    losses = fit(model, x, y, 40, 2e-2)
    assert losses[-1] < 0.5 * losses[0], losses
