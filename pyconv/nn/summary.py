"""``pyconv.nn.summary``: a per-layer table of output shapes, activation memory and parameter
counts, and ``pyconv.nn.saliency``: the gradient of a class score with respect to the image.

The summary computes shapes by *shape propagation*: a Sequential (or a model that declares
``children_in_sequence = True``: its forward applies its children in order) passes the shape
through its layers, and each layer that knows its output shape (convolutions, pools, linear layers,
activations, ...) computes it from pyconv._spec's rules, without touching data. So a VGG-16
at 3x224x224 is summarised instantly. A model with its own ``forward`` and no
``output_shape`` is run once on a zero batch under no_grad, and its leaf layers report
the shapes they produce.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Tensor, array_module, no_grad
from .modules import Module, Sequential
from .modules.module import _forward_hooks

__all__ = ["summary", "saliency"]


class _NeedsForward(Exception):
    pass


def _param_count(module):
    return sum(p.size for p in module.parameters())


def _propagate(module, name, shape, record):
    """Output shape of `module` for an input of `shape`; records one row per leaf."""
    if isinstance(module, Sequential) or getattr(module, "children_in_sequence", False):
        for child_name, child in module.named_children():
            shape = _propagate(child, f"{name}.{child_name}" if name else child_name, shape, record)
        return shape
    if not hasattr(module, "output_shape"):
        raise _NeedsForward
    out = tuple(module.output_shape(tuple(shape)))
    record(name, module, out)
    return out


def _rows_by_forward(model, shape, dtype, record):
    """Runs the model on zeros and records each leaf layer's output, in call order."""
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module, out):
        if next(module.children(), None) is None:  # a leaf layer
            first = out[0] if isinstance(out, tuple) else out
            if isinstance(first, Tensor):
                record(names.get(id(module), type(module).__name__), module, first.shape)

    _forward_hooks.append(hook)
    try:
        with no_grad():
            model(Tensor(np.zeros(shape, dtype)))
    finally:
        _forward_hooks.remove(hook)


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def summary(model: Module, input_shape, batch_size=1, dtype=np.float32, print_fn=print) -> dict:
    """Prints and returns, per layer, the output shape, the activation memory (output elements
    x itemsize x batch_size) and the parameter count, then the totals.

    `input_shape` excludes the batch axis, e.g. (3, 224, 224). Returns a dict with "layers"
    (a list of dicts: name, type, output_shape, activation_bytes, params), "total_params",
    "trainable_params", "param_bytes" and "activation_bytes".
    """
    shape = (batch_size,) + tuple(input_shape)
    itemsize = np.dtype(dtype).itemsize
    rows = []

    def record(name, module, out_shape):
        rows.append({
            "name": name or type(module).__name__,
            "type": type(module).__name__,
            "output_shape": tuple(out_shape),
            "activation_bytes": math.prod(out_shape) * itemsize,
            "params": _param_count(module),
        })

    try:
        _propagate(model, "", shape, record)
    except _NeedsForward:
        rows.clear()
        _rows_by_forward(model, shape, dtype, record)

    params = model.parameters()
    result = {
        "layers": rows,
        "total_params": sum(p.size for p in params),
        "trainable_params": sum(p.size for p in params if p.requires_grad),
        "param_bytes": sum(p.data.nbytes for p in params),
        "activation_bytes": sum(r["activation_bytes"] for r in rows),
    }
    if print_fn is not None:
        print_fn(_table(result, shape))
    return result


def _table(result, input_shape):
    header = f"{'Layer (type)':<32}{'Output shape':<26}{'Activations':>14}{'Params':>14}"
    lines = [f"Input shape {input_shape}", header, "-" * len(header)]
    for r in result["layers"]:
        label = f"{r['name']} ({r['type']})"
        lines.append(f"{label:<32}{str(r['output_shape']):<26}{_fmt_bytes(r['activation_bytes']):>14}"
                     f"{r['params']:>14,}")
    lines += [
        "-" * len(header),
        f"Total params: {result['total_params']:,}",
        f"Trainable params: {result['trainable_params']:,}",
        f"Non-trainable params: {result['total_params'] - result['trainable_params']:,}",
        f"Parameter memory: {_fmt_bytes(result['param_bytes'])}",
        f"Activation memory (forward, this batch): {_fmt_bytes(result['activation_bytes'])}",
    ]
    return "\n".join(lines)


def saliency(model: Module, x, target):
    """Saliency map (Simonyan, Vedaldi & Zisserman 2014): |d score[target] / d x|, the maximum over
    channels -> (N, H, W). x (N, C, H, W) array or Tensor; target an int or N ints. The model's
    parameters collect no gradient; its train/eval mode is left as it is."""
    data = x.data if isinstance(x, Tensor) else x if hasattr(x, "__cuda_array_interface__") else np.asarray(x)
    if data.ndim != 4:
        raise ValueError(f"saliency: x must be (N, C, H, W), got shape {tuple(data.shape)}")
    image = Tensor(data.copy(), requires_grad=True)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad = False
    try:
        scores = model(image)
        N = data.shape[0]
        xp = array_module(data)
        targets = xp.broadcast_to(xp.asarray(target), (N,))
        scores[xp.arange(N), targets].sum().backward()
    finally:
        for p, flag in frozen:
            p.requires_grad = flag
    return abs(image.grad).max(axis=1)
