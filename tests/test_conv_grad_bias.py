"""The cpu backend's bias gradient (csrc/conv/bias.h): the sum of grad_out over images and
planes, per channel, against a float64 sum, on every ISA variant; blocks of several channels,
planes longer than a block, batches that are not whole groups of images; the same numbers on
any thread count; and float32 sums of many terms as accurate as double accumulation makes them."""
import numpy as np
import pytest

from pyconv import _C, ops

# (N, K, H, W): planes of 1 to 10^4 elements (one block holds 2048: several channels per block,
# or one channel's plane in chunks), K from 1, N below, at and past a group of 16 images.
SHAPES = [(64, 128, 4, 4), (64, 32, 16, 16), (3, 5, 7, 9), (17, 3, 1, 1), (5, 3000, 1, 1),
          (2, 1, 100, 100), (33, 7, 45, 45), (1, 2, 1, 5000), (100, 3, 2, 2)]


def grad_bias(gy, threads=None):
    before = _C.get_num_threads()
    try:
        if threads is not None:
            _C.set_num_threads(threads)
        N, K = gy.shape[:2]
        # a 1x1 convolution's geometry with gy's shape: only the bias gradient is asked for
        x = np.zeros((N, 1) + gy.shape[2:], gy.dtype)
        w = np.zeros((K, 1, 1, 1), gy.dtype)
        return ops.conv2d_backward(gy, x, w, needs=(False, False, True), backend="cpu")[2]
    finally:
        _C.set_num_threads(before)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_against_a_float64_sum(isa, shape, dtype):
    rng = np.random.default_rng(5)
    gy = rng.standard_normal(shape).astype(dtype)
    got = grad_bias(gy)
    assert got.shape == (shape[1],) and got.dtype == dtype
    exact = gy.astype(np.float64).sum(axis=(0, 2, 3))
    # float32: each group of 16 images summed in float32, the rest in double
    tol = 1e-6 if dtype == np.float32 else 1e-13
    scale = np.abs(gy).astype(np.float64).sum(axis=(0, 2, 3))
    assert np.all(np.abs(got - exact) <= tol * scale), np.abs(got - exact).max()


@pytest.mark.parametrize("shape", [(64, 128, 4, 4), (33, 7, 45, 45), (2, 1, 100, 100), (5, 3000, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_thread_counts_agree(shape):
    gy = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    one = grad_bias(gy, threads=1)
    for threads in (2, 3, 5):
        np.testing.assert_array_equal(grad_bias(gy, threads=threads), one)


def test_long_float32_sums_keep_their_digits():
    """2^20 terms of 0.1f, a plane of 1: a float32 running sum ends 1% off, at 105891.8 (each
    addition rounds at the running total's precision); double accumulation of short float32
    sums stays within a few float32 ulps of the exact 104857.6."""
    gy = np.full((1 << 20, 1, 1, 1), 0.1, np.float32)
    exact = np.float64(np.float32(0.1)) * (1 << 20)
    assert abs(float(grad_bias(gy)[0]) - exact) <= 1e-6 * exact
