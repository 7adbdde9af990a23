"""Pooling layers: MaxPool2d, AvgPool2d and MaxUnpool2d."""
from __future__ import annotations

from ... import _spec
from .. import functional as F
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "MaxUnpool2d"]


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices)

    def output_shape(self, shape):
        g = _spec.pool_geom("MaxPool2d", tuple(shape), self.kernel_size, self.stride,
                            self.padding, self.dilation, self.ceil_mode)
        return _spec.without_batch(g.output_shape, len(shape) == 3)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    def forward(self, x):
        return F.avg_pool2d(x, *self.args)

    def output_shape(self, shape):
        k, s, p, ceil = self.args[:4]
        g = _spec.pool_geom("AvgPool2d", tuple(shape), k, s, p, 1, ceil)
        return _spec.without_batch(g.output_shape, len(shape) == 3)


class MaxUnpool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x, indices, output_size=None):
        return F.max_unpool2d(x, indices, self.kernel_size, self.stride, self.padding, output_size)
