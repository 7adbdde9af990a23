"""The Tensor: an array (NumPy on the CPU, CuPy on the GPU) with an optional gradient, its
operators, and the switch that turns graph recording off (``no_grad``).

A Tensor produced by a :class:`~pyconv.autograd.functions.Function` remembers that Function
(its creator); ``Tensor.backward()`` hands the graph so formed to the engine
(:mod:`pyconv.autograd.engine`). The operators (``+``, ``@``, ``.sum()``, indexing, ...) call
the primitive Functions of :mod:`pyconv.autograd.functions`.

Those Functions return Tensors, so that module imports this one; this module reaches it
through ``_functions()``, which imports it on first use rather than when this module loads.
"""
from __future__ import annotations

import numpy as np

from .. import _spec
from .engine import RemovableHandle, run_backward

__all__ = ["Tensor", "no_grad", "enable_grad", "is_grad_enabled", "array_module"]

_grad_enabled = True


class no_grad:
    """``with pyconv.no_grad(): ...`` records no graph (inference, parameter updates)."""

    _enable = False

    def __enter__(self):
        global _grad_enabled
        self._previous = _grad_enabled
        _grad_enabled = self._enable

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._previous


class enable_grad(no_grad):
    """Turns graph recording back on inside a ``no_grad`` block."""

    _enable = True


def is_grad_enabled() -> bool:
    return _grad_enabled


def array_module(a):
    """numpy for NumPy arrays (and scalars), cupy for CuPy arrays: write array code once as
    ``xp = array_module(x); xp.exp(x)`` and it runs on either device."""
    if isinstance(a, np.ndarray) or not hasattr(a, "__cuda_array_interface__"):
        return np
    import cupy

    return cupy


def _is_array(a) -> bool:
    return isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__")


def _move(a, device):
    """The array `a` on "cpu" (NumPy) or "cuda" (CuPy), copied only if it is elsewhere."""
    if device == "cpu":
        return a if isinstance(a, np.ndarray) else a.get()
    import cupy

    return cupy.asarray(a)


def _axes(axis, ndim):
    """`axis` (an int or a sequence of ints, possibly negative) as a tuple of non-negative axes."""
    return tuple(a % ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))


def _binary(fn_cls, a, b):
    """Runs a binary Function after checking the operands do not mix float precisions."""
    da, db = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if da is not None and db is not None and da != db and da.kind == "f" and db.kind == "f":
        raise TypeError(
            f"{fn_cls.__name__.lower()}: operands have dtypes {da} and {db} "
            "(convert explicitly; pyconv does not mix precisions)"
        )
    return fn_cls()(a, b)


_functions_module = None


def _functions():
    """The primitive Functions behind the operators (:mod:`pyconv.autograd.functions`). They
    return Tensors, so that module imports this one; it is imported here on first use, once."""
    global _functions_module
    if _functions_module is None:
        from . import functions

        _functions_module = functions
    return _functions_module


class Tensor:
    """An array with an optional gradient. ``data`` is the array (NumPy or CuPy), ``grad``
    the accumulated gradient (same shape) or None. Made from another library's array that
    speaks DLPack (a detached PyTorch tensor, a JAX array), ``data`` shares its memory."""

    __slots__ = ("data", "grad", "requires_grad", "_creator", "_index", "_post_accumulate_grad_hooks",
                 "__weakref__")
    __array_ufunc__ = None  # ndarray <op> Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        elif _spec.is_foreign_array(data):  # a PyTorch tensor, a JAX array, ...: no copy
            data = _spec.from_dlpack("Tensor", "data", data)
        elif not _is_array(data):
            data = np.asarray(data)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, got {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._creator = None  # the Function that produced this tensor (None for a leaf)
        self._index = 0  # which output of _creator this is
        self._post_accumulate_grad_hooks = None  # {key: hook}, see register_post_accumulate_grad_hook

    @classmethod
    def _from_function(cls, data, creator, index):
        if not _is_array(data):  # NumPy reductions return scalars; keep .data an array
            data = np.asarray(data)
        t = object.__new__(cls)
        t.data, t.grad, t._creator, t._index = data, None, creator, index
        t._post_accumulate_grad_hooks = None
        t.requires_grad = creator is not None
        return t

    # -- array-like properties
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._creator is None)

    @property
    def device(self) -> str:
        return "cpu" if isinstance(self.data, np.ndarray) else "cuda"

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def item(self):
        return self.data.item()

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU if needed)."""
        return self.data if isinstance(self.data, np.ndarray) else self.data.get()

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, flag=True) -> "Tensor":
        if flag and self.dtype.kind != "f":
            raise TypeError(f"requires_grad_: only floating-point tensors can require gradients, got {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def to(self, device: str) -> "Tensor":
        """Moves to "cpu" (NumPy) or "cuda" (CuPy); differentiable."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"Tensor.to: device must be 'cpu' or 'cuda', got {device!r}")
        if device == self.device:
            return self
        if self._creator is None:
            return Tensor(_move(self.data, device), requires_grad=self.requires_grad)
        return _functions().ToDevice(device)(self)

    def astype(self, dtype) -> "Tensor":
        """A copy in another dtype (differentiable between float types; an integer or boolean
        copy is outside the graph)."""
        if np.dtype(dtype).kind != "f":
            return Tensor(self.data.astype(dtype))
        return _functions().AsType(dtype)(self)

    # -- gradients
    def backward(self, grad=None, retain_graph=False):
        """Accumulates d(self)/d(leaf) * grad into every leaf that requires a gradient. Without
        `grad`, self must hold one element (a loss) and the seed gradient is 1. The pass frees
        what the graph saved for it as it goes; `retain_graph` keeps it, for another backward
        through the same graph."""
        if not self.requires_grad:
            raise RuntimeError(
                "backward: this tensor does not require a gradient (no input of the computation "
                "had requires_grad=True, or it was computed under no_grad())"
            )
        if grad is None:
            if self.size != 1:
                raise ValueError(
                    f"backward: grad can be omitted only for a one-element tensor, got shape {self.shape}"
                )
            grad = array_module(self.data).ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward: grad has shape {tuple(grad.shape)}, expected {self.shape}")
        run_backward(self, grad, retain_graph)

    def register_post_accumulate_grad_hook(self, hook) -> "RemovableHandle":
        """Calls ``hook(self)`` during every backward pass as soon as this leaf's ``.grad`` is
        final for that pass (every Function that uses the tensor has delivered its gradient),
        while the rest of the backward pass is still to run; data-parallel training starts
        averaging gradients there. Returns a handle whose ``remove()`` unregisters the hook."""
        if self._creator is not None:
            raise RuntimeError("register_post_accumulate_grad_hook: only a leaf tensor (one made by "
                               "the user, such as a parameter) accumulates a gradient")
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook: hook must be callable, got {type(hook).__name__}")
        if self._post_accumulate_grad_hooks is None:
            self._post_accumulate_grad_hooks = {}
        return RemovableHandle(self._post_accumulate_grad_hooks, hook)

    # -- arithmetic (broadcasting as NumPy; gradients summed back to each operand's shape)
    def __add__(self, other):
        return _binary(_functions().Add, self, other)

    def __radd__(self, other):
        return _binary(_functions().Add, other, self)

    def __sub__(self, other):
        return _binary(_functions().Sub, self, other)

    def __rsub__(self, other):
        return _binary(_functions().Sub, other, self)

    def __mul__(self, other):
        return _binary(_functions().Mul, self, other)

    def __rmul__(self, other):
        return _binary(_functions().Mul, other, self)

    def __truediv__(self, other):
        return _binary(_functions().Div, self, other)

    def __rtruediv__(self, other):
        return _binary(_functions().Div, other, self)

    def __matmul__(self, other):
        return _binary(_functions().MatMul, self, other)

    def __rmatmul__(self, other):
        return _binary(_functions().MatMul, other, self)

    def __neg__(self):
        return _functions().Neg()(self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor) or _is_array(exponent):
            raise TypeError("Tensor ** : only a Python number exponent is supported")
        return _functions().Pow(exponent)(self)

    # -- comparisons: boolean tensors outside the graph (Tensors stay hashable by identity)
    __hash__ = object.__hash__

    def _compare(self, other, op):
        return Tensor(op(self.data, other.data if isinstance(other, Tensor) else other))

    def __eq__(self, other):
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    # -- elementwise functions
    def exp(self):
        return _functions().Exp()(self)

    def log(self):
        return _functions().Log()(self)

    def sqrt(self):
        return _functions().Pow(0.5)(self)

    def abs(self):
        return _functions().Abs()(self)

    def clip(self, min=None, max=None):
        return _functions().Clip(min, max)(self)

    # -- reductions
    def sum(self, axis=None, keepdims=False):
        return _functions().Sum(axis, keepdims)(self)

    def mean(self, axis=None, keepdims=False):
        n = self.size if axis is None else int(np.prod([self.shape[a] for a in _axes(axis, self.ndim)]))
        return _functions().Sum(axis, keepdims)(self) * (1.0 / n)

    def var(self, axis=None, keepdims=False):
        """Biased variance (divides by n), as used by normalisation layers."""
        centred = self - self.mean(axis, keepdims=True)
        return (centred * centred).mean(axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return _functions().Max(axis, keepdims)(self)

    def argmax(self, axis=None) -> "Tensor":
        return Tensor(self.data.argmax(axis=axis))

    # -- shape
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _functions().Reshape(shape)(self)

    def flatten(self, start_dim=0):
        return _functions().Reshape(self.shape[:start_dim] + (-1,))(self)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _functions().Transpose(axes or None)(self)

    @property
    def T(self):
        return _functions().Transpose(None)(self)

    def __getitem__(self, index):
        return _functions().GetItem(index)(self)
