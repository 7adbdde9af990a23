"""Batch normalisation on the GPU: CuPy reductions and elementwise arithmetic per channel (the
statistics are a handful of fused CuPy kernels; no hand-written kernel pays here)."""
from __future__ import annotations

from . import backend
from ._runtime import xp


def _per_channel_axes(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


@backend.register
def batch_norm_train(x, weight, bias, eps):
    axes, shape = _per_channel_axes(x)
    mean = x.mean(axis=axes)
    centred = x - mean.reshape(shape)
    var = (centred * centred).mean(axis=axes)
    scale = 1 / xp.sqrt(var.astype("float64") + eps)
    if weight is not None:
        scale = scale * weight
    y = centred * scale.astype(x.dtype).reshape(shape)
    if bias is not None:
        y += bias.reshape(shape)
    return xp.ascontiguousarray(y), mean, var


@backend.register
def batch_norm_train_backward(grad_out, x, mean, invstd, weight):
    axes, shape = _per_channel_axes(x)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    grad_bias = grad_out.sum(axis=axes)
    grad_weight = (grad_out * xhat).sum(axis=axes)
    scale = invstd if weight is None else invstd * weight
    n = x.size // x.shape[1]
    grad_x = scale.reshape(shape) * (grad_out - (grad_bias.reshape(shape) + xhat * grad_weight.reshape(shape)) / n)
    return xp.ascontiguousarray(grad_x), grad_weight, grad_bias
