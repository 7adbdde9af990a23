"""Dense products: matmul of two matrices, either of them transposed."""
from __future__ import annotations

import numpy as np

from .core import check_allocatable, check_array, check_float_dtypes, shape_of


def _flag(op, name, v):
    if v is True or v is False:
        return v
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {type(v).__name__} {v!r}")
    return bool(v)


def matmul(a, b, trans_a, trans_b):
    """-> (trans_a, trans_b) as bools after checking that op(a) (M, K) and op(b) (K, N) fit."""
    op = "matmul"
    check_array(op, "a", a, 2)
    check_array(op, "b", b, 2)
    dtype = check_float_dtypes(op, a=a, b=b)
    trans_a, trans_b = _flag(op, "trans_a", trans_a), _flag(op, "trans_b", trans_b)
    M, K = a.shape[::-1] if trans_a else a.shape
    Kb, N = b.shape[::-1] if trans_b else b.shape
    if K != Kb:
        raise ValueError(f"{op}: inner sizes differ: a{' (transposed)' if trans_a else ''} of shape "
                         f"{shape_of(a)} and b{' (transposed)' if trans_b else ''} of shape "
                         f"{shape_of(b)}")
    check_allocatable(op, "output", (M, N), dtype)
    return trans_a, trans_b
