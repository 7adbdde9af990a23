"""Batch normalisation with the activation after it fused in: ops.batch_norm_train(activation=),
F.batch_norm(activation=) and Sequential's BatchNorm -> ReLU / LeakyReLU pairs give the bits of
the separate kernels and modules, forward and backward, on every backend and at the special
values (signed zeros, subnormals, NaN, infinities); the gradients are checked in float64; a
pair the fusion must not touch (a negative slope, a subclass, a forward hook) runs as two."""
import re

import numpy as np
import pytest

import pyconv
from pyconv import nn, ops
from pyconv.autograd import Tensor
from pyconv.nn import functional as F
from pyconv.nn.modules import module as module_api
from pyconv.testing import gradcheck

ACTIVATIONS = [("relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", 0.0)]
SPECIAL = [0.0, -0.0, 1e-40, -1e-40, np.nan, -np.inf, np.inf, 2.0]


def _inputs(dtype, shape=(4, 12, 5, 5)):
    """x, w, b and a gradient; w = 0 on the first channels, so that their outputs are the
    special values of b (x * 0 + b)."""
    rng = np.random.default_rng(3)
    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    w = (rng.random(C) + 0.5).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    with np.errstate(over="ignore"):
        w[:len(SPECIAL)] = 0
        b[:len(SPECIAL)] = np.array(SPECIAL).astype(dtype)
    return x, w, b, rng.standard_normal(shape).astype(dtype)


def _activated(y, activation, slope, backend):
    return ops.relu(y, backend=backend) if activation == "relu" else ops.leaky_relu(y, slope, backend=backend)


def _through(g, y, activation, slope, backend):
    if activation == "relu":
        return ops.relu_backward(g, y, backend=backend)
    return ops.leaky_relu_backward(g, y, slope, backend=backend)


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


# (The cuda backend takes device arrays: the conformance table checks it against the reference.)
@pytest.mark.parametrize("backend", [b for b in pyconv.backends() if b != "cuda"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation, slope", ACTIVATIONS)
def test_fused_kernels_give_the_separate_kernels_bits(backend, dtype, activation, slope):
    x, w, b, g = _inputs(dtype)
    y, mean, var = ops.batch_norm_train(x, w, b, activation=activation, negative_slope=slope, backend=backend)
    plain, mean0, var0 = ops.batch_norm_train(x, w, b, backend=backend)
    expected = _activated(plain, activation, slope, backend)
    assert np.array_equal(_bits(y), _bits(expected))
    assert np.array_equal(_bits(mean), _bits(mean0)) and np.array_equal(_bits(var), _bits(var0))
    invstd = (1 / np.sqrt(var + 1e-5)).astype(dtype)
    fused = ops.batch_norm_train_backward(g, x, mean, invstd, w, y=y, activation=activation,
                                          negative_slope=slope, backend=backend)
    separate = ops.batch_norm_train_backward(_through(g, y, activation, slope, backend), x, mean, invstd, w,
                                             backend=backend)
    for got, want in zip(fused, separate):
        assert np.array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("activation, slope", ACTIVATIONS[:2])
def test_gradients_in_float64(activation, slope):
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((3, 4, 3, 2)), requires_grad=True)
    w = Tensor(rng.random(4) + 0.5, requires_grad=True)
    b = Tensor(rng.standard_normal(4), requires_grad=True)

    def fn(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True, activation=activation, negative_slope=slope)
    assert gradcheck(fn, [x, w, b])


def _network(dtype=np.float32):
    pyconv.random.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, dtype=dtype), nn.BatchNorm2d(8, dtype=dtype),
                         nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 3, dtype=dtype), nn.BatchNorm2d(8, dtype=dtype),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2, dtype=dtype))


def _step(run, model, x):
    """The output and every parameter's gradient of run(model, x)."""
    model.zero_grad()
    out = run(model, x)
    (out * out).sum().backward()
    return [out.data] + [p.grad for p in model.parameters()]


def _one_by_one(model, x):
    for m in model:
        x = m(x)
    return x


def _counting_activation_kernels(monkeypatch):
    calls = []
    for name in ("relu", "leaky_relu"):
        kernel = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _k=kernel, **kw: calls.append(1) or _k(*a, **kw))
    return calls


def test_sequential_fuses_batch_norm_and_activation_with_the_same_bits(monkeypatch):
    model = _network()
    x = Tensor(np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32))
    calls = _counting_activation_kernels(monkeypatch)
    separate = _step(_one_by_one, model, x)
    assert len(calls) == 2  # the two activations ran as kernels of their own
    calls.clear()
    fused = _step(lambda m, x: m(x), model, x)
    assert calls == []  # ... and inside the batch norms here
    for got, want in zip(fused, separate):
        assert np.array_equal(_bits(got), _bits(want))


class _MyReLU(nn.ReLU):
    pass


@pytest.mark.parametrize("follower", [lambda: nn.LeakyReLU(-0.1), _MyReLU])
def test_pairs_that_are_not_fused(monkeypatch, follower):
    model = nn.Sequential(nn.BatchNorm2d(3), follower())
    x = Tensor(np.random.default_rng(2).standard_normal((4, 3, 5, 5)).astype(np.float32))
    calls = _counting_activation_kernels(monkeypatch)
    got = _step(lambda m, x: m(x), model, x)
    assert len(calls) == 1
    want = _step(_one_by_one, model, x)
    for a, b in zip(got, want):
        assert np.array_equal(_bits(a), _bits(b))


def test_a_forward_hook_sees_every_output(monkeypatch):
    """With a forward hook (what nn.summary's forward pass uses) each module runs on its own,
    so the hook gets the batch norm's output too."""
    model = _network()
    seen = []

    def hook(module, out):
        seen.append(type(module).__name__)
    module_api._forward_hooks.append(hook)
    try:
        calls = _counting_activation_kernels(monkeypatch)
        model(Tensor(np.zeros((2, 3, 8, 8), np.float32)))
    finally:
        module_api._forward_hooks.remove(hook)
    assert len(calls) == 2
    assert seen.count("BatchNorm2d") == 2 and seen.count("ReLU") == 1 and seen.count("LeakyReLU") == 1


@pytest.mark.parametrize("call, message", [
    (lambda x: ops.batch_norm_train(x, activation="gelu"), "batch_norm_train: activation must be one of"),
    (lambda x: ops.batch_norm_train(x, activation="leaky_relu", negative_slope=-0.1),
     "batch_norm_train: negative_slope must be finite and >= 0"),
    (lambda x: ops.batch_norm_train(x, activation="leaky_relu", negative_slope=np.inf),
     "batch_norm_train: negative_slope must be finite"),
    (lambda x: ops.batch_norm_train_backward(x, x, x[0, :, 0, 0], x[0, :, 0, 0], activation="relu"),
     "batch_norm_train_backward: y (the forward's output) is needed"),
    (lambda x: ops.batch_norm_train_backward(x, x, x[0, :, 0, 0], x[0, :, 0, 0], y=x[:1], activation="relu"),
     "batch_norm_train_backward: y must have x's shape"),
    (lambda x: F.batch_norm(x, None, None, training=True, activation="tanh"), "batch_norm: activation must be one of"),
])
def test_bad_activation_arguments(call, message):
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(x)
