"""Dense products of the "numba" backend: the row-blocked BLAS products of ``_jit`` (one block
per thread, BLAS itself on one thread), a transposed B handed to BLAS as a transposed view
rather than copied."""
from __future__ import annotations

import numpy as np

from . import backend
from ._jit import _matmul, _matmul_tn, _one_blas_thread, _threads


@backend.register
def matmul(a, b, trans_a, trans_b):
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    if 0 in a.shape or 0 in b.shape:
        return np.zeros((m, n), a.dtype)
    _one_blas_thread()
    out = np.empty((m, n), a.dtype)
    if trans_a:
        # The row blocks of a transposed view are not contiguous, which BLAS needs: copy it.
        _matmul_tn(a, np.ascontiguousarray(b.T) if trans_b else b, out, _threads())
    else:
        _matmul(a, b.T if trans_b else b, out, _threads())
    return out
