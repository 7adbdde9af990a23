"""Dense maps: linear (x W^T + b), embedding (a row lookup, i.e. a linear map of one-hot
vectors) and flatten, which turns feature maps into the vectors these take."""
from __future__ import annotations

import numpy as np

from ...autograd import Function, Tensor, array_module, scatter_add
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
        self.weight_shape, self.dtype = w.shape, w.dtype
        return w[self.indices]

    def backward(self, g):
        grad = array_module(g).zeros(self.weight_shape, self.dtype)
        scatter_add(grad, self.indices, g)  # a row used twice gets both gradients
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0  # the padding row stays fixed, as in PyTorch
        return grad


def embedding(indices, weight, padding_idx=None) -> Tensor:
    """Rows of `weight` (num_embeddings, dim) picked by integer `indices` of any shape; the row
    padding_idx (if given) receives no gradient."""
    idx = _data(indices)
    if not hasattr(idx, "dtype"):
        idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got {idx.dtype}")
    n = _data(weight).shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"embedding: indices must lie in [0, {n}), got values from "
                         f"{int(idx.min())} to {int(idx.max())}")
    if padding_idx is not None and padding_idx < 0:
        padding_idx += n
    return _Embedding(array_module(_data(weight)).asarray(idx), padding_idx)(weight)


def flatten(x, start_dim=1, end_dim=-1) -> Tensor:
    """Merges the axes start_dim..end_dim: (N, C, H, W) -> (N, C*H*W) by default."""
    x = _tensor(x)
    start, end = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])
