"""Masked convolutions compute only the taps their mask keeps: nn.MaskedConv2d and the
PixelCNN's VerticalMaskedConv2d against the full convolution with the masked weight (forward
and every gradient, float64), across mask types, odd and even kernels, strides, dilations and
paddings; and a gradient check of the cut path."""
import numpy as np
import pytest

import pyconv
from pyconv import Tensor, nn
from pyconv.models.pixelcnn import VerticalMaskedConv2d
from pyconv.nn import functional as F
from pyconv.testing import gradcheck

LAYERS = {
    # name: (layer builder, input shape)
    "A 3x3": (lambda: nn.MaskedConv2d("A", 2, 3, 3, padding=1), (2, 2, 6, 7)),
    "B 3x3": (lambda: nn.MaskedConv2d("B", 2, 3, 3, padding=1), (2, 2, 6, 7)),
    "A 4x4": (lambda: nn.MaskedConv2d("A", 2, 3, 4, padding=2), (2, 2, 6, 7)),
    "B 4x4": (lambda: nn.MaskedConv2d("B", 2, 3, 4, padding=1), (2, 2, 6, 7)),
    "A 5x5": (lambda: nn.MaskedConv2d("A", 2, 3, 5, padding=2), (2, 2, 7, 6)),
    "B 5x5 no padding": (lambda: nn.MaskedConv2d("B", 2, 3, 5), (2, 2, 7, 6)),
    "B 5x5 stride 2": (lambda: nn.MaskedConv2d("B", 2, 3, 5, stride=2, padding=2), (2, 2, 9, 8)),
    "A 3x3 dilation 2": (lambda: nn.MaskedConv2d("A", 2, 4, 3, padding=2, dilation=2, groups=2),
                         (2, 2, 7, 7)),
    "B 3x5 padding (1, 2)": (lambda: nn.MaskedConv2d("B", 2, 3, (3, 5), padding=(1, 2)), (2, 2, 5, 6)),
    "A 1x5": (lambda: nn.MaskedConv2d("A", 2, 3, (1, 5), padding=(0, 2)), (2, 2, 4, 7)),
    "B 1x5": (lambda: nn.MaskedConv2d("B", 2, 3, (1, 5), padding=(0, 2)), (2, 2, 4, 7)),
    "B 1x4": (lambda: nn.MaskedConv2d("B", 2, 3, (1, 4), padding=(0, 2)), (2, 2, 4, 7)),
    "A 1x1 (nothing kept)": (lambda: nn.MaskedConv2d("A", 2, 3, 1), (2, 2, 4, 5)),
    "B 3x3 'valid'": (lambda: nn.MaskedConv2d("B", 2, 3, 3, padding="valid"), (2, 2, 5, 5)),
    "B 3x3 'same'": (lambda: nn.MaskedConv2d("B", 2, 3, 3, padding="same"), (2, 2, 5, 5)),
    "B 3x3 unbatched": (lambda: nn.MaskedConv2d("B", 2, 3, 3, padding=1), (2, 5, 6)),
    "vertical A 3": (lambda: VerticalMaskedConv2d("A", 2, 3, 3), (2, 2, 6, 7)),
    "vertical B 3": (lambda: VerticalMaskedConv2d("B", 2, 3, 3), (2, 2, 6, 7)),
    "vertical A 4": (lambda: VerticalMaskedConv2d("A", 2, 3, 4), (2, 2, 6, 7)),
    "vertical B 4": (lambda: VerticalMaskedConv2d("B", 2, 3, 4), (2, 2, 6, 7)),
    "vertical A 5": (lambda: VerticalMaskedConv2d("A", 2, 3, 5), (2, 2, 7, 6)),
    "vertical B 5": (lambda: VerticalMaskedConv2d("B", 2, 3, 5), (2, 2, 7, 6)),
}


def full_masked_conv(layer, x):
    """What the layer means: the convolution with every tap, the masked ones multiplied by 0."""
    weight = layer.weight * Tensor(layer.mask.astype(np.float64))
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def outputs_and_gradients(layer, forward, x_data, upstream=None):
    x = Tensor(x_data, requires_grad=True)
    layer.zero_grad()
    out = forward(x)
    if upstream is None:
        upstream = np.random.default_rng(2).standard_normal(out.shape)
    (out * Tensor(upstream)).sum().backward()
    return [out.data, x.grad, layer.weight.grad.copy(), layer.bias.grad.copy()], upstream


@pytest.mark.parametrize("name", list(LAYERS))
def test_cut_kernel_equals_the_full_masked_convolution(name):
    build, shape = LAYERS[name]
    pyconv.manual_seed(0)
    layer = build().double()
    x = np.random.default_rng(1).standard_normal(shape)
    ours, upstream = outputs_and_gradients(layer, layer, x)
    full, _ = outputs_and_gradients(layer, lambda x: full_masked_conv(layer, x), x, upstream)
    assert ours[0].shape == full[0].shape
    for what, a, b in zip(("output", "x.grad", "weight.grad", "bias.grad"), ours, full):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{name}: {what}")
    # the masked taps get exactly zero gradient, as the mask product gave them
    assert np.all(ours[2][..., layer.mask == 0] == 0)


@pytest.mark.parametrize("name", ["A 5x5", "B 5x5 stride 2", "B 1x4", "vertical A 4", "vertical B 5"])
def test_cut_kernel_gradcheck(name):
    build, shape = LAYERS[name]
    pyconv.manual_seed(0)
    layer = build().double()
    x = Tensor(np.random.default_rng(1).standard_normal(shape), requires_grad=True)
    assert gradcheck(lambda x, w, b: layer(x), [x, layer.weight, layer.bias])


def test_the_state_dict_keeps_the_full_kernel():
    layer = nn.MaskedConv2d("A", 2, 3, 5, padding=2)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {"weight": (3, 2, 5, 5), "bias": (3,)}
    layer = VerticalMaskedConv2d("B", 2, 3, 5)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {"weight": (3, 2, 5, 5), "bias": (3,)}
