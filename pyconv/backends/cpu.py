"""The "cpu" backend: hand-written C++ kernels (csrc/, module pyconv._C).

OpenMP-parallel, compiled for AVX-512, AVX2+FMA and a generic baseline in one build; the
variant is chosen at run time (``pyconv.info()["isa"]``). This module allocates the outputs
and hands the C++ side contiguous buffers and the geometry from ``pyconv._spec``.
"""
import numpy as np

from .. import _C
from . import Backend

backend = Backend("cpu", "numpy", "C++ kernels (pybind11, OpenMP, run-time ISA dispatch)")


@backend.register
def max_pool2d(x, g, with_indices):
    y = np.empty(g.output_shape, x.dtype)
    idx = np.empty(g.output_shape, np.int64) if with_indices else None
    _C.max_pool2d(x, y, idx, g)
    return y, idx


@backend.register
def conv2d(x, w, b, g):
    y = np.empty(g.output_shape, x.dtype)
    _C.conv2d(x, w, b, y, g)
    return y


@backend.register
def conv2d_grad_input(grad_out, w, g):
    grad_x = np.empty(g.input_shape, grad_out.dtype)
    _C.conv2d_grad_input(grad_out, w, grad_x, g)
    return grad_x


@backend.register
def conv2d_grad_weight(grad_out, x, g):
    grad_w = np.empty(g.weight_shape, x.dtype)
    _C.conv2d_grad_weight(grad_out, x, grad_w, g)
    return grad_w


@backend.register
def conv2d_grad_bias(grad_out):
    grad_b = np.empty(grad_out.shape[1], grad_out.dtype)
    _C.conv2d_grad_bias(grad_out, grad_b)
    return grad_b
