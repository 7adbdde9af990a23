"""The backward pass: from a loss back to the leaves.

Every Tensor made by a Function points at that Function (``_creator``), and every Function
keeps its inputs: the leaves themselves, and for an input another Function made only that
Function and the output's index (not the Tensor, whose array is freed unless a backward
saved it), so the graph is these links alone. :func:`run_backward` orders the Functions
reachable from the root topologically and calls each ``backward`` once, after every consumer of
its outputs has delivered its gradient: gradients meeting at one output are summed first, and
gradients reaching a leaf are added to its ``.grad``.

Memory: once a Function's backward has run, the pass drops what its forward saved and its
links to its inputs (``Function.release``), so intermediate arrays are freed while the pass is
still running, and a graph kept alive by a Tensor the caller holds costs nothing afterwards. A
second backward through the same graph then raises, unless the first was told
``retain_graph=True``; a Function's backward knows whether it is its last
(``Function.last_backward``), and may then use what its forward saved as scratch. Gradients
meeting at one tensor are summed into one array, in place once the pass has allocated that
array itself (never into an array that a Function's backward handed over, which may be a view
of the caller's own ``grad`` or another tensor's gradient), and into a leaf's ``.grad`` from an
earlier pass when nothing but the leaf refers to it.

Two hooks let other code (data-parallel training) act while the backward pass runs:

- a leaf's post-accumulate-grad hooks (``Tensor.register_post_accumulate_grad_hook``) run as
  soon as its ``.grad`` is final for this pass, i.e. after the last Function that takes it as an
  input has delivered its gradient (the engine counts those Functions before it starts);
- :func:`queue_callback` (only during a pass, typically from such a hook) runs a callable once
  the whole pass is over; :func:`current_pass` numbers the passes, so that such code can tell a
  new pass from the one an exception interrupted (whose callbacks never run).

This module works on any object with ``_creator``/``_index`` (Tensors) and ``inputs``/
``backward`` (Functions); it imports neither class, so both can import it.
"""
from __future__ import annotations

import sys

import numpy as np

__all__ = ["run_backward", "queue_callback", "current_pass", "RemovableHandle", "add_arrays"]

try:  # the C++ kernels' sum of two arrays, when they are built
    from .._C import add as _add_kernel
except ImportError:
    _add_kernel = None

# Elements from which add_arrays sums on pyconv's threads: below, NumPy's one-thread pass is
# done before the pool's threads would be woken.
_THREADED_ADD_ELEMENTS = 1 << 16

# Callables to run when the backward pass in progress ends (None: no pass is running).
_final_callbacks: list | None = None
_passes_started = 0


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


_FREED = ("backward: this graph was already gone through by a backward pass, which freed what "
          "it saved; to go through it again, pass retain_graph=True to the first backward")


def add_arrays(a, b, in_place=False):
    """a + b, or (in_place) a += b: on pyconv's threads where both are NumPy arrays of one float
    dtype and shape, C-contiguous and large, else by NumPy's (or CuPy's) operators. The same
    bits either way: IEEE sums, subnormals kept. (16 MB of float32: 0.86 ms on 2 threads
    against NumPy's 1.8 ms.)"""
    if (_add_kernel is not None and type(a) is np.ndarray and type(b) is np.ndarray
            and a.size >= _THREADED_ADD_ELEMENTS and a.shape == b.shape and a.dtype == b.dtype
            and a.dtype in (np.float32, np.float64) and a.flags.c_contiguous and b.flags.c_contiguous
            and (a.flags.writeable or not in_place)):
        out = a if in_place else np.empty_like(a)
        _add_kernel(a, b, out)
        return out
    if in_place:
        a += b
        return a
    return a + b


def _add(total, g, owned):
    """total + g, the sum of the gradients reaching one tensor so far (total None: none yet).
    `owned` holds the arrays this pass allocated and handed to nobody: those are added into in
    place; any other array may be seen elsewhere, so a sum with it is a new (owned) array."""
    if total is None:
        return g
    if owned.get(id(total)) is total and total.dtype == g.dtype and total.shape == g.shape:
        return add_arrays(total, g, in_place=True)
    total = add_arrays(total, g)
    owned[id(total)] = total
    return total


def _only_the_leaf_holds(t):
    """Whether t.grad is a NumPy array that owns its memory and that nothing but t refers to:
    then a later pass may add into it in place, as PyTorch's gradient accumulation does when no
    one else holds the gradient. An array the caller kept (``old = t.grad``), a view, or an
    array another library lent is replaced by a new sum instead."""
    grad = t.grad
    # The references: t's slot, `grad` here and getrefcount's own argument.
    return (type(grad) is np.ndarray and grad.flags.owndata and grad.flags.writeable
            and sys.getrefcount(grad) <= 3)


def _accumulate_into_leaf(t, g, owned):
    if g.shape != t.data.shape:  # a Function's backward returned the wrong shape: a bug
        raise RuntimeError(f"gradient of shape {g.shape} for a tensor of shape {t.data.shape}")
    if g.dtype != t.data.dtype:
        g = g.astype(t.data.dtype)
    if t.grad is not None and id(t.grad) not in owned and _only_the_leaf_holds(t):
        owned[id(t.grad)] = t.grad  # a sum from an earlier pass, private to t
    t.grad = _add(t.grad, g, owned)


def queue_callback(callback):
    """Runs ``callback()`` once the backward pass in progress has finished (after the last
    gradient reached its leaf and every post-accumulate-grad hook ran). Only valid during a
    backward pass, e.g. inside a hook."""
    if _final_callbacks is None:
        raise RuntimeError("queue_callback: no backward pass is running")
    _final_callbacks.append(callback)


def current_pass() -> int | None:
    """The number of the backward pass in progress (1 for the first of this process), or None
    outside a pass."""
    return None if _final_callbacks is None else _passes_started


class RemovableHandle:
    """What registering a hook returns: ``remove()`` unregisters it (once; later calls do nothing)."""

    _next_key = 0
    live = 0  # hooks registered and not removed: while none are, backward skips counting uses

    def __init__(self, hooks: dict, hook):
        self._hooks, self.key = hooks, RemovableHandle._next_key
        RemovableHandle._next_key += 1
        RemovableHandle.live += 1
        hooks[self.key] = hook

    def remove(self):
        if self._hooks.pop(self.key, None) is not None:
            RemovableHandle.live -= 1


def _run_hooks(t):
    for hook in list(t._post_accumulate_grad_hooks.values()):
        hook(t)


def _hooked_leaf_uses(order):
    """{id(leaf): number of Functions in `order` that pass a gradient to it}, for the leaves
    with post-accumulate-grad hooks: its gradient is final when that many have run."""
    uses = {}
    for fn in order:
        for t, need in zip(fn.inputs, fn.needs_input_grad):
            if need and t._creator is None and t._post_accumulate_grad_hooks:
                uses[id(t)] = uses.get(id(t), 0) + 1
    return uses


def run_backward(root, grad, retain_graph=False):
    """Propagates `grad` (d loss / d root, an array of root's shape) to every leaf that
    requires a gradient, accumulating into the leaves' ``.grad``; frees the graph's saved
    arrays on the way unless `retain_graph`."""
    global _final_callbacks, _passes_started
    if _final_callbacks is not None:
        raise RuntimeError("backward: called from inside another backward pass")
    _final_callbacks = []
    _passes_started += 1
    try:
        _propagate(root, grad, retain_graph)
        callbacks = _final_callbacks
    finally:
        _final_callbacks = None
    for callback in callbacks:
        callback()


def _propagate(root, grad, retain_graph):
    owned = {}  # id -> array: gradient sums this pass allocated, safe to add into in place
    if root._creator is None:
        _accumulate_into_leaf(root, grad, owned)
        if root._post_accumulate_grad_hooks:
            _run_hooks(root)
        return
    if root._creator.released:
        raise RuntimeError(_FREED)
    root._creator._grad_outputs[root._index] = grad
    order = topological_order(root._creator)
    if any(fn.released for fn in order):  # the new graph reaches into one an earlier pass freed
        raise RuntimeError(_FREED)
    pending = _hooked_leaf_uses(order) if RemovableHandle.live else None
    for fn in reversed(order):
        grad_outputs = fn._grad_outputs
        fn._grad_outputs = [None] * len(grad_outputs)  # ready for another backward pass
        for g in grad_outputs:  # handed over: backward may pass it on, or views of it
            owned.pop(id(g), None)
        if _added_in_place(fn, grad_outputs, owned):
            grads = ()
        else:
            fn.last_backward = not retain_graph
            grads = fn.backward(*grad_outputs)
            if type(grads) is not tuple:
                grads = (grads,)
        for t, g, need in zip(fn.inputs, grads, fn.needs_input_grad):
            if not need:
                continue
            if t._creator is None:
                if g is not None:
                    _accumulate_into_leaf(t, g, owned)
                if pending and id(t) in pending:
                    pending[id(t)] -= 1
                    if pending[id(t)] == 0:
                        _run_hooks(t)
            elif g is not None:
                slots, i = t._creator._grad_outputs, t._index
                slots[i] = _add(slots[i], g, owned)
        if not retain_graph:
            fn.release()


def _added_in_place(fn, grad_outputs, owned):
    """For a Function that can add its input's gradient into an existing array
    (``add_input_grad``, e.g. indexing: only the indexed part changes), does so into the
    input's gradient sum when this pass owns it (or starts one); False when it cannot."""
    add = getattr(fn, "add_input_grad", None)
    if add is None or not fn.needs_input_grad[0] or fn.inputs[0]._creator is None:
        return False
    t = fn.inputs[0]
    slots, i = t._creator._grad_outputs, t._index
    total = slots[i]
    if total is not None and owned.get(id(total)) is not total:
        return False
    total = add(total, *grad_outputs)
    if total is None:
        return False
    owned[id(total)] = slots[i] = total
    return True
