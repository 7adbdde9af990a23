"""Weight penalties R(W) for regularised training, L = mean loss + lambda R(W): add them
to the loss.

Given a Module, the penalties cover its weights (parameters whose name ends in "weight",
as is usual: biases and normalisation shifts are not penalised); given an iterable of Tensors,
they cover exactly those.
"""
from __future__ import annotations

__all__ = ["l1_penalty", "l2_penalty", "elastic_net_penalty"]


def _weights(params):
    from .modules import Module

    if isinstance(params, Module):
        return [p for name, p in params.named_parameters() if name.split(".")[-1].startswith("weight")]
    params = list(params)
    if not params:
        raise ValueError("penalty: no parameters given")
    return params


def _total(terms):
    total = None
    for t in terms:
        total = t if total is None else total + t
    return total


def l1_penalty(params, strength=1.0):
    """strength * sum |w| (lasso: drives weights to exactly zero)."""
    return _total((p.abs()).sum() for p in _weights(params)) * strength


def l2_penalty(params, strength=1.0):
    """strength * sum w^2 (ridge / weight decay: R(W) = sum_k sum_l W_kl^2)."""
    return _total((p * p).sum() for p in _weights(params)) * strength


def elastic_net_penalty(params, l1_strength=1.0, l2_strength=1.0):
    """l1_strength * sum |w| + l2_strength * sum w^2."""
    params = _weights(params)
    return l1_penalty(params, l1_strength) + l2_penalty(params, l2_strength)
