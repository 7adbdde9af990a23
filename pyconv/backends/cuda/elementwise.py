"""Elementwise activations and dropout on the GPU: one grid-stride pass over the flat array each
(coalesced: consecutive threads touch consecutive elements). Dropout draws the same
Philox4x32-10 numbers as every other backend (pyconv/backends/reference.py), one block of four
elements per thread and step; PReLU's weight gradient is a CuPy reduction of the per-element
products."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ... import _spec
from . import backend
from ._kernel_util import Kernels, per_dtype
from ._runtime import THREADS, blocks_for, flat, launch, scalar, xp


@per_dtype
def kernels(dtype):
    dt = dtype.type
    ks = Kernels(dtype)

    @ks.add("ffn")
    def relu_kernel(x, y, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = x[i]
            y[i] = dt(0) if v < dt(0) else v  # NaN and -0.0 stay as they are

    @ks.add("fffn")
    def relu_backward_kernel(grad_y, y, grad_x, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            grad_x[i] = dt(0) if y[i] <= dt(0) else grad_y[i]  # a NaN output passes the gradient

    @ks.add("fsfn")
    def leaky_relu_kernel(x, slope, y, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = x[i]
            y[i] = v if v > dt(0) else v * slope

    @ks.add("ffsfn")
    def leaky_relu_backward_kernel(grad_y, x, slope, grad_x, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            g = grad_y[i]
            grad_x[i] = g if x[i] > dt(0) else g * slope

    @ks.add("fsfn")
    def elu_kernel(x, alpha, y, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = x[i]
            y[i] = v if v > dt(0) else alpha * dt(math.expm1(v))

    @ks.add("ffsfn")
    def elu_backward_kernel(grad_y, x, alpha, grad_x, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = x[i]
            grad_x[i] = grad_y[i] if v > dt(0) else grad_y[i] * (alpha * dt(math.exp(v)))

    @ks.add("ffnnfn")
    def prelu_kernel(x, w, channels, inner, y, n):
        # channels = 1 when w holds one slope for all.
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = x[i]
            y[i] = v if v > dt(0) else v * w[(i // inner) % channels]

    @ks.add("fffnnffn")
    def prelu_backward_kernel(grad_y, x, w, channels, inner, grad_x, per_element, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v, g = x[i], grad_y[i]
            if v > dt(0):
                grad_x[i] = g
                per_element[i] = dt(0)
            else:
                grad_x[i] = g * w[(i // inner) % channels]
                per_element[i] = g * v

    @cuda.jit(device=True)
    def sigmoid(v):
        # e^x only of non-positive x: it never overflows (the simulator's math.exp would raise).
        if v >= dt(0):
            return dt(1) / (dt(1) + dt(math.exp(-v)))
        e = dt(math.exp(v))
        return e / (dt(1) + e)

    @ks.add("ffn")
    def sigmoid_kernel(x, y, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            y[i] = sigmoid(x[i])

    @ks.add("fffn")
    def sigmoid_backward_kernel(grad_y, y, grad_x, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = y[i]
            grad_x[i] = grad_y[i] * (dt(1) - v) * v

    @ks.add("ffn")
    def tanh_kernel(x, y, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            y[i] = dt(math.tanh(x[i]))

    @ks.add("fffn")
    def tanh_backward_kernel(grad_y, y, grad_x, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = y[i]
            grad_x[i] = grad_y[i] * (dt(1) - v * v)

    @ks.add("ffnn")
    def gated_tanh_kernel(x, y, inner, n):
        # x as (outer, 2, inner), y as (outer, inner); n = outer * inner.
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            row = i // inner
            y[i] = dt(math.tanh(x[i + row * inner])) * sigmoid(x[i + (row + 1) * inner])

    @ks.add("fffnn")
    def gated_tanh_backward_kernel(grad_y, x, grad_x, inner, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            row = i // inner
            at_a, at_b = i + row * inner, i + (row + 1) * inner
            t, s, g = dt(math.tanh(x[at_a])), sigmoid(x[at_b]), grad_y[i]
            grad_x[at_a] = g * s * (dt(1) - t * t)
            grad_x[at_b] = g * t * (s * (dt(1) - s))

    @ks.add("fnnnsfbn")
    def dropout_kernel(x, key0, key1, keep_threshold, scale, y, mask, n):
        low = np.uint64(0xFFFFFFFF)
        for block in range(cuda.grid(1), (n + 3) // 4, cuda.gridsize(1)):
            # Philox4x32-10 of the counter (block, 0, 0) under the key (key0, key1); 32-bit
            # values held in uint64 so that the 32 x 32-bit products are exact.
            c0, c1 = np.uint64(block) & low, np.uint64(block) >> np.uint64(32)
            c2, c3 = np.uint64(0), np.uint64(0)
            k0, k1 = np.uint64(key0), np.uint64(key1)
            for _ in range(10):
                p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
                c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & low,
                                  (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & low)
                k0 = (k0 + np.uint64(0x9E3779B9)) & low
                k1 = (k1 + np.uint64(0xBB67AE85)) & low
            for j in range(4):
                i = block * 4 + j
                if i < n:
                    word = c0 if j == 0 else c1 if j == 1 else c2 if j == 2 else c3
                    keep = (word >> np.uint64(8)) < np.uint64(keep_threshold)
                    y[i] = x[i] * (scale if keep else dt(0))
                    mask[i] = 1 if keep else 0

    @ks.add("fbsfn")
    def dropout_backward_kernel(grad_y, mask, scale, grad_x, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            grad_x[i] = grad_y[i] * (scale if mask[i] else dt(0))

    return ks


@backend.register
def leaky_relu(x, negative_slope):
    y = xp.empty_like(x)
    if x.size:
        launch(kernels(x.dtype).leaky_relu_kernel, blocks_for(x.size), THREADS,
               flat(x), scalar(x.dtype, negative_slope), flat(y), x.size)
    return y


@backend.register
def leaky_relu_backward(grad_out, x, negative_slope):
    grad_x = xp.empty_like(x)
    if x.size:
        launch(kernels(x.dtype).leaky_relu_backward_kernel, blocks_for(x.size), THREADS,
               flat(grad_out), flat(x), scalar(x.dtype, negative_slope), flat(grad_x), x.size)
    return grad_x


@backend.register
def elu(x, alpha):
    y = xp.empty_like(x)
    if x.size:
        launch(kernels(x.dtype).elu_kernel, blocks_for(x.size), THREADS,
               flat(x), scalar(x.dtype, alpha), flat(y), x.size)
    return y


@backend.register
def elu_backward(grad_out, x, alpha):
    grad_x = xp.empty_like(x)
    if x.size:
        launch(kernels(x.dtype).elu_backward_kernel, blocks_for(x.size), THREADS,
               flat(grad_out), flat(x), scalar(x.dtype, alpha), flat(grad_x), x.size)
    return grad_x


def _gate_inner(x, dim):
    """Elements of one half of each (outer) row of x = [a, b] split along axis dim."""
    return max(math.prod(x.shape[dim:]) // 2, 1)


@backend.register
def gated_tanh(x, dim):
    y = xp.empty(_spec.gated_tanh_output_shape(x.shape, dim), x.dtype)
    if y.size:
        launch(kernels(x.dtype).gated_tanh_kernel, blocks_for(y.size), THREADS,
               flat(x), flat(y), _gate_inner(x, dim), y.size)
    return y


@backend.register
def gated_tanh_backward(grad_out, x, dim):
    grad_x = xp.empty_like(x)
    if x.size:
        launch(kernels(x.dtype).gated_tanh_backward_kernel, blocks_for(grad_out.size), THREADS,
               flat(grad_out), flat(x), flat(grad_x), _gate_inner(x, dim), grad_out.size)
    return grad_x


def _channels_and_inner(x, weight):
    """(channels the slopes cycle over, elements per (sample, channel) row) of the flat x."""
    if x.ndim < 2 or weight.size == 1:
        return 1, max(x.size, 1)
    return x.shape[1], max(x.size // max(x.shape[0] * x.shape[1], 1), 1)


@backend.register
def prelu(x, weight):
    y = xp.empty_like(x)
    if x.size:
        channels, inner = _channels_and_inner(x, weight)
        launch(kernels(x.dtype).prelu_kernel, blocks_for(x.size), THREADS,
               flat(x), weight, channels, inner, flat(y), x.size)
    return y


@backend.register
def prelu_backward(grad_out, x, weight):
    grad_x = xp.empty_like(x)
    per_element = xp.zeros_like(x)
    if x.size:
        channels, inner = _channels_and_inner(x, weight)
        launch(kernels(x.dtype).prelu_backward_kernel, blocks_for(x.size), THREADS,
               flat(grad_out), flat(x), weight, channels, inner, flat(grad_x),
               flat(per_element), x.size)
    if weight.size == 1:
        grad_weight = per_element.sum(dtype="float64").reshape(1)
    else:
        grad_weight = per_element.sum(axis=(0,) + tuple(range(2, x.ndim)), dtype="float64")
    return grad_x, xp.ascontiguousarray(grad_weight.astype(x.dtype))


def _unary(kernel_name, x):
    y = xp.empty_like(x)
    if x.size:
        launch(getattr(kernels(x.dtype), kernel_name), blocks_for(x.size), THREADS,
               flat(x), flat(y), x.size)
    return y


def _from_output(kernel_name, grad_out, y):
    grad_x = xp.empty_like(y)
    if y.size:
        launch(getattr(kernels(y.dtype), kernel_name), blocks_for(y.size), THREADS,
               flat(grad_out), flat(y), flat(grad_x), y.size)
    return grad_x


@backend.register
def relu(x):
    return _unary("relu_kernel", x)


@backend.register
def relu_backward(grad_out, y):
    return _from_output("relu_backward_kernel", grad_out, y)


@backend.register
def sigmoid(x):
    return _unary("sigmoid_kernel", x)


@backend.register
def sigmoid_backward(grad_out, y):
    return _from_output("sigmoid_backward_kernel", grad_out, y)


@backend.register
def tanh(x):
    return _unary("tanh_kernel", x)


@backend.register
def tanh_backward(grad_out, y):
    return _from_output("tanh_backward_kernel", grad_out, y)


@backend.register
def dropout(x, keep_threshold, scale, seed):
    y, mask = xp.empty_like(x), xp.empty(x.shape, xp.uint8)
    if x.size:
        launch(kernels(x.dtype).dropout_kernel, blocks_for((x.size + 3) // 4), THREADS,
               flat(x), seed & 0xFFFFFFFF, seed >> 32, keep_threshold, scalar(x.dtype, scale),
               flat(y), flat(mask), x.size)
    return y, mask


@backend.register
def dropout_backward(grad_out, mask, scale):
    grad_x = xp.empty_like(grad_out)
    if grad_out.size:
        launch(kernels(grad_out.dtype).dropout_backward_kernel, blocks_for(grad_out.size),
               THREADS, flat(grad_out), flat(mask), scalar(grad_out.dtype, scale), flat(grad_x),
               grad_out.size)
    return grad_x
