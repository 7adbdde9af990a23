"""Normalisation: batch normalisation with batch statistics (training mode)."""
from __future__ import annotations

from .core import check_array, check_float_dtypes, real, shape_of


def _channels(op, x):
    check_array(op, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{op}: x must be at least 2-D (N, C, ...), got shape {shape_of(x)}")
    C = x.shape[1]
    if C == 0 or x.size // C < 2:
        raise ValueError(f"{op}: batch statistics need more than one value per channel, got x of "
                         f"shape {shape_of(x)}")
    return C


def _per_channel(op, C, **arrays):
    for name, a in arrays.items():
        check_array(op, name, a, allow_none=True)
        if a is not None and tuple(a.shape) != (C,):
            raise ValueError(f"{op}: {name} must have shape ({C},), got {shape_of(a)}")


def batch_norm_train(x, weight, bias, eps):
    """-> eps as a float, after checking x (N, C, ...) and the optional weight, bias (C,)."""
    op = "batch_norm_train"
    C = _channels(op, x)
    _per_channel(op, C, weight=weight, bias=bias)
    check_float_dtypes(op, x=x, weight=weight, bias=bias)
    eps = real(op, "eps", eps)
    if not 0 <= eps < float("inf"):
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps}")
    return eps


def batch_norm_train_backward(grad_out, x, mean, invstd, weight):
    op = "batch_norm_train_backward"
    C = _channels(op, x)
    check_array(op, "grad_out", grad_out)
    if tuple(grad_out.shape) != tuple(x.shape):
        raise ValueError(f"{op}: grad_out must have x's shape {shape_of(x)}, got {shape_of(grad_out)}")
    check_array(op, "mean", mean)
    check_array(op, "invstd", invstd)
    _per_channel(op, C, mean=mean, invstd=invstd, weight=weight)
    check_float_dtypes(op, grad_out=grad_out, x=x, mean=mean, invstd=invstd, weight=weight)
