"""Pooling and max-unpooling kernels of the 'cuda' backend under the CUDA simulator."""
import numpy as np
import pytest

from cuda_sim_util import assert_close, poison_outputs, randn, requires_simulator  # noqa: F401

torch = pytest.importorskip("torch")
F = torch.nn.functional

from pyconv import ops  # noqa: E402

pytestmark = requires_simulator


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode,dtype", [
    (2, 2, 0, 1, False, np.float32),
    (3, 2, 1, 1, True, np.float32),
    (3, 1, 1, 2, False, np.float64),
    ((2, 3), (1, 2), (1, 1), 1, True, np.float32),
])
def test_max_pool2d_forward_indices_backward(kernel, stride, padding, dilation, ceil_mode, dtype):
    rng = np.random.default_rng(10)
    x = randn(rng, (2, 3, 7, 6), dtype)
    x[0, 0, 1, 1] = x[0, 0, 2, 3] = np.nan  # NaN propagates; PyTorch reports the last NaN
    x[1, 2] = 0.5  # all ties: the first position in the window wins
    y, idx = ops.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True, backend="cuda")
    xt = torch.from_numpy(x).requires_grad_()
    yt, it = F.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    assert_close(y, yt)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, it.numpy())
    gy = randn(rng, y.shape, dtype)
    yt.backward(torch.from_numpy(gy))
    assert_close(ops.max_pool2d_backward(gy, idx, x.shape, backend="cuda"), xt.grad)


def test_max_pool2d_without_indices_and_worked_example():
    x = np.array([[2, 3, 1, 9], [4, 7, 3, 5], [8, 2, 2, 2], [1, 3, 4, 5]], np.float32)[None, None]
    y = ops.max_pool2d(x, 2, backend="cuda")
    np.testing.assert_array_equal(y[0, 0], [[7, 9], [8, 5]])
    # The bottom-left window: (8 + 2 + 1 + 3) / 4 = 3.5.
    np.testing.assert_array_equal(ops.avg_pool2d(x, 2, backend="cuda")[0, 0], [[4, 4.5], [3.5, 3.25]])


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode,count_include_pad,divisor,dtype", [
    (2, 2, 0, False, True, None, np.float32),
    (3, 2, 1, True, False, None, np.float32),
    (3, 2, 1, True, True, None, np.float64),
    ((3, 2), 1, (1, 1), False, True, 5, np.float32),
])
def test_avg_pool2d_forward_backward(kernel, stride, padding, ceil_mode, count_include_pad, divisor, dtype):
    rng = np.random.default_rng(11)
    x = randn(rng, (2, 3, 7, 6), dtype)
    args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    y = ops.avg_pool2d(x, *args, backend="cuda")
    xt = torch.from_numpy(x).requires_grad_()
    yt = F.avg_pool2d(xt, *args)
    assert_close(y, yt)
    gy = randn(rng, y.shape, dtype)
    yt.backward(torch.from_numpy(gy))
    assert_close(ops.avg_pool2d_backward(gy, x.shape, *args, backend="cuda"), xt.grad)


def _unpool_oracle(x, idx, out_hw):
    """Sequential scatter in row-major order: the last of repeated indices wins."""
    N, C = x.shape[:2]
    y = np.zeros((N, C, out_hw[0] * out_hw[1]), x.dtype)
    for n in range(N):
        for c in range(C):
            for i, v in zip(idx[n, c].ravel(), x[n, c].ravel()):
                y[n, c, i] = v
    return y.reshape(N, C, *out_hw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_unpool2d_repeated_indices_last_wins(dtype):
    rng = np.random.default_rng(12)
    x = randn(rng, (2, 3, 3, 3), dtype)
    idx = rng.integers(0, 16, size=x.shape)  # many repeats among 9 positions into 16
    y = ops.max_unpool2d(x, idx, 2, stride=1, backend="cuda")
    np.testing.assert_array_equal(y, _unpool_oracle(x, idx, (4, 4)))


def test_max_unpool2d_worked_example_and_output_size():
    x = np.array([[1, 2, 6, 3], [3, 5, 2, 1], [1, 2, 2, 1], [7, 3, 4, 8]], np.float32)[None, None]
    y, idx = ops.max_pool2d(x, 2, return_indices=True, backend="cuda")
    np.testing.assert_array_equal(y[0, 0], [[5, 6], [7, 8]])
    up = ops.max_unpool2d(np.array([[[[1, 2], [3, 4]]]], np.float32), idx, 2, backend="cuda")
    np.testing.assert_array_equal(up[0, 0], [[0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]])
    up5 = ops.max_unpool2d(y, idx, 2, output_size=(5, 5), backend="cuda")
    want = F.max_unpool2d(torch.from_numpy(y), torch.from_numpy(idx), 2, output_size=(5, 5))
    np.testing.assert_array_equal(up5, want.numpy())
