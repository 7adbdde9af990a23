"""Dense products on the GPU: CuPy's matmul (cuBLAS), which takes a transposed view as a
transpose flag rather than copying it."""
from __future__ import annotations

from . import backend
from ._runtime import xp


@backend.register
def matmul(a, b, trans_a, trans_b):
    return xp.ascontiguousarray((a.T if trans_a else a) @ (b.T if trans_b else b))
