"""Pieces shared by the kernel families: per-dtype kernel factories, PTX signatures and a
block-wide sum.

Kernels are plain ``@cuda.jit`` functions (compiled lazily for the argument types they meet;
an eager signature would need a device). Their shared- and local-memory arrays need a dtype
at compile time, so each family is built by a factory per float dtype, cached. Every kernel
takes flat 1-D C-contiguous arrays plus sizes, which keeps the index arithmetic explicit and
the PTX signatures simple.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np
from numba import cuda

from ._runtime import SIMULATOR

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# Threads per block of the block-reduction kernels (grad_bias, depthwise grad_weight).
REDUCE_THREADS = 256


def per_dtype(factory):
    """Caches factory(dtype) -> namespace of kernels, keyed by the NumPy dtype."""
    cached = functools.lru_cache(maxsize=None)(factory)

    @functools.wraps(factory)
    def get(dtype):
        return cached(np.dtype(dtype))

    return get


class Kernels:
    """The kernels one factory built for one dtype, with the argument kinds of each (for
    compiling them to PTX without a device; see ``argtypes``)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.kinds: dict[str, str] = {}
        self.launch_bounds: dict[str, tuple | None] = {}

    def add(self, kinds: str, launch_bounds: tuple | None = None):
        """Decorator: compiles fn as a kernel (lazily, ``@cuda.jit``) and records it.
        launch_bounds = (threads per block, blocks per SM) caps its registers so that many
        blocks fit on an SM (PTX ``.maxntid`` / ``.minnctapersm``)."""

        def deco(fn):
            opts = {} if launch_bounds is None or SIMULATOR else {"launch_bounds": launch_bounds}
            kernel = cuda.jit(**opts)(fn)
            setattr(self, fn.__name__, kernel)
            self.kinds[fn.__name__] = kinds
            self.launch_bounds[fn.__name__] = launch_bounds
            return kernel

        return deco

    def names(self):
        return list(self.kinds)


def geometry_args(kernel, g, *leading):
    """The arguments of `kernel`: `leading` (its buffers and flags, in order), then each of its
    remaining parameters read from the geometry `g` (a ConvGeom or PoolGeom) by name. A kernel
    names its size parameters after the geometry's fields, so no call site depends on the
    order of those fields."""
    names = _parameter_names(kernel.py_func)[len(leading):]
    return (*leading, *(getattr(g, name) for name in names))


@functools.lru_cache(maxsize=None)
def _parameter_names(fn) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def argtypes(dtype, kinds: str):
    """Numba argument types for a kernel: one letter per argument, 'f' a flat array of the
    float dtype, 'l' of int64, 'u' of uint64, 'b' of uint8, 'd' of float64 (whatever the float
    dtype), 'n' an int64 scalar, 's' a scalar of the float dtype."""
    from numba import types

    ft = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    table = {
        "f": ft[::1], "l": types.int64[::1], "u": types.uint64[::1], "b": types.uint8[::1],
        "n": types.int64, "s": ft, "d": types.float64[::1],
    }
    return tuple(table[k] for k in kinds)


@cuda.jit(device=True)
def block_sum(buf, v):
    """Sum of v over the block (REDUCE_THREADS threads, 1-D), valid in thread 0: a tree in
    shared memory `buf`, in a fixed order, so the result is deterministic."""
    t = cuda.threadIdx.x
    buf[t] = v
    cuda.syncthreads()
    step = REDUCE_THREADS // 2
    while step > 0:
        if t < step:
            buf[t] += buf[t + step]
        cuda.syncthreads()
        step //= 2
    return buf[0]
