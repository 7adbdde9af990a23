"""Dropout (Srivastava et al. 2014): random zeroing during training, one fused kernel each way
(pyconv.ops.dropout draws the mask from a seed and applies it in one pass)."""
from __future__ import annotations

import numpy as np

from ... import _spec, ops
from ... import random as _random
from ...autograd import Function, Tensor
from ._util import _tensor

__all__ = ["dropout"]


class _Dropout(Function):
    def __init__(self, p, seed):
        self.p, self.seed = p, seed

    def forward(self, x):
        y, self.mask = ops.dropout(x, self.p, self.seed)
        return y

    def backward(self, g):
        return ops.dropout_backward(g, self.mask, self.p)


def dropout(x, p=0.5, training=True) -> Tensor:
    """Zeros each element with probability p and scales the rest by 1/(1-p) (training only).
    The mask is a function of a seed drawn from pyconv's generator (:func:`pyconv.manual_seed`)
    and of the element's position, so it is the same on every backend."""
    _spec.dropout_draw("dropout", p)
    x = _tensor(x)
    if not training or p == 0:
        return x
    seed = int(_random.generator().integers(0, 2**64, dtype=np.uint64))
    return _Dropout(p, seed)(x)
