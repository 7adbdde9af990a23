"""Batch normalisation on the GPU: CuPy reductions and elementwise arithmetic per channel (the
statistics are a handful of fused CuPy kernels; no hand-written kernel pays here)."""
from __future__ import annotations

from .. import reference
from ..reference import _per_channel_axes
from . import backend
from ._runtime import xp


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
    # The reference's formula uses only array methods and operators, so CuPy runs it as is.
    grad_x, grad_weight, grad_bias = reference.batch_norm_train_backward(grad_out, x, mean, invstd, weight)
    return xp.ascontiguousarray(grad_x), grad_weight, grad_bias
