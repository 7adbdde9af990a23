"""Dense products of the "numba" backend: np.dot inside @njit, which hands a transposed
operand to BLAS as a transpose flag rather than copying it."""
from __future__ import annotations

import numpy as np

from . import backend
from ._jit import driver


@driver
def _dot(a, b):
    return np.dot(a, b)


@backend.register
def matmul(a, b, trans_a, trans_b):
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    if 0 in a.shape or 0 in b.shape:
        return np.zeros((m, n), a.dtype)
    return _dot(a.T if trans_a else a, b.T if trans_b else b)
