"""The cpu backend's depthwise convolution (csrc/conv/depthwise.h, one input channel per
group): forward, input gradient and weight gradient against the reference backend on every ISA
variant this CPU runs, float32 and float64 — output widths on either side of the vector length,
every padding / stride / dilation combination (windows wholly on padding included), channel
multipliers 1 and 2, the sizes compiled in (3x3, 5x5) and the others — the rule that routes
depthwise layers to it, and the same bits at 1, 2 and 3 threads."""
import itertools

import numpy as np
import pytest

import pyconv
from pyconv import _C, _spec, ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

TOL = {np.float32: 2e-5, np.float64: 1e-12}



@pytest.fixture
def restore_threads():
    before = pyconv.get_num_threads()
    yield
    pyconv.set_num_threads(before)


def algorithm_of(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, algorithm="auto"):
    g = _spec.conv2d(_spec.ShapeDtype(x_shape, np.float32), _spec.ShapeDtype(w_shape, np.float32), None, stride,
                     padding, dilation, groups, algorithm=algorithm)
    return _C.conv2d_algorithm(g, np.dtype(np.float32))


def data(x_shape, multiplier, kernel, dtype, stride, padding, dilation, seed=0):
    rng = np.random.default_rng(seed)
    C = x_shape[1]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((C * multiplier, 1, *kernel)).astype(dtype)
    b = rng.standard_normal(C * multiplier).astype(dtype)
    y = ops.conv2d(x, w, b, stride, padding, dilation, C, backend="reference")
    gy = rng.standard_normal(y.shape).astype(dtype)
    return x, w, b, gy


def close(got, want, dtype):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * scale)


def check(x_shape, multiplier, kernel, stride, padding, dilation, dtype):
    x, w, b, gy = data(x_shape, multiplier, kernel, dtype, stride, padding, dilation)
    C = x_shape[1]
    assert algorithm_of(x.shape, w.shape, stride, padding, dilation, C) == "depthwise"
    args = (stride, padding, dilation, C)
    close(ops.conv2d(x, w, b, *args, backend="cpu"), ops.conv2d(x, w, b, *args, backend="reference"), dtype)
    got = ops.conv2d_backward(gy, x, w, *args, backend="cpu")
    want = ops.conv2d_backward(gy, x, w, *args, backend="reference")
    for g, r in zip(got, want):
        close(g, r, dtype)


# Output widths around the vector lengths (2, 4, 8, 16 lanes), kernels compiled in (3x3, 5x5)
# and not (1x1, 3x2, 7x7), strides 1, 2, 3 and mixed.
SHAPES = {
    "width1": ((2, 3, 5, 1), 1, (3, 3), 1, 1, 1),
    "width7": ((2, 3, 6, 7), 1, (3, 3), 1, 1, 1),
    "width17_5x5": ((1, 4, 9, 17), 1, (5, 5), 1, 2, 1),
    "width33_stride2": ((2, 2, 9, 66), 1, (3, 3), 2, 1, 1),
    "width56_mobilenet": ((1, 3, 6, 56), 1, (3, 3), 1, 1, 1),
    "multiplier2": ((2, 3, 8, 19), 2, (3, 3), 1, 1, 1),
    "multiplier2_stride2": ((1, 2, 9, 21), 2, (3, 3), 2, 1, 1),
    "kernel1x1": ((2, 3, 5, 9), 1, (1, 1), 1, 0, 1),
    "kernel3x2_stride_2_3": ((1, 3, 11, 25), 1, (3, 2), (2, 3), (1, 0), 1),
    "kernel7x7_stride3": ((1, 2, 15, 40), 1, (7, 7), 3, 3, 1),
    "dilation2_5x5": ((1, 2, 12, 23), 1, (5, 5), 1, 4, 2),
    "dilation_2_3_stride2": ((2, 2, 13, 30), 2, (3, 3), 2, (2, 3), (2, 3)),
    "padding_beyond_kernel": ((1, 2, 4, 5), 1, (3, 3), 1, 4, 1),
    "no_padding_stride2": ((1, 2, 10, 37), 1, (4, 4), 2, 0, 1),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SHAPES)
def test_matches_the_reference(isa, case, dtype):
    check(*SHAPES[case], dtype)


# Every combination of stride, padding and dilation on a ragged width; padding 3 with a 3x3
# kernel puts whole windows on padding (output rows and columns that only see zeros).
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride, padding, dilation", list(itertools.product((1, 2), (0, 1, 3), (1, 2))))
def test_every_stride_padding_dilation(isa, stride, padding, dilation, dtype):
    check((2, 3, 9, 19), 1, (3, 3), stride, padding, dilation, dtype)


def test_the_rule_takes_depthwise_layers_only():
    assert algorithm_of((8, 64, 56, 56), (64, 1, 3, 3), 1, 1, 1, 64) == "depthwise"
    assert algorithm_of((1, 144, 56, 56), (144, 1, 3, 3), 2, 1, 1, 144) == "depthwise"
    assert algorithm_of((8, 32, 28, 28), (64, 1, 3, 3), 1, 1, 1, 32) == "depthwise"
    # From 4 output channels per group the forward stays on the phase grid (the gradients
    # still take this kernel: test_multiplier4_gradients).
    assert algorithm_of((8, 16, 28, 28), (64, 1, 3, 3), 1, 1, 1, 16) == "direct (phase grid)"
    # Two channels per group, one group, or "direct" asked for: not this kernel.
    assert algorithm_of((2, 8, 16, 16), (8, 2, 3, 3), 1, 1, 1, 4) != "depthwise"
    assert algorithm_of((2, 1, 16, 16), (8, 1, 3, 3), 1, 1, 1, 1) != "depthwise"
    assert algorithm_of((8, 64, 56, 56), (64, 1, 3, 3), 1, 1, 1, 64, algorithm="direct") != "depthwise"


def test_transpose_convolution_takes_the_input_gradient(isa):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 7, 9)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    for stride, padding in ((1, 1), (2, 1), (2, 0)):
        got = ops.conv_transpose2d(x, w, None, stride, padding, groups=4, backend="cpu")
        want = ops.conv_transpose2d(x, w, None, stride, padding, groups=4, backend="reference")
        close(got, want, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride, multiplier", [(1, 1), (2, 2)])
def test_same_bits_at_1_2_3_threads(isa, restore_threads, stride, multiplier, dtype):
    x, w, b, gy = data((3, 5, 14, 23), multiplier, (3, 3), dtype, stride, 1, 1, seed=2)
    results = []
    for threads in (1, 2, 3):
        pyconv.set_num_threads(threads)
        y = ops.conv2d(x, w, b, stride, 1, 1, 5, backend="cpu")
        results.append([y, *ops.conv2d_backward(gy, x, w, stride, 1, 1, 5, backend="cpu")])
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert a.tobytes() == b_.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multiplier4_gradients(isa, dtype):
    x, w, b, gy = data((2, 3, 9, 21), 4, (3, 3), dtype, 1, 1, 1)
    got = ops.conv2d_backward(gy, x, w, 1, 1, 1, 3, backend="cpu")
    want = ops.conv2d_backward(gy, x, w, 1, 1, 1, 3, backend="reference")
    for g, r in zip(got, want):
        close(g, r, dtype)
