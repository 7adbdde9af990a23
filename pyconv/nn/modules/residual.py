"""ResNet's basic residual block."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .container import Sequential
from .conv import Conv2d
from .module import Module
from .normalization import BatchNorm2d

__all__ = ["ResidualBlock"]


class ResidualBlock(Module):
    """ResNet's basic block (He et al. 2016): relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)),
    3x3 convolutions without bias; the shortcut is a 1x1 convolution + batch norm when the
    stride or the channel count changes, the identity otherwise. Names as torchvision's
    BasicBlock (conv1, bn1, conv2, bn2, downsample.0, downsample.1)."""

    def __init__(self, in_channels, out_channels, stride=1, dtype=np.float32):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, dtype=dtype)
        self.bn1 = BatchNorm2d(out_channels, dtype=dtype)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, dtype=dtype)
        self.bn2 = BatchNorm2d(out_channels, dtype=dtype)
        if stride != 1 or in_channels != out_channels:
            self.downsample = Sequential(
                Conv2d(in_channels, out_channels, 1, stride, bias=False, dtype=dtype),
                BatchNorm2d(out_channels, dtype=dtype),
            )
        else:
            self.downsample = None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)

    def output_shape(self, shape):
        return self.conv1.output_shape(shape)
