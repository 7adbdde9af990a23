"""Activation layers: ReLU, LeakyReLU, PReLU (a learned slope per channel), ELU, Sigmoid,
Tanh, Softmax and LogSoftmax."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .module import Module, Parameter, _ShapePreserving

__all__ = ["ReLU", "LeakyReLU", "PReLU", "ELU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax"]


class ReLU(_ShapePreserving, Module):
    def forward(self, x):
        return F.relu(x)


class LeakyReLU(_ShapePreserving, Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)


class PReLU(_ShapePreserving, Module):
    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        super().__init__()
        self.weight = Parameter(np.full(num_parameters, init, dtype))

    def forward(self, x):
        return F.prelu(x, self.weight)


class ELU(_ShapePreserving, Module):
    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return F.elu(x, self.alpha)


class Sigmoid(_ShapePreserving, Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(_ShapePreserving, Module):
    def forward(self, x):
        return F.tanh(x)


class Softmax(_ShapePreserving, Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, self.dim)
