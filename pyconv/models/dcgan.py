"""DCGAN (Radford, Metz & Chintala 2016) and its class-conditional variant (Mirza & Osindero
2014): a generator that maps noise to images and a discriminator that scores images as real.

The DCGAN rules: no pooling (strided convolutions downsample, transpose convolutions
upsample), no fully connected hidden layers, batch normalisation everywhere except at the
generator's output and the discriminator's input, ReLU and a tanh output in the generator,
LeakyReLU(0.2) in the discriminator. Images are in [-1, 1] (the tanh's range).
"""
from __future__ import annotations

import numpy as np

from .. import nn
from .. import random as _random
from ..autograd import Tensor, broadcast_to, concatenate, no_grad

__all__ = ["DCGAN", "Generator", "Discriminator"]


def _doublings(image_size):
    d = int(round(np.log2(image_size / 4)))
    if image_size < 8 or 4 * 2 ** d != image_size:
        raise ValueError(f"DCGAN: image_size must be 4 * 2^k >= 8 (8, 16, 32, 64), got {image_size}")
    return d


def _label_maps(embedding, labels, height, width):
    """The labels' embeddings (N, E) spread over an (N, E, H, W) stack of constant planes."""
    e = embedding(labels)
    n, dim = e.shape
    return broadcast_to(e.reshape(n, dim, 1, 1), (n, dim, height, width))


class Generator(nn.Module):
    """Noise (N, z_dim) [+ labels (N,)] -> images (N, C, S, S) in [-1, 1]: a 4x4 transpose
    convolution from the 1x1 noise "image", then stride-2 4x4 transpose convolutions that
    double the size and halve the channels, each but the last followed by batch norm + ReLU."""

    def __init__(self, z_dim=32, channels=1, image_size=16, width=32, num_classes=0, embed_dim=10,
                 dtype=np.float32):
        super().__init__()
        d = _doublings(image_size)
        self.z_dim, self.num_classes = z_dim, num_classes
        n_in = z_dim + (embed_dim if num_classes else 0)
        if num_classes:
            self.embed = nn.Embedding(num_classes, embed_dim, dtype=dtype)
        c = width * 2 ** (d - 1)
        layers = [nn.ConvTranspose2d(n_in, c, 4, 1, 0, bias=False, dtype=dtype),
                  nn.BatchNorm2d(c, dtype=dtype), nn.ReLU()]
        for _ in range(d - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False, dtype=dtype),
                       nn.BatchNorm2d(c // 2, dtype=dtype), nn.ReLU()]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, dtype=dtype), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, labels=None):
        z = z if isinstance(z, Tensor) else Tensor(z)
        if self.num_classes:
            if labels is None:
                raise ValueError("Generator: a conditional generator needs labels")
            z = concatenate([z, self.embed(labels)], axis=1)
        return self.net(z.reshape(z.shape[0], z.shape[1], 1, 1))


class Discriminator(nn.Module):
    """Images (N, C, S, S) [+ labels (N,)] -> real/fake logits (N,): stride-2 4x4 convolutions
    that halve the size and double the channels down to 4x4 (batch norm after each but the
    first), then a 4x4 convolution to one logit. A conditional discriminator sees the label's
    embedding twice: as extra constant planes beside the image, and again beside the 4x4
    features, which a 1x1 convolution (+ batch norm, LeakyReLU) mixes with it before the last
    convolution scores them, so that the judgement "is this a real image of class k" does not
    rest only on what the first layer kept of the label. (Planes concatenated straight before
    the last, linear, convolution would only add a per-class constant to the logit.)"""

    def __init__(self, channels=1, image_size=16, width=32, num_classes=0, embed_dim=10,
                 dtype=np.float32):
        super().__init__()
        d = _doublings(image_size)
        self.num_classes = num_classes
        n_in = channels + (embed_dim if num_classes else 0)
        if num_classes:
            self.embed = nn.Embedding(num_classes, embed_dim, dtype=dtype)
        c = width
        layers = [nn.Conv2d(n_in, c, 4, 2, 1, dtype=dtype), nn.LeakyReLU(0.2)]
        for _ in range(d - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False, dtype=dtype),
                       nn.BatchNorm2d(2 * c, dtype=dtype), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [nn.Conv2d(c, 1, 4, 1, 0, dtype=dtype)]
        self.net = nn.Sequential(*layers)
        if num_classes:
            self.joint = nn.Sequential(nn.Conv2d(c + embed_dim, c, 1, bias=False, dtype=dtype),
                                       nn.BatchNorm2d(c, dtype=dtype), nn.LeakyReLU(0.2))

    def forward(self, x, labels=None):
        x = x if isinstance(x, Tensor) else Tensor(x)
        if not self.num_classes:
            return self.net(x).reshape(x.shape[0])
        if labels is None:
            raise ValueError("Discriminator: a conditional discriminator needs labels")
        h = concatenate([x, _label_maps(self.embed, labels, x.shape[2], x.shape[3])], axis=1)
        h = self.net[:-1](h)  # the features (a Sequential, which fuses batch norm + LeakyReLU)
        h = concatenate([h, _label_maps(self.embed, labels, h.shape[2], h.shape[3])], axis=1)
        return self.net[-1](self.joint(h)).reshape(x.shape[0])


def _dcgan_init(module):
    """DCGAN's initialisation: conv weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    rng = _random.generator()
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.weight.data[...] = rng.normal(0, 0.02, m.weight.shape)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data[...] = rng.normal(1, 0.02, m.weight.shape)
            m.bias.data[...] = 0


class DCGAN(nn.Module):
    """A generator and a discriminator (``.generator``, ``.discriminator``); calling the model
    runs the generator. ``conditional=True`` (with `num_classes`) makes it a class-conditional
    GAN: both networks also get the label, through a learned embedding concatenated to the
    noise, and to the discriminator's input planes and (through a 1x1 convolution) to its last
    features.

        gan = DCGAN(z_dim=32, image_size=16, conditional=True, num_classes=10)
        images = gan.sample(16, labels=np.arange(16) % 10)    # (16, 1, 16, 16) in [0, 1]

    Train it with :class:`pyconv.train.GANTrainer`.
    """

    def __init__(self, z_dim=32, channels=1, image_size=16, width=32, conditional=False,
                 num_classes=10, embed_dim=10, dtype=np.float32):
        super().__init__()
        self.config = dict(z_dim=z_dim, channels=channels, image_size=image_size, width=width,
                           conditional=conditional, num_classes=num_classes, embed_dim=embed_dim)
        k = num_classes if conditional else 0
        self.z_dim, self.conditional, self.num_classes = z_dim, conditional, num_classes
        self.generator = Generator(z_dim, channels, image_size, width, k, embed_dim, dtype)
        self.discriminator = Discriminator(channels, image_size, width, k, embed_dim, dtype)
        _dcgan_init(self)

    @classmethod
    def from_config(cls, **config):
        return cls(**config)

    def forward(self, z, labels=None):
        return self.generator(z, labels)

    def noise(self, n, rng=None):
        """n noise vectors (n, z_dim) ~ N(0, I), from `rng` or pyconv's generator."""
        rng = rng or _random.generator()
        return rng.standard_normal((n, self.z_dim)).astype(self.generator.net[0].weight.dtype)

    def sample(self, n=None, labels=None, z=None) -> np.ndarray:
        """Images (n, C, S, S) in [0, 1] from noise `z` (drawn when None), in eval mode (batch
        norm uses its running statistics) without a graph; a conditional model needs `labels`."""
        if self.conditional and labels is None:
            raise ValueError("DCGAN.sample: a conditional model needs labels")
        if z is None:
            n = n if n is not None else len(labels)
            z = self.noise(n)
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                out = self.generator(z, None if labels is None else np.asarray(labels, np.int64))
        finally:
            self.train(was_training)
        return (out.data + 1) / 2
