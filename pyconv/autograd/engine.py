"""The backward pass: from a loss back to the leaves.

Every Tensor made by a Function points at that Function (``_creator``), and every Function
keeps its inputs, so the graph is these links alone. :func:`run_backward` orders the Functions
reachable from the root topologically and calls each ``backward`` once, after every consumer of
its outputs has delivered its gradient: gradients meeting at one output are summed first, and
gradients reaching a leaf are added to its ``.grad``.

This module works on any object with ``_creator``/``_index`` (Tensors) and ``inputs``/
``backward`` (Functions); it imports neither class, so both can import it.
"""
from __future__ import annotations

__all__ = ["run_backward"]


def _creator(value):
    """The Function that produced `value`, or None for a leaf or a non-Tensor input."""
    return getattr(value, "_creator", None)


def topological_order(root_fn):
    """Functions reachable from root_fn, each after every Function that produced its inputs.
    Iterative, so a graph thousands of Functions deep does not hit the recursion limit."""
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
            producer = _creator(t)
            if producer is not None and id(producer) not in seen:
                stack.append((producer, False))
    return order


def _accumulate_into_leaf(t, g):
    if g.shape != t.data.shape:  # a Function's backward returned the wrong shape: a bug
        raise RuntimeError(f"gradient of shape {g.shape} for a tensor of shape {t.data.shape}")
    if g.dtype != t.data.dtype:
        g = g.astype(t.data.dtype)
    t.grad = g if t.grad is None else t.grad + g


def run_backward(root, grad):
    """Propagates `grad` (d loss / d root, an array of root's shape) to every leaf that
    requires a gradient, accumulating into the leaves' ``.grad``."""
    if root._creator is None:
        _accumulate_into_leaf(root, grad)
        return
    root._creator._grad_outputs[root._index] = grad
    for fn in reversed(topological_order(root._creator)):
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
