"""Winograd convolution F(4x4, 3x3) on the cpu backend (algorithm="winograd"): its error
against the exact result, the layers it accepts, and the input gradient routed through it.

The error bound: for inputs and weights of unit variance, the largest error of an output
against the exact sum is below WINOGRAD_ERROR_BOUND * eps * 9 C (eps the dtype's machine
epsilon, 9 C the reduction length; the GEMM's own error grows the same way, from its long
sums). README, "Convolution algorithms", gives the measured values.
"""
import numpy as np
import pytest

import pyconv
from pyconv import _spec, nn, ops
from pyconv.autograd import Tensor
from pyconv.nn import functional as F
from pyconv.testing import gradcheck

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

# Multiples of eps * 9 C; the largest measured is 27 (README: 3 input channels, where the
# transforms, not the sums, dominate; 4-12 from 64 channels).
WINOGRAD_ERROR_BOUND = 64.0

# (N, C, H, W, K, padding): VGG-like layers, reduced in batch, a first layer, odd sizes whose
# tiles overhang the image, padding beyond the kernel, and enough tiles for several blocks.
# From 256 x 256 channel pairs the layout is by position (the rule below): 32 tiles in one
# block, and 56 overhanging tiles in two blocks of the transforms.
SHAPES = [
    (1, 64, 56, 56, 64, 1),
    (1, 128, 28, 28, 128, 1),
    (2, 256, 14, 14, 256, 1),
    (1, 256, 27, 29, 256, 1),
    (2, 3, 32, 32, 64, 1),
    (3, 5, 7, 9, 6, 0),
    (2, 17, 13, 11, 9, 2),
    (1, 33, 5, 6, 40, 3),
    (1, 1, 3, 3, 1, 0),
]


def _data(shape, dtype, seed):
    N, C, H, W, K, _ = shape
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, C, H, W)).astype(dtype), rng.standard_normal((K, C, 3, 3)).astype(dtype),
            rng.standard_normal(K).astype(dtype))


def _exact(x, w, b, padding):
    return ops.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), 1, padding,
                      backend="reference")


def relative_error(y, exact, C, dtype):
    """Largest error in units of eps * 9 C."""
    return float(np.max(np.abs(y - exact))) / (np.finfo(dtype).eps * 9 * C)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_error_within_the_bound(shape, dtype):
    x, w, b = _data(shape, dtype, 0)
    y = ops.conv2d(x, w, b, 1, shape[-1], algorithm="winograd", backend="cpu")
    assert y.dtype == dtype
    assert relative_error(y, _exact(x, w, b, shape[-1]), shape[1], dtype) < WINOGRAD_ERROR_BOUND


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES[2:], ids=lambda s: "x".join(map(str, s)))
def test_input_gradient_error_within_the_bound(shape, dtype):
    x, w, _ = _data(shape, dtype, 1)
    pad = shape[-1]
    grad_out = np.random.default_rng(2).standard_normal(ops.conv2d(x, w, None, 1, pad).shape).astype(dtype)
    gx, gw, gb = ops.conv2d_backward(grad_out, x, w, 1, pad, algorithm="winograd", backend="cpu")
    exact = ops.conv2d_backward(grad_out.astype(np.float64), x.astype(np.float64), w.astype(np.float64), 1, pad,
                                backend="reference")
    # grad_x sums 9 K terms per element.
    assert relative_error(gx, exact[0], shape[4], dtype) < WINOGRAD_ERROR_BOUND


# The weight gradient sums N Ho Wo products per element: its error in units of eps * N Ho Wo
# measured 2.5-7.6 through Winograd (0.1-0.7 through the GEMM) on the shapes below, float32
# and float64, and 13-19 on 512 channels of 7x7 (49 products per sum: there the transforms'
# rounding, not the sum's, dominates) (README, "Convolution algorithms").
WINOGRAD_WEIGHT_GRAD_ERROR_BOUND = 32.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES[2:] + [(1, 64, 60, 60, 64, 1), (1, 512, 7, 7, 512, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_weight_gradient_error_within_the_bound(shape, dtype):
    # 1x64x60x60 takes several chunks of tiles (3 in float32).
    x, w, _ = _data(shape, dtype, 1)
    N, pad = shape[0], shape[-1]
    grad_out = np.random.default_rng(2).standard_normal(ops.conv2d(x, w, None, 1, pad).shape).astype(dtype)
    _, gw, _ = ops.conv2d_backward(grad_out, x, w, 1, pad, needs=(False, True, False), algorithm="winograd",
                                   backend="cpu")
    exact = ops.conv2d_backward(grad_out.astype(np.float64), x.astype(np.float64), w.astype(np.float64), 1, pad,
                                needs=(False, True, False), backend="reference")[1]
    assert gw.dtype == dtype
    reduction = N * grad_out.shape[2] * grad_out.shape[3]
    error = float(np.max(np.abs(gw - exact))) / (np.finfo(dtype).eps * reduction)
    assert error < WINOGRAD_WEIGHT_GRAD_ERROR_BOUND


@pytest.mark.parametrize("algorithm", ["gemm", "direct", "winograd", "auto"])
def test_every_algorithm_matches_the_reference_in_float64(algorithm):
    x, w, b = _data((2, 8, 9, 10, 12, 1), np.float64, 3)
    y = ops.conv2d(x, w, b, 1, 1, algorithm=algorithm, backend="cpu")
    np.testing.assert_allclose(y, _exact(x, w, b, 1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("params", [dict(stride=2), dict(dilation=2), dict(groups=2)],
                         ids=["stride", "dilation", "groups"])
def test_winograd_refused_where_it_does_not_apply(params):
    x, w = np.ones((1, 4, 8, 8), np.float32), np.ones((4, 4 // params.get("groups", 1), 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv2d: algorithm='winograd' needs a 3x3 kernel"):
        ops.conv2d(x, w, None, algorithm="winograd", **params)
    with pytest.raises(ValueError, match=r"conv2d: algorithm='winograd'"):
        ops.conv2d(x, np.ones((4, 4, 5, 5), np.float32), None, algorithm="winograd")
    with pytest.raises(ValueError, match=r"conv2d_backward: algorithm='winograd'"):
        ops.conv2d_backward(np.ones((1, 4, 4, 4), np.float32), x, np.ones((4, 4, 5, 5), np.float32),
                            algorithm="winograd")


def test_unknown_algorithm_refused():
    x, w = np.ones((1, 2, 5, 5)), np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: algorithm must be one of 'auto', 'gemm'"):
        ops.conv2d(x, w, algorithm="fft")
    with pytest.raises(ValueError, match=r"conv2d: algorithm"):
        ops.conv2d(x, w, algorithm=None)
    with pytest.raises(ValueError, match=r"Conv2d: algorithm='winograd' needs a 3x3 kernel"):
        nn.Conv2d(2, 2, 3, stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match=r"Conv2d: algorithm must be one of"):
        nn.Conv2d(2, 2, 3, algorithm="Winograd")


@pytest.mark.parametrize("backend", [b for b in pyconv.backends() if b not in ("cpu", "cuda")])
def test_other_backends_accept_the_argument(backend):
    x, w, b = _data((1, 3, 6, 6, 4, 1), np.float64, 4)
    y = ops.conv2d(x, w, b, 1, 1, algorithm="winograd", backend=backend)
    np.testing.assert_allclose(y, _exact(x, w, b, 1), rtol=1e-10, atol=1e-10)


def test_layer_gradients_through_winograd():
    layer = nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64, algorithm="winograd")
    assert "algorithm='winograd'" in repr(layer)
    x = Tensor(np.random.default_rng(5).standard_normal((2, 3, 6, 7)), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=1, algorithm="winograd"),
                     (x, layer.weight, layer.bias))
    x = Tensor(x.data, requires_grad=True)  # without the gradient gradcheck left
    y = layer(x)
    y.sum().backward()
    exact = ops.conv2d_backward(np.ones(y.shape), x.data, layer.weight.data, 1, 1, backend="reference")
    np.testing.assert_allclose(x.grad, exact[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape, expected", [
    ((8, 64, 56, 56, 64), "winograd"),     # VGG layers
    ((8, 128, 28, 28, 128), "winograd"),
    ((8, 256, 14, 14, 256), "winograd"),
    ((3, 16, 28, 28, 17), "winograd"),     # the conformance table's row for the rule
    ((8, 64, 14, 14, 64), "gemm"),         # narrow images, few channel pairs
    ((8, 256, 7, 7, 256), "winograd"),     # 7-11 columns: from 32 x 32 pairs and 32 tiles
    ((4, 64, 8, 8, 64), "gemm"),           # 16 tiles
    ((16, 64, 6, 6, 64), "gemm"),          # under 7 columns
    ((16, 3, 32, 32, 64), "direct"),       # 3 input channels (27 taps: the direct forward)
    ((1, 32, 20, 20, 32), "direct"),       # 25 tiles (32 outputs: the direct forward)
    ((16, 32, 16, 16, 32), "winograd"),    # a small ResNet's middle stage (256 tiles)
    ((16, 32, 14, 14, 64), "winograd"),
    ((8, 32, 16, 16, 32), "winograd"),     # 16+ columns: from 16 x 16 pairs and 128 tiles
    ((16, 16, 16, 16, 16), "winograd"),
    ((16, 16, 14, 14, 16), "direct"),      # 14 columns, 16 x 16 pairs (the direct forward's 16 channels)
    ((4, 16, 16, 16, 16), "direct"),       # 64 tiles
    ((16, 64, 8, 8, 64), "winograd"),      # a small ResNet's last stage (64 tiles)
])
def test_the_rule_picks_winograd_for_vgg_layers(shape, expected):
    N, C, H, W, K = shape
    g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32), _spec.ShapeDtype((K, C, 3, 3), np.float32),
                     None, 1, 1, 1, 1)
    assert pyconv._C.conv2d_algorithm(g, np.dtype(np.float32)).startswith(expected)
    forced = g._replace(algorithm=_spec.CONV_ALGORITHMS.index("gemm"))
    assert pyconv._C.conv2d_algorithm(forced, np.dtype(np.float32)).startswith("gemm")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [(16, 64, 8, 8, 64, 1), (6, 33, 9, 9, 35, 1), (3, 40, 8, 8, 40, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_each_image_gets_the_same_bits_as_alone(shape, dtype):
    """How the tiles are cut into blocks depends on the batch (64 tiles: two blocks of 32; 54:
    32 and 22; 12: one block), never a tile's result: each image of the batch equals the image
    convolved alone (4 or 9 tiles, one block), bit for bit."""
    x, w, b = _data(shape, dtype, 11)
    padding = shape[-1]
    y = ops.conv2d(x, w, b, 1, padding, algorithm="winograd")
    for n in range(x.shape[0]):
        np.testing.assert_array_equal(y[n:n + 1], ops.conv2d(x[n:n + 1], w, b, 1, padding, algorithm="winograd"))


@pytest.mark.parametrize("shape, layout", [
    ((8, 64, 56, 56, 64), "winograd"),                   # block by block
    ((8, 128, 28, 28, 128), "winograd"),
    ((8, 256, 14, 14, 256), "winograd (by position)"),   # transformed filters past the cache
    ((64, 256, 14, 14, 256), "winograd"),                # all tiles' V and M past it too
])
def test_the_layout_rule(shape, layout):
    N, C, H, W, K = shape
    g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32), _spec.ShapeDtype((K, C, 3, 3), np.float32),
                     None, 1, 1, 1, 1)
    assert pyconv._C.conv2d_algorithm(g, np.dtype(np.float32)) == layout


@pytest.mark.parametrize("shape, winograd", [
    ((3, 32, 28, 28, 32), True),     # 32+ channels on 28+ columns, 147 tiles
    ((8, 256, 14, 14, 256), True),   # 256 x 256 pairs on 14 columns, 128 tiles
    ((3, 16, 28, 28, 16), False),    # 16 channels: the weight gradient along pixel rows
    ((8, 128, 14, 14, 128), False),  # 14 columns with fewer pairs
    ((8, 64, 16, 16, 64), True),     # 16-27 columns from 64 x 64 pairs
    ((8, 32, 16, 16, 64), False),    # there 32 channels on a side: along pixels or by channels
    ((2, 32, 28, 28, 32), False),    # 98 tiles
    ((8, 512, 7, 7, 512), True),     # past 256 x 256 pairs: by blocks of output channels from 8 tiles
    ((1, 512, 7, 7, 512), False),    # 4 tiles
    ((8, 512, 14, 14, 512), False),  # 128 tiles: their transforms past one chunk
])
def test_the_weight_gradient_rule(shape, winograd):
    # "auto" ran Winograd's weight gradient when its bits are those of algorithm="winograd".
    x, w, _ = _data(shape + (1,), np.float32, 6)
    grad_out = np.random.default_rng(7).standard_normal(x.shape[:1] + (shape[4],) + x.shape[2:]).astype(np.float32)
    auto, forced = (ops.conv2d_backward(grad_out, x, w, 1, 1, needs=(False, True, False), algorithm=a,
                                        backend="cpu")[1] for a in ("auto", "winograd"))
    assert np.array_equal(auto, forced) == winograd


# Past 256 x 256 channel pairs U is computed per block of output channels, never stored
# (winograd.h, multiply_filter_blocks), by position and a batch of images at a time (all tiles'
# V and M within 16 MiB): 260 -> 260 on 40x40 goes two images a pass (3 images: two passes),
# with a last block of 4 output channels; 300 -> 230 ends in a block of 6.
FILTER_BLOCK_SHAPES = [(2, 512, 7, 7, 512, 1), (3, 260, 40, 40, 260, 1), (2, 300, 9, 11, 230, 0)]
FILTER_BLOCK_IDS = ["x".join(map(str, s)) for s in FILTER_BLOCK_SHAPES]


def _layout(shape):
    N, C, H, W, K, pad = shape
    g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32), _spec.ShapeDtype((K, C, 3, 3), np.float32),
                     None, 1, pad, 1, 1, algorithm="winograd")
    return pyconv._C.conv2d_algorithm(g, np.dtype(np.float32))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", FILTER_BLOCK_SHAPES, ids=FILTER_BLOCK_IDS)
def test_filters_per_block_forward_with_epilogue(isa, shape, dtype, relu):
    assert _layout(shape) == "winograd (by position, filters per block)"
    x, w, b = _data(shape, dtype, 12)
    pad = shape[-1]
    g = _spec.conv2d(x, w, b, 1, pad, 1, 1, algorithm="winograd")
    exact = _exact(x, w, b, pad)
    residual = np.random.default_rng(13).standard_normal(exact.shape).astype(dtype)
    y = np.empty(exact.shape, dtype)
    pyconv._C.conv2d(x, w, b, y, g, residual, relu)
    exact = exact + residual
    if relu:
        exact = np.maximum(exact, 0)
    assert relative_error(y, exact, shape[1], dtype) < WINOGRAD_ERROR_BOUND


@pytest.mark.parametrize("shape", FILTER_BLOCK_SHAPES, ids=FILTER_BLOCK_IDS)
def test_filters_per_block_input_gradient(shape):
    x, w, _ = _data(shape, np.float32, 14)
    pad = shape[-1]
    grad_out = np.random.default_rng(15).standard_normal(ops.conv2d(x, w, None, 1, pad).shape).astype(np.float32)
    gx = ops.conv2d_backward(grad_out, x, w, 1, pad, needs=(True, False, False), algorithm="winograd",
                             backend="cpu")[0]
    exact = ops.conv2d_backward(grad_out.astype(np.float64), x.astype(np.float64), w.astype(np.float64), 1, pad,
                                needs=(True, False, False), backend="reference")[0]
    assert relative_error(gx, exact, shape[4], np.float32) < WINOGRAD_ERROR_BOUND


@pytest.mark.parametrize("shape", FILTER_BLOCK_SHAPES[1:], ids=FILTER_BLOCK_IDS[1:])
def test_filters_per_block_bits_independent_of_threads_and_batch(isa, shape):
    x, w, b = _data(shape, np.float32, 16)
    pad = shape[-1]
    saved = pyconv.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            results.append(ops.conv2d(x, w, b, 1, pad, algorithm="winograd", backend="cpu"))
    finally:
        pyconv.set_num_threads(saved)
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    for n in range(x.shape[0]):
        alone = ops.conv2d(x[n:n + 1], w, b, 1, pad, algorithm="winograd", backend="cpu")
        np.testing.assert_array_equal(results[0][n:n + 1], alone)


@pytest.mark.parametrize("shape", [FILTER_BLOCK_SHAPES[0], FILTER_BLOCK_SHAPES[2]], ids=[FILTER_BLOCK_IDS[0], FILTER_BLOCK_IDS[2]])
def test_filters_per_block_weight_gradient(isa, shape):
    # All tiles in one chunk, then the 36 products and the transform back per block of output
    # channels (winograd.h, weight_grad_by_filter_blocks); 300 -> 230 ends in a block of 6.
    x, w, _ = _data(shape, np.float32, 17)
    N, pad = shape[0], shape[-1]
    grad_out = np.random.default_rng(18).standard_normal(ops.conv2d(x, w, None, 1, pad).shape).astype(np.float32)
    exact = ops.conv2d_backward(grad_out.astype(np.float64), x.astype(np.float64), w.astype(np.float64), 1, pad,
                                needs=(False, True, False), backend="reference")[1]
    saved = pyconv.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            results.append(ops.conv2d_backward(grad_out, x, w, 1, pad, needs=(False, True, False),
                                               algorithm="winograd", backend="cpu")[1])
    finally:
        pyconv.set_num_threads(saved)
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    reduction = N * grad_out.shape[2] * grad_out.shape[3]
    error = float(np.max(np.abs(results[0] - exact))) / (np.finfo(np.float32).eps * reduction)
    assert error < WINOGRAD_WEIGHT_GRAD_ERROR_BOUND


@pytest.mark.parametrize("shape, expected", [
    ((8, 512, 7, 7, 512), "winograd (by position, filters per block)"),    # ResNet's last stage, 32 tiles
    ((32, 512, 7, 7, 512), "winograd (by position, filters per block)"),
    ((8, 512, 14, 14, 512), "winograd (by position, filters per block)"),
    ((4, 512, 7, 7, 512), "gemm"),     # 16 tiles
    ((64, 512, 6, 6, 512), "gemm"),    # under 7 columns
])
def test_the_rule_for_many_channel_pairs(shape, expected):
    N, C, H, W, K = shape
    g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32), _spec.ShapeDtype((K, C, 3, 3), np.float32),
                     None, 1, 1, 1, 1)
    assert pyconv._C.conv2d_algorithm(g, np.dtype(np.float32)).startswith(expected)
