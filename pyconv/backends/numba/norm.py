"""Batch normalisation of the "numba" backend: one parallel task per channel that reduces its
rows and then writes them, as the C++ kernel does (data viewed as (N, C, L))."""
from __future__ import annotations

import numpy as np
from numba import prange

from ..reference import activated, through_activation
from . import backend
from ._jit import kernel
from .elementwise import leaky_relu, leaky_relu_backward, relu, relu_backward


@kernel
def _forward(x, w, b, has_w, has_b, eps, y, mean, var):
    N, C, L = x.shape
    count = N * L
    for c in prange(C):
        s = 0.0
        for n in range(N):
            for l in range(L):
                s += x[n, c, l]
        m = s / count
        sq = 0.0
        for n in range(N):
            for l in range(L):
                d = x[n, c, l] - m
                sq += d * d
        v = sq / count
        invstd = 1.0 / np.sqrt(v + eps)
        scale = invstd * (w[c] if has_w else 1.0)
        shift = (b[c] if has_b else 0.0) - m * scale
        for n in range(N):
            for l in range(L):
                y[n, c, l] = x[n, c, l] * scale + shift
        mean[c] = m
        var[c] = v


@kernel
def _backward(grad_y, x, mean, invstd, w, has_w, grad_x, grad_w, grad_b):
    N, C, L = x.shape
    count = N * L
    for c in prange(C):
        m, inv = mean[c], invstd[c]
        sum_g = 0.0
        sum_gxhat = 0.0
        for n in range(N):
            for l in range(L):
                g = grad_y[n, c, l]
                sum_g += g
                sum_gxhat += g * (x[n, c, l] - m)
        sum_gxhat *= inv
        grad_b[c] = sum_g
        grad_w[c] = sum_gxhat
        scale = inv * (w[c] if has_w else 1.0)
        mean_g, mean_gxhat = sum_g / count, sum_gxhat / count
        for n in range(N):
            for l in range(L):
                grad_x[n, c, l] = scale * (grad_y[n, c, l] - mean_g - (x[n, c, l] - m) * inv * mean_gxhat)


def _ncl(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def _or_empty(a, dtype):
    return np.empty(0, dtype) if a is None else a


@backend.register
def batch_norm_train(x, weight, bias, eps, activation, negative_slope):
    y = np.empty_like(x)
    mean, var = np.empty(x.shape[1], x.dtype), np.empty(x.shape[1], x.dtype)
    _forward(_ncl(x), _or_empty(weight, x.dtype), _or_empty(bias, x.dtype), weight is not None,
             bias is not None, eps, _ncl(y), mean, var)
    return activated(y, activation, negative_slope, relu, leaky_relu), mean, var


@backend.register
def batch_norm_train_backward(grad_out, x, mean, invstd, weight, y, activation, negative_slope):
    grad_out = through_activation(grad_out, y, activation, negative_slope, relu_backward, leaky_relu_backward)
    grad_x = np.empty_like(x)
    grad_weight, grad_bias = np.empty(x.shape[1], x.dtype), np.empty(x.shape[1], x.dtype)
    _backward(_ncl(grad_out), _ncl(x), mean, invstd, _or_empty(weight, x.dtype), weight is not None,
              _ncl(grad_x), grad_weight, grad_bias)
    return grad_x, grad_weight, grad_bias
