"""The Dropout layer: random zeroing in training mode, the identity in evaluation mode."""
from __future__ import annotations

from .. import functional as F
from .module import Module, _ShapePreserving

__all__ = ["Dropout"]


class Dropout(_ShapePreserving, Module):
    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)
