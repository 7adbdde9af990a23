"""Kernels larger than 3x3 by their 3x3 blocks on Winograd (csrc/conv/winograd_blocks.h; rule
winograd_blocks_pay in csrc/conv/dispatch.h): forward, input gradient and weight gradient
against the float64 reference on every ISA variant this CPU runs, float32 and float64, for
kernels whose last block row or column is partly outside the kernel (3x5, 5x5, 5x3, 3x4),
kernels made of whole blocks (6x6), padding wider than the kernel (windows wholly on padding),
ragged images, and any thread count; the routing itself, where it applies and where it does
not. The error is Winograd's (tests/test_winograd.py): bounded in units of eps times the
reduction length of the 3x3 convolution over the blocks."""
import numpy as np
import pytest

import pyconv
from pyconv import _C, _spec, ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

BLOCKS = "winograd (3x3 blocks)"
ERROR_BOUND = 64.0          # as WINOGRAD_ERROR_BOUND, units of eps * 9 * (blocks * C)
WEIGHT_GRAD_BOUND = 32.0    # as WINOGRAD_WEIGHT_GRAD_ERROR_BOUND, units of eps * N Ho Wo

# (x shape, w shape, padding)
CASES = {
    # The gated PixelCNN's vertical convolution: rows padded by the caller, columns by 2.
    "pixelcnn_3x5": ((3, 32, 30, 28), (40, 32, 3, 5), (0, 2)),
    "5x5_same": ((3, 33, 29, 31), (32, 33, 5, 5), 2),
    "5x3": ((3, 32, 28, 30), (36, 32, 5, 3), (2, 1)),
    "3x4": ((3, 32, 28, 29), (32, 32, 3, 4), 1),
    "6x6_whole_blocks": ((3, 32, 33, 33), (32, 32, 6, 6), 0),
    # Padding 6 on a 5x5 kernel: the first and last two output rows see only padding.
    "windows_on_padding": ((7, 32, 4, 20), (32, 32, 5, 5), 6),
}



def algorithm(x_shape, w_shape, padding, dtype=np.float32):
    g = _spec.conv2d(_spec.ShapeDtype(x_shape, dtype), _spec.ShapeDtype(w_shape, dtype), None, 1, padding, 1, 1)
    return _C.conv2d_algorithm(g, np.dtype(dtype))


def data(case, dtype):
    x_shape, w_shape, padding = CASES[case]
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    dy = rng.standard_normal(ops.conv2d(x, w, None, 1, padding, backend="reference").shape).astype(dtype)
    return x, w, b, dy, padding


def blocks(w_shape):
    return -(-w_shape[2] // 3) * -(-w_shape[3] // 3)


def exact(x, w, b, dy, padding):
    f64 = [a.astype(np.float64) for a in (x, w, b, dy)]
    y = ops.conv2d(f64[0], f64[1], f64[2], 1, padding, backend="reference")
    gx, gw, _ = ops.conv2d_backward(f64[3], f64[0], f64[1], 1, padding, backend="reference")
    return y, gx, gw


def test_routing():
    for case, (x_shape, w_shape, padding) in CASES.items():
        assert algorithm(x_shape, w_shape, padding) == BLOCKS, case
        # The input gradient's flipped forward convolution (dy with the transposed weights).
        N, K, C = x_shape[0], w_shape[0], w_shape[1]
        Ho, Wo = ops.conv2d(np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32), None, 1, padding).shape[2:]
        R, S = w_shape[2:]
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        if ph <= R - 1 and pw <= S - 1:
            assert algorithm((N, K, Ho, Wo), (C, K, R, S), (R - 1 - ph, S - 1 - pw)) == BLOCKS, case
    # Not: 4x4 and 7x7 (too much of their blocks is zeros), few channels, small images, strides,
    # dilation, groups, and an explicit algorithm.
    for x_shape, w_shape, padding in [((2, 32, 16, 16), (32, 32, 4, 4), 1), ((2, 32, 16, 16), (32, 32, 7, 7), 3),
                                      ((2, 16, 16, 16), (32, 16, 5, 5), 2), ((2, 32, 16, 16), (16, 32, 5, 5), 2),
                                      ((8, 32, 8, 8), (32, 32, 5, 5), 2)]:
        assert algorithm(x_shape, w_shape, padding) != BLOCKS, (x_shape, w_shape)
    x, w = np.zeros((2, 32, 16, 16), np.float32), np.zeros((32, 32, 5, 5), np.float32)
    for kwargs in (dict(stride=2), dict(dilation=2), dict(groups=2)):
        ww = w[:, :16] if "groups" in kwargs else w
        g = _spec.conv2d(x, ww, None, kwargs.get("stride", 1), 2, kwargs.get("dilation", 1), kwargs.get("groups", 1))
        assert _C.conv2d_algorithm(g, np.dtype(np.float32)) != BLOCKS, kwargs
    g = _spec.conv2d(x, w, None, 1, 2, 1, 1, algorithm="gemm")
    assert _C.conv2d_algorithm(g, np.dtype(np.float32)) != BLOCKS


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_reference(case, dtype, isa):
    x, w, b, dy, padding = data(case, dtype)
    y = ops.conv2d(x, w, b, 1, padding, backend="cpu")
    gx, gw, gb = ops.conv2d_backward(dy, x, w, 1, padding, backend="cpu")
    y64, gx64, gw64 = exact(x, w, b, dy, padding)
    assert y.dtype == gx.dtype == gw.dtype == dtype
    eps = np.finfo(dtype).eps
    C, K = x.shape[1], w.shape[0]
    assert np.max(np.abs(y - y64)) < ERROR_BOUND * eps * 9 * blocks(w.shape) * C
    assert np.max(np.abs(gx - gx64)) < ERROR_BOUND * eps * 9 * blocks(w.shape) * K
    N, _, Ho, Wo = dy.shape
    assert np.max(np.abs(gw - gw64)) < WEIGHT_GRAD_BOUND * eps * N * Ho * Wo


@pytest.mark.parametrize("case", ["pixelcnn_3x5", "windows_on_padding"])
def test_independent_of_the_thread_count(case):
    x, w, b, dy, padding = data(case, np.float32)
    before = pyconv.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            results.append((ops.conv2d(x, w, b, 1, padding, backend="cpu"),
                            *ops.conv2d_backward(dy, x, w, 1, padding, needs=(True, True, False), backend="cpu")[:2]))
    finally:
        pyconv.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)
