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
