"""The gated PixelCNN (van den Oord et al. 2016, "Conditional image generation with PixelCNN
decoders"): an autoregressive model p(x) = prod_i p(x_i | x_1 .. x_{i-1}) over the pixels in
raster order (row by row, left to right), every conditional computed at once by masked
convolutions.

A single stack of masked k x k convolutions has a blind spot: pixels above and to the right
of the current one that no layer ever reaches. The gated PixelCNN avoids it with two stacks:

- the vertical stack sees every pixel in the rows above (a k x k kernel whose mask keeps the
  rows above the centre; from the second layer on also the centre row, which the first
  layer's features there hold only rows further up), its reach growing k // 2 rows and
  columns per layer;
- the horizontal stack sees the pixels to the left in the current row (a 1 x k kernel: mask
  "A" in the first layer hides the current pixel itself, mask "B" afterwards lets the
  features computed there through) and receives the vertical stack's features at each layer.

Each layer combines its halves with the gated activation tanh(a) * sigmoid(b); a class
label, when given, adds a learned per-layer bias to both. The horizontal stack carries a
residual connection; a 1x1 ReLU head gives either one Bernoulli logit per pixel (binarised
images) or 256 logits (8-bit grey levels).
"""
from __future__ import annotations

import math

import numpy as np

from .. import nn, ops
from .. import random as _random
from ..autograd import Tensor, array_module, no_grad
from ..nn import functional as F
from ..nn.modules.conv import masked_conv2d

__all__ = ["PixelCNN", "VerticalMaskedConv2d"]


class VerticalMaskedConv2d(nn.Conv2d):
    """A k x k convolution that sees only the rows above the output pixel (mask "A") or the
    rows above and the output pixel's own row, all of its columns (mask "B")."""

    def __init__(self, mask_type, in_channels, out_channels, kernel_size, dtype=np.float32):
        if mask_type not in ("A", "B"):
            raise ValueError(f"VerticalMaskedConv2d: mask_type must be 'A' or 'B', got {mask_type!r}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, dtype=dtype)
        self.mask_type = mask_type
        mask = np.zeros((kernel_size, kernel_size), dtype)
        mask[:kernel_size // 2 + (mask_type == "B")] = 1
        self.mask = mask

    def forward(self, x):
        return masked_conv2d(x, self.weight, self.mask, self.bias, *self._conv_args())


class GatedLayer(nn.Module):
    """One gated layer: vertical and horizontal masked convolutions, the vertical-to-horizontal
    1x1 link, the gates, the horizontal 1x1 output and (after the first layer) its residual."""

    def __init__(self, in_channels, channels, kernel_size, first, num_classes=0, dtype=np.float32):
        super().__init__()
        mask = "A" if first else "B"
        self.first = first
        self.vertical = VerticalMaskedConv2d(mask, in_channels, 2 * channels, kernel_size, dtype=dtype)
        self.horizontal = nn.MaskedConv2d(mask, in_channels, 2 * channels, (1, kernel_size),
                                          padding=(0, kernel_size // 2), dtype=dtype)
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1, dtype=dtype)
        self.horizontal_out = nn.Conv2d(channels, channels, 1, dtype=dtype)
        if num_classes:
            self.label_bias = nn.Embedding(num_classes, 2 * channels, dtype=dtype)
            self.label_bias.weight.data *= 0.1
        self.num_classes = num_classes

    def forward(self, v, h, labels=None, vertical_out=True):
        """(the vertical stack's output, or None where ``vertical_out`` is False because no
        layer follows to read it; the horizontal stack's output)."""
        v_feat = self.vertical(v)
        h_feat = self.horizontal(h) + self.vertical_to_horizontal(v_feat)
        if self.num_classes:
            bias = self.label_bias(labels)
            bias = bias.reshape(bias.shape[0], bias.shape[1], 1, 1)
            v_feat, h_feat = v_feat + bias, h_feat + bias
        h_out = self.horizontal_out(F.gated_tanh(h_feat))
        return F.gated_tanh(v_feat) if vertical_out else None, h_out if self.first else h_out + h


class PixelCNN(nn.Module):
    """Gated PixelCNN for one-channel images.

    levels 2: binarised images (x in {0, 1}), a Bernoulli logit per pixel; levels 256: grey
    levels x in {0, 1/255, ..., 1}, a 256-way softmax per pixel. num_classes > 0 makes it
    class-conditional (``labels`` then go with every call).

        model = PixelCNN(channels=32, n_layers=5, kernel_size=5)
        loss = model.bits_per_dim(x).mean()     # the training objective
        images = model.sample(16)               # raster order, one network evaluation per pixel
    """

    def __init__(self, image_size=16, levels=2, channels=32, n_layers=5, kernel_size=5, hidden=64,
                 num_classes=0, dtype=np.float32):
        super().__init__()
        if levels not in (2, 256):
            raise ValueError(f"PixelCNN: levels must be 2 (binarised) or 256, got {levels}")
        if kernel_size % 2 == 0 or kernel_size < 3:
            raise ValueError(f"PixelCNN: kernel_size must be odd and >= 3, got {kernel_size}")
        self.config = dict(image_size=image_size, levels=levels, channels=channels,
                           n_layers=n_layers, kernel_size=kernel_size, hidden=hidden,
                           num_classes=num_classes)
        self.image_size, self.levels, self.num_classes = image_size, levels, num_classes
        self.n_layers, self.kernel_size = n_layers, kernel_size
        self.layers = nn.Sequential(*[
            GatedLayer(1 if i == 0 else channels, channels, kernel_size, i == 0, num_classes, dtype)
            for i in range(n_layers)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 1, dtype=dtype), nn.ReLU(),
                                  nn.Conv2d(hidden, 1 if levels == 2 else 256, 1, dtype=dtype))

    @classmethod
    def from_config(cls, **config):
        return cls(**config)

    @property
    def rows_of_context(self):
        """How many rows above a pixel can influence its prediction."""
        return self.n_layers * (self.kernel_size // 2)

    def forward(self, x, labels=None):
        """Images (N, 1, H, W) -> logits: (N, 1, H, W) for levels 2, (N, 256, H, W) for 256.
        The logits at pixel i depend only on the pixels before i in raster order."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        if self.num_classes and labels is None:
            raise ValueError("PixelCNN: a class-conditional model needs labels")
        v = h = x * 2 - 1  # centred inputs
        for i, layer in enumerate(self.layers):
            v, h = layer(v, h, labels, vertical_out=i + 1 < len(self.layers))
        return self.head(h)

    def log_prob(self, x, labels=None):
        """log p(x) per image (N,), in nats."""
        x = x.data if isinstance(x, Tensor) else array_module(x).asarray(x)
        logits = self(x, labels)
        n = x.shape[0]
        if self.levels == 2:
            nll = F.binary_cross_entropy_with_logits(logits, x.astype(logits.dtype), reduction="none")
        else:
            target = array_module(x).rint(x[:, 0] * 255).astype(np.int64)
            nll = F.cross_entropy(logits, target, reduction="none")
        return -nll.reshape(n, -1).sum(axis=1)

    def bits_per_dim(self, x, labels=None):
        """-log2 p(x) / (number of pixels) per image (N,): the usual figure of merit."""
        d = int(np.prod(np.shape(x)[1:]))
        return self.log_prob(x, labels) * (-1 / (d * math.log(2)))

    def loss(self, x, labels=None):
        return self.bits_per_dim(x, labels).mean()

    def sample(self, n, labels=None, temperature=1.0, rng=None) -> np.ndarray:
        """n images (n, 1, S, S) in [0, 1], drawn pixel by pixel in raster order.

        Each pixel costs one network evaluation on the strip of rows that can influence it
        (``rows_of_context`` rows above plus its own row), so the cost per pixel stays the same
        however many pixels are already drawn."""
        rng = rng or _random.generator()
        S = self.image_size
        dtype = self.head[1].weight.dtype
        if self.num_classes:
            if labels is None:
                raise ValueError("PixelCNN.sample: a class-conditional model needs labels")
            labels = np.broadcast_to(np.asarray(labels, np.int64), (n,)).copy()
        x = np.zeros((n, 1, S, S), dtype)
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                for i in range(S):
                    top = max(0, i - self.rows_of_context)
                    for j in range(S):
                        logits = self(x[:, :, top:i + 1], labels).data[:, :, i - top, j] / temperature
                        x[:, 0, i, j] = self._draw(logits, rng)
        finally:
            self.train(was_training)
        return x

    def _draw(self, logits, rng):
        logits = np.asarray(logits, np.float64)
        if self.levels == 2:
            return rng.random(len(logits)) < 1 / (1 + np.exp(-logits[:, 0]))
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        u = rng.random((len(p), 1))
        return np.minimum((p.cumsum(axis=1) < u).sum(axis=1), 255) / 255
