"""Softmax and the losses of the "numba" backend: rows x (M, C) spread over the threads
(``prange``), each row one pass after its maximum, sums in float64. The cross-entropy's rows
are x[n, :, p] of x (N, C, P) (classes last: P = 1)."""
from __future__ import annotations

import numpy as np
from numba import prange

from . import backend
from ._jit import helper, kernel


@helper
def _row_max(x, i):
    m = x[i, 0]
    for c in range(1, x.shape[1]):
        if x[i, c] > m:
            m = x[i, c]
    return m


@helper
def _row_sum_exp(x, i, m):
    s = 0.0
    for c in range(x.shape[1]):
        s += np.exp(np.float64(x[i, c] - m))
    return s


@kernel
def _softmax(x, log, y):
    for i in prange(x.shape[0]):
        m = _row_max(x, i)
        s = _row_sum_exp(x, i, m)
        if log:
            log_sum = np.log(s)
            for c in range(x.shape[1]):
                y[i, c] = (x[i, c] - m) - log_sum
        else:
            inv = 1.0 / s
            for c in range(x.shape[1]):
                y[i, c] = np.exp(np.float64(x[i, c] - m)) * inv


@kernel
def _softmax_backward(grad_y, y, log, grad_x):
    for i in prange(y.shape[0]):
        s = 0.0
        if log:
            for c in range(y.shape[1]):
                s += grad_y[i, c]
            for c in range(y.shape[1]):
                grad_x[i, c] = grad_y[i, c] - np.exp(np.float64(y[i, c])) * s
        else:
            for c in range(y.shape[1]):
                s += np.float64(grad_y[i, c]) * y[i, c]
            for c in range(y.shape[1]):
                grad_x[i, c] = y[i, c] * (grad_y[i, c] - s)


@helper
def _row_weight(target, weight, has_weight, ignore_index, i):
    t = target[i]
    if t == ignore_index:
        return 0.0
    return np.float64(weight[t]) if has_weight else 1.0


@kernel
def _cross_entropy(x, target, weight, has_weight, ignore_index, eps, loss, lse):
    C, P = x.shape[1], x.shape[2]
    for i in prange(x.shape[0] * P):
        n, p = i // P, i % P
        m = x[n, 0, p]
        for c in range(1, C):
            if x[n, c, p] > m:
                m = x[n, c, p]
        s = 0.0
        for c in range(C):
            s += np.exp(np.float64(x[n, c, p] - m))
        log_sum = np.log(s)
        lse[i] = m + log_sum
        row_w = _row_weight(target, weight, has_weight, ignore_index, i)
        if row_w == 0:
            loss[i] = 0
            continue
        t = target[i]
        value = -(1 - eps) * row_w * (np.float64(x[n, t, p] - m) - log_sum)
        if eps != 0:
            wx = 0.0
            w_sum = 0.0
            for c in range(C):
                w = np.float64(weight[c]) if has_weight else 1.0
                wx += w * (x[n, c, p] - m)
                w_sum += w
            value += (eps / C) * (w_sum * log_sum - wx)
        loss[i] = value


@kernel
def _cross_entropy_backward(grad_loss, x, target, weight, has_weight, lse, ignore_index, eps,
                            grad_x):
    C, P = x.shape[1], x.shape[2]
    w_sum = 0.0
    for c in range(C):
        w_sum += np.float64(weight[c]) if has_weight else 1.0
    smooth = eps / C
    for i in prange(x.shape[0] * P):
        n, p = i // P, i % P
        row_w = _row_weight(target, weight, has_weight, ignore_index, i)
        if row_w == 0:
            for c in range(C):
                grad_x[n, c, p] = 0
            continue
        g = np.float64(grad_loss[i])
        minus_gA = g * ((1 - eps) * row_w + smooth * w_sum)
        for c in range(C):
            w = np.float64(weight[c]) if has_weight else 1.0
            grad_x[n, c, p] = np.exp(np.float64(x[n, c, p] - lse[i])) * minus_gA - g * smooth * w
        t = target[i]
        grad_x[n, t, p] -= g * (1 - eps) * row_w


# Per sign of x, so that no two large terms cancel (see the reference backend).
@kernel
def _bce_with_logits(x, target, pos_weight, has_pos_weight, loss):
    for i in prange(x.shape[0]):
        for c in range(x.shape[1]):
            v, t = x[i, c], target[i, c]
            p = pos_weight[c] if has_pos_weight else 1.0
            softplus = np.log1p(np.exp(-abs(v)))
            linear = (1 - t) * v if v >= 0 else -p * t * v
            loss[i, c] = (1 + (p - 1) * t) * softplus + linear


@kernel
def _bce_with_logits_backward(grad_y, x, target, pos_weight, has_pos_weight, grad_x):
    for i in prange(x.shape[0]):
        for c in range(x.shape[1]):
            v, t = x[i, c], target[i, c]
            p = pos_weight[c] if has_pos_weight else 1.0
            e = np.exp(-abs(v))
            slope = 1 - t - p * t * e if v >= 0 else e * (1 - t) - p * t
            grad_x[i, c] = grad_y[i, c] * (slope / (1 + e))


def _or_placeholder(a, dtype):
    """An optional array as (array, present): the kernels take a 1-element stand-in for None."""
    return (np.zeros(1, dtype), False) if a is None else (a, True)


def _register_softmax(name, log):
    """Registers the kernels <name> and <name>_backward: softmax, or log_softmax when log."""
    def forward(x):
        y = np.empty_like(x)
        if x.size:
            _softmax(x, log, y)
        return y

    def backward(grad_out, y):
        grad_x = np.empty_like(y)
        if y.size:
            _softmax_backward(grad_out, y, log, grad_x)
        return grad_x

    forward.__name__, backward.__name__ = name, f"{name}_backward"
    backend.register(forward)
    backend.register(backward)


_register_softmax("softmax", log=False)
_register_softmax("log_softmax", log=True)


@backend.register
def cross_entropy(x, target, weight, ignore_index, label_smoothing):
    loss, lse = np.empty(target.shape, x.dtype), np.empty(target.shape, x.dtype)
    w, has_w = _or_placeholder(weight, x.dtype)
    if target.size:
        _cross_entropy(x, target, w, has_w, ignore_index, label_smoothing, loss, lse)
    return loss, lse


@backend.register
def cross_entropy_backward(grad_loss, x, target, weight, lse, ignore_index, label_smoothing):
    grad_x = np.empty_like(x)
    w, has_w = _or_placeholder(weight, x.dtype)
    if target.size:
        _cross_entropy_backward(grad_loss, x, target, w, has_w, lse, ignore_index,
                                label_smoothing, grad_x)
    return grad_x


@backend.register
def binary_cross_entropy_with_logits(x, target, pos_weight):
    loss = np.empty_like(x)
    pw, has_pw = _or_placeholder(pos_weight, x.dtype)
    if x.size:
        _bce_with_logits(x, target, pw, has_pw, loss)
    return loss


@backend.register
def binary_cross_entropy_with_logits_backward(grad_out, x, target, pos_weight):
    grad_x = np.empty_like(x)
    pw, has_pw = _or_placeholder(pos_weight, x.dtype)
    if x.size:
        _bce_with_logits_backward(grad_out, x, target, pw, has_pw, grad_x)
    return grad_x
