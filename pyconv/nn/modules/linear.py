"""Dense layers: Linear, Maxout (the maximum of several affine maps), Embedding (a lookup
table) and Flatten, which turns feature maps into the vectors these take."""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .. import init
from .module import Module, _empty

__all__ = ["Linear", "Maxout", "Embedding", "Flatten"]


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty((out_features, in_features), dtype)
        self.register_parameter("bias", _empty((out_features,), dtype) if bias else None)
        init.default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def output_shape(self, shape):
        return tuple(shape[:-1]) + (self.out_features,)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Maxout(Module):
    """Maxout units (Goodfellow et al. 2013): `out_features` units, each the maximum of
    `pool_size` affine functions of the input. weight (out_features * pool_size, in_features),
    the pieces of unit j being rows j*pool_size ... j*pool_size + pool_size - 1."""

    def __init__(self, in_features, out_features, pool_size=2, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features, self.pool_size = in_features, out_features, pool_size
        self.weight = _empty((out_features * pool_size, in_features), dtype)
        self.register_parameter("bias", _empty((out_features * pool_size,), dtype) if bias else None)
        init.default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.maxout(F.linear(x, self.weight, self.bias), self.pool_size, dim=-1)

    def output_shape(self, shape):
        return tuple(shape[:-1]) + (self.out_features,)


class Embedding(Module):
    """A lookup table (num_embeddings, embedding_dim), N(0, 1) initialised as PyTorch; the row
    padding_idx starts at zero and is never updated."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.weight = _empty((num_embeddings, embedding_dim), dtype)
        init.normal_(self.weight)
        if padding_idx is not None:
            self.weight.data[padding_idx] = 0

    def forward(self, indices):
        return F.embedding(indices, self.weight, self.padding_idx)

    def output_shape(self, shape):
        return tuple(shape) + (self.embedding_dim,)


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def output_shape(self, shape):
        start, end = self.start_dim % len(shape), self.end_dim % len(shape)
        return tuple(shape[:start]) + (math.prod(shape[start:end + 1]),) + tuple(shape[end + 1:])
