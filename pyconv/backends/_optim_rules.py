"""The per-element rules of the optimiser steps, shared by the "numba" backend (compiled with
``njit``, called from its parallel loop) and the "cuda" backend (compiled as device functions,
called from its grid-stride loop). Each updates element i of the parameter and its state in
place, with scalars of the arrays' dtype, in the reference's sequence of roundings.

Plain Python: each backend compiles them with its own decorator.
"""
import math


def sgd_update(p, grad, buf, i, lr, momentum, keep, weight_decay, decay, with_momentum, damp,
               nesterov, first_step):
    """buf is read and written only with momentum (keep = 1 - dampening)."""
    g = grad[i]
    if decay:
        g = g + weight_decay * p[i]
    if with_momentum:
        if first_step:
            v = g
        elif damp:
            v = buf[i] * momentum + keep * g
        else:
            v = buf[i] * momentum + g
        buf[i] = v
        g = g + momentum * v if nesterov else v
    p[i] = p[i] - lr * g


def adam_bias_corrections(step, lr, beta1, beta2):
    """(step_size, bias2_sqrt) of adam_update at step `step` (from 1), as Python floats."""
    return lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step)


def adam_update(p, grad, m, v, i, b1, b2, one_minus_b1, one_minus_b2, step_size, bias2_sqrt, eps,
                weight_decay, shrink, coupled, decoupled):
    """Weight decay is `coupled` (added to the gradient) or `decoupled` (p shrunk first)."""
    pi = p[i]
    g = grad[i]
    if decoupled:
        pi = pi * shrink
    if coupled:
        g = g + weight_decay * pi
    mi = m[i] * b1 + one_minus_b1 * g
    vi = v[i] * b2 + (one_minus_b2 * g) * g
    m[i] = mi
    v[i] = vi
    p[i] = pi - (step_size * mi) / (math.sqrt(vi) / bias2_sqrt + eps)
