"""Losses over a class axis and softmax: softmax / log_softmax and their gradients, the fused
cross-entropy (log_softmax + negative log-likelihood of integer targets) and the binary
cross-entropy of logits. The class axis is the last one (the cross-entropy's may be axis 1
instead, as PyTorch's (N, C, d1, ...)); every other axis counts rows."""
from __future__ import annotations

import math
import numbers

from .core import ShapeDtype, check_array, check_float_dtypes, check_index_dtype, real, shape_of
from .conv import _check_grad_out


def _rows(op, x):
    check_array(op, "x", x)
    if x.ndim < 1:
        raise ValueError(f"{op}: x must have a class axis (its last), got shape {shape_of(x)}")
    check_float_dtypes(op, x=x)


def softmax(x, op="softmax"):
    _rows(op, x)


def softmax_backward(grad_out, y, op="softmax_backward"):
    check_array(op, "y", y)
    if y.ndim < 1:
        raise ValueError(f"{op}: y must have a class axis (its last), got shape {shape_of(y)}")
    check_float_dtypes(op, y=y)
    _check_grad_out(op, grad_out, y.shape, y.dtype)


def _smoothing(op, label_smoothing):
    eps = real(op, "label_smoothing", label_smoothing)
    if not 0 <= eps <= 1:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {eps}")
    return eps


def _ignore_index(op, ignore_index):
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"{op}: ignore_index must be an integer, got {ignore_index!r}")
    return int(ignore_index)


def _class_layout(op, x, class_axis):
    """x as (N, C, P) rows of classes: row (n, p) holds x[n, :, p]. Classes last (class_axis
    -1): (rows, C, 1); classes on axis 1 of (N, C, d1, ...): (N, C, d1 * ...)."""
    if isinstance(class_axis, bool) or class_axis not in (1, -1):
        raise ValueError(f"{op}: class_axis must be 1 or -1 (the last axis), got {class_axis!r}")
    if class_axis == 1 and x.ndim >= 2:
        return x.shape[0], x.shape[1], math.prod(x.shape[2:])
    if class_axis == 1:
        raise ValueError(f"{op}: class_axis=1 needs x of at least 2 axes (N, C, ...), got shape "
                         f"{shape_of(x)}")
    return math.prod(x.shape[:-1]), x.shape[-1], 1


def _without_class_axis(x, class_axis):
    return tuple(x.shape[:-1]) if class_axis == -1 else tuple(x.shape[:1] + x.shape[2:])


def _class_targets(op, x, target, ignore_index, class_axis=-1):
    """target of x's shape without its class axis; with data, each entry in [0, C) or
    ignore_index (the kernels index the row with it)."""
    check_array(op, "target", target)
    check_index_dtype(op, "target", target)
    rows = _without_class_axis(x, class_axis)
    if tuple(target.shape) != rows:
        raise ValueError(f"{op}: target must have shape {rows} for x of shape "
                         f"{shape_of(x)}, got {shape_of(target)}")
    C = x.shape[class_axis]
    if isinstance(target, ShapeDtype) or target.size == 0:
        return
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= C:  # out of range, or ignore_index: look again without the latter
        real_targets = target[target != ignore_index]
        lo, hi = (int(real_targets.min()), int(real_targets.max())) if real_targets.size else (0, 0)
        if lo < 0 or hi >= C:
            raise ValueError(f"{op}: target classes must lie in [0, {C}) or equal ignore_index "
                             f"{ignore_index}, got values from {lo} to {hi}")


def _class_weight(op, x, weight, class_axis=-1):
    check_array(op, "weight", weight, allow_none=True)
    if weight is not None and tuple(weight.shape) != (x.shape[class_axis],):
        raise ValueError(f"{op}: weight must have shape ({x.shape[class_axis]},) (one per class), got "
                         f"{shape_of(weight)}")


def cross_entropy(x, target, weight, ignore_index, label_smoothing, class_axis=-1, op="cross_entropy"):
    """-> (ignore_index, label_smoothing, (N, C, P)): the first two normalised, the last x's
    rows of classes (_class_layout)."""
    _rows(op, x)
    layout = _class_layout(op, x, class_axis)
    if layout[1] < 1:
        raise ValueError(f"{op}: x needs at least one class, got shape {shape_of(x)}")
    ignore_index = _ignore_index(op, ignore_index)
    _class_targets(op, x, target, ignore_index, class_axis)
    _class_weight(op, x, weight, class_axis)
    check_float_dtypes(op, x=x, weight=weight)
    return ignore_index, _smoothing(op, label_smoothing), layout


def cross_entropy_backward(grad_loss, x, target, lse, weight, ignore_index, label_smoothing,
                           class_axis=-1):
    op = "cross_entropy_backward"
    params = cross_entropy(x, target, weight, ignore_index, label_smoothing, class_axis, op=op)
    rows = _without_class_axis(x, class_axis)
    for name, a in (("grad_loss", grad_loss), ("lse", lse)):
        check_array(op, name, a)
        if tuple(a.shape) != rows:
            raise ValueError(f"{op}: {name} must have shape {rows} (one per row "
                             f"of x), got {shape_of(a)}")
    check_float_dtypes(op, x=x, grad_loss=grad_loss, lse=lse, weight=weight)
    return params


def _pos_weight(op, x, pos_weight):
    check_array(op, "pos_weight", pos_weight, allow_none=True)
    if pos_weight is not None and tuple(pos_weight.shape) != (x.shape[-1],):
        raise ValueError(f"{op}: pos_weight must have shape ({x.shape[-1]},) (one per column of "
                         f"the last axis), got {shape_of(pos_weight)}")


def binary_cross_entropy_with_logits(x, target, pos_weight,
                                     op="binary_cross_entropy_with_logits"):
    _rows(op, x)
    check_array(op, "target", target)
    if tuple(target.shape) != tuple(x.shape):
        raise ValueError(f"{op}: target must have x's shape {shape_of(x)}, got {shape_of(target)}")
    _pos_weight(op, x, pos_weight)
    check_float_dtypes(op, x=x, target=target, pos_weight=pos_weight)


def binary_cross_entropy_with_logits_backward(grad_out, x, target, pos_weight):
    op = "binary_cross_entropy_with_logits_backward"
    binary_cross_entropy_with_logits(x, target, pos_weight, op=op)
    _check_grad_out(op, grad_out, x.shape, x.dtype)
