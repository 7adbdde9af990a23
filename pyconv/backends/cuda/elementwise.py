"""Elementwise activations on the GPU: one grid-stride pass over the flat array each
(coalesced: consecutive threads touch consecutive elements)."""
from __future__ import annotations

from numba import cuda

from . import backend
from ._kernel_util import Kernels, per_dtype
from ._runtime import THREADS, blocks_for, flat, launch, scalar, xp


@per_dtype
def kernels(dtype):
    dt = dtype.type
    ks = Kernels(dtype)

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
