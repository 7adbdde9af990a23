"""Activation functions: relu, leaky_relu, prelu, elu, sigmoid, tanh, gated_tanh, softmax,
log_softmax and maxout. All but maxout run the selected backend's fused kernels (pyconv.ops),
forward and backward; maxout is array code on the input's array module (NumPy or CuPy)."""
from __future__ import annotations

from ... import _spec, ops
from ...autograd import Function, Tensor, array_module
from ._util import _data, _tensor

__all__ = ["relu", "leaky_relu", "prelu", "elu", "sigmoid", "tanh", "gated_tanh", "softmax", "log_softmax",
           "maxout"]


class _ReLU(Function):
    def forward(self, x):
        self.y = ops.relu(x)
        return self.y

    def backward(self, g):
        return ops.relu_backward(g, self.y)


def relu(x) -> Tensor:
    """max(x, 0), as ``torch.relu``: 0 for x < 0 (-inf included), NaN stays NaN, -0.0 stays
    -0.0; the gradient is 0 where the output is <= 0."""
    return _ReLU()(x)


class _LeakyReLU(Function):
    def __init__(self, slope):
        self.slope = slope

    def forward(self, x):
        self.x = x
        return ops.leaky_relu(x, self.slope)

    def backward(self, g):
        return ops.leaky_relu_backward(g, self.x, self.slope)


def leaky_relu(x, negative_slope=0.01) -> Tensor:
    """max(0, x) + negative_slope * min(0, x)."""
    return _LeakyReLU(negative_slope)(x)


class _PReLU(Function):
    def forward(self, x, w):
        self.x, self.w = x, w
        return ops.prelu(x, w)

    def backward(self, g):
        grad_x, grad_w = ops.prelu_backward(g, self.x, self.w)
        return (grad_x if self.needs_input_grad[0] else None,
                grad_w if self.needs_input_grad[1] else None)


def prelu(x, weight) -> Tensor:
    """Leaky ReLU with a learned slope per channel (axis 1): weight (C,) or (1,)."""
    _spec.prelu(_data(x), _data(weight))
    return _PReLU()(x, weight)


class _ELU(Function):
    def __init__(self, alpha):
        self.alpha = alpha

    def forward(self, x):
        self.x = x
        return ops.elu(x, self.alpha)

    def backward(self, g):
        return ops.elu_backward(g, self.x, self.alpha)


def elu(x, alpha=1.0) -> Tensor:
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return _ELU(alpha)(x)


class _Sigmoid(Function):
    def forward(self, x):
        self.y = ops.sigmoid(x)
        return self.y

    def backward(self, g):
        return ops.sigmoid_backward(g, self.y)


def sigmoid(x) -> Tensor:
    return _Sigmoid()(x)


class _Tanh(Function):
    def forward(self, x):
        self.y = ops.tanh(x)
        return self.y

    def backward(self, g):
        return ops.tanh_backward(g, self.y)


def tanh(x) -> Tensor:
    return _Tanh()(x)


class _GatedTanh(Function):
    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        self.x = x  # tanh and sigmoid are computed again from it: no second half-sized array kept
        return ops.gated_tanh(x, self.dim)

    def backward(self, g):
        return ops.gated_tanh_backward(g, self.x, self.dim)


def gated_tanh(x, dim=1) -> Tensor:
    """tanh(a) * sigmoid(b) for x = [a, b] split in halves along ``dim`` (the gated activation
    of a gated PixelCNN or WaveNet), one pass each way."""
    return _GatedTanh(_spec.gated_tanh(_data(x), dim))(x)


class _Softmax(Function):
    """softmax, or log_softmax, along one axis: the fused row kernels of pyconv.ops, which run
    over the last axis (another axis is moved there: a copy in, a view out)."""

    def __init__(self, axis, log):
        self.axis, self.log = axis, log

    def forward(self, x):
        xp = array_module(x)
        self.scalar = x.ndim == 0
        if self.scalar:
            x = x.reshape(1)
        self.axis = self.axis % x.ndim
        rows = xp.moveaxis(x, self.axis, -1)
        self.y = (ops.log_softmax if self.log else ops.softmax)(rows)
        y = xp.moveaxis(self.y, -1, self.axis)
        return y.reshape(()) if self.scalar else y

    def backward(self, g):
        xp = array_module(g)
        if self.scalar:
            g = g.reshape(1)
        backward = ops.log_softmax_backward if self.log else ops.softmax_backward
        grad = xp.moveaxis(backward(xp.moveaxis(g, self.axis, -1), self.y), -1, self.axis)
        return grad.reshape(()) if self.scalar else grad


def softmax(x, dim=-1) -> Tensor:
    """exp(x) / sum(exp(x)) along `dim`, as ``torch.softmax``."""
    return _Softmax(dim, log=False)(x)


def log_softmax(x, dim=-1) -> Tensor:
    """log(softmax(x)) along `dim`, computed stably, as ``torch.log_softmax``."""
    return _Softmax(dim, log=True)(x)


def maxout(x, pool_size, dim=1) -> Tensor:
    """Maxout (Goodfellow et al. 2013): the maximum over groups of `pool_size` consecutive
    features along `dim` -> that axis shrinks pool_size times."""
    x = _tensor(x)
    dim = dim % x.ndim
    n = x.shape[dim]
    if pool_size < 1 or n % pool_size:
        raise ValueError(f"maxout: pool_size={pool_size} must divide the size {n} of dim {dim} "
                         f"(x.shape={x.shape})")
    grouped = x.reshape(x.shape[:dim] + (n // pool_size, pool_size) + x.shape[dim + 1:])
    return grouped.max(axis=dim + 1)
