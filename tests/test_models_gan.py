"""DCGAN / conditional GAN and the GAN training loop: architecture rules, shapes and ranges,
frozen networks in each half-step, the fixed noise batch, and a generator that learns."""
import numpy as np
import pytest

import pyconv
import pyconv.nn as nn
from pyconv import data
from pyconv.models import DCGAN
from pyconv.train import GANTrainer, gan_step


def small_gan(conditional=False, seed=0):
    pyconv.manual_seed(seed)
    return DCGAN(z_dim=8, image_size=8, width=8, conditional=conditional, num_classes=3, embed_dim=4)


def test_dcgan_rules():
    gan = DCGAN(image_size=32)
    g_layers, d_layers = list(gan.generator.net), list(gan.discriminator.net)
    every = g_layers + d_layers
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Linear)) for m in every)
    assert isinstance(g_layers[-1], nn.Tanh) and isinstance(g_layers[-2], nn.ConvTranspose2d)
    assert not any(isinstance(m, nn.LeakyReLU) for m in g_layers)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g_layers) == 3
    assert isinstance(d_layers[0], nn.Conv2d) and isinstance(d_layers[1], nn.LeakyReLU)  # no BN at the input
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d_layers) == 2
    assert all(m.stride in (2, (2, 2)) for m in d_layers[:-1] if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.ReLU) for m in d_layers)


@pytest.mark.parametrize("conditional", [False, True])
def test_shapes_and_ranges(conditional):
    gan = small_gan(conditional)
    labels = np.array([0, 1, 2, 1]) if conditional else None
    images = gan.sample(4, labels=labels)
    assert images.shape == (4, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert gan.discriminator(images * 2 - 1, labels).shape == (4,)
    if conditional:
        with pytest.raises(ValueError, match="labels"):
            gan.sample(4)
        z = gan.noise(3)
        by_label = [gan.sample(z=z, labels=np.full(3, k)) for k in range(3)]
        assert not np.allclose(by_label[0], by_label[1])  # the label reaches the generator


def test_conditional_discriminator_sees_the_label_at_input_and_features():
    """Cutting either path of the label (the first convolution's weights on the label planes,
    or the 1x1 convolution's weights on the label beside the last features) leaves the score
    still depending on the label through the other one."""
    images = np.random.default_rng(0).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)

    def scores_by_label(cut):
        gan = small_gan(conditional=True)
        d = gan.discriminator
        d.eval()
        first, joint = d.net[0], d.joint[0]
        if cut == "input":
            first.weight.data[:, 1:] = 0          # the image has 1 channel, the label planes follow
        else:
            joint.weight.data[:, joint.weight.shape[1] - 4:] = 0   # embed_dim 4 label planes last
        return [d(images, np.full(4, k)).data for k in range(3)]

    for cut in ("input", "features"):
        s0, s1, s2 = scores_by_label(cut)
        assert np.abs(s0 - s1).min() > 1e-4 and np.abs(s1 - s2).min() > 1e-4, cut


def test_gan_step_freezes_the_other_network():
    gan = small_gan(conditional=True)
    trainer = GANTrainer(gan, progress=False)
    seen = []

    def spy(opt_name):
        opt = trainer.optimizers[opt_name]
        original = opt.step

        def step():
            seen.append((opt_name,
                         any(p.grad is not None for p in gan.generator.parameters()),
                         any(p.grad is not None for p in gan.discriminator.parameters())))
            original()
        opt.step = step

    spy("generator")
    spy("discriminator")
    x = np.random.default_rng(0).uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    y = np.arange(16) % 3
    logs = gan_step(trainer, (x, y))
    # the discriminator step sees no generator gradients, the generator step none in D
    # (zero_grad clears only the stepping network's; the frozen one never gets any)
    assert seen[0] == ("discriminator", False, True)
    assert seen[1][0] == "generator" and seen[1][1]
    assert all(p.requires_grad for p in gan.parameters())
    assert set(logs) == {"loss_d", "loss_g", "D(x)", "D(G(z))"}


def test_fixed_noise_is_reused_and_survives_resume(tmp_path):
    gan = small_gan(conditional=True)
    trainer = GANTrainer(gan, fixed_samples=6, seed=3, progress=False)
    assert list(trainer.fixed_labels) == [0, 0, 1, 1, 2, 2]
    again = GANTrainer(small_gan(conditional=True), fixed_samples=6, seed=3, progress=False)
    np.testing.assert_array_equal(trainer.fixed_noise, again.fixed_noise)
    np.testing.assert_array_equal(trainer.sample_fixed(), trainer.sample_fixed())


def test_generator_learns_the_data():
    """On images that are all the same bright square, the generated images move from noise
    towards it: the mean distance to the target halves."""
    gan = small_gan()
    target = -np.ones((1, 1, 8, 8), np.float32)
    target[..., 2:6, 2:6] = 1
    x = np.repeat(target, 64, axis=0)
    trainer = GANTrainer(gan, lr=2e-3, fixed_samples=16, progress=False)
    before = np.abs(trainer.sample_fixed() * 2 - 1 - target).mean()
    trainer.fit(data.DataLoader((x, np.zeros(64, np.int64)), 16, shuffle=True, seed=0), epochs=20)
    after = np.abs(trainer.sample_fixed() * 2 - 1 - target).mean()
    assert after < 0.5 * before, (before, after)


def test_mode_seeking_keeps_the_noise_in_play():
    """On images that are all the same square, a plain GAN learns to draw that one image
    whatever the noise; with the mode-seeking term its samples stay apart."""
    from pyconv.recipes.common import mean_pairwise_distance

    target = -np.ones((1, 1, 8, 8), np.float32)
    target[..., 2:6, 2:6] = 1
    x = np.repeat(target, 64, axis=0)
    spread = {}
    for weight in (0.0, 1.0):
        trainer = GANTrainer(small_gan(), lr=2e-3, fixed_samples=16, mode_seeking=weight, progress=False)
        trainer.fit(data.DataLoader((x, np.zeros(64, np.int64)), 16, shuffle=True, seed=0), epochs=30)
        spread[weight] = mean_pairwise_distance(trainer.sample_fixed())
    assert spread[1.0] > 1.5 * spread[0.0], spread  # about 2.3 times
