"""Arrays of other libraries through DLPack: pyconv.ops and pyconv.Tensor take any array with
``__dlpack__`` without a copy (NumPy for host memory, CuPy for CUDA memory), and say clearly
what they cannot take."""
import inspect
import sys
import types

import numpy as np
import pytest
from conftest import assert_close

import pyconv
import pyconv.nn as nn
from pyconv import Tensor, ops

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch


class Exporter:
    """The smallest DLPack producer: any array (NumPy's own export underneath), on the device
    it claims to be on."""

    def __init__(self, array, device=None):
        self.array, self.device = array, device

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device or self.array.__dlpack_device__()


@pytest.fixture
def kernel_inputs(monkeypatch):
    """The arrays each kernel call receives, recorded (pyconv.ops._run sees them last)."""
    seen = []
    run = ops._run

    def recording_run(kernel, op, backend, arrays, *params):
        seen.append(arrays)
        return run(kernel, op, backend, arrays, *params)

    monkeypatch.setattr(ops, "_run", recording_run)
    return seen


def test_a_contiguous_torch_tensor_reaches_the_kernel_without_a_copy(kernel_inputs):
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    y = ops.conv2d(x, w, padding=1, backend="reference")
    assert isinstance(y, np.ndarray)
    assert_close(y, F.conv2d(x, w, padding=1).numpy())
    (kernel_x, kernel_w, _), = kernel_inputs
    assert np.shares_memory(kernel_x, x.numpy()) and np.shares_memory(kernel_w, w.numpy())


def test_an_unbatched_torch_tensor_gets_its_batch_axis_as_a_view(kernel_inputs):
    x = torch.randn(3, 6, 6)
    y, idx = ops.max_pool2d(x, 2, return_indices=True, backend="reference")
    yt, it = F.max_pool2d(x, 2, return_indices=True)
    assert_close(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    (kernel_x,), = kernel_inputs
    assert kernel_x.shape == (1, 3, 6, 6) and np.shares_memory(kernel_x, x.numpy())


@pytest.mark.parametrize("backend", [b for b in pyconv.backends() if b != "cuda"])
def test_non_contiguous_tensors_keyword_arguments_and_index_tensors(backend):
    x = torch.randn(2, 3, 9, 7).transpose(2, 3)  # strided: the kernel gets a C-contiguous copy
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    y = ops.conv2d(x=x, w=w, b=b, stride=2, backend=backend)
    assert_close(y, F.conv2d(x, w, b, stride=2).numpy())
    pooled, idx = F.max_pool2d(x, 2, return_indices=True)  # int64 tensors for the index arguments
    unpooled = ops.max_unpool2d(pooled, idx, 2, output_size=x.shape[-2:], backend=backend)
    assert_close(unpooled, F.max_unpool2d(pooled, idx, 2, output_size=x.shape[-2:]).numpy())
    grad = ops.max_pool2d_backward(torch.ones_like(pooled), idx, tuple(x.shape), backend=backend)
    assert grad.shape == tuple(x.shape) and grad.sum() == pooled.numel()


def test_a_tensor_that_requires_grad_is_refused_with_the_way_out():
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    with pytest.raises(TypeError, match=r"conv2d: x is a tensor that requires grad.*x\.detach\(\)"):
        ops.conv2d(x, torch.randn(2, 3, 3, 3))
    with pytest.raises(TypeError, match=r"lstm_cell: w_hh is a tensor that requires grad"):
        ops.lstm_cell(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 4)), np.ones((16, 3)),
                      torch.ones(16, 4, dtype=torch.float64, requires_grad=True))
    ops.conv2d(x.detach(), torch.randn(2, 3, 3, 3))


def test_read_only_memory_is_read_and_left_alone():
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    x.flags.writeable = False
    before = x.copy()
    y = ops.avg_pool2d(Exporter(x), 2, backend="reference")
    assert_close(y, ops.avg_pool2d(before, 2, backend="reference"))
    np.testing.assert_array_equal(x, before)


def test_what_dlpack_cannot_give_is_a_type_error_naming_the_argument():
    with pytest.raises(TypeError, match=r"max_pool2d: x \(Tensor\) could not be taken through DLPack"):
        ops.max_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.bfloat16), 2)
    with pytest.raises(TypeError, match="x is on DLPack device type 4"):
        ops.leaky_relu(Exporter(np.ones(3), device=(4, 0)))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        ops.leaky_relu(torch.ones(3, dtype=torch.int32))  # taken, then judged by the usual checks


def test_cuda_memory_goes_to_cupy(monkeypatch):
    """Decided by __dlpack_device__: CUDA memory (device type 2) is CuPy's to take."""
    taken = []
    fake_cupy = types.SimpleNamespace(from_dlpack=lambda a: taken.append(a) or "a cupy array")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    on_gpu = Exporter(np.ones(3), device=(2, 0))
    assert pyconv._spec.from_dlpack("op", "x", on_gpu) == "a cupy array"
    assert taken == [on_gpu]
    monkeypatch.setitem(sys.modules, "cupy", None)  # not installed
    with pytest.raises(TypeError, match="x is in CUDA memory; taking it needs CuPy"):
        pyconv._spec.from_dlpack("op", "x", on_gpu)


def test_every_op_takes_dlpack_and_keeps_its_signature_and_docstring():
    for name in ops.__all__:
        op = getattr(ops, name)
        assert op.__name__ == name and op.__doc__
        assert "backend" in inspect.signature(op).parameters
        assert op.__code__ is ops._takes_dlpack(lambda: None).__code__, f"{name} takes no DLPack arrays"


def test_a_pyconv_tensor_made_from_a_torch_tensor_shares_its_memory():
    t = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    x = Tensor(t, requires_grad=True)
    assert isinstance(x.data, np.ndarray) and np.shares_memory(x.data, t.numpy())
    conv = nn.Conv2d(3, 2, 3, dtype=np.float64)
    conv(x).sum().backward()
    assert x.grad.shape == (2, 3, 5, 5)
    with pytest.raises(TypeError, match=r"Tensor: data is a tensor that requires grad.*data\.detach\(\)"):
        Tensor(t.requires_grad_())
