"""Batch normalisation (Ioffe & Szegedy 2015) over axis 1, with running statistics."""
from __future__ import annotations

from ... import ops
from ..._spec import FLOAT_DTYPES
from ..._spec.norm import _activation
from ...autograd import Function, Tensor, array_module
from ._util import _channel_shape, _data
from .activation import leaky_relu, relu

__all__ = ["batch_norm"]


class _BatchNorm(Function):
    def __init__(self, mean, invstd, training):
        self.mean, self.invstd, self.training = mean, invstd, training

    def forward(self, x, w, b):
        C = x.shape[1]
        self.axes = (0,) + tuple(range(2, x.ndim))
        shape = _channel_shape(x.ndim, C)
        self.xhat = (x - self.mean.reshape(shape)) * self.invstd.reshape(shape)
        self.scale = self.invstd.reshape(shape) if w is None else (w * self.invstd).reshape(shape)
        y = self.xhat if w is None else self.xhat * w.reshape(shape)
        return y if b is None else y + b.reshape(shape)

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        axes, xhat = self.axes, self.xhat
        gw = (g * xhat).sum(axis=axes) if nw else None
        gb = g.sum(axis=axes) if nb else None
        gx = None
        if nx:
            if self.training:  # the batch statistics depend on x too
                n = g.size // g.shape[1]
                sum_g = g.sum(axis=axes, keepdims=True)
                sum_gx = (g * xhat).sum(axis=axes, keepdims=True)
                gx = self.scale * (g - (sum_g + xhat * sum_gx) / n)
            else:
                gx = g * self.scale
        return gx, gw, gb


class _BatchNormTrain(Function):
    """Training mode on the fused kernels of the selected backend: one task per block of
    channels for the statistics and the normalisation (and the activation, if any), one for the
    three gradients (through the activation)."""

    training = True  # what exporters read: batch statistics, not running ones

    def __init__(self, eps, activation=None, negative_slope=0.01):
        self.eps, self.activation, self.negative_slope = eps, activation, negative_slope

    def forward(self, x, w, b):
        y, self.mean, self.var = ops.batch_norm_train(x, w, b, self.eps, activation=self.activation,
                                                      negative_slope=self.negative_slope)
        self.x, self.w = x, w
        self.y = y if self.activation else None  # the activation's gradient is read from it
        return y

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        invstd = 1 / array_module(g).sqrt(self.var + self.x.dtype.type(self.eps))
        gx, gw, gb = ops.batch_norm_train_backward(g, self.x, self.mean, invstd, self.w, y=self.y,
                                                   activation=self.activation,
                                                   negative_slope=self.negative_slope)
        return gx if nx else None, gw if nw else None, gb if nb else None


def _fused_kernels_apply(xd, weight, bias):
    """Whether the batch-statistics kernels take these arguments (one float dtype)."""
    return xd.dtype in FLOAT_DTYPES and all(
        a is None or _data(a).dtype == xd.dtype for a in (weight, bias))


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, activation=None, negative_slope=0.01) -> Tensor:
    """Batch normalisation over axis 1, as ``torch.nn.functional.batch_norm``. In training it
    normalises with the batch statistics and updates running_mean / running_var in place
    (running_var with the unbiased variance); otherwise it uses the running statistics.

    ``activation`` ("relu", or "leaky_relu" with ``negative_slope`` >= 0) follows the
    normalisation: ``relu(batch_norm(...))`` / ``leaky_relu(batch_norm(...), negative_slope)``
    with the same bits, in training as one kernel each way (no pass over the normalised
    output, no Function of its own)."""
    _activation("batch_norm", activation, negative_slope)
    xd = _data(x)
    if xd.ndim < 2:
        raise ValueError(f"batch_norm: x must be at least 2-D (N, C, ...), got shape {xd.shape}")
    C = xd.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if a is not None and _data(a).shape != (C,):
            raise ValueError(f"batch_norm: {name} must have shape ({C},) for x of shape {xd.shape}, "
                             f"got {_data(a).shape}")
    xp = array_module(xd)
    rm, rv = _data(running_mean), _data(running_var)
    if training:
        axes = (0,) + tuple(range(2, xd.ndim))
        n = xd.size // C
        if n < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel, got x of shape {xd.shape}")
        if _fused_kernels_apply(xd, weight, bias):
            fn = _BatchNormTrain(eps, activation, negative_slope)
            y = fn(x, weight, bias)
            _update_running(rm, rv, fn.mean, fn.var, momentum, n)
            return y
        mean = xd.mean(axis=axes)
        var = xd.var(axis=axes)
        _update_running(rm, rv, mean, var, momentum, n)
    else:
        if rm is None or rv is None:
            raise ValueError("batch_norm: evaluation mode needs running_mean and running_var")
        mean, var = rm, rv
    invstd = 1.0 / xp.sqrt(var + eps)
    y = _BatchNorm(mean.astype(xd.dtype), invstd.astype(xd.dtype), training)(x, weight, bias)
    if activation == "relu":
        return relu(y)
    return leaky_relu(y, negative_slope) if activation == "leaky_relu" else y


def _update_running(rm, rv, mean, var, momentum, n):
    """Moves the running statistics towards the batch's (running_var towards the unbiased
    variance), in place."""
    if rm is not None:
        rm *= 1 - momentum
        rm += momentum * mean
    if rv is not None:
        rv *= 1 - momentum
        rv += momentum * var * (n / (n - 1))
