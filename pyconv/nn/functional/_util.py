"""Argument helpers shared by the functional modules."""
from __future__ import annotations

from ...autograd import Tensor


def _data(t):
    """The array of a Tensor; anything else unchanged."""
    return t.data if isinstance(t, Tensor) else t


def _tensor(t):
    """`t` as a Tensor (arrays and numbers are wrapped, outside the graph)."""
    return t if isinstance(t, Tensor) else Tensor(t)


def _channel_shape(x_ndim, n):
    """Shape that broadcasts a per-channel vector of length n along axis 1 of an x_ndim array."""
    return (1, n) + (1,) * (x_ndim - 2) if x_ndim >= 2 else (n,)
