"""Pooling: max and average pooling, their gradients, max-unpooling."""
from __future__ import annotations

import numpy as np

from .core import (PoolGeom, ShapeDtype, _check_window_extents, _int, check_allocatable, check_array,
                   check_batch_optional, check_extent, check_float_dtypes, check_index_dtype,
                   check_shape_tuple, indices_below, ntuple, shape_of, without_batch)


def pool_output_size(n, k, s, p, d, ceil_mode):
    """PyTorch's rule: floor (or ceil) of the window count, but in ceil mode a last window that
    would start inside the right padding is dropped."""
    span = d * (k - 1) + 1
    numerator = n + 2 * p - span + (s - 1 if ceil_mode else 0)
    out = numerator // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def windows_touch_input(n, out, k, s, p, d):
    """True when every one of `out` windows holds at least one of the n input positions.

    Window o starts at o*s - p. pool_output_size keeps every start below n, so a window that
    starts at or after 0 holds its first tap. One that starts in the padding (start < 0) first
    reaches the input at start mod d, by its tap ceil(-start/d) <= p/d <= k - 1 (as p <= k/2):
    it holds an input position unless start mod d >= n. That needs d > n; then a non-empty
    output (span = d*(k - 1) + 1 <= n + 2p + s - 1 in either mode) with p <= k/2 leaves p <= s:
    at most one window starts in the padding, so the loop below is short."""
    if d <= n:
        return True
    return all((o * s - p) % d < n for o in range(min(out, -(-p // s))))


def pool_geom(op, x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """The window geometry of pooling an (N, C, H, W) input, or a (C, H, W) one as a batch of one."""
    if len(x_shape) not in (3, 4):
        raise ValueError(f"{op}: the input must be (C, H, W) or (N, C, H, W), got shape {tuple(x_shape)}")
    N, C, H, W = x_shape if len(x_shape) == 4 else (1, *x_shape)
    kernel = ntuple(op, "kernel_size", kernel_size, 2, minimum=1)
    stride = kernel if stride is None else ntuple(op, "stride", stride, 2, minimum=1)
    pad = ntuple(op, "padding", padding, 2, minimum=0)
    dilation = ntuple(op, "dilation", dilation, 2, minimum=1)
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise ValueError(
            f"{op}: padding must be at most half the kernel size, got padding={pad}, "
            f"kernel_size={kernel}"
        )
    if min(N, C, H, W) < 1:
        raise ValueError(f"{op}: empty input of shape {tuple(x_shape)}")
    out = [
        pool_output_size(n, k, s, p, d, bool(ceil_mode))
        for n, k, s, p, d in zip((H, W), kernel, stride, pad, dilation)
    ]
    if min(out) < 1 or not all(
        windows_touch_input(n, o, k, s, p, d)
        for n, o, k, s, p, d in zip((H, W), out, kernel, stride, pad, dilation)
    ):
        raise ValueError(
            f"{op}: input of shape {tuple(x_shape)} is too small for kernel_size={kernel}, "
            f"dilation={dilation}, padding={pad} (the output would be empty or hold windows that "
            "see only padding)"
        )
    _check_window_extents(op, (("height", H, kernel[0], stride[0], pad[0], dilation[0], out[0]),
                               ("width", W, kernel[1], stride[1], pad[1], dilation[1], out[1])),
                          f" (input shape {tuple(x_shape)})")
    return PoolGeom(N, C, H, W, out[0], out[1], *kernel, *stride, *pad, *dilation)


def _pool_input(op, x):
    check_batch_optional(op, "x", x, "NCHW")
    check_float_dtypes(op, x=x)
    return x.shape


def max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode):
    op = "max_pool2d"
    g = pool_geom(op, _pool_input(op, x), kernel_size, stride, padding, dilation, ceil_mode)
    check_allocatable(op, "indices", g.output_shape, np.int64)
    return g


def _divisor(op, g, divisor_override):
    """The divisor override (0 for none). The default divisor is a window's area, which
    kernels compute as an int64 product: it must fit too."""
    check_extent(op, f"the window area (kernel {g.kh} * {g.kw})", g.kh * g.kw)
    if divisor_override is None:
        return 0
    d = _int(op, "divisor_override", divisor_override)
    if d == 0:
        raise ValueError(f"{op}: divisor_override must be non-zero, got 0")
    return d


def avg_pool2d(x, kernel_size, stride, padding, ceil_mode, divisor_override):
    op = "avg_pool2d"
    g = pool_geom(op, _pool_input(op, x), kernel_size, stride, padding, 1, ceil_mode)
    check_allocatable(op, "output", g.output_shape, x.dtype)
    return g, _divisor(op, g, divisor_override)


def _input_shape(op, input_shape):
    """input_shape as (N, C, H, W), and whether it was given unbatched as (C, H, W)."""
    shape = check_shape_tuple(op, "input_shape", input_shape, (3, 4))
    return (1, *shape) if len(shape) == 3 else shape, len(shape) == 3


def _check_indices(op, name, idx, shape, plane):
    check_array(op, name, idx, len(shape))
    check_index_dtype(op, name, idx)
    if tuple(idx.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {shape_of(idx)}")
    if not isinstance(idx, ShapeDtype) and idx.size and not indices_below(idx, plane):
        raise ValueError(
            f"{op}: {name} must lie in [0, {plane}) (flat offsets into each output plane), "
            f"got values in [{int(idx.min())}, {int(idx.max())}]"
        )


def max_pool2d_backward(grad_out, indices, input_shape):
    """Returns input_shape with its batch axis (see _input_shape)."""
    op = "max_pool2d_backward"
    (N, C, H, W), unbatched = _input_shape(op, input_shape)
    check_array(op, "grad_out", grad_out, 3 if unbatched else 4)
    check_float_dtypes(op, grad_out=grad_out)
    if tuple(grad_out.shape[:-2]) != without_batch((N, C), unbatched):
        raise ValueError(
            f"{op}: grad_out {shape_of(grad_out)} and input_shape {tuple(input_shape)} differ in "
            "batch or channels"
        )
    check_allocatable(op, "output", (N, C, H, W), grad_out.dtype)
    _check_indices(op, "indices", indices, grad_out.shape, H * W)
    return (N, C, H, W)


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding, ceil_mode, divisor_override):
    op = "avg_pool2d_backward"
    shape, unbatched = _input_shape(op, input_shape)
    g = pool_geom(op, shape, kernel_size, stride, padding, 1, ceil_mode)
    pooled = without_batch(g.output_shape, unbatched)
    check_array(op, "grad_out", grad_out, len(pooled))
    check_float_dtypes(op, grad_out=grad_out)
    if tuple(grad_out.shape) != pooled:
        raise ValueError(f"{op}: grad_out must have the pooled shape {pooled}, got {shape_of(grad_out)}")
    check_allocatable(op, "output", shape, grad_out.dtype)
    return g, _divisor(op, g, divisor_override)


def max_unpool2d(x, indices, kernel_size, stride, padding, output_size):
    """Returns the output's shape with its batch axis (of size 1 for an unbatched x)."""
    op = "max_unpool2d"
    x_shape, _ = check_batch_optional(op, "x", x, "NCHW")
    check_float_dtypes(op, x=x)
    N, C, Hi, Wi = x_shape
    kernel = ntuple(op, "kernel_size", kernel_size, 2, minimum=1)
    stride = kernel if stride is None else ntuple(op, "stride", stride, 2, minimum=1)
    pad = ntuple(op, "padding", padding, 2, minimum=0)
    context = f" (x.shape={shape_of(x)})"
    for axis, n, s in (("height", Hi, stride[0]), ("width", Wi, stride[1])):
        check_extent(op, f"the reach of the windows along the {axis} ((input {n} - 1) * "
                         f"stride {s})", (n - 1) * s, context)
    default = [(n - 1) * s - 2 * p + k for n, s, p, k in zip((Hi, Wi), stride, pad, kernel)]
    if output_size is None:
        out = default
    else:
        if not isinstance(output_size, (tuple, list)) or len(output_size) not in (2, 4):
            raise ValueError(f"{op}: output_size must have 2 or 4 elements, got {output_size!r}")
        out = [_int(op, "output_size", v) for v in output_size[-2:]]
        for o, dflt, s in zip(out, default, stride):
            if not dflt - s < o < dflt + s:
                raise ValueError(
                    f"{op}: output_size {tuple(out)} must lie strictly between "
                    f"{tuple(d - s for d, s in zip(default, stride))} and "
                    f"{tuple(d + s for d, s in zip(default, stride))} for input {shape_of(x)}"
                )
    if min(N, C, Hi, Wi, *out) < 1:
        raise ValueError(f"{op}: empty input or output (x.shape={shape_of(x)}, output {tuple(out)})")
    check_allocatable(op, "output", (N, C, *out), x.dtype)
    _check_indices(op, "indices", indices, x.shape, out[0] * out[1])
    return (N, C, out[0], out[1])
