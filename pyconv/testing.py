"""Gradient checking: compare a backward pass with central finite differences.

Writing a layer means writing a ``backward``; :func:`gradcheck` tells you whether it is right.
It runs the function through the real kernels of the current backend, perturbs every input
element by +-eps, and compares the resulting slopes with the gradients the autograd computed::

    import numpy as np
    from pyconv import Tensor
    from pyconv.autograd import Function
    from pyconv.testing import gradcheck

    class Cube(Function):
        def forward(self, a):
            self.a = a
            return a ** 3

        def backward(self, g):
            return 3 * self.a ** 2 * g

    x = Tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    gradcheck(lambda x: Cube()(x), [x])           # True, or AssertionError naming the element

Inputs should be float64: in float32 the rounding error of a difference quotient is about
1e-7 / eps, far above any useful tolerance. :func:`numeric_gradient` and
:func:`central_difference` are the finite differences on their own, for checking a backward
kernel that works on plain arrays.
"""
from __future__ import annotations

import numpy as np

from .autograd import Tensor, array_module, no_grad

__all__ = ["gradcheck", "numeric_gradient", "central_difference"]


def central_difference(f, a, index, eps=1e-6):
    """The slope of ``f()`` along the element ``a[index]``:
    ``(f() at a[index] + eps  -  f() at a[index] - eps) / (2 eps)``.

    `f` takes no arguments and reads `a`; `a` is changed in place and restored before
    returning. Example: the derivative of sum(a ** 2) at a[1] is 2 a[1]::

        a = np.array([1.0, 2.0, 3.0])
        central_difference(lambda: float((a ** 2).sum()), a, 1)   # ~4.0
    """
    old = a[index].copy()  # a copy: on CuPy, a[index] would be a view of the changing element
    a[index] = old + eps
    plus = f()
    a[index] = old - eps
    minus = f()
    a[index] = old
    return (plus - minus) / (2 * eps)


def numeric_gradient(f, a, eps=1e-6):
    """d f() / d a for every element of the array `a` by central differences (two calls of `f`
    per element; `a` is changed in place and restored). Returns a float64 NumPy array of a's
    shape. Example::

        x = rng.standard_normal((2, 3))
        numeric_gradient(lambda: float(np.tanh(x).sum()), x)   # ~1 - tanh(x) ** 2
    """
    grad = np.zeros(a.shape)
    for index in np.ndindex(a.shape):
        grad[index] = central_difference(f, a, index, eps)
    return grad


def _to_numpy(a):
    return a if isinstance(a, np.ndarray) else a.get()


def _tensors_in(out):
    """The Tensors in a function's result: a Tensor, or (nested) tuples and lists of them
    (an LSTM returns ``(out, (h, c))``); other values are skipped."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors_in(item)]
    return []


def gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Checks the autograd gradients of ``fn(*inputs)`` against central finite differences.

    `inputs` are the arguments of `fn`; the Tensors among them with ``requires_grad`` are
    checked (use float64). `fn` returns a Tensor or (nested) tuples of Tensors and must be
    deterministic: reseed inside it if it draws random numbers (dropout).

    Every output is weighted by fixed random numbers (from `seed`) and summed into one scalar
    L, so every output element takes part. The analytic dL/dx from ``backward`` must match the
    numeric (L(x + eps) - L(x - eps)) / 2 eps at every element x of every checked input:
    ``|analytic - numeric| <= atol + rtol * |numeric|``.

    Returns True. Raises AssertionError naming the input, the worst element, both values and
    how many elements fail; ValueError if no output depends on a checked input. The checked
    inputs' ``.grad`` is overwritten.

        x = Tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True)
        w = Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
        gradcheck(lambda x, w: F.conv2d(x, w, padding=1), [x, w])
    """
    rng = np.random.default_rng(seed)
    outputs = _tensors_in(fn(*inputs))
    weights = [rng.standard_normal(o.shape) for o in outputs]

    def weighted_sum():  # L, evaluated without recording a graph
        with no_grad():
            return sum(float((_to_numpy(o.data) * w).sum())
                       for o, w in zip(_tensors_in(fn(*inputs)), weights))

    # The analytic gradients: backward from L.
    for t in inputs:
        if isinstance(t, Tensor):
            t.grad = None
    total = None
    for o, w in zip(outputs, weights):
        if o.requires_grad:
            term = (o * Tensor(array_module(o.data).asarray(w, dtype=o.dtype))).sum()
            total = term if total is None else total + term
    if total is None:
        raise ValueError("gradcheck: no output depends on an input that requires a gradient")
    total.backward()

    for k, t in enumerate(inputs):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        analytic = _to_numpy(t.grad) if t.grad is not None else np.zeros(t.shape)
        t.data = array_module(t.data).ascontiguousarray(t.data)  # a strided view becomes its own array
        numeric = numeric_gradient(weighted_sum, t.data, eps)
        err = np.abs(analytic - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            worst = np.unravel_index(int(np.argmax(err - rtol * np.abs(numeric))), t.shape)
            raise AssertionError(
                f"gradcheck: input {k} (shape {t.shape}): at index {tuple(map(int, worst))} "
                f"the analytic gradient is {float(analytic[worst])!r} but the numeric one is "
                f"{float(numeric[worst])!r}; {int(bad.sum())} of {bad.size} elements differ by "
                f"more than atol + rtol * |numeric| (atol={atol}, rtol={rtol}; max abs error "
                f"{err.max():.3g})"
            )
    return True
