"""Elementwise activations and dropout of the "numba" backend: one parallel pass over the flat
array each; the select in the loop body compiles to a vector blend. Dropout draws the same
Philox4x32-10 numbers as every other backend (pyconv/backends/reference.py), one block of four
elements per loop iteration."""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from ... import _spec
from . import backend
from ._jit import helper, kernel


@kernel
def _relu(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = 0 if v < 0 else v  # NaN and -0.0 stay as they are


@kernel
def _relu_backward(grad_y, y, grad_x):
    for i in prange(y.size):
        grad_x[i] = 0 if y[i] <= 0 else grad_y[i]  # a NaN output passes the gradient


@backend.register
def relu(x):
    y = np.empty_like(x)
    _relu(x.reshape(-1), y.reshape(-1))
    return y


@backend.register
def relu_backward(grad_out, y):
    grad_x = np.empty_like(y)
    _relu_backward(grad_out.reshape(-1), y.reshape(-1), grad_x.reshape(-1))
    return grad_x


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


@kernel
def _elu(x, alpha, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else alpha * math.expm1(v)


@kernel
def _elu_backward(grad_y, x, alpha, grad_x):
    for i in prange(x.size):
        v = x[i]
        grad_x[i] = grad_y[i] if v > 0 else grad_y[i] * (alpha * math.exp(v))


@backend.register
def elu(x, alpha):
    y = np.empty_like(x)
    _elu(x.reshape(-1), x.dtype.type(alpha), y.reshape(-1))
    return y


@backend.register
def elu_backward(grad_out, x, alpha):
    grad_x = np.empty_like(x)
    _elu_backward(grad_out.reshape(-1), x.reshape(-1), x.dtype.type(alpha), grad_x.reshape(-1))
    return grad_x


def _rows(x):
    """x as (N, C, inner): rows of one channel each (x with fewer than 2 axes: one row)."""
    if x.ndim < 2:
        return x.reshape(1, 1, -1)
    return x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:])))


@kernel
def _prelu(x, w, y):
    N, C, inner = x.shape
    for row in prange(N * C):
        n, c = row // C, row % C
        slope = w[0] if w.size == 1 else w[c]
        for i in range(inner):
            v = x[n, c, i]
            y[n, c, i] = v if v > 0 else v * slope


@kernel
def _prelu_backward(grad_y, x, w, grad_x, row_sums):
    N, C, inner = x.shape
    for row in prange(N * C):
        n, c = row // C, row % C
        slope = w[0] if w.size == 1 else w[c]
        s = 0.0
        for i in range(inner):
            v, g = x[n, c, i], grad_y[n, c, i]
            if v > 0:
                grad_x[n, c, i] = g
            else:
                grad_x[n, c, i] = g * slope
                s += g * v
        row_sums[row] = s


@backend.register
def prelu(x, weight):
    y = np.empty_like(x)
    _prelu(_rows(x), weight, _rows(y))
    return y


@backend.register
def prelu_backward(grad_out, x, weight):
    grad_x = np.empty_like(x)
    rows = _rows(x)
    row_sums = np.empty(rows.shape[0] * rows.shape[1], np.float64)
    _prelu_backward(_rows(grad_out), rows, weight, _rows(grad_x), row_sums)
    per_channel = row_sums.reshape(rows.shape[0], rows.shape[1]).sum(axis=0)
    grad_weight = per_channel.sum(keepdims=True) if weight.size == 1 else per_channel
    return grad_x, grad_weight.astype(x.dtype)


@kernel
def _sigmoid(x, y):
    for i in prange(x.size):
        y[i] = 1 / (1 + math.exp(-x[i]))


@kernel
def _from_output(grad_y, y, grad_x, tanh):
    for i in prange(y.size):
        v = y[i]
        grad_x[i] = grad_y[i] * (1 - v * v) if tanh else grad_y[i] * (1 - v) * v


@kernel
def _tanh(x, y):
    for i in prange(x.size):
        y[i] = math.tanh(x[i])


@backend.register
def sigmoid(x):
    y = np.empty_like(x)
    _sigmoid(x.reshape(-1), y.reshape(-1))
    return y


@backend.register
def sigmoid_backward(grad_out, y):
    grad_x = np.empty_like(y)
    _from_output(grad_out.reshape(-1), y.reshape(-1), grad_x.reshape(-1), False)
    return grad_x


@backend.register
def tanh(x):
    y = np.empty_like(x)
    _tanh(x.reshape(-1), y.reshape(-1))
    return y


@backend.register
def tanh_backward(grad_out, y):
    grad_x = np.empty_like(y)
    _from_output(grad_out.reshape(-1), y.reshape(-1), grad_x.reshape(-1), True)
    return grad_x


def _gate_rows(x, dim):
    """x as (outer, 2, inner) around axis dim: row r holds the halves a and b of x = [a, b]."""
    outer = math.prod(x.shape[:dim])
    return x.reshape(outer, 2, x.size // (2 * outer) if outer else 0)


@kernel
def _gated_tanh(x, y):
    inner = x.shape[2]
    for p in prange(x.shape[0] * inner):
        r, i = p // inner, p % inner
        y[r, i] = math.tanh(x[r, 0, i]) / (1 + math.exp(-x[r, 1, i]))


@kernel
def _gated_tanh_backward(grad_y, x, grad_x):
    inner = x.shape[2]
    for p in prange(x.shape[0] * inner):
        r, i = p // inner, p % inner
        t, s, g = math.tanh(x[r, 0, i]), 1 / (1 + math.exp(-x[r, 1, i])), grad_y[r, i]
        grad_x[r, 0, i] = g * s * (1 - t * t)
        grad_x[r, 1, i] = g * t * (s * (1 - s))


@backend.register
def gated_tanh(x, dim):
    rows = _gate_rows(x, dim)
    y = np.empty(rows.shape[:1] + rows.shape[2:], x.dtype)
    _gated_tanh(rows, y)
    return y.reshape(_spec.gated_tanh_output_shape(x.shape, dim))


@backend.register
def gated_tanh_backward(grad_out, x, dim):
    rows = _gate_rows(x, dim)
    grad_x = np.empty_like(rows)
    _gated_tanh_backward(grad_out.reshape(rows.shape[0], rows.shape[2]), rows, grad_x)
    return grad_x.reshape(x.shape)


_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


@helper
def _philox(block, seed):
    """The four words of Philox4x32-10 block `block` under `seed` (uint64 values holding 32
    bits each)."""
    c0, c1 = block & _LOW, block >> _32
    c2, c3 = np.uint64(0), np.uint64(0)
    k0, k1 = seed & _LOW, seed >> _32
    for _ in range(10):
        p0, p1 = _M0 * c0, _M1 * c2
        c0, c1, c2, c3 = (p1 >> _32) ^ c1 ^ k0, p1 & _LOW, (p0 >> _32) ^ c3 ^ k1, p0 & _LOW
        k0, k1 = (k0 + _W0) & _LOW, (k1 + _W1) & _LOW
    return c0, c1, c2, c3


@kernel
def _dropout(x, seed, keep_threshold, scale, y, mask):
    n = x.size
    for block in prange((n + 3) // 4):
        words = _philox(np.uint64(block), seed)
        for j in range(4):
            i = block * 4 + j
            if i < n:
                keep = (words[j] >> np.uint64(8)) < keep_threshold
                y[i] = x[i] * (scale if keep else 0)
                mask[i] = 1 if keep else 0


@kernel
def _dropout_backward(grad_y, mask, scale, grad_x):
    for i in prange(grad_y.size):
        grad_x[i] = grad_y[i] * (scale if mask[i] else 0)


@backend.register
def dropout(x, keep_threshold, scale, seed):
    y, mask = np.empty_like(x), np.empty(x.shape, np.uint8)
    _dropout(x.reshape(-1), np.uint64(seed), np.uint64(keep_threshold), x.dtype.type(scale),
             y.reshape(-1), mask.reshape(-1))
    return y, mask


@backend.register
def dropout_backward(grad_out, mask, scale):
    grad_x = np.empty_like(grad_out)
    _dropout_backward(grad_out.reshape(-1), mask.reshape(-1), grad_out.dtype.type(scale),
                      grad_x.reshape(-1))
    return grad_x
