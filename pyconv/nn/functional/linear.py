"""Dense maps: linear (x W^T + b), embedding (a row lookup, i.e. a linear map of one-hot
vectors) and flatten, which turns feature maps into the vectors these take."""
from __future__ import annotations

import numpy as np

from ... import _spec, ops
from ...autograd import Function, Tensor, array_module
from ...autograd import matrix_product as _product
from ...autograd.functions import sum_rows
from ._util import _data, _tensor

__all__ = ["linear", "embedding", "flatten"]


class _Linear(Function):
    def forward(self, x, w, b):
        self.x, self.w = x, w
        y = _product(x.reshape(-1, x.shape[-1]), w, trans_b=True).reshape(x.shape[:-1] + w.shape[:1])
        if b is not None:
            y += b
        return y

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        x, w = self.x, self.w
        g2 = g.reshape(-1, g.shape[-1])
        gx = _product(g2, w).reshape(x.shape) if nx else None
        gw = _product(g2, x.reshape(-1, x.shape[-1]), trans_a=True) if nw else None
        gb = sum_rows(g2) if nb else None
        return gx, gw, gb


def linear(x, weight, bias=None) -> Tensor:
    """``x @ weight.T + bias``: x (..., in), weight (out, in), bias (out,)."""
    xs, ws = _data(x).shape, _data(weight).shape
    if len(ws) != 2 or not xs or xs[-1] != ws[1]:
        raise ValueError(f"linear: x of shape {tuple(xs)} does not fit weight of shape {tuple(ws)} "
                         "(need x.shape[-1] == weight.shape[1])")
    if bias is not None and _data(bias).shape != (ws[0],):
        raise ValueError(f"linear: bias must have shape ({ws[0]},), got {tuple(_data(bias).shape)}")
    return _Linear()(x, weight, bias)


class _Embedding(Function):
    def __init__(self, indices, padding_idx):
        self.indices, self.padding_idx = indices, padding_idx

    def forward(self, w):
        self.num_embeddings = w.shape[0]
        return ops.embedding(w, self.indices)

    def backward(self, g):
        # A row used twice gets both gradients; the padding row none, as in PyTorch.
        return ops.embedding_backward(g, self.indices, self.num_embeddings, self.padding_idx)


def embedding(indices, weight, padding_idx=None) -> Tensor:
    """Rows of `weight` (num_embeddings, dim) picked by integer `indices` of any shape; the row
    padding_idx (if given; negative counts from the end) receives no gradient."""
    idx = _data(indices)
    if not hasattr(idx, "dtype"):
        idx = np.asarray(idx)
    w = _data(weight)
    if padding_idx is not None:  # a row of the table, checked now rather than by the backward
        padding_idx = _spec.embedding_backward(
            _spec.ShapeDtype(idx.shape + w.shape[1:], w.dtype), _spec.ShapeDtype(idx.shape, np.int64),
            w.shape[0], padding_idx)
    return _Embedding(array_module(w).asarray(idx), padding_idx)(weight)


def flatten(x, start_dim=1, end_dim=-1) -> Tensor:
    """Merges the axes start_dim..end_dim: (N, C, H, W) -> (N, C*H*W) by default."""
    x = _tensor(x)
    start, end = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])
