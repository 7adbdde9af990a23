"""Batch normalisation layers (Ioffe & Szegedy 2015): BatchNorm1d and BatchNorm2d."""
from __future__ import annotations

import numpy as np

from ...autograd import Tensor
from .. import functional as F
from .activation import LeakyReLU, ReLU
from .module import Module, Parameter, _ShapePreserving

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(_ShapePreserving, Module):
    ndims = (2, 3, 4)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype))
            self.bias = Parameter(np.zeros(num_features, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = None

    def forward(self, x):
        return self._forward(x)

    def _fused_with(self, follower):
        # ReLU or LeakyReLU (as themselves, not subclasses that may change them) after this
        # module's own forward: the batch norm applies them as it stores.
        if type(self).forward is not _BatchNorm.forward:
            return None
        if type(follower) is ReLU:
            return lambda x: self._forward(x, "relu")
        if type(follower) is LeakyReLU and follower.negative_slope >= 0:
            return lambda x: self._forward(x, "leaky_relu", follower.negative_slope)
        return None

    def _forward(self, x, activation=None, negative_slope=0.01):
        ndim = x.ndim if isinstance(x, Tensor) else np.ndim(x)
        if ndim not in self.ndims:
            raise ValueError(f"{type(self).__name__}: expected a {' or '.join(f'{d}-D' for d in self.ndims)} "
                             f"input, got shape {tuple(x.shape)}")
        use_batch_stats = self.training or not self.track_running_stats
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if momentum is None:  # PyTorch's cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            use_batch_stats, momentum or 0.0, self.eps, activation=activation,
                            negative_slope=negative_slope)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs."""

    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs."""

    ndims = (4,)
