"""Optimiser updates: one in-place step over a list of parameters, their gradients and their
state buffers (SGD's momentum buffers, Adam's moment estimates)."""
from __future__ import annotations

import math

import numpy as np

from .core import FLOAT_DTYPES, ShapeDtype, array_kind, check_array, check_float_dtypes, real, shape_of


def _contiguous_writable(a):
    if isinstance(a, ShapeDtype):
        return True
    flags = a.flags
    return bool(flags.c_contiguous) and (array_kind(a) == "cupy" or bool(flags.writeable))


def _tensor_lists(op, params, **lists):
    """Every list as long as params; each entry an array of its parameter's shape and dtype.
    The lists named in-place (params and the state) must hold C-contiguous writable arrays."""
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"{op}: params must be a list of arrays, got {type(params).__name__}")
    for name, arrays in lists.items():
        if not isinstance(arrays, (list, tuple)):
            raise TypeError(f"{op}: {name} must be a list of arrays, got {type(arrays).__name__}")
        if len(arrays) != len(params):
            raise ValueError(f"{op}: {name} holds {len(arrays)} arrays, params {len(params)}")
    if _plain_lists(params, lists):
        return
    for i, p in enumerate(params):
        check_array(op, f"params[{i}]", p)
        check_float_dtypes(op, **{f"params[{i}]": p})
        if not _contiguous_writable(p):
            raise ValueError(f"{op}: params[{i}] must be a C-contiguous writable array (it is "
                             f"updated in place)")
        for name, arrays in lists.items():
            a = arrays[i]
            check_array(op, f"{name}[{i}]", a)
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"{op}: {name}[{i}] has shape {shape_of(a)}, its parameter "
                                 f"{shape_of(p)}")
            check_float_dtypes(op, **{f"params[{i}]": p, f"{name}[{i}]": a})
            if name != "grads" and not _contiguous_writable(a):
                raise ValueError(f"{op}: {name}[{i}] must be a C-contiguous writable array (it "
                                 f"is updated in place)")
            if (not isinstance(a, ShapeDtype) and not isinstance(p, ShapeDtype)
                    and array_kind(a) != array_kind(p)):
                raise TypeError(f"{op}: {name}[{i}] is a {array_kind(a)} array, its parameter "
                                f"a {array_kind(p)} array")


def _plain_lists(params, lists):
    """Whether every array is a NumPy array of its parameter's shape and a float dtype, and
    those updated in place C-contiguous and writable: the common case, checked without the
    per-array messages that _tensor_lists prepares (it then names what is wrong)."""
    for i, p in enumerate(params):
        if type(p) is not np.ndarray or p.dtype not in FLOAT_DTYPES or not _plain_in_place(p):
            return False
        for name, arrays in lists.items():
            a = arrays[i]
            if type(a) is not np.ndarray or a.dtype != p.dtype or a.shape != p.shape:
                return False
            if name != "grads" and not _plain_in_place(a):
                return False
    return True


def _plain_in_place(a):
    flags = a.flags
    return flags.c_contiguous and flags.writeable


def _non_negative(op, name, v):
    v = real(op, name, v)
    if not 0 <= v < math.inf:
        raise ValueError(f"{op}: {name} must be finite and >= 0, got {v}")
    return v


def sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, nesterov, weight_decay,
             first_step):
    """-> (lr, momentum, dampening, nesterov, weight_decay, first_step) normalised."""
    op = "sgd_step"
    momentum = _non_negative(op, "momentum", momentum)
    if momentum:
        if momentum_buffers is None:
            raise TypeError(f"{op}: momentum {momentum} needs momentum_buffers (a list of arrays)")
        _tensor_lists(op, params, grads=grads, momentum_buffers=momentum_buffers)
    else:
        _tensor_lists(op, params, grads=grads)
    lr = _non_negative(op, "lr", lr)
    dampening = _non_negative(op, "dampening", dampening)
    weight_decay = _non_negative(op, "weight_decay", weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"{op}: nesterov needs a momentum > 0 and dampening 0, got momentum "
                         f"{momentum}, dampening {dampening}")
    return lr, momentum, dampening, bool(nesterov), weight_decay, bool(first_step)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay,
              decoupled_weight_decay):
    """-> (step, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay) normalised."""
    op = "adam_step"
    _tensor_lists(op, params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs)
    if isinstance(step, bool) or not isinstance(step, int) and not hasattr(step, "__index__"):
        raise TypeError(f"{op}: step must be an integer, got {step!r}")
    step = int(step)
    if step < 1:
        raise ValueError(f"{op}: step counts from 1, got {step}")
    lr = _non_negative(op, "lr", lr)
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= real(op, name, b) < 1:
            raise ValueError(f"{op}: {name} must lie in [0, 1), got {b}")
    eps = _non_negative(op, "eps", eps)
    weight_decay = _non_negative(op, "weight_decay", weight_decay)
    return (step, lr, float(beta1), float(beta2), eps, weight_decay, bool(decoupled_weight_decay))
