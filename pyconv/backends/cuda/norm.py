"""Batch normalisation on the GPU: CuPy reductions and elementwise arithmetic per channel (the
statistics are a handful of fused CuPy kernels; no hand-written kernel pays here)."""
from __future__ import annotations

from .. import reference
from ..reference import _per_channel_axes, activated, through_activation
from . import backend
from ._runtime import xp
from .elementwise import leaky_relu, leaky_relu_backward, relu, relu_backward


@backend.register
def batch_norm_train(x, weight, bias, eps, activation, negative_slope):
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
    return activated(xp.ascontiguousarray(y), activation, negative_slope, relu, leaky_relu), mean, var


@backend.register
def batch_norm_train_backward(grad_out, x, mean, invstd, weight, y, activation, negative_slope):
    grad_out = through_activation(grad_out, y, activation, negative_slope, relu_backward, leaky_relu_backward)
    # The reference's formula uses only array methods and operators, so CuPy runs it as is.
    grad_x, grad_weight, grad_bias = reference.batch_norm_train_backward(grad_out, x, mean, invstd, weight,
                                                                      None, None, 0.0)
    return xp.ascontiguousarray(grad_x), grad_weight, grad_bias
