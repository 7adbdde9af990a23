"""Optimisers: SGD (momentum, Nesterov, weight decay) and Adam, with the exact update rules of
torch.optim.SGD and torch.optim.Adam, so a pyconv model and a PyTorch model that start from the
same weights and see the same gradients stay equal step after step.

    opt = pyconv.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.zero_grad(); loss.backward(); opt.step()

Updates run in place on the parameters' arrays (NumPy or CuPy). ``state_dict()`` /
``load_state_dict()`` hold the per-parameter buffers and step counts, for exact resume.
"""
from __future__ import annotations

import math

import numpy as np

from .autograd import Tensor, array_module

__all__ = ["Optimizer", "SGD", "Adam"]


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
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
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
    """Stochastic gradient descent, as torch.optim.SGD (dampening 0):
    g <- grad + weight_decay * p; buf <- momentum * buf + g (buf = g at the first step);
    g <- g + momentum * buf with Nesterov, else buf; p <- p - lr * g."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def _update(self, p, grad, state):
        if self.weight_decay:
            grad = grad + self.weight_decay * p.data
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= self.momentum
                buf += grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), as torch.optim.Adam (weight decay added to the gradient, i.e.
    L2 regularisation, not AdamW):
    m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam: betas must lie in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def _update(self, p, grad, state):
        b1, b2 = self.betas
        if self.weight_decay:
            grad = grad + self.weight_decay * p.data
        if "step" not in state:
            xp = array_module(p.data)
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        denom = array_module(v).sqrt(v) / math.sqrt(1 - b2 ** t) + self.eps
        p.data -= (self.lr / (1 - b1 ** t)) * m / denom
