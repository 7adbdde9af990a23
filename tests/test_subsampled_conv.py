"""The cpu backend's strided 1x1 convolutions without padding (csrc/conv/subsampled.h): every
pass runs as the stride-1 convolution of the subsampled input. Forward, input and weight
gradients against the reference backend on every ISA variant this CPU runs, float32 and
float64 — odd sizes that the stride does not divide, unequal strides, batches, bias — the rule
that routes them, and thread counts."""
import numpy as np
import pytest

import pyconv
from pyconv import _C, _spec, ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

TOL = {np.float32: 2e-5, np.float64: 1e-12}

# (x shape, output channels, stride, dilation): the last row of pixels and the last column
# read or not depending on the size's remainder; a stride past the input (one output pixel).
CASES = [
    ((3, 5, 15, 13), 7, 2, 1),
    ((2, 16, 16, 16), 32, 2, 1),
    ((1, 9, 11, 17), 20, (3, 2), 1),
    ((4, 3, 9, 7), 5, (1, 2), 2),
    ((2, 33, 7, 9), 17, (2, 1), 1),
    ((2, 4, 5, 5), 3, 8, 1),
    ((2, 3, 37, 34), 5, 2, 1),  # output rows of 17 pixels: whole vectors of a row gathered
]


def algorithm_of(x_shape, w_shape, stride, dilation=1, padding=0, groups=1, algorithm="auto"):
    g = _spec.conv2d(_spec.ShapeDtype(x_shape, np.float32), _spec.ShapeDtype(w_shape, np.float32), None,
                     stride, padding, dilation, groups, algorithm=algorithm)
    return _C.conv2d_algorithm(g, np.dtype(np.float32))


def data(x_shape, K, stride, dtype):
    rng = np.random.default_rng(sum(x_shape) + K)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((K, x_shape[1], 1, 1)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    gy = rng.standard_normal(ops.conv2d(x, w, b, stride, backend="reference").shape).astype(dtype)
    return x, w, b, gy


def assert_close(got, ref, dtype):
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL[dtype] * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(isa, case, dtype):
    x_shape, K, stride, dilation = case
    assert algorithm_of(x_shape, (K, x_shape[1], 1, 1), stride, dilation) == "gemm (subsampled)"
    x, w, b, gy = data(x_shape, K, stride, dtype)
    as64 = [a.astype(np.float64) for a in (x, w, b, gy)]
    y = ops.conv2d(x, w, b, stride, 0, dilation, backend="cpu")
    assert_close(y, ops.conv2d(*as64[:3], stride, 0, dilation, backend="reference"), dtype)
    got = ops.conv2d_backward(gy, x, w, stride, 0, dilation, backend="cpu")
    ref = ops.conv2d_backward(as64[3], *as64[:2], stride, 0, dilation, backend="reference")
    for g, r in zip(got, ref):
        assert g.dtype == dtype
        assert_close(g, r, dtype)


def test_rule():
    """Only unpadded, ungrouped, strided 1x1 kernels, and not when the direct loops are asked for."""
    assert algorithm_of((2, 8, 9, 9), (4, 8, 1, 1), 2, algorithm="gemm") == "gemm (subsampled)"
    assert algorithm_of((2, 8, 9, 9), (4, 8, 1, 1), 1) != "gemm (subsampled)"
    assert algorithm_of((2, 8, 9, 9), (4, 8, 1, 1), 2, padding=1) != "gemm (subsampled)"
    assert algorithm_of((2, 8, 9, 9), (4, 4, 1, 1), 2, groups=2) != "gemm (subsampled)"
    assert algorithm_of((2, 8, 9, 9), (4, 8, 3, 3), 2) != "gemm (subsampled)"
    assert algorithm_of((2, 8, 9, 9), (4, 8, 1, 1), 2, algorithm="direct") != "gemm (subsampled)"


@pytest.mark.parametrize("stride", [1, 2])
def test_thread_counts_give_the_same_bytes(stride):
    x, w, b, gy = data((5, 24, 30, 30), 40, stride, np.float32)
    before = _C.get_num_threads()
    results = []
    try:
        for threads in (1, 3):
            _C.set_num_threads(threads)
            results.append([ops.conv2d(x, w, b, stride, backend="cpu"),
                            *ops.conv2d_backward(gy, x, w, stride, backend="cpu")])
    finally:
        _C.set_num_threads(before)
    for one, three in zip(*results):
        np.testing.assert_array_equal(one, three)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_convolution_with_output_padding(dtype):
    """The transpose convolution's forward is this input gradient, onto rows and columns that
    no input pixel reaches (output_padding)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 5, 7)).astype(dtype)
    w = rng.standard_normal((6, 4, 1, 1)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    y = ops.conv_transpose2d(x, w, b, stride=(3, 2), output_padding=(2, 1), backend="cpu")
    ref = ops.conv_transpose2d(*(a.astype(np.float64) for a in (x, w, b)), stride=(3, 2),
                               output_padding=(2, 1), backend="reference")
    assert y.shape == (3, 4, 15, 14)
    assert_close(y, ref, dtype)
