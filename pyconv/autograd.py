"""A define-by-run autograd in the style of Chainer.

A :class:`Function` computes its output from plain arrays (NumPy on the CPU, CuPy on the GPU)
in ``forward`` and maps output gradients back to input gradients in ``backward``, again on
plain arrays. Calling a Function on :class:`Tensor` s runs ``forward`` and, when some input
requires a gradient, links the outputs to the Function: that link is the whole graph.
``Tensor.backward()`` orders the Functions reachable from the loss topologically and calls
each ``backward`` once, after every consumer of its outputs has delivered its gradient.

    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = (x * x).sum()
    y.backward()            # x.grad == 2 * x.data

Gradients accumulate in the leaves' ``.grad`` (set it to None to reset). Heavy computations
(convolutions, pooling, LSTM) live in :mod:`pyconv.nn.functional` and call :mod:`pyconv.ops`;
this module holds the Tensor and the array-level primitives (arithmetic with broadcasting,
``@``, reductions, reshaping, indexing, concatenation).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "Tensor", "Function", "no_grad", "enable_grad", "is_grad_enabled", "array_module",
    "concatenate", "stack", "gradcheck", "unbroadcast", "scatter_add",
]

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


def unbroadcast(grad, shape):
    """Sums `grad` over the axes that broadcasting added or stretched, back to `shape`."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Tensor


class Tensor:
    """An array with an optional gradient. ``data`` is the array (NumPy or CuPy), ``grad``
    the accumulated gradient (same shape) or None."""

    __slots__ = ("data", "grad", "requires_grad", "_creator", "_index", "__weakref__")
    __array_ufunc__ = None  # ndarray <op> Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        elif not _is_array(data):
            data = np.asarray(data)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, got {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._creator = None  # the Function that produced this tensor (None for a leaf)
        self._index = 0  # which output of _creator this is

    @classmethod
    def _from_function(cls, data, creator, index):
        if not _is_array(data):  # NumPy reductions return scalars; keep .data an array
            data = np.asarray(data)
        t = object.__new__(cls)
        t.data, t.grad, t._creator, t._index = data, None, creator, index
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
        return _ToDevice(device)(self)

    def astype(self, dtype) -> "Tensor":
        """A copy in another dtype (differentiable between float types; an integer or boolean
        copy is outside the graph)."""
        if np.dtype(dtype).kind != "f":
            return Tensor(self.data.astype(dtype))
        return _AsType(dtype)(self)

    # -- gradients
    def backward(self, grad=None):
        """Accumulates d(self)/d(leaf) * grad into every leaf that requires a gradient. Without
        `grad`, self must hold one element (a loss) and the seed gradient is 1."""
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
        _run_backward(self, grad)

    # -- arithmetic (broadcasting as NumPy; gradients summed back to each operand's shape)
    def __add__(self, other):
        return _binary(Add, self, other)

    def __radd__(self, other):
        return _binary(Add, other, self)

    def __sub__(self, other):
        return _binary(Sub, self, other)

    def __rsub__(self, other):
        return _binary(Sub, other, self)

    def __mul__(self, other):
        return _binary(Mul, self, other)

    def __rmul__(self, other):
        return _binary(Mul, other, self)

    def __truediv__(self, other):
        return _binary(Div, self, other)

    def __rtruediv__(self, other):
        return _binary(Div, other, self)

    def __matmul__(self, other):
        return _binary(MatMul, self, other)

    def __rmatmul__(self, other):
        return _binary(MatMul, other, self)

    def __neg__(self):
        return Neg()(self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor) or _is_array(exponent):
            raise TypeError("Tensor ** : only a Python number exponent is supported")
        return Pow(exponent)(self)

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

    def exp(self):
        return Exp()(self)

    def log(self):
        return Log()(self)

    def sqrt(self):
        return Pow(0.5)(self)

    def abs(self):
        return Abs()(self)

    def clip(self, min=None, max=None):
        return Clip(min, max)(self)

    # -- reductions
    def sum(self, axis=None, keepdims=False):
        return Sum(axis, keepdims)(self)

    def mean(self, axis=None, keepdims=False):
        n = self.size if axis is None else int(np.prod([self.shape[a] for a in _axes(axis, self.ndim)]))
        return Sum(axis, keepdims)(self) * (1.0 / n)

    def var(self, axis=None, keepdims=False):
        """Biased variance (divides by n), as used by normalisation layers."""
        centred = self - self.mean(axis, keepdims=True)
        return (centred * centred).mean(axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return Max(axis, keepdims)(self)

    def argmax(self, axis=None) -> "Tensor":
        return Tensor(self.data.argmax(axis=axis))

    # -- shape
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape(shape)(self)

    def flatten(self, start_dim=0):
        return Reshape(self.shape[:start_dim] + (-1,))(self)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return Transpose(axes or None)(self)

    @property
    def T(self):
        return Transpose(None)(self)

    def __getitem__(self, index):
        return GetItem(index)(self)


def _axes(axis, ndim):
    return tuple(a % ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))


def _move(a, device):
    if device == "cpu":
        return a if isinstance(a, np.ndarray) else a.get()
    import cupy

    return cupy.asarray(a)


def _binary(fn_cls, a, b):
    """Runs a binary Function after checking the operands do not mix float precisions."""
    da, db = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if da is not None and db is not None and da != db and da.kind == "f" and db.kind == "f":
        raise TypeError(
            f"{fn_cls.__name__.lower()}: operands have dtypes {da} and {db} "
            "(convert explicitly; pyconv does not mix precisions)"
        )
    return fn_cls()(a, b)


# ---------------------------------------------------------------------------------------------
# Function and the backward pass


class Function:
    """One differentiable operation. Subclasses implement

    ``forward(self, *arrays)`` -> an array, or a tuple of arrays for several outputs;
    ``backward(self, *grad_outputs)`` -> one gradient (or None) per input, as a tuple (a
    single array is accepted for one input).

    Inputs that are not Tensors (scalars, index arrays, None for an absent bias) reach
    ``forward`` unchanged and get no gradient. ``self.needs_input_grad`` (a tuple of bools)
    is set before ``forward`` runs, so it can skip saving what backward will not need. With
    several outputs, a grad_output is None where that output received no gradient.
    """

    inputs = ()
    needs_input_grad = ()

    def __call__(self, *inputs):
        needs = tuple(isinstance(t, Tensor) and t.requires_grad for t in inputs) if _grad_enabled else ()
        record = True in needs
        self.needs_input_grad = needs
        out = self.forward(*[t.data if isinstance(t, Tensor) else t for t in inputs])
        creator = self if record else None
        if record:
            self.inputs = inputs
        if type(out) is tuple:
            if record:
                self._grad_outputs = [None] * len(out)
            return tuple(Tensor._from_function(o, creator, i) for i, o in enumerate(out))
        if record:
            self._grad_outputs = [None]
        return Tensor._from_function(out, creator, 0)

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, *grad_outputs):
        raise NotImplementedError(f"{type(self).__name__} has no backward")


def _topological_order(root_fn):
    """Functions reachable from root_fn, each after every Function that produced its inputs."""
    order, seen, stack = [], set(), [(root_fn, False)]
    while stack:
        fn, expanded = stack.pop()
        if expanded:
            order.append(fn)
            continue
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        stack.append((fn, True))
        for t in fn.inputs:
            if isinstance(t, Tensor) and t._creator is not None and id(t._creator) not in seen:
                stack.append((t._creator, False))
    return order


def _accumulate_into_leaf(t, g):
    if g.shape != t.data.shape:  # a Function's backward returned the wrong shape: a bug
        raise RuntimeError(f"gradient of shape {g.shape} for a tensor of shape {t.data.shape}")
    if g.dtype != t.data.dtype:
        g = g.astype(t.data.dtype)
    t.grad = g if t.grad is None else t.grad + g


def _run_backward(root, grad):
    if root._creator is None:
        _accumulate_into_leaf(root, grad)
        return
    root._creator._grad_outputs[root._index] = grad
    for fn in reversed(_topological_order(root._creator)):
        grad_outputs = fn._grad_outputs
        fn._grad_outputs = [None] * len(grad_outputs)  # ready for another backward pass
        grads = fn.backward(*grad_outputs)
        if type(grads) is not tuple:
            grads = (grads,)
        for t, g, need in zip(fn.inputs, grads, fn.needs_input_grad):
            if not need or g is None:
                continue
            if t._creator is None:
                _accumulate_into_leaf(t, g)
            else:
                slots, i = t._creator._grad_outputs, t._index
                slots[i] = g if slots[i] is None else slots[i] + g


# ---------------------------------------------------------------------------------------------
# Elementwise arithmetic


def _shape(a):
    return getattr(a, "shape", ())


class Add(Function):
    def forward(self, a, b):
        self.shapes = _shape(a), _shape(b)
        return a + b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = _shape(a), _shape(b)
        return a - b

    def backward(self, g):
        gb = -unbroadcast(g, self.shapes[1]) if self.needs_input_grad[1] else None
        return unbroadcast(g, self.shapes[0]), gb


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        na, nb = self.needs_input_grad
        ga = unbroadcast(g * self.b, _shape(self.a)) if na else None
        gb = unbroadcast(g * self.a, _shape(self.b)) if nb else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        na, nb = self.needs_input_grad
        ga = unbroadcast(g / self.b, _shape(self.a)) if na else None
        gb = unbroadcast(-g * self.a / (self.b * self.b), _shape(self.b)) if nb else None
        return ga, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Pow(Function):
    def __init__(self, exponent):
        self.exponent = exponent

    def forward(self, a):
        self.a = a
        return a ** self.exponent

    def backward(self, g):
        return g * self.exponent * self.a ** (self.exponent - 1)


class Exp(Function):
    def forward(self, a):
        self.y = array_module(a).exp(a)
        return self.y

    def backward(self, g):
        return g * self.y


class Log(Function):
    def forward(self, a):
        self.a = a
        return array_module(a).log(a)

    def backward(self, g):
        return g / self.a


class Abs(Function):
    def forward(self, a):
        self.a = a
        return abs(a)

    def backward(self, g):
        return g * array_module(self.a).sign(self.a)


class Clip(Function):
    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def forward(self, a):
        self.a = a
        return array_module(a).clip(a, self.lo, self.hi)

    def backward(self, g):
        inside = True
        if self.lo is not None:
            inside = self.a >= self.lo
        if self.hi is not None:
            inside = inside & (self.a <= self.hi)
        return g * inside


class MatMul(Function):
    """``a @ b`` with NumPy's rules: 1-D operands are promoted and the added axis dropped,
    leading (batch) axes broadcast."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        a, b = self.a, self.b
        # Promote 1-D operands (and the matching axis of g) so both products are matrix products.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        if a.ndim == 1:
            g = g[..., None, :] if b.ndim > 1 else g[..., None]
        if b.ndim == 1:
            g = g[..., None]
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(g @ b2.swapaxes(-1, -2), a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(a2.swapaxes(-1, -2) @ g, b2.shape).reshape(b.shape)
        return ga, gb


class _AsType(Function):
    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, a):
        self.source_dtype = a.dtype
        return a.astype(self.dtype)

    def backward(self, g):
        return g.astype(self.source_dtype)


class _ToDevice(Function):
    def __init__(self, device):
        self.device = device

    def forward(self, a):
        self.source = "cpu" if isinstance(a, np.ndarray) else "cuda"
        return _move(a, self.device)

    def backward(self, g):
        return _move(g, self.source)


# ---------------------------------------------------------------------------------------------
# Reductions


class Sum(Function):
    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.shape = a.shape
        return a.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, g):
        if self.axis is not None and not self.keepdims:
            g = array_module(g).expand_dims(g, _axes(self.axis, len(self.shape)))
        return array_module(g).broadcast_to(g, self.shape)


class Max(Function):
    """Maximum; where several elements tie for the maximum they share its gradient equally."""

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, a):
        self.a = a
        self.y = a.max(axis=self.axis, keepdims=True)
        if self.keepdims:
            return self.y
        return self.y.reshape(()) if self.axis is None else self.y.squeeze(_axes(self.axis, a.ndim))

    def backward(self, g):
        if not self.keepdims:
            g = g.reshape(self.y.shape)
        winners = self.a == self.y
        return winners * (g / winners.sum(axis=self.axis, keepdims=True))


# ---------------------------------------------------------------------------------------------
# Shape and indexing


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, a):
        self.source_shape = a.shape
        return a.reshape(self.shape)

    def backward(self, g):
        return g.reshape(self.source_shape)


class Transpose(Function):
    def __init__(self, axes):
        self.axes = axes

    def forward(self, a):
        if self.axes is not None:
            self.axes = tuple(ax % a.ndim for ax in self.axes)  # negative axes count from the end
        return a.transpose(self.axes)

    def backward(self, g):
        if self.axes is None:
            return g.transpose()
        return g.transpose(tuple(np.argsort(self.axes).tolist()))


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)


def _unwrap_index(index):
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index.data if isinstance(index, Tensor) else index


class GetItem(Function):
    def __init__(self, index):
        self.index = _unwrap_index(index)

    def forward(self, a):
        self.source_shape, self.dtype = a.shape, a.dtype
        return a[self.index]

    def backward(self, g):
        xp = array_module(g)
        grad = xp.zeros(self.source_shape, self.dtype)
        if _is_basic_index(self.index):
            grad[self.index] = g
        else:  # advanced indexing may repeat positions: their gradients add up
            scatter_add(grad, self.index, g)
        return grad


def scatter_add(target, index, values):
    """target[index] += values, adding repeated positions (np.add.at / cupyx.scatter_add)."""
    if isinstance(target, np.ndarray):
        np.add.at(target, index, values)
    else:
        import cupyx

        cupyx.scatter_add(target, index, values)


class Concatenate(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *arrays):
        self.sizes = [a.shape[self.axis] for a in arrays]
        return array_module(arrays[0]).concatenate(arrays, axis=self.axis)

    def backward(self, g):
        bounds = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(array_module(g).split(g, bounds, axis=self.axis))


class Stack(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *arrays):
        return array_module(arrays[0]).stack(arrays, axis=self.axis)

    def backward(self, g):
        return tuple(g.take(i, axis=self.axis) for i in range(g.shape[self.axis]))


def _check_same_dtype(op, tensors):
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"{op}: tensors have different dtypes {sorted(map(str, dtypes))}")


def concatenate(tensors, axis=0) -> Tensor:
    """Joins tensors along an existing axis (differentiable)."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concatenate: needs at least one tensor")
    _check_same_dtype("concatenate", tensors)
    return Concatenate(axis)(*tensors)


def stack(tensors, axis=0) -> Tensor:
    """Joins equally shaped tensors along a new axis (differentiable)."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"stack: all tensors must have the same shape, got {sorted(shapes)}")
    _check_same_dtype("stack", tensors)
    return Stack(axis)(*tensors)


# ---------------------------------------------------------------------------------------------
# Finite-difference gradient check


def gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Compares the autograd gradients of ``fn(*inputs)`` with central finite differences.

    `inputs` are Tensors (float64 recommended); those with requires_grad are checked. The
    scalar probed is ``sum(w * out)`` over every output with fixed random weights w, so every
    output element contributes. Raises AssertionError naming the input and the worst element;
    returns True otherwise. `fn` must be deterministic (reseed inside it for dropout).
    """
    rng = np.random.default_rng(seed)

    def outputs():
        out = fn(*inputs)
        return [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, Tensor)]

    outs = outputs()
    weights = [rng.standard_normal(o.shape) for o in outs]

    def probe():
        with no_grad():
            return sum(float((_move(o.data, "cpu") * w).sum()) for o, w in zip(outputs(), weights))

    for t in inputs:
        if isinstance(t, Tensor):
            t.grad = None
    total = None
    for o, w in zip(outs, weights):
        if o.requires_grad:
            term = (o * Tensor(array_module(o.data).asarray(w, dtype=o.dtype))).sum()
            total = term if total is None else total + term
    if total is None:
        raise ValueError("gradcheck: no output depends on an input that requires a gradient")
    total.backward()
    for k, t in enumerate(inputs):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        analytic = _move(t.grad, "cpu") if t.grad is not None else np.zeros(t.shape)
        numeric = np.zeros(t.shape)
        t.data = array_module(t.data).ascontiguousarray(t.data)
        flat = t.data.reshape(-1)  # a view: perturbing it perturbs t.data
        for i in range(flat.size):
            original = flat[i].item()
            flat[i] = original + eps
            up = probe()
            flat[i] = original - eps
            down = probe()
            flat[i] = original
            numeric.flat[i] = (up - down) / (2 * eps)
        err = np.abs(analytic - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            i = int(np.argmax(err - rtol * np.abs(numeric)))
            raise AssertionError(
                f"gradcheck: input {k} (shape {t.shape}): analytic {analytic.flat[i]!r} vs "
                f"numeric {numeric.flat[i]!r} at flat index {i}; {int(bad.sum())} of {bad.size} "
                f"elements differ (max abs error {err.max():.3g})"
            )
    return True
