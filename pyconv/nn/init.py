"""Weight initialisations, with PyTorch's formulas and defaults.

Every function fills a Tensor's array in place from a ``numpy.random.Generator`` (pyconv's
seeded one unless `generator` is given) and returns the Tensor. Values are drawn on the CPU in
the tensor's precision (float32 draws are twice as fast, which matters for VGG-sized layers)
and moved to its device, so one seed gives the same weights on CPU and GPU.
"""
from __future__ import annotations

import math

import numpy as np

from .. import random as _random
from ..autograd import array_module

__all__ = [
    "calculate_fan_in_and_fan_out", "calculate_gain", "uniform_", "normal_", "zeros_", "ones_",
    "constant_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
]


def _fill(tensor, values):
    if isinstance(tensor.data, np.ndarray) and values.dtype == tensor.dtype:
        tensor.data = values  # already the right array: no copy
    else:
        tensor.data[...] = array_module(tensor.data).asarray(values, dtype=tensor.data.dtype)
    return tensor


def _gen(generator):
    return generator if generator is not None else _random.generator()


def calculate_fan_in_and_fan_out(shape):
    """(fan_in, fan_out) of a weight shape as PyTorch computes them: dims 1 and 0 times the
    receptive field (the product of the remaining dims)."""
    if len(shape) < 2:
        raise ValueError(f"fan in/out needs a weight with at least 2 dimensions, got shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    """PyTorch's recommended gains: 1 for linear/sigmoid, 5/3 tanh, sqrt(2) relu,
    sqrt(2 / (1 + slope^2)) leaky_relu (slope 0.01 by default)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv_transpose2d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _draw_dtype(tensor):
    return np.float32 if tensor.dtype == np.float32 else np.float64


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    values = _gen(generator).random(tensor.shape, dtype=_draw_dtype(tensor))
    values *= b - a
    values += a
    return _fill(tensor, values)


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    values = _gen(generator).standard_normal(tensor.shape, dtype=_draw_dtype(tensor))
    values *= std
    values += mean
    return _fill(tensor, values)


def constant_(tensor, value):
    tensor.data[...] = value
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


def _fan(shape, mode):
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """U(-bound, bound) with bound = gain * sqrt(3 / fan). PyTorch's Linear and Conv layers use
    a = sqrt(5), which makes bound = 1 / sqrt(fan_in)."""
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / _fan(tensor.shape, mode))
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor.shape, mode))
    return normal_(tensor, 0.0, std, generator)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor.shape)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def default_layer_init_(weight, bias, fan_in=None, generator=None):
    """What PyTorch's Linear/Conv layers do in reset_parameters: kaiming_uniform_(a=sqrt(5)) for
    the weight, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        if fan_in is None:
            fan_in = calculate_fan_in_and_fan_out(weight.shape)[0]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound, generator)

