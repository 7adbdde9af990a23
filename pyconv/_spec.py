"""One place per op: argument normalisation, validation and output-shape rules.

Every public op in :mod:`pyconv.ops` calls its spec first; backends receive the checked
arguments (and the geometry computed here) and never validate again. Error messages name the
op, the argument and the shapes involved, so a user can see at once what was wrong.

The rules read only the shapes and dtypes of their array arguments, so each also accepts a
:class:`ShapeDtype` (a shape and a dtype, no data) in place of an array: layers and benchmarks
compute output shapes and geometries that way without allocating anything. Real arrays are
still checked to be NumPy or CuPy arrays, and index arrays for their values.

Geometry conventions shared by every backend:

* ``ConvGeom`` describes a *direct* convolution: input (N, C, H, W), weight (K, C/groups, R, S),
  output (N, K, Ho, Wo). Only the top/left padding (``ph``, ``pw``) enters index arithmetic:
  output (ho, wo) reads input row ``ho*sh - ph + r*dh`` and column ``wo*sw - pw + s*dw``; the
  bottom/right padding is implied by Ho/Wo (so PyTorch's asymmetric ``"same"`` fits).
  conv1d is the conv2d with H = R = 1. A transpose convolution is described by the geometry of
  the direct convolution whose input gradient it is: its output is that convolution's input.
* ``PoolGeom`` describes a pooling window: input (N, C, H, W) -> output (N, C, Ho, Wo).

Ranges. Kernels compute indices and byte offsets in signed 64-bit integers. So every integer
argument lies in (-2**62, 2**62), and every quantity derived from the arguments that a kernel
may compute (padded extent ``H + 2*padding``, dilated kernel span ``dilation*(kernel - 1) + 1``,
the reach of the windows ``(Ho - 1)*stride + span``, output sizes, the window area of average
pooling, and each output's size in bytes) must be below ``2**62``: then a sum of two of them
still fits in an int64. NMS takes at most 2**31 - 1 boxes. Anything beyond is a ValueError
naming the op and the argument, the same on every backend. Large but consistent values stay
valid (a stride of 2**40 with one output position, as PyTorch allows).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from typing import NamedTuple

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Bound on integer arguments and derived extents (see "Ranges" above).
SIZE_LIMIT = 2**62
# NMS ranks boxes with 32-bit positions on some backends.
MAX_BOXES = 2**31 - 1


class ConvGeom(NamedTuple):
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    Ho: int
    Wo: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    groups: int

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def output_shape(self):
        return (self.N, self.K, self.Ho, self.Wo)

    @property
    def flops(self):
        """Multiply-adds x 2 of the forward pass (each backward pass costs the same)."""
        return 2 * self.N * self.K * self.Ho * self.Wo * (self.C // self.groups) * self.R * self.S


class PoolGeom(NamedTuple):
    N: int
    C: int
    H: int
    W: int
    Ho: int
    Wo: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self):
        return (self.N, self.C, self.Ho, self.Wo)


@dataclasses.dataclass(frozen=True)
class ShapeDtype:
    """An abstract array: its shape and dtype, without data. Every rule of this module takes
    one wherever it takes an array; ``ShapeDtype(x.shape, x.dtype)`` gives the same geometry
    and the same errors as ``x`` itself."""

    shape: tuple
    dtype: np.dtype

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(operator.index(n) for n in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)


# --------------------------------------------------------------------------------------------
# Small helpers


def shape_of(a) -> str:
    return "None" if a is None else str(tuple(a.shape))


def array_kind(a) -> str:
    """'numpy' or 'cupy'; TypeError for anything that is not an array."""
    if isinstance(a, np.ndarray):
        return "numpy"
    if type(a).__module__.split(".")[0] == "cupy" and hasattr(a, "__cuda_array_interface__"):
        return "cupy"
    raise TypeError(f"expected a numpy.ndarray or cupy.ndarray, got {type(a).__name__}")


def check_array(op, name, a, ndim=None, *, allow_none=False):
    """`a` must be a NumPy or CuPy array (or a ShapeDtype) of `ndim` dimensions."""
    if a is None:
        if allow_none:
            return
        raise TypeError(f"{op}: {name} must be an array, got None")
    if not isinstance(a, ShapeDtype):
        try:
            array_kind(a)
        except TypeError:
            raise TypeError(
                f"{op}: {name} must be a numpy.ndarray or cupy.ndarray, got {type(a).__name__}"
            ) from None
    if ndim is not None and a.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        want = " or ".join(f"{d}-D" for d in (ndim if isinstance(ndim, tuple) else (ndim,)))
        raise ValueError(f"{op}: {name} must be {want}, got shape {shape_of(a)}")


def check_float_dtypes(op, **arrays):
    """All given (non-None) arrays must share one dtype, float32 or float64."""
    dtype = None
    for name, a in arrays.items():
        if a is None:
            continue
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
        if dtype is None:
            dtype, first = a.dtype, name
        elif a.dtype != dtype:
            raise TypeError(
                f"{op}: dtypes differ: {first} is {dtype} but {name} is {a.dtype} "
                "(convert explicitly; pyconv does not mix precisions)"
            )
    return dtype


def check_index_dtype(op, name, a):
    if a.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} must be an integer array, got {a.dtype}")


def _int(op, name, v):
    """An int argument: Python or NumPy integers, not bools (nor floats, even integral ones),
    in (-2**62, 2**62)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if abs(v) >= SIZE_LIMIT:
        raise ValueError(f"{op}: {name} must lie in (-2**62, 2**62), got {v}")
    return v


def check_extent(op, what, value, context=""):
    """A derived size or offset must be below SIZE_LIMIT (see "Ranges" above)."""
    if value >= SIZE_LIMIT:
        raise ValueError(
            f"{op}: {what} would be {value}, beyond the supported 2**62{context}"
        )


def check_allocatable(op, what, shape, dtype):
    """An output of this shape and dtype must be addressable: fewer than 2**62 bytes."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes >= SIZE_LIMIT:
        raise ValueError(
            f"{op}: the {what} of shape {tuple(shape)} and dtype {np.dtype(dtype)} would take "
            f"{nbytes} bytes, beyond the supported 2**62"
        )


def ntuple(op, name, value, n, *, minimum):
    """An int or a length-n sequence of ints -> n-tuple of ints >= minimum."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"{op}: {name} must be an int or a {n}-tuple, got {value!r}")
        out = tuple(_int(op, name, v) for v in value)
    else:
        out = (_int(op, name, value),) * n
    if any(v < minimum for v in out):
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return out


def check_shape_tuple(op, name, shape, n):
    if not isinstance(shape, (tuple, list)) or len(shape) != n:
        raise ValueError(f"{op}: {name} must be a {n}-tuple of ints, got {shape!r}")
    out = tuple(_int(op, name, v) for v in shape)
    if any(v < 1 for v in out):
        raise ValueError(f"{op}: {name} must hold positive sizes, got {shape!r}")
    return out


def real(op, name, v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {v!r}")
    try:
        v = float(v)
    except OverflowError:
        raise ValueError(f"{op}: {name} is too large for a float") from None
    if math.isnan(v):
        raise TypeError(f"{op}: {name} must be a real number, got {v!r}")
    return v


def _check_window_extents(op, axes, context):
    """Per spatial axis (name, input size n, kernel k, stride s, padding p, dilation d, output
    size out): the extents that window index arithmetic reaches must fit (see "Ranges")."""
    for axis, n, k, s, p, d, out in axes:
        check_extent(op, f"the padded {axis} (input {n} + 2*padding {p})", n + 2 * p, context)
        span = d * (k - 1) + 1
        check_extent(op, f"the dilated kernel {axis} (dilation {d} * (kernel {k} - 1) + 1)",
                     span, context)
        check_extent(op, f"the reach of the windows along the {axis} ((output {out} - 1) * "
                         f"stride {s} + dilated kernel {span})", (out - 1) * s + span, context)


def _conv_extents(op, g, context):
    _check_window_extents(op, (("height", g.H, g.R, g.sh, g.ph, g.dh, g.Ho),
                               ("width", g.W, g.S, g.sw, g.pw, g.dw, g.Wo)), context)


# --------------------------------------------------------------------------------------------
# Convolution


def _conv_geom(op, x, w, b, stride, padding, dilation, groups, nd):
    """Checks a direct conv1d/conv2d call; returns its ConvGeom (conv1d as H = R = 1)."""
    check_array(op, "x", x, nd + 2)
    check_array(op, "w", w, nd + 2)
    check_array(op, "b", b, 1, allow_none=True)
    check_float_dtypes(op, x=x, w=w, b=b)
    groups = _int(op, "groups", groups)
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    N, C, *spatial = x.shape
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
    context = f" (x.shape={shape_of(x)}, w.shape={shape_of(w)})"
    _conv_extents(op, g, context)
    check_allocatable(op, "output", out_shape, x.dtype)
    return g


def conv2d(x, w, b, stride, padding, dilation, groups, op="conv2d"):
    return _conv_geom(op, x, w, b, stride, padding, dilation, groups, 2)


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


def conv_backward(grad_out, x, w, stride, padding, dilation, groups, needs, nd):
    op = f"conv{nd}d_backward"
    g = _conv_geom(op, x, w, None, stride, padding, dilation, groups, nd)
    out_shape = g.output_shape if nd == 2 else (g.N, g.K, g.Wo)
    _check_grad_out(op, grad_out, out_shape, x.dtype)
    return g, _check_needs(op, needs)


def conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation, op="conv_transpose2d"):
    """Checks a transpose convolution; returns the geometry of the direct conv it inverts."""
    check_array(op, "x", x, 4)
    check_array(op, "w", w, 4)
    check_array(op, "b", b, 1, allow_none=True)
    check_float_dtypes(op, x=x, w=w, b=b)
    groups = _int(op, "groups", groups)
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups}")
    N, Cin, Hin, Win = x.shape
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
    context = f" (x.shape={shape_of(x)}, w.shape={shape_of(w)})"
    for axis, n, s, out_size in (("height", Hin, stride[0], Hout), ("width", Win, stride[1], Wout)):
        check_extent(op, f"the output {axis} ((input {n} - 1) * stride {s} - 2*padding + "
                         "dilated kernel + output_padding)", out_size, context)
    if min(Hout, Wout) < 1:
        raise ValueError(
            f"{op}: the output would be empty ({Hout}x{Wout}): padding {pad} is too large{context}"
        )
    g = ConvGeom(N, Cout, Hout, Wout, Cin, R, S, Hin, Win, *stride, *pad, *dilation, groups)
    _conv_extents(op, g, context)
    check_allocatable(op, "output", g.input_shape, x.dtype)
    return g


def conv_transpose2d_backward(grad_out, x, w, stride, padding, output_padding, groups, dilation, needs):
    op = "conv_transpose2d_backward"
    g = conv_transpose2d(x, w, None, stride, padding, output_padding, groups, dilation, op=op)
    _check_grad_out(op, grad_out, g.input_shape, x.dtype)
    return g, _check_needs(op, needs)


# --------------------------------------------------------------------------------------------
# Pooling


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
    N, C, H, W = x_shape
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
    check_array(op, "x", x, 4)
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
    return check_shape_tuple(op, "input_shape", input_shape, 4)


def _check_indices(op, name, idx, shape, plane):
    check_array(op, name, idx, 4)
    check_index_dtype(op, name, idx)
    if tuple(idx.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {shape_of(idx)}")
    has_values = not isinstance(idx, ShapeDtype) and idx.size
    if has_values and (int(idx.min()) < 0 or int(idx.max()) >= plane):
        raise ValueError(
            f"{op}: {name} must lie in [0, {plane}) (flat offsets into each output plane), "
            f"got values in [{int(idx.min())}, {int(idx.max())}]"
        )


def max_pool2d_backward(grad_out, indices, input_shape):
    op = "max_pool2d_backward"
    N, C, H, W = _input_shape(op, input_shape)
    check_array(op, "grad_out", grad_out, 4)
    check_float_dtypes(op, grad_out=grad_out)
    if tuple(grad_out.shape[:2]) != (N, C):
        raise ValueError(
            f"{op}: grad_out {shape_of(grad_out)} and input_shape {(N, C, H, W)} differ in "
            "batch or channels"
        )
    check_allocatable(op, "output", (N, C, H, W), grad_out.dtype)
    _check_indices(op, "indices", indices, grad_out.shape, H * W)
    return (N, C, H, W)


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding, ceil_mode, divisor_override):
    op = "avg_pool2d_backward"
    shape = _input_shape(op, input_shape)
    g = pool_geom(op, shape, kernel_size, stride, padding, 1, ceil_mode)
    check_array(op, "grad_out", grad_out, 4)
    check_float_dtypes(op, grad_out=grad_out)
    if tuple(grad_out.shape) != g.output_shape:
        raise ValueError(
            f"{op}: grad_out must have the pooled shape {g.output_shape}, got {shape_of(grad_out)}"
        )
    check_allocatable(op, "output", shape, grad_out.dtype)
    return g, _divisor(op, g, divisor_override)


def max_unpool2d(x, indices, kernel_size, stride, padding, output_size):
    op = "max_unpool2d"
    check_array(op, "x", x, 4)
    check_float_dtypes(op, x=x)
    N, C, Hi, Wi = x.shape
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


# --------------------------------------------------------------------------------------------
# LSTM


def _lstm_weights(op, x, h, c, w_ih, w_hh, b_ih, b_hh, state_names=("h", "c")):
    h_name, c_name = state_names
    check_array(op, h_name, h, 2)
    check_array(op, c_name, c, 2)
    check_array(op, "w_ih", w_ih, 2)
    check_array(op, "w_hh", w_hh, 2)
    check_array(op, "b_ih", b_ih, 1, allow_none=True)
    check_array(op, "b_hh", b_hh, 1, allow_none=True)
    given = {"x": x, h_name: h, c_name: c, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
    check_float_dtypes(op, **given)
    del given["x"]
    B, I = x.shape[-2:]
    Hd = h.shape[1]
    if h.shape[0] == c.shape[0] == B and tuple(h.shape) != tuple(c.shape):
        # Either state may be the wrong one: name both rather than blame c.
        raise ValueError(
            f"{op}: {h_name} and {c_name} disagree: {h_name} has shape {shape_of(h)} and "
            f"{c_name} has shape {shape_of(c)} ({c_name} must have shape equal to {h_name}'s, "
            "(batch, hidden size))"
        )
    expected = {
        h_name: (B, Hd), c_name: (B, Hd), "w_ih": (4 * Hd, I), "w_hh": (4 * Hd, Hd),
        "b_ih": (4 * Hd,), "b_hh": (4 * Hd,),
    }
    for name, a in given.items():
        if a is not None and tuple(a.shape) != expected[name]:
            raise ValueError(
                f"{op}: {name} must have shape {expected[name]} for x {shape_of(x)} and hidden "
                f"size {Hd}, got {shape_of(a)}"
            )
    if min(B, I, Hd) < 1:
        raise ValueError(f"{op}: empty input (x.shape={shape_of(x)}, {h_name}.shape={shape_of(h)})")
    return B, I, Hd


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, op="lstm_cell"):
    check_array(op, "x", x, 2)
    return _lstm_weights(op, x, h, c, w_ih, w_hh, b_ih, b_hh)


def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, op="lstm"):
    check_array(op, "x", x, 3)
    if x.shape[0] < 1:
        raise ValueError(f"{op}: x must hold at least one time step, got shape {shape_of(x)}")
    return (x.shape[0],) + _lstm_weights(op, x, h0, c0, w_ih, w_hh, b_ih, b_hh, ("h0", "c0"))


def _optional_grads(op, dtype, **grads_and_shapes):
    for name, (g, shape) in grads_and_shapes.items():
        if g is None:
            continue
        check_array(op, name, g)
        if tuple(g.shape) != tuple(shape):
            raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {shape_of(g)}")
        if g.dtype != dtype:
            raise TypeError(f"{op}: {name} is {g.dtype} but the inputs are {dtype}")


def lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh):
    op = "lstm_cell_backward"
    B, I, Hd = lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, op=op)
    _optional_grads(op, x.dtype, grad_h=(grad_h, (B, Hd)), grad_c=(grad_c, (B, Hd)))
    return B, I, Hd


def lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    op = "lstm_backward"
    T, B, I, Hd = lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, op=op)
    _optional_grads(
        op, x.dtype,
        grad_out=(grad_out, (T, B, Hd)), grad_hT=(grad_hT, (B, Hd)), grad_cT=(grad_cT, (B, Hd)),
    )
    return T, B, I, Hd


# --------------------------------------------------------------------------------------------
# Boxes


def _boxes(op, name, boxes):
    check_array(op, name, boxes, 2)
    if boxes.shape[1] != 4:
        raise ValueError(f"{op}: {name} must have shape (N, 4) as (x1, y1, x2, y2), got {shape_of(boxes)}")


def box_iou(boxes1, boxes2):
    op = "box_iou"
    _boxes(op, "boxes1", boxes1)
    _boxes(op, "boxes2", boxes2)
    dtype = check_float_dtypes(op, boxes1=boxes1, boxes2=boxes2)
    check_allocatable(op, "output", (boxes1.shape[0], boxes2.shape[0]), dtype)


def nms(boxes, scores, iou_threshold, op="nms"):
    _boxes(op, "boxes", boxes)
    check_array(op, "scores", scores, 1)
    check_float_dtypes(op, boxes=boxes, scores=scores)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: scores must have one entry per box: boxes {shape_of(boxes)}, scores {shape_of(scores)}"
        )
    if boxes.shape[0] > MAX_BOXES:
        raise ValueError(f"{op}: at most 2**31 - 1 boxes are supported, got {boxes.shape[0]}")
    return real(op, "iou_threshold", iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold):
    op = "batched_nms"
    thr = nms(boxes, scores, iou_threshold, op=op)
    check_array(op, "idxs", idxs, 1)
    check_index_dtype(op, "idxs", idxs)
    if idxs.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: idxs must have one category per box: boxes {shape_of(boxes)}, idxs {shape_of(idxs)}"
        )
    return thr


# --------------------------------------------------------------------------------------------
# Elementwise activations


def leaky_relu(x, negative_slope, op="leaky_relu"):
    check_array(op, "x", x)
    check_float_dtypes(op, x=x)
    return real(op, "negative_slope", negative_slope)


def leaky_relu_backward(grad_out, x, negative_slope):
    op = "leaky_relu_backward"
    slope = leaky_relu(x, negative_slope, op=op)
    _check_grad_out(op, grad_out, x.shape, x.dtype)
    return slope
