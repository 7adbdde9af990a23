"""LeNet-5, the classic convolutional classifier."""
from __future__ import annotations

import numpy as np

from .. import nn

__all__ = ["LeNet5"]


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998): C1 6@5x5 -> S2 2x2 -> C3 16@5x5 ->
    S4 2x2 -> F5 120 -> F6 84 -> output, on 32x32 inputs (4704 and 1600 neurons after C1 and C3).

    The modern variant: ReLU activations and max pooling (``activation="tanh", pool="avg"``
    gives the 1998 choice). For 28x28 MNIST pass ``padding=2`` (C1 pads the image to 32x32);
    the 8x8 digits are upsampled to 32x32 (see pyconv.data / benchmarks).
    """

    children_in_sequence = True  # forward = classifier(features(x)): nn.summary lists each layer

    def __init__(self, num_classes=10, in_channels=1, padding=0, activation="relu", pool="max",
                 dtype=np.float32):
        super().__init__()
        if activation not in ("relu", "tanh") or pool not in ("max", "avg"):
            raise ValueError(f"LeNet5: activation must be 'relu'|'tanh' and pool 'max'|'avg', "
                             f"got {activation!r}, {pool!r}")
        act = nn.ReLU if activation == "relu" else nn.Tanh
        pooling = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=padding, dtype=dtype), act(), pooling(2),
            nn.Conv2d(6, 16, 5, dtype=dtype), act(), pooling(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120, dtype=dtype), act(),
            nn.Linear(120, 84, dtype=dtype), act(),
            nn.Linear(84, num_classes, dtype=dtype),
        )

    def forward(self, x):
        return self.classifier(self.features(x))

    def output_shape(self, shape):
        return self.classifier.output_shape(self.features.output_shape(shape))
