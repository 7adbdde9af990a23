"""Optimiser steps of the "numba" backend: one parallel pass per parameter, in place. The
scalars are given the arrays' dtype first, and each element follows the reference's sequence
of roundings (Numba compiles without fused multiply-adds), so results are bit for bit the
reference's."""
from __future__ import annotations

from numba import prange

from .._optim_rules import adam_bias_corrections, adam_update, sgd_update
from . import backend
from ._jit import helper, kernel


_sgd_update = helper(sgd_update)
_adam_update = helper(adam_update)


@kernel
def _sgd(p, grad, buf, lr, momentum, keep, weight_decay, decay, with_momentum, damp, nesterov,
         first_step):
    for i in prange(p.size):
        _sgd_update(p, grad, buf, i, lr, momentum, keep, weight_decay, decay, with_momentum, damp,
                    nesterov, first_step)


@kernel
def _adam(p, grad, m, v, b1, b2, one_minus_b1, one_minus_b2, step_size, bias2_sqrt, eps,
          weight_decay, shrink, coupled, decoupled):
    for i in prange(p.size):
        _adam_update(p, grad, m, v, i, b1, b2, one_minus_b1, one_minus_b2, step_size, bias2_sqrt,
                     eps, weight_decay, shrink, coupled, decoupled)


@backend.register
def sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, nesterov, weight_decay,
             first_step):
    for k, (p, g) in enumerate(zip(params, grads)):
        t = p.dtype.type
        buf = momentum_buffers[k].reshape(-1) if momentum else p.reshape(-1)[:0]
        _sgd(p.reshape(-1), g.reshape(-1), buf, t(lr), t(momentum), t(1 - dampening),
             t(weight_decay), weight_decay != 0, momentum != 0, dampening != 0, nesterov,
             first_step)


@backend.register
def adam_step(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay,
              decoupled_weight_decay):
    step_size, bias2_sqrt = adam_bias_corrections(step, lr, beta1, beta2)
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        t = p.dtype.type
        _adam(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), t(beta1), t(beta2),
              t(1 - beta1), t(1 - beta2), t(step_size), t(bias2_sqrt), t(eps), t(weight_decay),
              t(1 - lr * weight_decay), weight_decay != 0 and not decoupled_weight_decay,
              weight_decay != 0 and decoupled_weight_decay)
