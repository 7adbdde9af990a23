"""A CNN that finds sequence motifs in DNA (as in DeepBind, Alipanahi et al. 2015): a 1-D
convolution over the one-hot sequence (4 rows A, C, G, T) whose filters act as learned
position weight matrices, ReLU, the maximum over positions (a motif counts wherever it
occurs), and a linear classifier. After training the first-layer filters can be read as
motifs: the heat map of a filter lights up at the bases of the motif it detects.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..autograd import Tensor
from ..nn import functional as F

__all__ = ["MotifCNN"]


class MotifCNN(nn.Module):
    """One-hot DNA (N, 4, L) -> class scores (N, num_classes).

        model = MotifCNN(num_classes=3, n_filters=16, filter_size=12)
        filters = model.filters()       # (16, 4, 12): rows A, C, G, T
    """

    def __init__(self, num_classes=3, n_filters=16, filter_size=12, dtype=np.float32):
        super().__init__()
        self.config = dict(num_classes=num_classes, n_filters=n_filters, filter_size=filter_size)
        self.conv = nn.Conv1d(4, n_filters, filter_size, dtype=dtype)
        self.classifier = nn.Linear(n_filters, num_classes, dtype=dtype)

    @classmethod
    def from_config(cls, **config):
        return cls(**config)

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        h = F.relu(self.conv(x))
        n, c, length = h.shape
        # the maximum over positions, as a 1 x L max pooling (its gradient keeps the dtype)
        return self.classifier(F.max_pool2d(h.reshape(n, c, 1, length), (1, length)).reshape(n, c))

    def filters(self) -> np.ndarray:
        """The first-layer filters (n_filters, 4, filter_size), rows A, C, G, T."""
        return np.array(self.conv.weight.data)
