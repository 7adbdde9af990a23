"""Convolutions: conv1d, conv2d and conv_transpose2d. Forward and backward are
:mod:`pyconv.ops` kernels, which also check the arguments."""
from __future__ import annotations

from ... import ops
from ...autograd import Function, Tensor

__all__ = ["conv1d", "conv2d", "conv_transpose2d"]


class _Conv(Function):
    def __init__(self, nd, stride, padding, dilation, groups, algorithm=None):
        self.forward_op = ops.conv2d if nd == 2 else ops.conv1d
        self.backward_op = ops.conv2d_backward if nd == 2 else ops.conv1d_backward
        self.params = (stride, padding, dilation, groups)
        # conv2d's algorithm= (conv1d has none)
        self.options = {} if algorithm is None else {"algorithm": algorithm}

    def forward(self, x, w, b):
        self.x, self.w, self.has_bias = x, w, b is not None
        return self.forward_op(x, w, b, *self.params, **self.options)

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        return self.backward_op(g, self.x, self.w, *self.params, needs=(nx, nw, nb and self.has_bias),
                                **self.options)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto") -> Tensor:
    """2-D cross-correlation: x (N, C, H, W), weight (K, C/groups, R, S) -> (N, K, Ho, Wo); an
    unbatched x (C, H, W) -> (K, Ho, Wo). ``algorithm``: see :func:`pyconv.ops.conv2d`."""
    return _Conv(2, stride, padding, dilation, groups, algorithm)(x, weight, bias)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """1-D cross-correlation: x (N, C, L), weight (K, C/groups, R) -> (N, K, Lo); an unbatched
    x (C, L) -> (K, Lo)."""
    return _Conv(1, stride, padding, dilation, groups)(x, weight, bias)


class _ConvTranspose2d(Function):
    def __init__(self, stride, padding, output_padding, groups, dilation):
        self.params = (stride, padding, output_padding, groups, dilation)

    def forward(self, x, w, b):
        self.x, self.w, self.has_bias = x, w, b is not None
        return ops.conv_transpose2d(x, w, b, *self.params)

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        return ops.conv_transpose2d_backward(g, self.x, self.w, *self.params,
                                             needs=(nx, nw, nb and self.has_bias))


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1) -> Tensor:
    """Transpose convolution: x (N, C, H, W), weight (C, K/groups, R, S) -> (N, K, Ho, Wo); an
    unbatched x (C, H, W) -> (K, Ho, Wo)."""
    return _ConvTranspose2d(stride, padding, output_padding, groups, dilation)(x, weight, bias)
