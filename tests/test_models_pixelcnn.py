"""Gated PixelCNN: exact causality in raster order (mask A / mask B), no blind spot, the
strip sampling that evaluates the network once per pixel, sample shapes and values, and a
loss that falls."""
import numpy as np
import pytest

import pyconv
from pyconv import Tensor
from pyconv.nn import functional as F
from pyconv.models import PixelCNN
from pyconv.optim import Adam

S = 8


def small(levels=2, num_classes=0, n_layers=3, seed=0):
    pyconv.manual_seed(seed)
    return PixelCNN(image_size=S, levels=levels, channels=8, n_layers=n_layers, kernel_size=3,
                    hidden=8, num_classes=num_classes, dtype=np.float64)


def input_gradient(model, i, j, labels=None, levels=2):
    """sum over a batch and the output channels of |d logits[:, :, i, j] / d x| -> (S, S)."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, levels, (4, 1, S, S)) / (levels - 1)
    x = Tensor(x, requires_grad=True)
    model(x, labels)[:, :, i, j].sum().backward()
    return np.abs(x.grad).sum(axis=(0, 1))


@pytest.mark.parametrize("levels", [2, 256])
@pytest.mark.parametrize("pixel", [(0, 0), (0, 5), (3, 0), (4, 4), (7, 7)])
def test_causal_in_raster_order(pixel, levels):
    """The prediction of pixel i depends on no pixel at or after i (exactly zero gradient)."""
    i, j = pixel
    g = input_gradient(small(levels), i, j, levels=levels).reshape(-1)
    assert np.all(g[i * S + j:] == 0)


def test_no_blind_spot():
    """Every earlier pixel within the receptive field of an L-layer, k = 3 model (L rows up,
    L columns either side, L pixels to the left in the row) reaches the prediction, the
    up-right region that a single masked stack misses included."""
    model = small(n_layers=3)
    i, j = 5, 4
    g = input_gradient(model, i, j)
    L = 3
    for r in range(i - L, i):
        for c in range(j - L, j + L + 1):
            assert g[r, c] > 0, (r, c)
    for c in range(j - L, j):
        assert g[i, c] > 0, (i, c)
    assert g[i - L - 1].sum() == 0  # and nothing beyond it


def test_first_layer_mask_A_later_layers_mask_B():
    model = small()
    masks = [(layer.vertical.mask, layer.horizontal.mask) for layer in model.layers]
    vertical_a, horizontal_a = masks[0]
    assert vertical_a[1].sum() == 0 and horizontal_a[0, 1] == 0  # the centre row / pixel hidden
    for vertical_b, horizontal_b in masks[1:]:
        assert vertical_b[1].sum() == 3 and horizontal_b[0, 1] == 1 and horizontal_b[0, 2] == 0
    # a first layer with mask B would let each pixel see itself
    model.layers[0].horizontal.mask = masks[1][1]
    assert input_gradient(model, 4, 4)[4, 4] > 0


def test_the_strip_evaluated_while_sampling_gives_the_full_image_prediction():
    model = small(levels=256)
    x = np.random.default_rng(0).integers(0, 256, (2, 1, S, S)) / 255
    full = model(x).data
    for i in range(S):
        top = max(0, i - model.rows_of_context)
        np.testing.assert_allclose(model(x[:, :, top:i + 1]).data[:, :, -1], full[:, :, i], atol=1e-12)


def test_sample_shapes_and_values():
    binary = small().sample(3, rng=np.random.default_rng(0))
    assert binary.shape == (3, 1, S, S) and set(np.unique(binary)) <= {0.0, 1.0}
    grey = small(levels=256).sample(2, temperature=0.7, rng=np.random.default_rng(0))
    assert grey.shape == (2, 1, S, S) and grey.min() >= 0 and grey.max() <= 1
    np.testing.assert_allclose(grey * 255, np.rint(grey * 255), atol=1e-9)
    conditional = small(num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        conditional.sample(2)
    assert conditional.sample(2, labels=[0, 2]).shape == (2, 1, S, S)


def test_class_conditioning_keeps_causality_and_changes_the_prediction():
    model = small(num_classes=3)
    for layer in model.layers:
        layer.label_bias.weight.data[...] = np.random.default_rng(0).normal(size=layer.label_bias.weight.shape)
    g = input_gradient(model, 4, 4, labels=np.array([0, 1, 2, 0])).reshape(-1)
    assert np.all(g[4 * S + 4:] == 0)
    x = np.zeros((1, 1, S, S))
    assert not np.allclose(model(x, np.array([0])).data, model(x, np.array([1])).data)


def test_loss_falls_on_a_pattern():
    """Images of vertical stripes: after a few steps the model predicts them far better than
    the 1 bit/pixel it starts near."""
    model = small()
    model.float()
    x = np.zeros((16, 1, S, S), np.float32)
    x[:, :, :, ::2] = 1
    x[8:] = 1 - x[8:]
    opt = Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_gate_gradient():
    from pyconv.testing import gradcheck
    t = Tensor(np.random.default_rng(0).standard_normal((2, 6, 3, 4)), requires_grad=True)
    assert gradcheck(F.gated_tanh, [t])
