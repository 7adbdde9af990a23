"""Differentiable operations: the :class:`Function` base class and the array-level primitives
behind Tensor's operators (arithmetic with broadcasting, ``@``, reductions, reshaping,
indexing, concatenation, dtype and device moves).

A Function computes its output from plain arrays (NumPy on the CPU, CuPy on the GPU) in
``forward`` and maps output gradients back to input gradients in ``backward``, again on plain
arrays. Calling a Function on Tensors runs ``forward`` and, when some input requires a
gradient, links the outputs to the Function: that link is the whole graph. The heavy layers
(convolutions, pooling, LSTM) are Functions too, in :mod:`pyconv.nn.functional`.
"""
from __future__ import annotations

import itertools

import numpy as np

from .. import ops
from .._spec import FLOAT_DTYPES
from .engine import add_arrays
from .tensor import Tensor, _axes, _move, array_module, is_grad_enabled

__all__ = ["Function", "concatenate", "stack", "unbroadcast", "scatter_add", "matrix_product"]


class Function:
    """One differentiable operation. Subclasses implement

    ``forward(self, *arrays)`` -> an array, or a tuple of arrays for several outputs;
    ``backward(self, *grad_outputs)`` -> one gradient (or None) per input, as a tuple (a
    single array is accepted for one input).

    Inputs that are not Tensors (scalars, index arrays, None for an absent bias) reach
    ``forward`` unchanged and get no gradient. ``self.needs_input_grad`` (a tuple of bools)
    is set before ``forward`` runs, so it can skip saving what backward will not need. With
    several outputs, a grad_output is None where that output received no gradient.

        class Square(Function):
            def forward(self, a):
                self.a = a
                return a * a

            def backward(self, g):
                return 2 * self.a * g

        y = Square()(x)     # a Tensor; y.backward(...) reaches x.grad

    :func:`pyconv.testing.gradcheck` checks a ``backward`` against finite differences.
    """

    inputs = ()
    needs_input_grad = ()
    released = False  # True once a backward pass has used and dropped what forward saved
    # True while the backward running is the last this Function sees (the pass releases it
    # next, not told to retain the graph): backward may then use what forward saved as scratch.
    last_backward = False

    def __call__(self, *inputs):
        needs = tuple(isinstance(t, Tensor) and t.requires_grad for t in inputs) if is_grad_enabled() else ()
        record = True in needs
        self.needs_input_grad = needs
        out = self.forward(*[t.data if isinstance(t, Tensor) else t for t in inputs])
        creator = self if record else None
        if record:
            self.inputs = kept = []
            for t in inputs:
                producer = getattr(t, "_creator", None)
                kept.append(t if producer is None else _Edge(producer, t._index))
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

    def release(self):
        """Drops what forward saved for backward and the links to the inputs: the backward
        pass calls it once this Function's backward has run (unless told to retain the
        graph), so that the arrays can be freed while the pass goes on."""
        self.__dict__.clear()
        self.released = True


class _Edge:
    """Where the gradient of a Function's input that another Function made goes: that
    Function, and which of its outputs the input was. The graph keeps these rather than the
    input Tensors, so an intermediate array that no backward needs (the inputs of a sum, say)
    is freed as soon as the caller drops it; what a backward needs, its Function saves."""

    __slots__ = ("_creator", "_index")

    def __init__(self, creator, index):
        self._creator, self._index = creator, index


def unbroadcast(grad, shape):
    """Sums `grad` over the axes that broadcasting added or stretched, back to `shape`."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    if axes == tuple(range(lead)) and grad.size:  # only added leading axes (a bias): row sums
        return sum_rows(grad.reshape(-1, int(np.prod(grad.shape[lead:])))).reshape(shape)
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def sum_rows(m):
    """m.sum(axis=0) of a matrix. Over many rows as ones (1 x rows) @ m on the matmul kernel,
    whose vectors run along the columns, where NumPy adds row after row a few lanes at a time:
    a 3200 x 35 gradient (a char-LSTM's output bias) 10 against 66 us, 3200 x 128 25 against
    81; over 64 rows NumPy's 2 us beat the kernel call's 3.5."""
    if m.shape[0] < 256:
        return m.sum(axis=0)
    return matrix_product(array_module(m).ones((1, m.shape[0]), m.dtype), m)[0]


def scatter_add(target, index, values):
    """target[index] += values, adding repeated positions (np.add.at / cupyx.scatter_add)."""
    if isinstance(target, np.ndarray):
        if (isinstance(index, np.ndarray) and index.dtype.kind in "iu" and target.ndim > 1
                and target.dtype in FLOAT_DTYPES and getattr(values, "dtype", None) == target.dtype
                and np.shape(values) == index.shape + target.shape[1:]):
            _scatter_add_rows(target, index, values)
        else:
            np.add.at(target, index, values)
    else:
        import cupyx

        cupyx.scatter_add(target, index, values)


def _scatter_add_rows(target, index, values):
    """target[index] += values for an integer `index` into axis 0: the rows of `values` summed
    per distinct index by the embedding gradient's kernel (ops.embedding_backward, into a table
    of the distinct rows only), then added to those rows. np.add.at adds one element at a time,
    6x slower for 3200 rows of 32. -1 and n-1 name one row, as in NumPy's indexing."""
    n = target.shape[0]
    flat = index.reshape(-1)
    if not flat.size:
        return
    lo, hi = int(flat.min()), int(flat.max())
    if lo < -n or hi >= n:
        raise IndexError(f"index {lo if lo < -n else hi} is out of bounds for axis 0 with size {n}")
    if lo < 0:
        flat = np.where(flat < 0, flat + n, flat)
    rows, slot = np.unique(flat, return_inverse=True)
    sums = ops.embedding_backward(values.reshape(flat.size, -1), slot.reshape(-1), len(rows))
    target[rows] += sums.reshape((len(rows),) + target.shape[1:])


def _shape(a):
    return getattr(a, "shape", ())


# ---------------------------------------------------------------------------------------------
# Elementwise arithmetic


class Add(Function):
    def forward(self, a, b):
        self.shapes = _shape(a), _shape(b)
        return add_arrays(a, b)

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


def matrix_product(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) of two matrices, ``op(m)`` being ``m.T`` where its flag is set, on the
    selected backend's matmul kernel (on the cpu backend pyconv's packed GEMM, on pyconv's
    threads: NumPy's BLAS would bring a thread pool of its own, which fights pyconv's for the
    cores between layers). A transposed view is handed over as its C-contiguous base with the
    flag flipped, so it is not copied. Mixed or non-float dtypes go to NumPy (or CuPy)."""
    if a.dtype == b.dtype and a.dtype in FLOAT_DTYPES:
        if not a.flags.c_contiguous and a.T.flags.c_contiguous:
            a, trans_a = a.T, not trans_a
        if not b.flags.c_contiguous and b.T.flags.c_contiguous:
            b, trans_b = b.T, not trans_b
        return ops.matmul(a, b, trans_a, trans_b)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


class MatMul(Function):
    """``a @ b`` with NumPy's rules: 1-D operands are promoted and the added axis dropped,
    leading (batch) axes broadcast. Two matrices go to the matmul kernel (matrix_product)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        if a.ndim == 2 and b.ndim == 2:
            return matrix_product(a, b)
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
        if a.ndim == 2 and b.ndim == 2:
            if self.needs_input_grad[0]:
                ga = matrix_product(g, b, trans_b=True)
            if self.needs_input_grad[1]:
                gb = matrix_product(a, g, trans_a=True)
            return ga, gb
        if self.needs_input_grad[0]:
            ga = unbroadcast(g @ b2.swapaxes(-1, -2), a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(a2.swapaxes(-1, -2) @ g, b2.shape).reshape(b.shape)
        return ga, gb


class AsType(Function):
    """A copy in another floating-point dtype; the gradient goes back in the source dtype."""

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, a):
        self.source_dtype = a.dtype
        return a.astype(self.dtype)

    def backward(self, g):
        return g.astype(self.source_dtype)


class ToDevice(Function):
    """A copy on another device ("cpu" or "cuda"); the gradient goes back to the source device."""

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
        # The tie count is an integer array: cast it so the gradient keeps g's dtype.
        ties = winners.sum(axis=self.axis, keepdims=True).astype(g.dtype)
        return winners * (g / ties)


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
        return self.add_input_grad(None, g)

    def add_input_grad(self, total, g):
        """`total` (the input's gradient so far, an array the caller owns, or None for
        zeros) plus this op's gradient for its input, added in place: only the indexed part
        changes, so a tensor sliced many times (a sequence read step by step) costs a full-size
        array once rather than once per slice."""
        if total is None:
            total = array_module(g).zeros(self.source_shape, self.dtype)
        elif total.dtype != self.dtype:
            return None
        if _is_basic_index(self.index):
            total[self.index] += g
        else:  # advanced indexing may repeat positions: their gradients add up
            scatter_add(total, self.index, g)
        return total


class BroadcastTo(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, a):
        self.source = a.shape
        return array_module(a).broadcast_to(a, self.shape)

    def backward(self, g):
        return unbroadcast(g, self.source)


class Concatenate(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *arrays):
        self.sizes = [a.shape[self.axis] for a in arrays]
        return array_module(arrays[0]).concatenate(arrays, axis=self.axis)

    def backward(self, g):
        bounds = list(itertools.accumulate(self.sizes[:-1]))
        return tuple(array_module(g).split(g, bounds, axis=self.axis))


class Stack(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *arrays):
        return array_module(arrays[0]).stack(arrays, axis=self.axis)

    def backward(self, g):
        lead = (slice(None),) * (self.axis % g.ndim)
        return tuple(g[lead + (i,)] for i in range(g.shape[self.axis]))  # views, not copies


def _check_same_dtype(op, tensors):
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"{op}: tensors have different dtypes {sorted(map(str, dtypes))}")


def broadcast_to(tensor, shape) -> Tensor:
    """`tensor` repeated along its axes of length 1 (and new leading axes) to `shape`, as
    ``numpy.broadcast_to`` and ``torch.Tensor.expand``: a read-only view, nothing copied (a
    label's embedding spread over an image's planes before a concatenate costs no pass of its
    own). The gradient sums over the repeated axes."""
    tensor = tensor if isinstance(tensor, Tensor) else Tensor(tensor)
    shape = tuple(int(n) for n in shape)
    lead = len(shape) - tensor.ndim
    if lead < 0 or any(n != 1 and n != m for n, m in zip(tensor.shape, shape[lead:])):
        raise ValueError(f"broadcast_to: a tensor of shape {tensor.shape} cannot be broadcast to {shape}")
    return BroadcastTo(shape)(tensor)


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
