"""Convolution: conv1d/conv2d, their gradients and the transpose convolution."""
from __future__ import annotations

import numpy as np

from .core import (CONV_ALGORITHMS, SIZE_LIMIT, ConvGeom, _conv_extents, _int, check_allocatable, check_array, check_batch_optional,
                   check_extent, check_float_dtypes, ntuple, shape_of, without_batch)


def _conv_geom(op, x, w, b, stride, padding, dilation, groups, nd):
    """Checks a direct conv1d/conv2d call; returns its ConvGeom (conv1d as H = R = 1; an
    unbatched x, without its N axis, as a batch of one)."""
    x_shape, _ = check_batch_optional(op, "x", x, "NCHW" if nd == 2 else "NCL")
    check_array(op, "w", w, nd + 2)
    check_array(op, "b", b, 1, allow_none=True)
    check_float_dtypes(op, x=x, w=w, b=b)
    groups = _int(op, "groups", groups)
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    N, C, *spatial = x_shape
    K, Cg, *kernel = w.shape
    if C % groups or K % groups:
        raise ValueError(
            f"{op}: groups={groups} must divide the input channels and the output channels "
            f"(x.shape={shape_of(x)}, w.shape={shape_of(w)})"
        )
    if Cg != C // groups:
        raise ValueError(
            f"{op}: w expects {Cg} input channels per group but x has {C} channels in "
            f"{groups} group(s) (x.shape={shape_of(x)}, w.shape={shape_of(w)})"
        )
    if b is not None and b.shape != (K,):
        raise ValueError(f"{op}: b must have shape ({K},), got {shape_of(b)}")
    if min(N, C, K, *spatial, *kernel) < 1:
        raise ValueError(f"{op}: empty input (x.shape={shape_of(x)}, w.shape={shape_of(w)})")
    stride = ntuple(op, "stride", stride, nd, minimum=1)
    dilation = ntuple(op, "dilation", dilation, nd, minimum=1)
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0,) * nd
            out = [(n - s) // st + 1 for n, s, st in zip(spatial, span, stride)]
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride={stride}")
            # PyTorch pads (span - 1) in total, the odd one at the bottom/right.
            pad = tuple((s - 1) // 2 for s in span)
            out = list(spatial)
        else:
            raise ValueError(f"{op}: padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    else:
        pad = ntuple(op, "padding", padding, nd, minimum=0)
        out = [(n + 2 * p - s) // st + 1 for n, p, s, st in zip(spatial, pad, span, stride)]
    if min(out) < 1:
        raise ValueError(
            f"{op}: the output would be empty: input size {tuple(spatial)} with padding {pad} is "
            f"smaller than the dilated kernel {tuple(span)} (x.shape={shape_of(x)}, "
            f"w.shape={shape_of(w)})"
        )
    if nd == 1:
        (L,), (R,), (Lo,) = spatial, kernel, out
        g = ConvGeom(N, C, 1, L, K, 1, R, 1, Lo, 1, stride[0], 0, pad[0], 1, dilation[0], groups)
        out_shape = (N, K, Lo)
    else:
        (H, W), (R, S), (Ho, Wo) = spatial, kernel, out
        g = ConvGeom(N, C, H, W, K, R, S, Ho, Wo, *stride, *pad, *dilation, groups)
        out_shape = g.output_shape
    _conv_extents(op, g, lambda: f" (x.shape={shape_of(x)}, w.shape={shape_of(w)})")
    check_allocatable(op, "output", out_shape, x.dtype)
    return g


def conv2d(x, w, b, stride, padding, dilation, groups, op="conv2d", algorithm="auto"):
    return _with_algorithm(op, _conv_geom(op, x, w, b, stride, padding, dilation, groups, 2), algorithm)


def _with_algorithm(op, g, algorithm):
    """g with the index of ``algorithm`` (checked against g's layer) as its algorithm."""
    index = conv_algorithm(op, algorithm, (g.R, g.S), (g.sh, g.sw), (g.dh, g.dw), g.groups)
    return g if index == g.algorithm else g._replace(algorithm=index)


def conv_algorithm(op, algorithm, kernel_size, stride, dilation, groups):
    """The index in CONV_ALGORITHMS of ``algorithm`` for a convolution with these parameters
    (pairs); "winograd" only for the layers F(4x4, 3x3) computes (3x3, stride 1) and F(4x4, 2x2)
    over stride phases (4x4, stride 2)."""
    if not isinstance(algorithm, str) or algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"{op}: algorithm must be one of {', '.join(map(repr, CONV_ALGORITHMS))}, "
                         f"got {algorithm!r}")
    winograd = ((tuple(kernel_size) == (3, 3) and tuple(stride) == (1, 1))
                or (tuple(kernel_size) == (4, 4) and tuple(stride) == (2, 2)))
    if algorithm == "winograd" and not (winograd and tuple(dilation) == (1, 1) and groups == 1):
        raise ValueError(
            f"{op}: algorithm='winograd' needs a 3x3 kernel with stride 1 or a 4x4 kernel with stride 2, "
            f"dilation 1 and groups 1, got "
            f"kernel_size={tuple(kernel_size)}, stride={tuple(stride)}, dilation={tuple(dilation)}, "
            f"groups={groups}"
        )
    return CONV_ALGORITHMS.index(algorithm)


def conv1d(x, w, b, stride, padding, dilation, groups, op="conv1d"):
    return _conv_geom(op, x, w, b, stride, padding, dilation, groups, 1)


def _check_needs(op, needs):
    if not isinstance(needs, (tuple, list)) or len(needs) != 3:
        raise ValueError(f"{op}: needs must be a 3-tuple of bools (grad_x, grad_w, grad_b), got {needs!r}")
    if not all(isinstance(n, (bool, np.bool_)) for n in needs):
        raise TypeError(f"{op}: needs must hold bools (grad_x, grad_w, grad_b), got {needs!r}")
    return tuple(bool(n) for n in needs)


def _check_grad_out(op, grad_out, expected_shape, dtype):
    check_array(op, "grad_out", grad_out, len(expected_shape))
    if tuple(grad_out.shape) != tuple(expected_shape):
        raise ValueError(
            f"{op}: grad_out must have the output's shape {tuple(expected_shape)}, "
            f"got {shape_of(grad_out)}"
        )
    if grad_out.dtype != dtype:
        raise TypeError(f"{op}: grad_out is {grad_out.dtype} but the inputs are {dtype}")


def conv_backward(grad_out, x, w, stride, padding, dilation, groups, needs, nd, algorithm="auto"):
    op = f"conv{nd}d_backward"
    g = _with_algorithm(op, _conv_geom(op, x, w, None, stride, padding, dilation, groups, nd), algorithm)
    out_shape = g.output_shape if nd == 2 else (g.N, g.K, g.Wo)
    _check_grad_out(op, grad_out, without_batch(out_shape, x.ndim == nd + 1), x.dtype)
    return g, _check_needs(op, needs)


def conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation, op="conv_transpose2d"):
    """Checks a transpose convolution; returns the geometry of the direct conv it inverts (an
    unbatched x, without its N axis, as a batch of one)."""
    x_shape, _ = check_batch_optional(op, "x", x, "NCHW")
    check_array(op, "w", w, 4)
    check_array(op, "b", b, 1, allow_none=True)
    check_float_dtypes(op, x=x, w=w, b=b)
    groups = _int(op, "groups", groups)
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    N, Cin, Hin, Win = x_shape
    wc, Kg, R, S = w.shape
    if wc != Cin:
        raise ValueError(
            f"{op}: w must have x's {Cin} channels in its first dimension "
            f"(x.shape={shape_of(x)}, w.shape={shape_of(w)})"
        )
    if Cin % groups:
        raise ValueError(
            f"{op}: groups={groups} must divide the input channels "
            f"(x.shape={shape_of(x)}, w.shape={shape_of(w)})"
        )
    Cout = Kg * groups
    if b is not None and b.shape != (Cout,):
        raise ValueError(f"{op}: b must have shape ({Cout},), got {shape_of(b)}")
    if min(N, Cin, Hin, Win, Kg, R, S) < 1:
        raise ValueError(f"{op}: empty input (x.shape={shape_of(x)}, w.shape={shape_of(w)})")
    if isinstance(padding, str):
        raise ValueError(f"{op}: padding must be an int or a pair, got {padding!r}")
    stride = ntuple(op, "stride", stride, 2, minimum=1)
    pad = ntuple(op, "padding", padding, 2, minimum=0)
    dilation = ntuple(op, "dilation", dilation, 2, minimum=1)
    out_pad = ntuple(op, "output_padding", output_padding, 2, minimum=0)
    for op_, s, d in zip(out_pad, stride, dilation):
        if op_ >= s and op_ >= d:
            raise ValueError(
                f"{op}: output_padding must be smaller than stride or dilation, got "
                f"output_padding={out_pad}, stride={stride}, dilation={dilation}"
            )
    Hout, Wout = (
        (n - 1) * s - 2 * p + d * (k - 1) + o + 1
        for n, s, p, d, k, o in zip((Hin, Win), stride, pad, dilation, (R, S), out_pad)
    )
    def context():
        return f" (x.shape={shape_of(x)}, w.shape={shape_of(w)})"

    if max(Hout, Wout) >= SIZE_LIMIT:
        for axis, n, s, out_size in (("height", Hin, stride[0], Hout), ("width", Win, stride[1], Wout)):
            check_extent(op, f"the output {axis} ((input {n} - 1) * stride {s} - 2*padding + "
                             "dilated kernel + output_padding)", out_size, context())
    if min(Hout, Wout) < 1:
        raise ValueError(
            f"{op}: the output would be empty ({Hout}x{Wout}): padding {pad} is too large{context()}"
        )
    g = ConvGeom(N, Cout, Hout, Wout, Cin, R, S, Hin, Win, *stride, *pad, *dilation, groups)
    _conv_extents(op, g, context)
    check_allocatable(op, "output", g.input_shape, x.dtype)
    return g


def conv_transpose2d_backward(grad_out, x, w, stride, padding, output_padding, groups, dilation, needs):
    op = "conv_transpose2d_backward"
    g = conv_transpose2d(x, w, None, stride, padding, output_padding, groups, dilation, op=op)
    _check_grad_out(op, grad_out, without_batch(g.input_shape, x.ndim == 3), x.dtype)
    return g, _check_needs(op, needs)
