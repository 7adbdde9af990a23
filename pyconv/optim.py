"""Optimisers: SGD (momentum, dampening, Nesterov, weight decay), Adam and AdamW, with the
update rules of torch.optim.SGD, torch.optim.Adam and torch.optim.AdamW, so a pyconv model and a
PyTorch model that start from the same weights and see the same gradients stay equal step after
step (to rounding: torch orders some operations differently).

    opt = pyconv.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.zero_grad(); loss.backward(); opt.step()

A step is one kernel call over every parameter (``pyconv.ops.sgd_step`` / ``adam_step`` on the
backend of the parameters' arrays, NumPy or CuPy), updating the parameters and the state in
place. ``state_dict()`` / ``load_state_dict()`` hold the per-parameter buffers and step counts,
for exact resume.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .autograd import Tensor, array_module

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    def __init__(self, params, lr):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameter {i} is a {type(p).__name__}, not a Tensor")
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        self.params = params
        self.lr = lr
        self.state = [dict() for _ in params]  # per parameter: arrays and counters

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        live = [(p, state) for p, state in zip(self.params, self.state) if p.grad is not None]
        if live:
            self._step(live)

    def _step(self, live):
        """Updates every (parameter, state) pair of `live` (those with a gradient). Subclasses
        override it with one kernel call over all of them, or implement ``_update(p, grad,
        state)`` for one parameter at a time."""
        for p, state in live:
            self._update(p, p.grad, state)

    def _update(self, p, grad, state):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """{"lr": lr, "state": {"0": {name: array}, ...}} (keys are parameter positions)."""
        return {"lr": self.lr, "state": {str(i): dict(s) for i, s in enumerate(self.state)}}

    def load_state_dict(self, state: dict):
        """Restores what :meth:`state_dict` returned. All or nothing: a state that does not fit
        (ValueError) leaves the optimiser as it was."""
        op = f"{type(self).__name__}.load_state_dict"
        try:
            saved, lr = state["state"], float(state["lr"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{op}: not an optimiser state ({e!r})") from e
        if len(saved) != len(self.params):
            raise ValueError(f"{op}: the state is for {len(saved)} parameters, this optimiser has "
                             f"{len(self.params)}")
        states = []
        for i, p in enumerate(self.params):
            if str(i) not in saved:
                raise ValueError(f"{op}: the state has no entry for parameter {i}")
            restored = {}
            for name, value in saved[str(i)].items():
                if np.ndim(value) == 0:  # a counter: a number, or a 0-d array from a file
                    restored[name] = value.item() if hasattr(value, "item") else value
                    continue
                if tuple(value.shape) != p.shape:
                    raise ValueError(f"{op}: {name} of parameter {i} has shape "
                                     f"{tuple(value.shape)}, the parameter {p.shape}")
                restored[name] = array_module(p.data).asarray(value, dtype=p.dtype).copy()
            states.append(restored)
        self.lr = lr
        self.state[:] = states
        return self


class SGD(Optimizer):
    """Stochastic gradient descent, as torch.optim.SGD:
    g <- grad + weight_decay * p; buf <- momentum * buf + (1 - dampening) * g (buf = g at the
    first step); g <- g + momentum * buf with Nesterov, else buf; p <- p - lr * g."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False, dampening=0.0):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0 or dampening < 0:
            raise ValueError(f"SGD: momentum, weight_decay and dampening must be >= 0, got "
                             f"{momentum}, {weight_decay}, {dampening}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov=True needs a momentum > 0 and dampening 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.dampening = dampening

    def _step(self, live):
        hyper = dict(lr=self.lr, momentum=self.momentum, dampening=self.dampening,
                     nesterov=self.nesterov, weight_decay=self.weight_decay)
        if not self.momentum:
            ops.sgd_step([p.data for p, _ in live], [p.grad for p, _ in live], None, **hyper)
            return
        # Parameters whose buffer starts now take it as their gradient: a call of their own.
        starting = [(p, s) for p, s in live if "momentum_buffer" not in s]
        going = [(p, s) for p, s in live if "momentum_buffer" in s]
        for p, s in starting:
            s["momentum_buffer"] = array_module(p.data).empty_like(p.data)
        for first_step, group in ((True, starting), (False, going)):
            if not group:
                continue
            ops.sgd_step([p.data for p, _ in group], [p.grad for p, _ in group],
                         [s["momentum_buffer"] for _, s in group], first_step=first_step, **hyper)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), as torch.optim.Adam (weight decay added to the gradient, i.e.
    L2 regularisation; see AdamW for the decoupled form):
    m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"{type(self).__name__}: betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: eps and weight_decay must be >= 0, got "
                             f"{eps}, {weight_decay}")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def _step(self, live):
        by_step = {}  # parameters that joined later count their own steps: one call per count
        for p, state in live:
            if "step" not in state:
                xp = array_module(p.data)
                state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
            state["step"] += 1
            by_step.setdefault(state["step"], []).append((p, state))
        for t, group in by_step.items():
            ops.adam_step([p.data for p, _ in group], [p.grad for p, _ in group],
                          [s["exp_avg"] for _, s in group], [s["exp_avg_sq"] for _, s in group],
                          t, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                          weight_decay=self.weight_decay,
                          decoupled_weight_decay=self.decoupled_weight_decay)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW:
    p <- p * (1 - lr * weight_decay) before the Adam step, whose gradient has no decay term."""

    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
