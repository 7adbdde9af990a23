"""Recipes of the generative models: DCGAN, the conditional GAN, the VAE and the gated PixelCNN."""
from __future__ import annotations

import os

import numpy as np

from .. import pictures
from .common import (LN2, Recipe, _batches, _eval_mode, bernoulli_baseline_nats, class_match,
                     grey_level_baseline_bits, load_images, within_class_spread)


class DCGANRecipe(Recipe):
    name = "dcgan"
    description = "DCGAN on the digits (sample grid)"
    epochs, batch_size, lr = 40, 64, 5e-4
    conditional = False
    mode_seeking = 0.0  # weight of the generator's term against ignoring its noise (see gan_step)

    def load_data(self, spec, seed=0, limit=None):
        size = 32 if spec.startswith("mnist:") else 16
        x_train, y_train, x_test, y_test = load_images(spec, size, seed, limit)
        return {"train": (x_train * 2 - 1, y_train), "test": (x_test * 2 - 1, y_test),
                "image_size": size}

    def config(self, data):
        return {"image_size": data["image_size"], "conditional": self.conditional}

    def build(self, config):
        from ..models import DCGAN

        return DCGAN(**config)

    def trainer(self, model, lr, **kwargs):
        from ..train import GANTrainer

        return GANTrainer(model, lr=lr, fixed_samples=100 if self.conditional else 64,
                          mode_seeking=self.mode_seeking, **kwargs)

    def epoch_metrics(self, trainer, data, out):
        """The fixed noise batch's samples after every epoch (out/epochs/), comparable
        picture to picture."""
        folder = os.path.join(out, "epochs")
        os.makedirs(folder, exist_ok=True)
        self.save_samples(trainer, os.path.join(folder, f"samples_{trainer.epoch:03d}.png"))
        return {}

    def save_samples(self, trainer, path):
        """The fixed noise batch's samples; a conditional model's row k is class k."""
        if self.conditional:
            rows = -(-len(trainer.fixed_labels) // 10)
            labels = [f"class {k}" for k in trainer.fixed_labels[::10][:rows]]
            pictures.save_grid(trainer.sample_fixed(), path, nrow=10, row_labels=labels)
        else:
            pictures.save_grid(trainer.sample_fixed(), path, nrow=8)

    def pictures(self, trainer, data, out):
        path = os.path.join(out, "samples.png")
        self.save_samples(trainer, path)
        return [path, os.path.join(out, "epochs")]

    def sample(self, model, n, label=None, temperature=1.0, rng=None):
        labels = None
        if model.conditional:
            labels = np.full(n, label, np.int64) if label is not None else np.arange(n) % model.num_classes
        elif label is not None:
            raise ValueError("dcgan: --label needs a conditional model (cgan)")
        z = model.noise(n, rng)
        return model.sample(z=z, labels=labels), labels


class CGANRecipe(DCGANRecipe):
    name = "cgan"
    description = "class-conditional DCGAN on the digits (class-by-class grid, sample accuracy)"
    conditional = True
    # without it the generator leans on the label and draws much the same digit whatever the
    # noise; 0.3 widens each class's variety to the real digits' and keeps ~88% of samples in
    # their class (1.0 pushed that under 75%)
    mode_seeking = 0.3

    def summary(self, trainer, data):
        """Accuracy of an independently trained classifier on generated samples labelled with
        the class they were conditioned on, and the samples' variety within each class against
        the real training images'."""
        model = trainer.model
        full = len(data["train"][0]) > 500  # a tiny run (tests) gets a token check
        drawn = {}

        def draw(labels):
            z = model.noise(len(labels), np.random.default_rng(12345))
            drawn["samples"], drawn["labels"] = model.sample(z=z, labels=labels) * 2 - 1, labels
            return drawn["samples"]
        figures = class_match(data, draw, model.num_classes, 100 if full else 5, full)
        figures["within_class_spread"] = within_class_spread(drawn["samples"], drawn["labels"],
                                                             *data["train"])
        return figures


class VAERecipe(Recipe):
    name = "vae"
    description = "convolutional VAE on binarised digits (test ELBO, reconstructions, interpolations)"
    epochs, batch_size, lr = 30, 64, 2e-3

    def load_data(self, spec, seed=0, limit=None):
        size = 32 if spec.startswith("mnist:") else 16
        x_train, y_train, x_test, y_test = load_images(spec, size, seed, limit)
        binary = [(x > 0.5).astype(np.float32) for x in (x_train, x_test)]
        return {"train": (binary[0],), "test": (binary[1],), "labels_test": y_test, "image_size": size}

    def config(self, data):
        return {"image_size": data["image_size"]}

    def build(self, config):
        from ..models import VAE

        return VAE(**config)

    def trainer(self, model, lr, **kwargs):
        from ..optim import Adam
        from ..train import Trainer

        def step(trainer, batch):
            loss = trainer.model.loss(batch[0])
            trainer.optimizer.zero_grad()
            loss.backward()
            trainer.optimizer.step()
            return {"neg_elbo": float(loss.item())}

        return Trainer(model, Adam(model.parameters(), lr=lr), step_fn=step, **kwargs)

    def held_out_elbo(self, model, x):
        """Mean ELBO (nats per image) over x, one latent draw per image from a fixed seed."""
        from ..nn.functional import kl_normal

        rng = np.random.default_rng(0)  # the same latent draws every time

        def run():
            total = 0.0
            for (b,) in _batches((x,), 256):
                mu, logvar = model.encode(b)
                z = model.reparameterize(mu, logvar, rng)
                elbo = model.log_likelihood(model.decode(z), b) - kl_normal(mu, logvar, reduction="none")
                total += float(elbo.data.sum())
            return total / len(x)
        return _eval_mode(model, run)

    def epoch_metrics(self, trainer, data, out):
        return {"val_neg_elbo": -self.held_out_elbo(trainer.model, data["test"][0])}

    def summary(self, trainer, data):
        elbo = self.held_out_elbo(trainer.model, data["test"][0])
        baseline = bernoulli_baseline_nats(data["train"][0], data["test"][0])
        # -ELBO bounds the negative log-likelihood from above: comparable with the baseline's NLL
        return {"test_elbo_nats": elbo, "test_neg_elbo_nats": -elbo, "baseline_nll_nats": baseline,
                "test_neg_elbo_bits_per_dim": -elbo / LN2 / data["test"][0][0].size}

    def pictures(self, trainer, data, out):
        model, x, y = trainer.model, data["test"][0], data["labels_test"]
        paths = [os.path.join(out, n) for n in ("samples.png", "reconstructions.png", "interpolations.png")]
        pictures.save_grid(model.sample(64, np.random.default_rng(0)), paths[0])
        originals = x[:16]
        pictures.save_grid(np.concatenate([originals, model.reconstruct(originals)]), paths[1], nrow=16,
                           row_labels=["test", "decoded"])
        firsts = [int(np.flatnonzero(y == k)[0]) for k in range(10)]
        rows = [model.interpolate(x[firsts[k]], x[firsts[(k + 1) % 10]], steps=10) for k in range(10)]
        pictures.save_grid(np.concatenate(rows), paths[2], nrow=10,
                           row_labels=[f"{k} to {(k + 1) % 10}" for k in range(10)])
        return paths

    def sample(self, model, n, label=None, temperature=1.0, rng=None):
        if label is not None:
            raise ValueError("vae: the model is not conditional (no --label)")
        return model.sample(n, rng), None


class PixelCNNRecipe(VAERecipe):
    name = "pixelcnn"
    description = "gated PixelCNN on the digits (test bits/dim, samples)"
    epochs, batch_size, lr = 8, 32, 2e-3
    options = ("levels", "conditional")
    levels = 2           # 2: binarised pixels (a Bernoulli each); 256: 8-bit grey levels (a softmax)
    conditional = False  # True: every pixel's prediction also sees the image's class

    def quantise(self, x):
        if self.levels == 2:
            return (x > 0.5).astype(np.float32)
        return (np.rint(x * 255) / 255).astype(np.float32)

    def load_data(self, spec, seed=0, limit=None):
        size = 32 if spec.startswith("mnist:") else 16
        x_train, y_train, x_test, y_test = load_images(spec, size, seed, limit)
        return {"train": (self.quantise(x_train), y_train), "test": (self.quantise(x_test), y_test),
                "image_size": size}

    def config(self, data):
        config = {"image_size": data["image_size"]}
        if self.levels != 2:
            config["levels"] = self.levels
        if self.conditional:
            config["num_classes"] = 10
        return config

    def build(self, config):
        from ..models import PixelCNN

        return PixelCNN(**config)

    def trainer(self, model, lr, **kwargs):
        from ..optim import Adam
        from ..train import Trainer

        def step(trainer, batch):
            x, labels = batch
            loss = trainer.model.loss(x, labels if trainer.model.num_classes else None)
            trainer.optimizer.zero_grad()
            loss.backward()
            trainer.optimizer.step()
            return {"bits_per_dim": float(loss.item())}

        return Trainer(model, Adam(model.parameters(), lr=lr), step_fn=step, **kwargs)

    def held_out_bits_per_dim(self, model, x, y):
        def run():
            return float(np.mean(np.concatenate(
                [model.bits_per_dim(b, c if model.num_classes else None).data
                 for b, c in _batches((x, y), 256)])))
        return _eval_mode(model, run)

    def epoch_metrics(self, trainer, data, out):
        return {"val_bits_per_dim": self.held_out_bits_per_dim(trainer.model, *data["test"])}

    def summary(self, trainer, data):
        x_train, x_test = data["train"][0], data["test"][0]
        if self.levels == 2:
            baseline = bernoulli_baseline_nats(x_train, x_test) / LN2 / x_test[0].size
        else:
            baseline = grey_level_baseline_bits(x_train, x_test)
        figures = {"test_bits_per_dim": self.held_out_bits_per_dim(trainer.model, *data["test"]),
                   "baseline_bits_per_dim": baseline}
        model = trainer.model
        if model.num_classes:
            full = len(x_train) > 500  # a tiny run (tests) gets a token check
            centred = {part: (data[part][0] * 2 - 1, data[part][1]) for part in ("train", "test")}

            def draw(labels):  # sampling is sequential: 20 of each class
                return model.sample(len(labels), labels, rng=np.random.default_rng(12345)) * 2 - 1
            figures.update(class_match(centred, draw, model.num_classes, 20 if full else 1, full))
        return figures

    def pictures(self, trainer, data, out):
        """Samples; for a class-conditional model column k is class k."""
        path = os.path.join(out, "samples.png")
        full = len(data["train"][0]) > 100  # sampling is sequential: few for tiny runs
        model, rng = trainer.model, np.random.default_rng(0)
        if model.num_classes:
            n = 4 * model.num_classes if full else model.num_classes
            images = model.sample(n, np.arange(n) % model.num_classes, rng=rng)
            pictures.save_grid(images, path, nrow=model.num_classes,
                               col_labels=[str(k) for k in range(model.num_classes)])
        else:
            pictures.save_grid(model.sample(32 if full else 8, rng=rng), path)
        return [path]

    def sample(self, model, n, label=None, temperature=1.0, rng=None):
        labels = None
        if model.num_classes:
            labels = np.full(n, label, np.int64) if label is not None else np.arange(n) % model.num_classes
        elif label is not None:
            raise ValueError("pixelcnn: the model is not class-conditional (no --label)")
        return model.sample(n, labels, temperature, rng), labels
