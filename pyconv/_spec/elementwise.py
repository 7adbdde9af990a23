"""Elementwise activations and dropout."""
from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .core import check_array, check_float_dtypes, real, shape_of
from .conv import _check_grad_out


def relu(x):
    _unary("relu", x)


def relu_backward(grad_out, y):
    _backward_of("relu_backward", grad_out, "y", y)


def leaky_relu(x, negative_slope, op="leaky_relu"):
    check_array(op, "x", x)
    check_float_dtypes(op, x=x)
    return real(op, "negative_slope", negative_slope)


def leaky_relu_backward(grad_out, x, negative_slope):
    op = "leaky_relu_backward"
    slope = leaky_relu(x, negative_slope, op=op)
    _check_grad_out(op, grad_out, x.shape, x.dtype)
    return slope


# --------------------------------------------------------------------------------------------
# Fused activations: elu, prelu, sigmoid, tanh (the backward of sigmoid and tanh takes the
# forward's output y) and dropout.


def _unary(op, x):
    check_array(op, "x", x)
    check_float_dtypes(op, x=x)


def _backward_of(op, grad_out, name, a):
    check_array(op, name, a)
    check_float_dtypes(op, **{name: a})
    _check_grad_out(op, grad_out, a.shape, a.dtype)


def elu(x, alpha, op="elu"):
    _unary(op, x)
    return real(op, "alpha", alpha)


def elu_backward(grad_out, x, alpha):
    op = "elu_backward"
    alpha = elu(x, alpha, op=op)
    _check_grad_out(op, grad_out, x.shape, x.dtype)
    return alpha


def sigmoid(x):
    _unary("sigmoid", x)


def sigmoid_backward(grad_out, y):
    _backward_of("sigmoid_backward", grad_out, "y", y)


def tanh(x):
    _unary("tanh", x)


def tanh_backward(grad_out, y):
    _backward_of("tanh_backward", grad_out, "y", y)


def gated_tanh(x, dim, op="gated_tanh"):
    """-> dim as an axis in [0, x.ndim): x splits along it into halves a, b (its length even)."""
    _unary(op, x)
    ndim = len(x.shape)
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{op}: dim must be an integer, got {dim!r}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{op}: dim must be an axis of x (shape {shape_of(x)}), got {dim}")
    dim = int(dim) % ndim
    if x.shape[dim] % 2:
        raise ValueError(f"{op}: x's axis {dim} must have an even length (two halves), "
                         f"got shape {shape_of(x)}")
    return dim


def gated_tanh_output_shape(x_shape, dim):
    """x's shape with axis dim halved."""
    return tuple(n // 2 if i == dim else n for i, n in enumerate(x_shape))


def gated_tanh_backward(grad_out, x, dim):
    op = "gated_tanh_backward"
    dim = gated_tanh(x, dim, op=op)
    _check_grad_out(op, grad_out, gated_tanh_output_shape(x.shape, dim), x.dtype)
    return dim


def prelu(x, weight, op="prelu"):
    """weight holds one slope per channel (axis 1 of x) or one for all: (C,) or (1,)."""
    check_array(op, "x", x)
    check_array(op, "weight", weight)
    check_float_dtypes(op, x=x, weight=weight)
    channels = x.shape[1] if len(x.shape) >= 2 else 1
    if len(weight.shape) != 1 or weight.shape[0] not in (1, channels):
        raise ValueError(f"{op}: weight must have shape (1,) or ({channels},) (one slope per "
                         f"channel, axis 1 of x of shape {shape_of(x)}), got {shape_of(weight)}")


def prelu_backward(grad_out, x, weight):
    op = "prelu_backward"
    prelu(x, weight, op=op)
    _check_grad_out(op, grad_out, x.shape, x.dtype)


# Dropout draws a 24-bit uniform integer per element and keeps the element below this threshold.
DROPOUT_RESOLUTION = 1 << 24


class DropoutDraw(NamedTuple):
    keep_threshold: int  # kept where the element's 24-bit draw is below it: round((1 - p) 2^24)
    scale: float         # what a kept element is multiplied by: 1 / (1 - p), 0 for p = 1


def dropout_draw(op, p) -> DropoutDraw:
    p = real(op, "p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be in [0, 1], got {p}")
    keep = 1.0 - p
    return DropoutDraw(round(keep * DROPOUT_RESOLUTION), 1.0 / keep if keep > 0 else 0.0)


def dropout(x, p, seed):
    """-> (DropoutDraw, seed as an int in [0, 2^64))."""
    op = "dropout"
    _unary(op, x)
    draw = dropout_draw(op, p)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{op}: seed must be an integer, got {seed!r}")
    if not 0 <= int(seed) < 1 << 64:
        raise ValueError(f"{op}: seed must be in [0, 2**64), got {seed}")
    return draw, int(seed)


def dropout_backward(grad_out, mask, p):
    """-> the scale of the kept elements."""
    op = "dropout_backward"
    check_array(op, "mask", mask)
    if mask.dtype != np.uint8:
        raise TypeError(f"{op}: mask must be uint8 (the one dropout returned), got {mask.dtype}")
    check_array(op, "grad_out", grad_out)
    check_float_dtypes(op, grad_out=grad_out)
    if tuple(grad_out.shape) != tuple(mask.shape):
        raise ValueError(f"{op}: grad_out must have the mask's shape {tuple(mask.shape)}, "
                         f"got {shape_of(grad_out)}")
    return dropout_draw(op, p).scale
