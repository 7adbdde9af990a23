"""The backward pass: from a loss back to the leaves.

Every Tensor made by a Function points at that Function (``_creator``), and every Function
keeps its inputs, so the graph is these links alone. :func:`run_backward` orders the Functions
reachable from the root topologically and calls each ``backward`` once, after every consumer of
its outputs has delivered its gradient: gradients meeting at one output are summed first, and
gradients reaching a leaf are added to its ``.grad``.

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

__all__ = ["run_backward", "queue_callback", "current_pass", "RemovableHandle"]

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


def _accumulate_into_leaf(t, g):
    if g.shape != t.data.shape:  # a Function's backward returned the wrong shape: a bug
        raise RuntimeError(f"gradient of shape {g.shape} for a tensor of shape {t.data.shape}")
    if g.dtype != t.data.dtype:
        g = g.astype(t.data.dtype)
    t.grad = g if t.grad is None else t.grad + g


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


def run_backward(root, grad):
    """Propagates `grad` (d loss / d root, an array of root's shape) to every leaf that
    requires a gradient, accumulating into the leaves' ``.grad``."""
    global _final_callbacks, _passes_started
    if _final_callbacks is not None:
        raise RuntimeError("backward: called from inside another backward pass")
    _final_callbacks = []
    _passes_started += 1
    try:
        _propagate(root, grad)
        callbacks = _final_callbacks
    finally:
        _final_callbacks = None
    for callback in callbacks:
        callback()


def _propagate(root, grad):
    if root._creator is None:
        _accumulate_into_leaf(root, grad)
        if root._post_accumulate_grad_hooks:
            _run_hooks(root)
        return
    root._creator._grad_outputs[root._index] = grad
    order = topological_order(root._creator)
    pending = _hooked_leaf_uses(order) if RemovableHandle.live else None
    for fn in reversed(order):
        grad_outputs = fn._grad_outputs
        fn._grad_outputs = [None] * len(grad_outputs)  # ready for another backward pass
        grads = fn.backward(*grad_outputs)
        if type(grads) is not tuple:
            grads = (grads,)
        for t, g, need in zip(fn.inputs, grads, fn.needs_input_grad):
            if not need:
                continue
            if t._creator is None:
                if g is not None:
                    _accumulate_into_leaf(t, g)
                if pending and id(t) in pending:
                    pending[id(t)] -= 1
                    if pending[id(t)] == 0:
                        _run_hooks(t)
            elif g is not None:
                slots, i = t._creator._grad_outputs, t._index
                slots[i] = g if slots[i] is None else slots[i] + g
