"""PyTorch's own sample inputs (its OpInfo database) for the convolutions and pooling, where a
sample is unbatched (one sample without its batch axis): pyconv's op gives PyTorch's values,
indices and gradients on every NumPy backend.

The database is PyTorch's test-suite code (``torch.testing._internal``, which needs the
``expecttest`` package) and takes tens of seconds to load, so these tests are ``slow``.
"""
import importlib

import numpy as np
import pytest
from conftest import assert_close

import pyconv
from pyconv import ops

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")

pytestmark = [pytest.mark.slow, pytest.mark.torch,
              pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")]

registry = importlib.import_module("pyconv.backends")
NUMPY_BACKENDS = [b for b in pyconv.backends() if registry.get(b).array_kind == "numpy"]

# OpInfo name -> (pyconv op, its backward op, rank of a batched input)
OPS = {
    "nn.functional.conv1d": ("conv1d", "conv1d_backward", 3),
    "nn.functional.conv2d": ("conv2d", "conv2d_backward", 4),
    "nn.functional.conv_transpose2d": ("conv_transpose2d", "conv_transpose2d_backward", 4),
    "nn.functional.max_pool2d": ("max_pool2d", "max_pool2d_backward", 4),
    "nn.functional.avg_pool2d": ("avg_pool2d", "avg_pool2d_backward", 4),
    "nn.functional.max_unpool2d": ("max_unpool2d", None, 4),
}


@pytest.fixture(scope="module")
def op_db():
    from torch.testing._internal.common_methods_invocations import op_db

    return {info.name: info for info in op_db if info.name in OPS and not info.variant_test_name}


def numpy(value):
    return value.detach().numpy() if isinstance(value, torch.Tensor) else value


def unbatched_samples(info, batched_ndim):
    return [s for s in info.sample_inputs("cpu", torch.float64, requires_grad=True)
            if s.input.ndim == batched_ndim - 1]


def check_sample(info, op, backward_op, sample, backend):
    """pyconv's forward (and backward, where there is one) against PyTorch's on one sample."""
    args = [numpy(a) for a in sample.args]
    kwargs = {k: numpy(v) for k, v in sample.kwargs.items()}
    x = numpy(sample.input)
    expected = info.op(sample.input, *sample.args, **sample.kwargs)
    got = getattr(ops, op)(x, *args, **kwargs, backend=backend)
    if isinstance(expected, tuple):  # max_pool2d with return_indices
        (y, idx), (yt, it) = got, expected
        np.testing.assert_array_equal(idx, it.numpy())
    else:
        y, yt = got, expected
    assert y.shape == tuple(yt.shape)
    assert_close(y, yt.detach().numpy())
    if backward_op is None:
        return
    grad_out = np.random.default_rng(0).standard_normal(y.shape)
    leaves = [t for t in (sample.input, *sample.args) if isinstance(t, torch.Tensor) and t.requires_grad]
    expected_grads = torch.autograd.grad(yt, leaves, torch.tensor(grad_out))
    if op in ("conv1d", "conv2d", "conv_transpose2d"):
        grads = getattr(ops, backward_op)(grad_out, x, args[0], **kwargs, backend=backend)
        grads = [g for g, a in zip(grads, (x, *args)) if a is not None]
    elif op == "max_pool2d":
        _, idx = getattr(ops, op)(x, *args, **dict(kwargs, return_indices=True), backend=backend)
        grads = [ops.max_pool2d_backward(grad_out, idx, x.shape, backend=backend)]
    else:
        grads = [ops.avg_pool2d_backward(grad_out, x.shape, *args, **kwargs, backend=backend)]
    for g, e in zip(grads, expected_grads):
        assert g.shape == tuple(e.shape)
        assert_close(g, e.numpy())


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
@pytest.mark.parametrize("name", list(OPS))
def test_unbatched_opinfo_samples_match_torch(op_db, name, backend):
    op, backward_op, batched_ndim = OPS[name]
    samples = unbatched_samples(op_db[name], batched_ndim)
    for sample in samples:
        try:
            check_sample(op_db[name], op, backward_op, sample, backend)
        except Exception as e:
            raise AssertionError(f"{op} on {sample!r}") from e
    # Which of the ops PyTorch samples unbatched: a change in its database shows here.
    assert bool(samples) == (name not in ("nn.functional.avg_pool2d", "nn.functional.max_unpool2d"))
