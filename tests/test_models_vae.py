"""Convolutional VAE: shapes, the ELBO's parts, the reparameterisation's gradients,
interpolation end points, and a loss that falls."""
import math

import numpy as np
import pytest

import pyconv
from pyconv import Tensor
from pyconv.models import VAE
from pyconv.optim import Adam


def small(likelihood="bernoulli"):
    pyconv.manual_seed(0)
    return VAE(latent_dim=3, image_size=8, width=8, likelihood=likelihood)


def images(n=8):
    x = np.zeros((n, 1, 8, 8), np.float32)
    for k in range(n):
        x[k, 0, k % 8, :] = 1  # a bar per row position
    return x


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes_and_ranges(likelihood):
    vae = small(likelihood)
    x = images()
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (8, 3)
    assert vae.decode(mu).shape == (8, 1, 8, 8)
    assert vae.elbo(x).shape == (8,)
    assert vae.sample(5).shape == (5, 1, 8, 8) and vae.reconstruct(x).shape == (8, 1, 8, 8)
    if likelihood == "bernoulli":
        s = vae.sample(5)
        assert s.min() >= 0 and s.max() <= 1


def test_elbo_is_likelihood_minus_kl():
    vae = small()
    x = images()
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    mu, logvar = vae.encode(x)
    z = vae.reparameterize(mu, logvar, rng_a)
    out = vae.decode(z).data
    p = 1 / (1 + np.exp(-out.astype(np.float64)))
    log_lik = (x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(8, -1).sum(axis=1)
    m, lv = mu.data.astype(np.float64), logvar.data.astype(np.float64)
    kl = -0.5 * (1 + lv - m ** 2 - np.exp(lv)).sum(axis=1)
    eps = np.random.default_rng(0).standard_normal(mu.shape)
    np.testing.assert_allclose(z.data, m + np.exp(lv / 2) * eps, rtol=1e-5, atol=1e-6)
    got = vae.log_likelihood(vae.decode(vae.reparameterize(mu, logvar, rng_b)), x).data
    np.testing.assert_allclose(got, log_lik, rtol=1e-4)
    assert np.all(kl >= 0) and np.all(log_lik - kl <= 0)
    pyconv.manual_seed(5)
    elbo = vae.elbo(x).data
    pyconv.manual_seed(5)
    out = vae.decode(vae.reparameterize(mu, logvar)).data
    p = 1 / (1 + np.exp(-out.astype(np.float64)))
    log_lik = (x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(8, -1).sum(axis=1)
    np.testing.assert_allclose(elbo, log_lik - kl, rtol=1e-4)


def test_reparameterisation_passes_gradients_to_mean_and_log_variance():
    vae = small()
    mu = Tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    logvar = Tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    vae.reparameterize(mu, logvar).sum().backward()
    np.testing.assert_allclose(mu.grad, 1)
    assert np.abs(logvar.grad).sum() > 0


def test_interpolation_ends_at_the_reconstructions():
    vae = small()
    x = images()
    path = vae.interpolate(x[0], x[3], steps=5)
    rec = vae.reconstruct(x[[0, 3]])
    assert path.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(path[0], rec[0], atol=1e-6)
    np.testing.assert_allclose(path[-1], rec[1], atol=1e-6)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_loss_falls(likelihood):
    vae = small(likelihood)
    x = images()
    opt = Adam(vae.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        loss = vae.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * losses[0], losses
    assert math.isfinite(losses[-1])
