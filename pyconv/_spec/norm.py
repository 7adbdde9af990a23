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


# The activations batch_norm_train may apply to its output in the same pass.
NORM_ACTIVATIONS = (None, "relu", "leaky_relu")


def _activation(op, activation, negative_slope):
    """-> negative_slope as a float (0.0 unless leaky_relu), after checking the activation.
    Its gradient is taken from the output, which is > 0 exactly where the input is only for a
    slope >= 0."""
    if activation not in NORM_ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {NORM_ACTIVATIONS}, got {activation!r}")
    if activation != "leaky_relu":
        return 0.0
    slope = real(op, "negative_slope", negative_slope)
    if not 0 <= slope < float("inf"):
        raise ValueError(f"{op}: negative_slope must be finite and >= 0 for the fused leaky_relu, got {slope}")
    return slope


def batch_norm_train(x, weight, bias, eps, activation=None, negative_slope=0.01):
    """-> (eps, negative_slope) as floats, after checking x (N, C, ...), the optional weight,
    bias (C,) and the activation."""
    op = "batch_norm_train"
    C = _channels(op, x)
    _per_channel(op, C, weight=weight, bias=bias)
    check_float_dtypes(op, x=x, weight=weight, bias=bias)
    eps = real(op, "eps", eps)
    if not 0 <= eps < float("inf"):
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps}")
    return eps, _activation(op, activation, negative_slope)


def batch_norm_train_backward(grad_out, x, mean, invstd, weight, y=None, activation=None,
                              negative_slope=0.01):
    """-> negative_slope as a float, after checking the arrays (y: the forward's output, needed
    with an activation)."""
    op = "batch_norm_train_backward"
    slope = _activation(op, activation, negative_slope)
    C = _channels(op, x)
    check_array(op, "grad_out", grad_out)
    if tuple(grad_out.shape) != tuple(x.shape):
        raise ValueError(f"{op}: grad_out must have x's shape {shape_of(x)}, got {shape_of(grad_out)}")
    check_array(op, "mean", mean)
    check_array(op, "invstd", invstd)
    _per_channel(op, C, mean=mean, invstd=invstd, weight=weight)
    check_array(op, "y", y, allow_none=True)
    if activation is not None and y is None:
        raise ValueError(f"{op}: y (the forward's output) is needed for the {activation} gradient")
    if y is not None and tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"{op}: y must have x's shape {shape_of(x)}, got {shape_of(y)}")
    check_float_dtypes(op, grad_out=grad_out, x=x, mean=mean, invstd=invstd, weight=weight, y=y)
    return slope
