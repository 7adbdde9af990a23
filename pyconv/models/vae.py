"""A convolutional variational autoencoder (Kingma & Welling 2014).

The encoder maps an image to the mean and log-variance of a diagonal Gaussian q(z | x); a
latent z = mu + sigma * eps (the reparameterisation, so gradients flow through the sample)
is decoded to the parameters of p(x | z): Bernoulli probabilities per pixel (for images in
[0, 1], binarised or not) or Gaussian means with one learned standard deviation. Training
maximises the evidence lower bound

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || N(0, I))  <=  log p(x),

reported in nats per image.
"""
from __future__ import annotations

import math

import numpy as np

from .. import nn
from .. import random as _random
from ..autograd import Tensor, array_module, no_grad
from ..nn import functional as F

__all__ = ["VAE"]


class VAE(nn.Module):
    """Encoder: stride-2 4x4 convolutions (ReLU) from image_size down to 4x4, then a linear
    layer to the mean and log-variance of q(z | x) (latent_dim each). Decoder: a linear layer
    back to 4x4 feature maps, then stride-2 4x4 transpose convolutions up to the image.

    likelihood "bernoulli": the decoder's outputs are logits of per-pixel probabilities;
    "gaussian": they are means, with one learned log standard deviation for all pixels.

        vae = VAE(latent_dim=8, image_size=16)
        loss = -vae.elbo(x).mean()          # nats per image
        grid = vae.interpolate(x[0], x[1], steps=8)
    """

    def __init__(self, latent_dim=8, channels=1, image_size=16, width=32, likelihood="bernoulli",
                 dtype=np.float32):
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"VAE: likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        d = int(round(math.log2(image_size / 4)))
        if image_size < 8 or 4 * 2 ** d != image_size:
            raise ValueError(f"VAE: image_size must be 4 * 2^k >= 8, got {image_size}")
        self.config = dict(latent_dim=latent_dim, channels=channels, image_size=image_size,
                           width=width, likelihood=likelihood)
        self.latent_dim, self.likelihood = latent_dim, likelihood
        self.image_shape = (channels, image_size, image_size)
        enc, c_in, c = [], channels, width
        for _ in range(d):
            enc += [nn.Conv2d(c_in, c, 4, 2, 1, dtype=dtype), nn.ReLU()]
            c_in, c = c, 2 * c
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.top_channels = c_in
        self.to_moments = nn.Linear(c_in * 16, 2 * latent_dim, dtype=dtype)
        self.from_latent = nn.Linear(latent_dim, c_in * 16, dtype=dtype)
        dec, c = [], c_in
        for i in range(d):
            last = i == d - 1
            dec += [nn.ConvTranspose2d(c, channels if last else c // 2, 4, 2, 1, dtype=dtype)]
            if not last:
                dec.append(nn.ReLU())
            c //= 2
        self.decoder = nn.Sequential(*dec)
        if likelihood == "gaussian":
            self.log_sigma = nn.Parameter(np.full((1,), -1.0, dtype))

    @classmethod
    def from_config(cls, **config):
        return cls(**config)

    def encode(self, x):
        """-> (mu, logvar), each (N, latent_dim), of q(z | x)."""
        h = self.to_moments(self.encoder(x if isinstance(x, Tensor) else Tensor(x)))
        return h[:, :self.latent_dim], h[:, self.latent_dim:]

    def reparameterize(self, mu, logvar, rng=None):
        """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I): a sample of q(z | x) through
        which gradients reach mu and logvar."""
        rng = rng or _random.generator()
        eps = rng.standard_normal(mu.shape).astype(mu.dtype)  # on the host: one stream everywhere
        return mu + (logvar * 0.5).exp() * Tensor(array_module(mu.data).asarray(eps))

    def decode(self, z):
        """Latents (N, latent_dim) -> the decoder's raw outputs (N, C, H, W): Bernoulli logits
        or Gaussian means."""
        z = z if isinstance(z, Tensor) else Tensor(z)
        h = F.relu(self.from_latent(z)).reshape(z.shape[0], self.top_channels, 4, 4)
        return self.decoder(h)

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def log_likelihood(self, out, x):
        """log p(x | z) per image (N,), in nats, from the decoder's outputs."""
        x = x.data if isinstance(x, Tensor) else x
        n = x.shape[0]
        if self.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(out, x.astype(out.dtype, copy=False), reduction="none")
            return -nll.reshape(n, -1).sum(axis=1)
        sq = ((out - x) ** 2).reshape(n, -1).sum(axis=1)
        d = int(np.prod(x.shape[1:]))
        return sq * (-0.5) * (self.log_sigma * -2).exp() - self.log_sigma * d - 0.5 * d * math.log(2 * math.pi)

    def elbo(self, x):
        """The evidence lower bound per image (N,), in nats (one latent sample each)."""
        out, mu, logvar = self(x)
        return self.log_likelihood(out, x) - F.kl_normal(mu, logvar, reduction="none")

    def loss(self, x):
        """-ELBO averaged over the batch: the training objective."""
        return -self.elbo(x).mean()

    def _mean_image(self, out):
        return F.sigmoid(out).data if self.likelihood == "bernoulli" else out.data

    def _no_grad_eval(self, fn):
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                return fn()
        finally:
            self.train(was_training)

    def sample(self, n, rng=None) -> np.ndarray:
        """n images (the decoder's mean for z ~ N(0, I)), (n, C, H, W)."""
        rng = rng or _random.generator()
        z = rng.standard_normal((n, self.latent_dim)).astype(self.to_moments.weight.dtype)
        return self._no_grad_eval(lambda: self._mean_image(self.decode(z)))

    def reconstruct(self, x) -> np.ndarray:
        """The decoder's mean at the encoder's mean: x -> x_hat, (N, C, H, W)."""
        return self._no_grad_eval(lambda: self._mean_image(self.decode(self.encode(x)[0])))

    def interpolate(self, x1, x2, steps=8) -> np.ndarray:
        """Images decoded along the straight line between the latent means of x1 and x2
        (each (C, H, W) or (1, C, H, W)) -> (steps, C, H, W), x1's end first."""
        def run():
            both = np.concatenate([np.reshape(x1, (1,) + self.image_shape),
                                   np.reshape(x2, (1,) + self.image_shape)]).astype(self.to_moments.weight.dtype)
            mu = self.encode(both)[0].data
            t = np.linspace(0, 1, steps, dtype=mu.dtype)[:, None]
            return self._mean_image(self.decode((1 - t) * mu[0] + t * mu[1]))
        return self._no_grad_eval(run)
