"""Dropout (Srivastava et al. 2014): random zeroing during training."""
from __future__ import annotations

from ... import random as _random
from ...autograd import Tensor, array_module
from ._util import _tensor

__all__ = ["dropout"]


def dropout(x, p=0.5, training=True) -> Tensor:
    """Zeros each element with probability p and scales the rest by 1/(1-p) (training only).
    The mask comes from pyconv's seeded generator (:func:`pyconv.manual_seed`)."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    x = _tensor(x)
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0
    keep = _random.generator().random(x.shape) >= p
    mask = array_module(x.data).asarray(keep.astype(x.dtype) * (1.0 / (1.0 - p)), dtype=x.dtype)
    return x * Tensor(mask)
