"""Elementwise activations."""
from __future__ import annotations

from .core import (check_array, check_float_dtypes, real)
from .conv import _check_grad_out


def leaky_relu(x, negative_slope, op="leaky_relu"):
    check_array(op, "x", x)
    check_float_dtypes(op, x=x)
    return real(op, "negative_slope", negative_slope)


def leaky_relu_backward(grad_out, x, negative_slope):
    op = "leaky_relu_backward"
    slope = leaky_relu(x, negative_slope, op=op)
    _check_grad_out(op, grad_out, x.shape, x.dtype)
    return slope
