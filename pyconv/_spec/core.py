"""The vocabulary every spec shares: geometries, abstract values, argument and range checks."""
from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from typing import NamedTuple

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT_DTYPE_SET = frozenset(FLOAT_DTYPES)

# Bound on integer arguments and derived extents (see "Ranges" above).
SIZE_LIMIT = 2**62
# Fewer elements than this take fewer than SIZE_LIMIT bytes at any dtype's size (16 at most).
_SURELY_ALLOCATABLE = SIZE_LIMIT // 16
# NMS ranks boxes with 32-bit positions on some backends.
MAX_BOXES = 2**31 - 1


# The convolution algorithms a caller may ask for (ConvGeom.algorithm is an index into this; the
# C++ kernels' ConvAlgorithm has the same order). "auto" lets the backend pick by shape;
# "winograd" is F(4x4, 3x3) (3x3 kernels, stride 1) or F(4x4, 2x2) over stride phases (4x4
# kernels, stride 2); dilation 1, groups 1.
CONV_ALGORITHMS = ("auto", "gemm", "winograd", "direct")


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
    # The algorithm asked for, as its index in CONV_ALGORITHMS (backends may ignore it).
    algorithm: int = 0

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

    @property
    def size(self) -> int:
        return math.prod(self.shape)


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


# DLPack device types (DLDeviceType in dlpack.h) whose memory pyconv takes.
_DLPACK_CPU, _DLPACK_CUDA = 1, 2


def is_foreign_array(a) -> bool:
    """Whether `a` is another library's array that speaks DLPack (a PyTorch tensor, a JAX
    array, ...): neither a NumPy nor a CuPy array, but with ``__dlpack__``."""
    if isinstance(a, (np.ndarray, ShapeDtype)) or not hasattr(a, "__dlpack__"):
        return False
    return type(a).__module__.split(".")[0] != "cupy"


def from_dlpack(op, name, a):
    """`a` as a NumPy array (host memory) or CuPy array (CUDA memory) sharing its memory, where
    it is a foreign array (see is_foreign_array); anything else is returned as it is, for the
    checks that follow to judge. A PyTorch tensor that requires grad cannot be exported (the
    copy would leave the graph): TypeError telling to detach it."""
    if not is_foreign_array(a):
        return a
    if getattr(a, "requires_grad", False):
        raise TypeError(f"{op}: {name} is a tensor that requires grad, which DLPack cannot export: "
                        f"pass {name}.detach()")
    try:
        device = a.__dlpack_device__()[0]
        if device == _DLPACK_CPU:
            return np.from_dlpack(a)
        if device == _DLPACK_CUDA:
            try:
                import cupy
            except ImportError:
                raise TypeError(f"{op}: {name} is in CUDA memory; taking it needs CuPy, which is "
                                "not installed") from None
            return cupy.from_dlpack(a)
    except (BufferError, RuntimeError, ValueError) as e:
        raise TypeError(f"{op}: {name} ({type(a).__name__}) could not be taken through DLPack: {e}") from e
    raise TypeError(f"{op}: {name} is on DLPack device type {device}; pyconv takes host memory "
                    f"({_DLPACK_CPU}) and CUDA memory ({_DLPACK_CUDA})")


def check_array(op, name, a, ndim=None, *, allow_none=False):
    """`a` must be a NumPy or CuPy array (or a ShapeDtype) of `ndim` dimensions."""
    if a is None:
        if allow_none:
            return
        raise TypeError(f"{op}: {name} must be an array, got None")
    if type(a) is not np.ndarray and not isinstance(a, ShapeDtype):
        try:
            array_kind(a)
        except TypeError:
            raise TypeError(
                f"{op}: {name} must be a numpy.ndarray or cupy.ndarray, got {type(a).__name__}"
            ) from None
    if ndim is not None and a.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        want = " or ".join(f"{d}-D" for d in (ndim if isinstance(ndim, tuple) else (ndim,)))
        raise ValueError(f"{op}: {name} must be {want}, got shape {shape_of(a)}")


def check_batch_optional(op, name, a, layout, batch_axis=0):
    """`a` must be an array laid out as `layout` (one letter per axis, e.g. "NCHW"), or as
    `layout` without its batch axis (PyTorch's unbatched input: one sample). Returns a's shape
    with the batch axis, of size 1 where it was left out, and whether it was."""
    check_array(op, name, a)
    batched = tuple(layout)
    unbatched = batched[:batch_axis] + batched[batch_axis + 1:]
    if a.ndim == len(batched):
        return tuple(a.shape), False
    if a.ndim == len(unbatched):
        shape = tuple(a.shape)
        return shape[:batch_axis] + (1,) + shape[batch_axis:], True

    def spelled(axes):
        return "(" + ", ".join(axes) + ("," if len(axes) == 1 else "") + ")"

    raise ValueError(
        f"{op}: {name} must be {len(unbatched)}-D {spelled(unbatched)} or "
        f"{len(batched)}-D {spelled(batched)}, got shape {shape_of(a)}"
    )


def without_batch(shape, unbatched, batch_axis=0):
    """`shape` less its batch axis where the call was unbatched (see check_batch_optional)."""
    shape = tuple(shape)
    return shape[:batch_axis] + shape[batch_axis + 1:] if unbatched else shape


def check_float_dtypes(op, **arrays):
    """All given (non-None) arrays must share one dtype, float32 or float64."""
    dtype = None
    for name, a in arrays.items():
        if a is None:
            continue
        d = a.dtype
        if d is dtype:  # the common case: the dtype of the first, the same object
            continue
        if d not in _FLOAT_DTYPE_SET:
            raise TypeError(f"{op}: {name} must be float32 or float64, got {d}")
        if dtype is None:
            dtype, first = d, name
        elif d != dtype:
            raise TypeError(
                f"{op}: dtypes differ: {first} is {dtype} but {name} is {a.dtype} "
                "(convert explicitly; pyconv does not mix precisions)"
            )
    return dtype


def check_index_dtype(op, name, a):
    if a.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} must be an integer array, got {a.dtype}")


def indices_below(idx, plane):
    """Whether every index lies in [0, plane), in one pass over them rather than two (min and
    max; the pass costs as much as the scatter it guards): read as unsigned, a negative index
    lies above every index its type can hold, hence above plane unless plane is larger."""
    if idx.dtype.kind == "i" and plane > np.iinfo(idx.dtype).max:
        return int(idx.min()) >= 0
    return int(idx.view(f"u{idx.dtype.itemsize}").max()) < plane


def _int(op, name, v):
    """An int argument: Python or NumPy integers, not bools (nor floats, even integral ones),
    in (-2**62, 2**62)."""
    if type(v) is int:  # the common case, without the abstract-class checks below
        if -SIZE_LIMIT < v < SIZE_LIMIT:
            return v
    elif isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
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
    elements = math.prod(shape)
    if elements < _SURELY_ALLOCATABLE:  # the common case, without making a dtype object
        return
    nbytes = elements * np.dtype(dtype).itemsize
    if nbytes >= SIZE_LIMIT:
        raise ValueError(
            f"{op}: the {what} of shape {tuple(shape)} and dtype {np.dtype(dtype)} would take "
            f"{nbytes} bytes, beyond the supported 2**62"
        )


def ntuple(op, name, value, n, *, minimum):
    """An int or a length-n sequence of ints -> n-tuple of ints >= minimum."""
    if type(value) is int and minimum <= value < SIZE_LIMIT:  # the common case, checked at once
        return (value,) * n
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
    """A tuple of positive ints of length n (or of any length in the tuple n)."""
    lengths = n if isinstance(n, tuple) else (n,)
    if not isinstance(shape, (tuple, list)) or len(shape) not in lengths:
        want = " or ".join(f"{k}-tuple" for k in lengths)
        raise ValueError(f"{op}: {name} must be a {want} of ints, got {shape!r}")
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
    size out): the extents that window index arithmetic reaches must fit (see "Ranges").
    `context`: a string, or a function returning one (built only for an error message)."""
    if all(max(n + 2 * p, d * (k - 1) + 1, (out - 1) * s + d * (k - 1) + 1) < SIZE_LIMIT
           for _, n, k, s, p, d, out in axes):
        return  # every extent fits
    if callable(context):
        context = context()
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
