"""Dense products (matmul of two matrices, either of them transposed) and embedding lookups."""
from __future__ import annotations

import numpy as np

from .core import (ShapeDtype, _int, check_allocatable, check_array, check_float_dtypes, check_index_dtype,
                   indices_below, shape_of)


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


def _check_embedding_indices(op, indices, num_embeddings):
    check_array(op, "indices", indices)
    check_index_dtype(op, "indices", indices)
    if not isinstance(indices, ShapeDtype) and indices.size and not indices_below(indices, num_embeddings):
        raise ValueError(f"{op}: indices must lie in [0, {num_embeddings}) (rows of the table), got "
                         f"values in [{int(indices.min())}, {int(indices.max())}]")


def embedding(weight, indices):
    """-> the output's shape, indices.shape + (dim,), after checking weight (num_embeddings,
    dim) and the integer indices (any shape) into its rows."""
    op = "embedding"
    check_array(op, "weight", weight, 2)
    check_float_dtypes(op, weight=weight)
    _check_embedding_indices(op, indices, weight.shape[0])
    shape = tuple(indices.shape) + (weight.shape[1],)
    check_allocatable(op, "output", shape, weight.dtype)
    return shape


def embedding_backward(grad_out, indices, num_embeddings, padding_idx):
    """-> padding_idx as a row in [0, num_embeddings), or -1 for none, after checking that
    grad_out has shape indices.shape + (dim,)."""
    op = "embedding_backward"
    num = _int(op, "num_embeddings", num_embeddings)
    if num < 0:
        raise ValueError(f"{op}: num_embeddings must be at least 0, got {num}")
    check_array(op, "grad_out", grad_out)
    dtype = check_float_dtypes(op, grad_out=grad_out)
    check_array(op, "indices", indices)
    if grad_out.ndim != indices.ndim + 1 or tuple(grad_out.shape[:-1]) != tuple(indices.shape):
        raise ValueError(f"{op}: grad_out must have shape indices.shape + (dim,) = "
                         f"{tuple(indices.shape)} + (dim,), got {shape_of(grad_out)}")
    if padding_idx is None:
        padding = -1
    else:
        padding = _int(op, "padding_idx", padding_idx)
        if not -num <= padding < num:
            raise ValueError(f"{op}: padding_idx must lie in [-{num}, {num}), got {padding}")
        padding %= num
    check_allocatable(op, "output", (num, grad_out.shape[-1]), dtype)
    _check_embedding_indices(op, indices, num)
    return padding
