"""Pooling: max_pool2d, avg_pool2d and max_unpool2d, on :mod:`pyconv.ops` kernels."""
from __future__ import annotations

import numpy as np

from ... import ops
from ...autograd import Function, Tensor, array_module
from ._util import _data

__all__ = ["max_pool2d", "avg_pool2d", "max_unpool2d"]


class _MaxPool2d(Function):
    def __init__(self, *params):
        self.params = params

    def forward(self, x):
        self.input_shape = x.shape
        y, self.indices = ops.max_pool2d(x, *self.params, return_indices=True)
        return y

    def backward(self, g):
        return ops.max_pool2d_backward(g, self.indices, self.input_shape)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max pooling of x (N, C, H, W) or unbatched (C, H, W); with ``return_indices`` ->
    ``(y, indices)`` (indices an int64 Tensor of flat offsets into each H*W plane, for
    :func:`max_unpool2d`)."""
    fn = _MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode)
    y = fn(x)
    return (y, Tensor(fn.indices)) if return_indices else y


class _AvgPool2d(Function):
    def __init__(self, *params):
        self.params = params

    def forward(self, x):
        self.input_shape = x.shape
        return ops.avg_pool2d(x, *self.params)

    def backward(self, g):
        return ops.avg_pool2d_backward(g, self.input_shape, *self.params)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None) -> Tensor:
    """Average pooling, as ``torch.nn.functional.avg_pool2d``: x (N, C, H, W) or (C, H, W)."""
    return _AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)(x)


class _MaxUnpool2d(Function):
    def __init__(self, indices, *params):
        self.indices, self.params = indices, params

    def forward(self, x):
        self.input_shape = x.shape
        return ops.max_unpool2d(x, self.indices, *self.params)

    def backward(self, g):
        # Each input element was written to one output position: its gradient is read back
        # there. The indices are offsets within each plane (the leading axes are (N, C), or
        # (C,) unbatched); as offsets into the whole of g, one flat take reads them (4-5x
        # faster than take_along_axis, which builds an index array per axis).
        xp = array_module(g)
        planes = int(np.prod(self.input_shape[:-2]))
        plane = g.shape[-2] * g.shape[-1]
        starts = xp.arange(planes, dtype=np.int64).reshape(planes, 1) * plane
        flat = self.indices.reshape(planes, -1).astype(np.int64, copy=False) + starts
        return xp.take(g.reshape(-1), flat).reshape(self.input_shape)


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None) -> Tensor:
    """Inverse of max pooling: zeros except at the remembered positions; x and indices
    (N, C, H, W) or unbatched (C, H, W)."""
    return _MaxUnpool2d(_data(indices), kernel_size, stride, padding, output_size)(x)
