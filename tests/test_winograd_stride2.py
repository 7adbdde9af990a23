"""Winograd F(4x4, 2x2) over the four stride phases for 4x4 stride-2 convolutions on the cpu
backend (csrc/conv/winograd_phases.h): forward (with the Add/ReLU epilogue), input gradient
(ConvTranspose2d's forward) and weight gradient (F(7x7, 2x2) for the shapes of F7_SHAPES, and
the forward of their 7x7 outputs)
against the float64 reference, on every ISA
variant this CPU runs, float32 and float64, ragged batches, channels and image sizes, padding
0-2; the same bits at 1-3 threads; the error bound; the routing and refusals.

The error bound: for inputs and weights of unit variance, the largest error against the exact
sum is below BOUND * eps * (the reduction length: 16 C for the forward, 4 K for the input
gradient, N Ho Wo for the weight gradient). README, "Convolution algorithms", gives the
measured values.
"""
import numpy as np
import pytest

import pyconv
from pyconv import _C, _spec, ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")


# Multiples of eps times the reduction length (the module docstring). The largest measured
# (README): 11.2 for the forward (batch 64, 64 -> 128 on 14x14), 9.2 for the input gradient,
# 6.0 for the weight gradient, 8.6 in float64. The forward of 7x7 outputs by F(7x7, 2x2)
# ("winograd (phases, 7x7 tiles)"): 49 on every ISA, float32 and float64, from 8 channels (it
# grows where the transforms' rounding dominates the sums: up to 127 on 1-3 channels).
FORWARD_BOUND = 24.0
FORWARD_7X7_BOUND = 96.0
GRAD_INPUT_BOUND = 24.0
GRAD_WEIGHT_BOUND = 24.0

# (N, C, H, W, K, padding): the DCGAN layers (smaller batches), ragged channels on either side
# of a GEMM panel, odd image sizes whose phases are ragged and whose tiles overhang the output,
# padding 0-2, a one-pixel output, more tiles than one block, and more than one chunk of them.
SHAPES = [
    (4, 64, 14, 14, 128, 1),
    (3, 32, 16, 16, 64, 1),
    (2, 64, 8, 8, 128, 1),
    (3, 5, 9, 11, 7, 1),
    (2, 17, 14, 13, 9, 0),
    (1, 8, 7, 7, 20, 2),
    (2, 16, 9, 10, 33, 2),
    (1, 3, 4, 4, 2, 0),
    (5, 24, 30, 22, 40, 1),
    (16, 16, 72, 72, 16, 1),  # the weight gradient's tiles in three chunks
]
# Weight gradients that go by F(7x7, 2x2) (winograd_phases.h, by_7x7_tiles): 7x7 outputs over
# 40 images, 14x13 over 10 (a ragged last tile column), the 28x28 DCGAN's layer at batch 36.
# The 7x7 outputs of at least two vectors of images go forward by F(7x7, 2x2) too
# (forward_by_7x7_tile): those two, and 33 images (a last vector of one) with no padding.
F7_SHAPES = [
    (40, 8, 14, 14, 12, 1),
    (10, 6, 28, 27, 10, 1),
    (36, 64, 14, 14, 128, 1),
    (33, 17, 16, 16, 9, 0),
]
SHAPES += F7_SHAPES
IDS = ["x".join(map(str, s)) for s in SHAPES]



def _data(shape, dtype, seed):
    N, C, H, W, K, pad = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, 4, 4)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    Ho, Wo = (H + 2 * pad - 4) // 2 + 1, (W + 2 * pad - 4) // 2 + 1
    gy = rng.standard_normal((N, K, Ho, Wo)).astype(dtype)
    return x, w, b, gy


def _wide(*arrays):
    return [a.astype(np.float64) for a in arrays]


def _error(got, exact, reduction, dtype):
    assert got.dtype == dtype and got.shape == exact.shape
    return float(np.max(np.abs(got - exact))) / (np.finfo(dtype).eps * reduction)


def algorithm_of(shape, dtype=np.float32, algorithm="auto"):
    N, C, H, W, K, pad = shape
    g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), dtype), _spec.ShapeDtype((K, C, 4, 4), dtype), None, 2,
                     pad, 1, 1, algorithm=algorithm)
    return _C.conv2d_algorithm(g, np.dtype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_forward_within_the_bound(isa, shape, dtype):
    x, w, b, _ = _data(shape, dtype, 0)
    pad = shape[-1]
    algorithm = algorithm_of(shape, dtype, "winograd")
    assert algorithm.startswith("winograd (phases")
    y = ops.conv2d(x, w, b, 2, pad, algorithm="winograd", backend="cpu")
    exact = ops.conv2d(*_wide(x, w, b), 2, pad, backend="reference")
    bound = FORWARD_7X7_BOUND if algorithm == "winograd (phases, 7x7 tiles)" else FORWARD_BOUND
    assert _error(y, exact, 16 * shape[1], dtype) < bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_gradients_within_the_bound(isa, shape, dtype):
    x, w, _, gy = _data(shape, dtype, 1)
    N, pad = shape[0], shape[-1]
    gx, gw, _ = ops.conv2d_backward(gy, x, w, 2, pad, needs=(True, True, False), algorithm="winograd",
                                    backend="cpu")
    ex, ew, _ = ops.conv2d_backward(*_wide(gy, x, w), 2, pad, needs=(True, True, False), backend="reference")
    # Each element of grad_x sums at most 4 K products (one phase's 2x2 taps).
    assert _error(gx, ex, 4 * shape[4], dtype) < GRAD_INPUT_BOUND
    assert _error(gw, ew, N * gy.shape[2] * gy.shape[3], dtype) < GRAD_WEIGHT_BOUND


def test_conv_transpose_forward_through_the_phases(isa):
    # ConvTranspose2d(128, 64, 4, 2, 1) on 7x7, the DCGAN generator's layer: the input gradient
    # of the convolution it inverts.
    rng = np.random.default_rng(5)
    z = rng.standard_normal((3, 128, 7, 7)).astype(np.float32)
    w = rng.standard_normal((128, 64, 4, 4)).astype(np.float32)
    y = ops.conv_transpose2d(z, w, None, 2, 1, backend="cpu")
    exact = ops.conv_transpose2d(*_wide(z, w), None, 2, 1, backend="reference")
    assert _error(y, exact, 4 * 128, np.float32) < GRAD_INPUT_BOUND


@pytest.mark.parametrize("shape", [(3, 32, 15, 13, 24, 1), (33, 17, 16, 16, 9, 0)], ids=["4x4-tiles", "7x7-tiles"])
@pytest.mark.parametrize("relu", [False, True])
def test_epilogue_applied_as_it_stores(isa, relu, shape):
    x, w, b, gy = _data(shape, np.float32, 2)
    residual = np.random.default_rng(3).standard_normal(gy.shape).astype(np.float32)
    g = _spec.conv2d(x, w, b, 2, shape[-1], 1, 1, algorithm="winograd")
    y = np.empty(gy.shape, np.float32)
    _C.conv2d(x, w, b, y, g, residual, relu)
    exact = ops.conv2d(*_wide(x, w, b), 2, shape[-1], backend="reference") + residual
    if relu:
        exact = np.maximum(exact, 0)
    assert _error(y, exact, 16 * shape[1], np.float32) < FORWARD_7X7_BOUND


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[4], SHAPES[8], SHAPES[9], F7_SHAPES[1], F7_SHAPES[3]],
                         ids=[IDS[0], IDS[4], IDS[8], IDS[9]] + ["x".join(map(str, F7_SHAPES[i])) for i in (1, 3)])
def test_same_bits_at_every_thread_count(shape):
    x, w, b, gy = _data(shape, np.float32, 4)
    pad = shape[-1]
    saved = pyconv.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            y = ops.conv2d(x, w, b, 2, pad, algorithm="winograd", backend="cpu")
            gx, gw, _ = ops.conv2d_backward(gy, x, w, 2, pad, needs=(True, True, False), algorithm="winograd",
                                            backend="cpu")
            results.append((y, gx, gw))
    finally:
        pyconv.set_num_threads(saved)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


def test_auto_routes_the_dcgan_layers():
    # The 28x28 DCGAN's 64 -> 128 on 14x14 and the 32x32 one's 32 -> 64 on 16x16, 64 -> 128 on
    # 8x8, at their batch of 64 (dispatch.h, winograd_phases_pays).
    for shape in [(64, 64, 14, 14, 128, 1), (64, 32, 16, 16, 64, 1), (64, 64, 8, 8, 128, 1)]:
        assert algorithm_of(shape).startswith("winograd (phases"), shape
    # A 7x7 output goes by one F(7x7, 2x2) tile per image from two vectors of images (float32:
    # 32 images with AVX-512, 16 with AVX2, 8 with 16-byte vectors); one vector, or 8x8
    # outputs, by F(4x4, 2x2).
    lanes = {"avx512": 16, "avx2": 8, "generic": 4}[_C.isa()]
    assert algorithm_of((2 * lanes, 64, 14, 14, 128, 1), algorithm="winograd") == "winograd (phases, 7x7 tiles)"
    assert algorithm_of((2 * lanes - 1, 64, 14, 14, 128, 1), algorithm="winograd") == "winograd (phases)"
    assert algorithm_of((64, 64, 14, 14, 128, 1)) == "winograd (phases, 7x7 tiles)"
    assert algorithm_of((64, 64, 8, 8, 128, 1)) == "winograd (phases)"
    # A first layer on one channel stays with the GEMM forms, and so do layers where the
    # products saved fall short of 1.9x: one image (15 of 16 lanes empty), 6x6 outputs (2x2
    # tiles for 36 outputs: 1.44x), and more than 256 x 256 channel pairs (not measured).
    for shape in [(64, 1, 28, 28, 64, 1), (1, 64, 14, 14, 128, 1), (64, 64, 12, 12, 128, 1),
                  (64, 256, 8, 8, 512, 1)]:
        assert not algorithm_of(shape).startswith("winograd"), shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_auto_input_gradient_from_eight_channels(dtype):
    # The conditional DCGAN's first layer shape (11 channels in): "auto" takes the phases for
    # the input gradient alone (winograd_phases_pays(g, 8)); the forward stays with the GEMMs.
    shape = (64, 11, 16, 16, 32, 1)
    assert not algorithm_of(shape, dtype).startswith("winograd")
    x, w, _, gy = _data(shape, dtype, 5)
    gx, _, _ = ops.conv2d_backward(gy, x, w, 2, 1, needs=(True, False, False), backend="cpu")
    exact = ops.conv2d_backward(*_wide(gy, x, w), 2, 1, needs=(True, False, False), backend="reference")[0]
    assert _error(gx, exact, 4 * shape[4], dtype) < GRAD_INPUT_BOUND


@pytest.mark.parametrize("params", [dict(stride=1), dict(stride=3), dict(dilation=2), dict(groups=2)],
                         ids=["stride1", "stride3", "dilation", "groups"])
def test_refused_where_it_does_not_apply(params):
    x = np.ones((1, 4, 12, 12), np.float32)
    w = np.ones((4, 4 // params.get("groups", 1), 4, 4), np.float32)
    params.setdefault("stride", 2)
    with pytest.raises(ValueError, match=r"conv2d: algorithm='winograd' needs a 3x3 kernel with stride 1 or a "
                                         r"4x4 kernel with stride 2"):
        ops.conv2d(x, w, None, algorithm="winograd", **params)
