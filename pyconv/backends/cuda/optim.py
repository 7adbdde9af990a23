"""Optimiser steps on the GPU: one grid-stride kernel launch per parameter, in place, every
element following the reference's sequence of roundings with scalars of the arrays' dtype."""
from __future__ import annotations

from numba import cuda

from .._optim_rules import adam_bias_corrections, adam_update, sgd_update
from . import backend
from ._kernel_util import Kernels, per_dtype
from ._runtime import THREADS, blocks_for, dummy, flat, launch, scalar


_sgd_update = cuda.jit(device=True)(sgd_update)
_adam_update = cuda.jit(device=True)(adam_update)


@per_dtype
def kernels(dtype):
    ks = Kernels(dtype)

    @ks.add("fffssssnnnnnn")
    def sgd_kernel(p, grad, buf, lr, momentum, keep, weight_decay, decay, with_momentum, damp,
                   nesterov, first_step, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            _sgd_update(p, grad, buf, i, lr, momentum, keep, weight_decay, decay, with_momentum,
                        damp, nesterov, first_step)

    @ks.add("ffffsssssssssnnn")
    def adam_kernel(p, grad, m, v, b1, b2, one_minus_b1, one_minus_b2, step_size, bias2_sqrt, eps,
                    weight_decay, shrink, coupled, decoupled, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            _adam_update(p, grad, m, v, i, b1, b2, one_minus_b1, one_minus_b2, step_size,
                         bias2_sqrt, eps, weight_decay, shrink, coupled, decoupled)

    return ks


@backend.register
def sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, nesterov, weight_decay,
             first_step):
    for k, (p, g) in enumerate(zip(params, grads)):
        if not p.size:
            continue
        s = lambda v: scalar(p.dtype, v)  # noqa: E731
        # Without momentum the kernel never reads buf: a stand-in (not p itself, which the
        # simulator would copy back twice).
        buf = flat(momentum_buffers[k]) if momentum else dummy(p.dtype)
        launch(kernels(p.dtype).sgd_kernel, blocks_for(p.size), THREADS, flat(p), flat(g), buf,
               s(lr), s(momentum), s(1 - dampening), s(weight_decay), int(weight_decay != 0),
               int(momentum != 0), int(dampening != 0), int(nesterov), int(first_step), p.size)


@backend.register
def adam_step(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay,
              decoupled_weight_decay):
    step_size, bias2_sqrt = adam_bias_corrections(step, lr, beta1, beta2)
    coupled = int(weight_decay != 0 and not decoupled_weight_decay)
    decoupled = int(weight_decay != 0 and decoupled_weight_decay)
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        if not p.size:
            continue
        s = lambda value: scalar(p.dtype, value)  # noqa: E731
        launch(kernels(p.dtype).adam_kernel, blocks_for(p.size), THREADS, flat(p), flat(g),
               flat(m), flat(v), s(beta1), s(beta2), s(1 - beta1), s(1 - beta2), s(step_size),
               s(bias2_sqrt), s(eps), s(weight_decay), s(1 - lr * weight_decay), coupled,
               decoupled, p.size)
