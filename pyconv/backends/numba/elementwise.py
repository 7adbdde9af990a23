"""Elementwise activations of the "numba" backend: one parallel pass over the flat array each;
the select in the loop body compiles to a vector blend."""
from __future__ import annotations

import numpy as np
from numba import prange

from . import backend
from ._jit import kernel


@kernel
def _leaky_relu(x, slope, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * slope


@kernel
def _leaky_relu_backward(grad_y, x, slope, grad_x):
    for i in prange(x.size):
        g = grad_y[i]
        grad_x[i] = g if x[i] > 0 else g * slope


@backend.register
def leaky_relu(x, negative_slope):
    y = np.empty_like(x)
    _leaky_relu(x.reshape(-1), x.dtype.type(negative_slope), y.reshape(-1))
    return y


@backend.register
def leaky_relu_backward(grad_out, x, negative_slope):
    grad_x = np.empty_like(x)
    _leaky_relu_backward(grad_out.reshape(-1), x.reshape(-1), x.dtype.type(negative_slope),
                         grad_x.reshape(-1))
    return grad_x
