"""Convolution layers: Conv1d, Conv2d, ConvTranspose2d, and PixelCNN's MaskedConv2d. Output
shapes come from :mod:`pyconv._spec`'s shape rules, computed without data."""
from __future__ import annotations

import numpy as np

from ... import _spec
from ...autograd import Function, Tensor, array_module
from .. import functional as F
from ..functional.conv import _Conv
from .. import init
from .module import Module, _empty

__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d", "MaskedConv2d"]


def _pair(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _ConvNd(Module):
    nd = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=np.float32):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: groups={groups} must divide in_channels="
                             f"{in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, self.nd)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.weight = _empty(self._weight_shape(), dtype)
        self.register_parameter("bias", _empty((out_channels,), dtype) if bias else None)
        init.default_layer_init_(self.weight, self.bias)

    def _weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    def _conv_args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def output_shape(self, shape):
        x = _spec.ShapeDtype(shape, self.weight.dtype)
        w = _spec.ShapeDtype(self.weight.shape, self.weight.dtype)
        g = (_spec.conv2d if self.nd == 2 else _spec.conv1d)(x, w, None, *self._conv_args())
        out = g.output_shape if self.nd == 2 else (g.N, g.K, g.Wo)
        return _spec.without_batch(out, x.ndim == self.nd + 1)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Conv2d(_ConvNd):
    """``algorithm``: "auto", "gemm", "winograd" or "direct" (see :func:`pyconv.ops.conv2d`);
    "winograd" only for 3x3 kernels with stride 1, dilation 1 and groups 1."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=np.float32, *, algorithm="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, dtype)
        _spec.conv_algorithm(type(self).__name__, algorithm, self.kernel_size, _pair(stride, 2),
                             _pair(dilation, 2), groups)
        self.algorithm = algorithm

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, *self._conv_args(), algorithm=self.algorithm)

    def extra_repr(self):
        extra = "" if self.algorithm == "auto" else f", algorithm={self.algorithm!r}"
        return super().extra_repr() + extra


class Conv1d(_ConvNd):
    nd = 1

    def forward(self, x):
        return F.conv1d(x, self.weight, self.bias, *self._conv_args())


class MaskedConv2d(Conv2d):
    """PixelCNN's masked convolution (van den Oord et al. 2016): the kernel sees only pixels
    above the centre and left of it in the centre row; mask "A" (first layer) also hides the
    centre pixel itself, mask "B" (later layers) lets it through. The mask is spatial (the same
    for every channel pair); the weight keeps Conv2d's layout and state-dict names."""

    def __init__(self, mask_type, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, dtype=np.float32):
        if mask_type not in ("A", "B"):
            raise ValueError(f"MaskedConv2d: mask_type must be 'A' or 'B', got {mask_type!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, dtype)
        self.mask_type = mask_type
        R, S = self.kernel_size
        mask = np.ones((R, S), dtype)
        mask[R // 2, S // 2 + (mask_type == "B"):] = 0
        mask[R // 2 + 1:, :] = 0
        self.mask = mask

    def forward(self, x):
        return masked_conv2d(x, self.weight, self.mask, self.bias, *self._conv_args())


def masked_conv2d(x, weight, mask, bias, stride, padding, dilation, groups):
    """conv2d(x, weight * mask, ...) for a spatial (R, S) mask, computing only the taps the
    mask can keep.

    The kernel is cut to the smallest top-left block [:rows, :cols] holding every kept tap, and
    the mask multiply stays only if that block still has masked taps (slicing gives the cut
    taps a zero gradient, as the multiply by the mask did). Output element i along an axis
    reads x[i * stride + a * dilation - padding] for the taps a, so the cut kernel needs the
    input window [-padding, (Ho - 1) * stride + (cut kernel span - 1) - padding]: the
    convolution's own symmetric padding gives it only if it is symmetric, so along a cut axis
    the window is taken explicitly (zero rows above, the unused rows below dropped) and
    convolved unpadded, giving exactly the Ho x Wo outputs of the full kernel."""
    R, S = mask.shape
    kept_rows, kept_cols = np.nonzero(mask)
    if isinstance(padding, str) and padding != "valid" or not len(kept_rows):
        # "same" may pad unevenly; an all-zero mask has nothing to cut to.
        mask = array_module(weight.data).asarray(mask, dtype=weight.dtype)
        return F.conv2d(x, weight * Tensor(mask), bias, stride, padding, dilation, groups)
    rows, cols = int(kept_rows.max()) + 1, int(kept_cols.max()) + 1
    block = mask[:rows, :cols]
    if (rows, cols) != (R, S):
        weight = weight[:, :, :rows, :cols]
    if not block.all():
        weight = weight * Tensor(array_module(weight.data).asarray(block, dtype=weight.dtype))
    pad = (0, 0) if padding == "valid" else _pair(padding, 2)
    windows, conv_pad = [], []
    for n, p, d, k, cut, s in zip(x.shape[-2:], pad, _pair(dilation, 2), (R, S), (rows, cols),
                                  _pair(stride, 2)):
        n_out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        end = (n_out - 1) * s + d * (cut - 1) - p + 1
        symmetric = end == n + p
        windows.append((0, n) if symmetric else (-p, end))
        conv_pad.append(p if symmetric else 0)
    if windows == [(0, n) for n in x.shape[-2:]]:
        return F.conv2d(x, weight, bias, stride, tuple(conv_pad), dilation, groups)
    return _WindowedConv(_Window(*windows), stride, tuple(conv_pad), dilation, groups)(x, weight, bias)


class _Window(Function):
    """x's rows [top, bottom) and columns [left, right), zero outside x: the window may reach
    past any edge and may leave rows or columns of x out."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols

    def _placement(self, shape):
        """(the part of x inside the window, where it lies in the window) as index tuples."""
        inside, placed = [Ellipsis], [Ellipsis]
        for (start, stop), n in zip((self.rows, self.cols), shape[-2:]):
            lo, hi = max(start, 0), min(stop, n)
            inside.append(slice(lo, hi))
            placed.append(slice(lo - start, hi - start))
        return tuple(inside), tuple(placed)

    def forward(self, x):
        self.shape = x.shape
        inside, placed = self._placement(x.shape)
        (top, bottom), (left, right) = self.rows, self.cols
        out = array_module(x).zeros(x.shape[:-2] + (bottom - top, right - left), x.dtype)
        out[placed] = x[inside]
        return out

    def backward(self, g):
        inside, placed = self._placement(self.shape)
        if (inside[1].stop - inside[1].start, inside[2].stop - inside[2].start) == self.shape[-2:]:
            return g[placed]  # the window holds all of x: its gradient is a view of g
        grad = array_module(g).zeros(self.shape, g.dtype)
        grad[inside] = g[placed]
        return grad


class _WindowedConv(_Conv):
    """conv2d of a window of x (a :class:`_Window`) as one step. It keeps x, which the graph
    holds anyway, and builds the window again for the backward pass, rather than keeping a
    second, padded copy of x alive from the forward pass to the backward."""

    def __init__(self, window, stride, padding, dilation, groups):
        super().__init__(2, stride, padding, dilation, groups, "auto")
        self.window = window

    def forward(self, x, w, b):
        self.input = x
        y = super().forward(self.window.forward(x), w, b)
        self.x = None  # the window: built again by backward
        return y

    def backward(self, g):
        self.x = self.window.forward(self.input)
        gx, gw, gb = super().backward(g)
        self.x = None
        return None if gx is None else self.window.backward(gx), gw, gb


class ConvTranspose2d(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, dtype)
        self.output_padding = output_padding

    def _weight_shape(self):
        return (self.in_channels, self.out_channels // self.groups) + self.kernel_size

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)

    def output_shape(self, shape):
        x = _spec.ShapeDtype(shape, self.weight.dtype)
        w = _spec.ShapeDtype(self.weight.shape, self.weight.dtype)
        g = _spec.conv_transpose2d(x, w, None, self.stride, self.padding, self.output_padding,
                                   self.groups, self.dilation)
        # The transpose conv's output is the direct conv's input.
        return _spec.without_batch(g.input_shape, x.ndim == 3)
