"""Dense products of the "numba" backend: the row-blocked BLAS products of ``_jit`` (one block
per thread, BLAS itself on one thread), a transposed B handed to BLAS as a transposed view
rather than copied; embedding lookups on one thread (a parallel loop's start costs more than a
lookup's copies), the backward adding the gradient rows in the order of the indices, as the
reference does."""
from __future__ import annotations

import numpy as np

from . import backend
from ._jit import _matmul, _matmul_tn, _one_blas_thread, _threads, driver


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


@driver
def _gather_rows(weight, index, out):
    for i in range(index.size):
        r = index[i]
        for c in range(out.shape[1]):
            out[i, c] = weight[r, c]


@driver
def _sum_rows_by_index(grad, index, grad_weight):
    for i in range(index.size):
        r = index[i]
        for c in range(grad.shape[1]):
            grad_weight[r, c] += grad[i, c]


@backend.register
def embedding(weight, indices):
    out = np.empty((indices.size, weight.shape[1]), weight.dtype)
    _gather_rows(weight, indices.reshape(-1), out)
    return out.reshape(indices.shape + (weight.shape[1],))


@backend.register
def embedding_backward(grad_out, indices, num_embeddings, padding_idx):
    dim = grad_out.shape[-1]
    grad_weight = np.zeros((num_embeddings, dim), grad_out.dtype)
    _sum_rows_by_index(grad_out.reshape(indices.size, dim), indices.reshape(-1), grad_weight)
    if padding_idx >= 0:
        grad_weight[padding_idx] = 0
    return grad_weight
