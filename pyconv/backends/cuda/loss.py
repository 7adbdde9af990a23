"""Softmax and the losses on the GPU: one thread per row of x (M, C) for the row passes
(max, sum of exponentials in float64, then the outputs), one thread per element for the binary
cross-entropy; grid-stride loops, flat arrays."""
from __future__ import annotations

import math

from numba import cuda, float64

from . import backend
from ._kernel_util import Kernels, per_dtype
from ._runtime import THREADS, blocks_for, dummy, flat, launch, scalar, xp


@per_dtype
def kernels(dtype):
    dt = dtype.type
    ks = Kernels(dtype)

    @cuda.jit(device=True)
    def row_max(x, base, C):
        m = x[base]
        for c in range(1, C):
            v = x[base + c]
            if v > m:
                m = v
        return m

    @cuda.jit(device=True)
    def row_sum_exp(x, base, C, m):
        s = float64(0)
        for c in range(C):
            s += math.exp(float64(x[base + c] - m))
        return s

    @ks.add("fnfnn")
    def softmax_kernel(x, log, y, M, C):
        for i in range(cuda.grid(1), M, cuda.gridsize(1)):
            base = i * C
            m = row_max(x, base, C)
            s = row_sum_exp(x, base, C, m)
            if log:
                log_sum = math.log(s)
                for c in range(C):
                    y[base + c] = dt(float64(x[base + c] - m) - log_sum)
            else:
                for c in range(C):
                    y[base + c] = dt(math.exp(float64(x[base + c] - m)) / s)

    @ks.add("ffnfnn")
    def softmax_backward_kernel(grad_y, y, log, grad_x, M, C):
        for i in range(cuda.grid(1), M, cuda.gridsize(1)):
            base = i * C
            s = float64(0)
            if log:
                for c in range(C):
                    s += grad_y[base + c]
                for c in range(C):
                    grad_x[base + c] = dt(grad_y[base + c] - math.exp(float64(y[base + c])) * s)
            else:
                for c in range(C):
                    s += float64(grad_y[base + c]) * y[base + c]
                for c in range(C):
                    grad_x[base + c] = dt(y[base + c] * (grad_y[base + c] - s))

    @cuda.jit(device=True)
    def row_weight(target, weight, has_weight, ignore_index, i):
        t = target[i]
        if t == ignore_index:
            return float64(0)
        return float64(weight[t]) if has_weight else float64(1)

    # The cross-entropy's rows are x[n, :, p] of x (N, C, P) (classes last: P = 1): row i
    # starts at (i // P) C P + i % P, its classes P apart. With P > 1 consecutive threads read
    # consecutive elements of each class plane.
    @cuda.jit(device=True)
    def class_row_start(i, C, P):
        return (i // P) * C * P + i % P

    @cuda.jit(device=True)
    def strided_row_max(x, base, C, P):
        m = x[base]
        for c in range(1, C):
            v = x[base + c * P]
            if v > m:
                m = v
        return m

    @cuda.jit(device=True)
    def strided_row_sum_exp(x, base, C, P, m):
        s = float64(0)
        for c in range(C):
            s += math.exp(float64(x[base + c * P] - m))
        return s

    @ks.add("flfnnsffnnn")
    def cross_entropy_kernel(x, target, weight, has_weight, ignore_index, eps, loss, lse, M, C, P):
        for i in range(cuda.grid(1), M, cuda.gridsize(1)):
            base = class_row_start(i, C, P)
            m = strided_row_max(x, base, C, P)
            log_sum = math.log(strided_row_sum_exp(x, base, C, P, m))
            lse[i] = dt(m + log_sum)
            row_w = row_weight(target, weight, has_weight, ignore_index, i)
            if row_w == 0:
                loss[i] = dt(0)
                continue
            value = -(1 - float64(eps)) * row_w * (float64(x[base + target[i] * P] - m) - log_sum)
            if eps != 0:
                wx = float64(0)
                w_sum = float64(0)
                for c in range(C):
                    w = float64(weight[c]) if has_weight else float64(1)
                    wx += w * float64(x[base + c * P] - m)
                    w_sum += w
                value += (float64(eps) / C) * (w_sum * log_sum - wx)
            loss[i] = dt(value)

    @ks.add("fflfnfnssfnnn")
    def cross_entropy_backward_kernel(grad_loss, x, target, weight, has_weight, lse, ignore_index,
                                      eps, w_sum, grad_x, M, C, P):
        smooth = float64(eps) / C
        for i in range(cuda.grid(1), M, cuda.gridsize(1)):
            base = class_row_start(i, C, P)
            row_w = row_weight(target, weight, has_weight, ignore_index, i)
            if row_w == 0:
                for c in range(C):
                    grad_x[base + c * P] = dt(0)
                continue
            g = float64(grad_loss[i])
            minus_gA = g * ((1 - float64(eps)) * row_w + smooth * w_sum)
            for c in range(C):
                w = float64(weight[c]) if has_weight else float64(1)
                p = math.exp(float64(x[base + c * P] - lse[i]))
                grad_x[base + c * P] = dt(p * minus_gA - g * smooth * w)
            t = base + target[i] * P
            grad_x[t] = dt(grad_x[t] - g * (1 - float64(eps)) * row_w)

    # Per sign of x, so that no two large terms cancel (see the reference backend).
    @ks.add("fffnfnn")
    def bce_with_logits_kernel(x, target, pos_weight, has_pos_weight, loss, n, C):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v, t = x[i], target[i]
            p = pos_weight[i % C] if has_pos_weight else dt(1)
            softplus = dt(math.log1p(math.exp(-abs(v))))
            linear = (dt(1) - t) * v if v >= 0 else -p * t * v
            loss[i] = (dt(1) + (p - dt(1)) * t) * softplus + linear

    @ks.add("ffffnfnn")
    def bce_with_logits_backward_kernel(grad_y, x, target, pos_weight, has_pos_weight, grad_x, n, C):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v, t = x[i], target[i]
            p = pos_weight[i % C] if has_pos_weight else dt(1)
            e = dt(math.exp(-abs(v)))
            slope = dt(1) - t - p * t * e if v >= 0 else e * (dt(1) - t) - p * t
            grad_x[i] = grad_y[i] * (slope / (dt(1) + e))

    return ks


def _optional(a, dtype):
    return (dummy(dtype), 0) if a is None else (flat(a), 1)


def _register_softmax(name, log):
    """Registers the kernels <name> and <name>_backward: softmax, or log_softmax when log."""
    def forward(x):
        y = xp.empty_like(x)
        M, C = x.shape
        if x.size:
            launch(kernels(x.dtype).softmax_kernel, blocks_for(M), THREADS, flat(x), int(log),
                   flat(y), M, C)
        return y

    def backward(grad_out, y):
        grad_x = xp.empty_like(y)
        M, C = y.shape
        if y.size:
            launch(kernels(y.dtype).softmax_backward_kernel, blocks_for(M), THREADS,
                   flat(grad_out), flat(y), int(log), flat(grad_x), M, C)
        return grad_x

    forward.__name__, backward.__name__ = name, f"{name}_backward"
    backend.register(forward)
    backend.register(backward)


_register_softmax("softmax", log=False)
_register_softmax("log_softmax", log=True)


@backend.register
def cross_entropy(x, target, weight, ignore_index, label_smoothing):
    N, C, P = x.shape
    M = N * P
    loss, lse = xp.empty(M, x.dtype), xp.empty(M, x.dtype)
    w, has_w = _optional(weight, x.dtype)
    if M:
        launch(kernels(x.dtype).cross_entropy_kernel, blocks_for(M), THREADS, flat(x), target, w,
               has_w, ignore_index, scalar(x.dtype, label_smoothing), loss, lse, M, C, P)
    return loss, lse


@backend.register
def cross_entropy_backward(grad_loss, x, target, weight, lse, ignore_index, label_smoothing):
    N, C, P = x.shape
    M = N * P
    grad_x = xp.empty_like(x)
    w, has_w = _optional(weight, x.dtype)
    w_sum = float(C) if weight is None else float(weight.astype("float64").sum())
    if M:
        launch(kernels(x.dtype).cross_entropy_backward_kernel, blocks_for(M), THREADS, grad_loss,
               flat(x), target, w, has_w, lse, ignore_index, scalar(x.dtype, label_smoothing),
               scalar(x.dtype, w_sum), flat(grad_x), M, C, P)
    return grad_x


@backend.register
def binary_cross_entropy_with_logits(x, target, pos_weight):
    loss = xp.empty_like(x)
    pw, has_pw = _optional(pos_weight, x.dtype)
    if x.size:
        launch(kernels(x.dtype).bce_with_logits_kernel, blocks_for(x.size), THREADS, flat(x),
               flat(target), pw, has_pw, flat(loss), x.size, x.shape[1])
    return loss


@backend.register
def binary_cross_entropy_with_logits_backward(grad_out, x, target, pos_weight):
    grad_x = xp.empty_like(x)
    pw, has_pw = _optional(pos_weight, x.dtype)
    if x.size:
        launch(kernels(x.dtype).bce_with_logits_backward_kernel, blocks_for(x.size), THREADS,
               flat(grad_out), flat(x), flat(target), pw, has_pw, flat(grad_x), x.size, x.shape[1])
    return grad_x
