"""SegNet (Badrinarayanan, Kendall & Cipolla 2017), small: an encoder of convolution + batch
norm + ReLU stages, each ending in 2x2 max pooling that remembers where each maximum came
from, and a mirrored decoder that upsamples with max-unpooling at those remembered positions
(no learned upsampling, so the boundaries stay where the encoder found them) followed by
convolutions that fill the sparse maps in. A 1x1 convolution gives per-pixel class scores.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..autograd import Tensor
from ..nn import functional as F

__all__ = ["SegNet"]


def _conv_bn_relu(c_in, c_out, dtype):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, dtype=dtype),
                         nn.BatchNorm2d(c_out, dtype=dtype), nn.ReLU())


class SegNet(nn.Module):
    """Images (N, C, H, W) -> class scores (N, num_classes, H, W); H and W divisible by
    2^len(widths).

        model = SegNet(in_channels=1, num_classes=4, widths=(16, 32))
        loss = F.cross_entropy(model(x), masks)      # masks (N, H, W) int
    """

    def __init__(self, in_channels=1, num_classes=4, widths=(16, 32, 64), dtype=np.float32):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, widths=list(widths))
        widths = list(widths)
        self.encoders = nn.Sequential(*[
            nn.Sequential(_conv_bn_relu(c_in, c, dtype), _conv_bn_relu(c, c, dtype))
            for c_in, c in zip([in_channels] + widths[:-1], widths)])
        self.decoders = nn.Sequential(*[
            nn.Sequential(_conv_bn_relu(c, c, dtype), _conv_bn_relu(c, c_out, dtype))
            for c, c_out in zip(widths[::-1], widths[::-1][1:] + [widths[0]])])
        self.classifier = nn.Conv2d(widths[0], num_classes, 1, dtype=dtype)

    @classmethod
    def from_config(cls, **config):
        return cls(**config)

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        remembered = []
        for stage in self.encoders:
            x = stage(x)
            shape = x.shape[2:]
            x, indices = F.max_pool2d(x, 2, return_indices=True)
            remembered.append((indices, shape))
        for stage, (indices, shape) in zip(self.decoders, reversed(remembered)):
            x = stage(F.max_unpool2d(x, indices, 2, output_size=shape))
        return self.classifier(x)

    def predict(self, x) -> np.ndarray:
        """Per-pixel classes (N, H, W)."""
        from ..autograd import no_grad

        was_training = self.training
        self.eval()
        try:
            with no_grad():
                return self(x).data.argmax(axis=1)
        finally:
            self.train(was_training)


def segmentation_scores(predicted, target, num_classes) -> dict:
    """Pixel accuracy and per-class / mean intersection-over-union of class maps."""
    predicted, target = np.asarray(predicted), np.asarray(target)
    ious = []
    for k in range(num_classes):
        union = np.sum((predicted == k) | (target == k))
        if union:
            ious.append(np.sum((predicted == k) & (target == k)) / union)
    return {"pixel_accuracy": float(np.mean(predicted == target)), "mean_iou": float(np.mean(ious)),
            "iou": [float(v) for v in ious]}
