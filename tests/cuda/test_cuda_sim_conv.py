"""Convolution kernels of the 'cuda' backend under the CUDA simulator, against PyTorch."""
import numpy as np
import pytest

from cuda_sim_util import assert_close, poison_outputs, randn, requires_simulator  # noqa: F401

torch = pytest.importorskip("torch")
F = torch.nn.functional

from pyconv import ops  # noqa: E402

pytestmark = requires_simulator

# (N, C, H, W, K, R, S, stride, padding, dilation, groups, dtype). Shapes are tiny (the simulator
# runs every thread in Python) but cover the tiling edges: several pixel tiles (N*Ho*Wo > 128),
# several reduction tiles (C*R*S > 8) and partial ones, strides, dilation, groups, "same".
CONV_CASES = [
    (2, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1, np.float32),
    (2, 2, 9, 9, 3, 3, 3, 1, 1, 1, 1, np.float32),  # 162 output pixels: two column tiles
    (1, 4, 7, 6, 6, 3, 2, 2, (1, 0), (2, 1), 2, np.float32),
    (1, 5, 6, 6, 3, 1, 1, 1, 0, 1, 1, np.float32),
    (1, 3, 6, 5, 2, 3, 3, 1, "same", 2, 1, np.float32),
    (2, 3, 6, 6, 4, 3, 3, 2, 1, 1, 1, np.float64),
]

DEPTHWISE_CASES = [
    (1, 3, 6, 5, 3, 3, 3, 1, 1, 1, 3, np.float32),
    (1, 2, 5, 5, 4, 3, 2, 2, 1, 1, 2, np.float64),  # channel multiplier 2
]


def _conv_check(case, rng):
    N, C, H, W, K, R, S, stride, padding, dilation, groups, dtype = case
    x = randn(rng, (N, C, H, W), dtype)
    w = randn(rng, (K, C // groups, R, S), dtype)
    b = randn(rng, (K,), dtype)
    y = ops.conv2d(x, w, b, stride, padding, dilation, groups, backend="cuda")
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    yt = F.conv2d(xt, wt, bt, stride, padding, dilation, groups)
    assert_close(y, yt)
    gy = randn(rng, y.shape, dtype)
    yt.backward(torch.from_numpy(gy))
    gx, gw, gb = ops.conv2d_backward(gy, x, w, stride, padding, dilation, groups, backend="cuda")
    assert_close(gx, xt.grad)
    assert_close(gw, wt.grad)
    assert_close(gb, bt.grad)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_conv2d_forward_and_backward(case):
    _conv_check(case, np.random.default_rng(1))


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_depthwise_conv2d_forward_and_backward(case):
    _conv_check(case, np.random.default_rng(2))


def test_conv2d_without_bias():
    rng = np.random.default_rng(3)
    x, w = randn(rng, (1, 2, 4, 4), np.float32), randn(rng, (3, 2, 2, 2), np.float32)
    y = ops.conv2d(x, w, backend="cuda")
    assert_close(y, F.conv2d(torch.from_numpy(x), torch.from_numpy(w)))


def test_conv1d_forward_and_backward():
    rng = np.random.default_rng(4)
    x, w, b = randn(rng, (2, 3, 11), np.float64), randn(rng, (4, 3, 3), np.float64), randn(rng, (4,), np.float64)
    y = ops.conv1d(x, w, b, stride=2, padding=1, dilation=2, backend="cuda")
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    yt = F.conv1d(xt, wt, bt, stride=2, padding=1, dilation=2)
    assert_close(y, yt)
    gy = randn(rng, y.shape, np.float64)
    yt.backward(torch.from_numpy(gy))
    grads = ops.conv1d_backward(gy, x, w, stride=2, padding=1, dilation=2, backend="cuda")
    for got, want in zip(grads, (xt.grad, wt.grad, bt.grad)):
        assert_close(got, want)


@pytest.mark.parametrize("stride,padding,output_padding,groups,dilation,dtype", [
    (2, 1, 1, 1, 1, np.float32),
    (3, 0, 2, 2, 1, np.float64),
    (1, 1, 0, 1, 2, np.float32),
])
def test_conv_transpose2d_forward_and_backward(stride, padding, output_padding, groups, dilation, dtype):
    rng = np.random.default_rng(5)
    x, w, b = randn(rng, (1, 4, 3, 4), dtype), randn(rng, (4, 3, 3, 2), dtype), randn(rng, (3 * groups,), dtype)
    args = (stride, padding, output_padding, groups, dilation)
    y = ops.conv_transpose2d(x, w, b, *args, backend="cuda")
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    yt = F.conv_transpose2d(xt, wt, bt, *args)
    assert_close(y, yt)
    gy = randn(rng, y.shape, dtype)
    yt.backward(torch.from_numpy(gy))
    grads = ops.conv_transpose2d_backward(gy, x, w, *args, backend="cuda")
    for got, want in zip(grads, (xt.grad, wt.grad, bt.grad)):
        assert_close(got, want)


def test_transpose_conv_worked_example():
    # A 4x4 input of ones, a 3x3 kernel of ones, stride 1 -> outer([1,2,3,3,2,1]).
    y = ops.conv_transpose2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), backend="cuda")
    v = np.array([1, 2, 3, 3, 2, 1.0])
    np.testing.assert_array_equal(y[0, 0], np.outer(v, v))


def test_grad_weight_split_reduction():
    # N*Ho*Wo = 2*12*12 = 288 output pixels: the weight gradient is reduced in 3 chunks.
    from pyconv._spec import conv2d as spec
    from pyconv.backends.cuda.conv import wgrad_split

    rng = np.random.default_rng(6)
    x, w = randn(rng, (2, 1, 12, 12), np.float32), randn(rng, (2, 1, 3, 3), np.float32)
    assert wgrad_split(spec(x, w, None, 1, 1, 1, 1), np.float32)[0] > 1
    gy = randn(rng, (2, 2, 12, 12), np.float32)
    _, gw, _ = ops.conv2d_backward(gy, x, w, padding=1, needs=(False, True, False), backend="cuda")
    xt, wt = torch.from_numpy(x), torch.from_numpy(w).requires_grad_()
    F.conv2d(xt, wt, padding=1).backward(torch.from_numpy(gy))
    assert_close(gw, wt.grad)
