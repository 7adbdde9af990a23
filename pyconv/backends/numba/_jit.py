"""Shared machinery of the "numba" backend: the JIT options every kernel compiles with, the
thread glue between Numba's parallel loops and BLAS, and the small parallel helpers (row
blocks, block sums, BLAS products cut into one block per thread) that several op families use.

Fork safety: this module selects Numba's fork-safe threading layer (pyconv/_numba_threading.py;
``import pyconv`` does it already when Numba is loaded by then): TBB if installed, else
"workqueue". The workqueue layer is not thread-safe (two threads launching parallel loops at
once abort the process), so the backend runs one kernel at a time (``pyconv.backends.numba``);
each uses every thread anyway.

One thread pool: the BLAS library these kernels call runs on one thread (``_one_blas_thread``)
and each Numba thread makes its own BLAS calls on its own images or rows. Letting OpenBLAS
start its own threads between Numba's parallel loops makes the two pools fight over the cores.
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

from ..._numba_threading import choose_fork_safe_threading_layer


# `kernel`: a function with parallel loops. `driver`: a serial sequence of kernel calls.
# `helper`: a small serial function that LLVM inlines into its callers.
# error_model="numpy": a division by zero gives inf/NaN as in NumPy, instead of a check per
# division that would keep loops from vectorising.
kernel = njit(parallel=True, cache=True, error_model="numpy")
driver = njit(cache=True, error_model="numpy")
helper = njit(cache=True, error_model="numpy")
# `inlined`: a helper that Numba copies into each call site, so that a call with constant
# arguments compiles to code specialised for them (LLVM alone declines for large functions).
inlined = njit(cache=True, error_model="numpy", inline="always")


choose_fork_safe_threading_layer()


_blas_limited = False


def _one_blas_thread():
    """Makes the BLAS library that np.dot calls inside @njit (SciPy's OpenBLAS) run on one
    thread, once per process. It stays so: switching its threads back on after every kernel
    wakes threads that then spin against ours. NumPy's own BLAS library is left alone.
    Needs threadpoolctl; without it BLAS keeps its threads (correct, but slower)."""
    global _blas_limited
    if _blas_limited:
        return
    _blas_limited = True
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library Numba calls)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    numpy_dirs = {os.path.dirname(np.__file__), os.path.dirname(np.__file__) + ".libs"}
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and os.path.dirname(lib.filepath) not in numpy_dirs:
            lib.set_num_threads(1)


def check_shapes(op, **arrays_and_shapes):
    """Each array a kernel indexes must have the shape its geometry implies. The public ops
    guarantee it; the loops do not check bounds, so a direct call with other shapes would read
    or write out of bounds: it raises ValueError naming the op instead. Optional arrays may be
    None."""
    for name, (a, shape) in arrays_and_shapes.items():
        if a is not None and tuple(a.shape) != tuple(shape):
            raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")


@helper
def _u(i):
    """i (known to be >= 0) as an unsigned int. Indexing with unsigned ints skips Numba's
    handling of negative indices, which would keep LLVM from vectorising the loop around."""
    return np.uint64(i)


@helper
def _block(k, blocks, n):
    """Rows [lo, hi) of block k when n rows are cut into `blocks` nearly equal blocks."""
    return k * n // blocks, (k + 1) * n // blocks


def _threads():
    """Numba's thread count, passed to the kernels that cut work into one block per thread
    (reading it inside a kernel would keep the kernel out of the disk cache)."""
    return numba.get_num_threads()


@kernel
def _matmul(a, b, out, threads):
    """out = a @ b, the rows of a cut into one block per thread."""
    blocks = min(a.shape[0], threads)
    for k in prange(blocks):
        lo, hi = _block(k, blocks, a.shape[0])
        np.dot(a[lo:hi], b, out[lo:hi])


@kernel
def _matmul_tn(a, b, out, threads):
    """out = a^T @ b: the shared rows cut into one block per thread, partial products summed."""
    blocks = min(a.shape[0], threads)
    partial = np.empty((blocks,) + out.shape, out.dtype)
    for k in prange(blocks):
        lo, hi = _block(k, blocks, a.shape[0])
        np.dot(a[lo:hi].T, b[lo:hi], partial[k])
    _sum_blocks(partial, out)


@kernel
def _sum_blocks(partial, out):
    """out = partial.sum(axis=0) for partial (blocks, M, N), parallel over the rows M."""
    for m in prange(out.shape[0]):
        out[m] = partial[0, m]
        for k in range(1, partial.shape[0]):
            out[m] += partial[k, m]
