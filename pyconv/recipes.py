"""Training recipes behind ``pyconv train MODEL`` and ``pyconv sample MODEL``: for each model
its default data, size and hyper-parameters, its training step, the quality figures measured
after training, and the pictures it leaves in the output folder.

    recipe = RECIPES["vae"]
    data = recipe.load_data("digits", seed=0)
    model = recipe.build(recipe.config(data))

Every data set has an offline default: scikit-learn's bundled 8x8 digits (resized to the
model's input size), or a synthetic set generated here (shapes and masks, DNA with planted
motifs, a text corpus with long-range dependencies).
"""
from __future__ import annotations

import copy
import math
import os

import numpy as np

from . import data as _data
from . import pictures
from .autograd import Tensor, no_grad

__all__ = ["RECIPES", "Recipe"]

LN2 = math.log(2)


# ---------------------------------------------------------------------------------------------
# Data


def load_images(spec, size, seed=0, limit=None):
    """(x_train, y_train, x_test, y_test), images (N, 1, size, size) in [0, 1].

    spec "digits": scikit-learn's 8x8 digits, resized (bilinear) to size x size, 20% held out;
    "mnist:PATH": the MNIST IDX files in folder PATH (28x28 padded to 32x32 when size is 32,
    resized otherwise). limit: keep only the first `limit` training and test images."""
    if spec == "digits":
        x, y = _data.load_digits()
        x = _data.resize_images(x, size) if size != 8 else x
        x_train, x_test, y_train, y_test = _data.train_test_split(x, y, test_size=0.2, seed=seed)
    elif spec.startswith("mnist:"):
        path = spec[len("mnist:"):]
        x_train, y_train = _data.load_mnist(path, "train")
        x_test, y_test = _data.load_mnist(path, "test")
        if limit:
            x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]

        def fit(x):
            if size == 32:
                return np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
            return _data.resize_images(x, size) if size != 28 else x
        x_train, x_test = fit(x_train), fit(x_test)
    else:
        raise ValueError(f"unknown image data {spec!r} (expected 'digits' or 'mnist:PATH')")
    if limit:
        x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]
    return (np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(x_test), y_test)


def bernoulli_baseline_nats(x_train, x_test):
    """Test negative log-likelihood (nats per image) of independent Bernoulli pixels whose
    probabilities are the training set's pixel means: the yardstick for the VAE and PixelCNN."""
    p = x_train.mean(axis=0).clip(1e-3, 1 - 1e-3)
    nll = -(x_test * np.log(p) + (1 - x_test) * np.log(1 - p))
    return float(nll.reshape(len(x_test), -1).sum(axis=1).mean())


def grey_level_baseline_bits(x_train, x_test, alpha=0.5):
    """Test bits per pixel of independent 256-way categorical pixels (images in [0, 1],
    multiples of 1/255) whose probabilities are the training set's grey-level frequencies at
    each pixel, plus `alpha` of every level so that a level unseen in training stays possible:
    the yardstick for the 256-level PixelCNN."""
    def levels(x):
        return np.rint(np.asarray(x) * 255).astype(np.int64).reshape(len(x), -1)
    k_train, k_test = levels(x_train), levels(x_test)
    pixels = np.arange(k_train.shape[1])
    counts = np.full((len(pixels), 256), alpha)
    np.add.at(counts, (np.broadcast_to(pixels, k_train.shape), k_train), 1)
    p = counts / counts.sum(axis=1, keepdims=True)
    return float(-np.log2(p[pixels, k_test]).mean())


def _batches(arrays, batch_size):
    n = len(arrays[0])
    for start in range(0, n, batch_size):
        yield tuple(a[start:start + batch_size] for a in arrays)


def _eval_mode(model, fn):
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            return fn()
    finally:
        model.train(was_training)


def small_classifier(size, num_classes=10, seed=0):
    """A small CNN for size x size images, trained apart from the generative models to judge
    their samples."""
    from . import manual_seed, nn

    manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, num_classes))


def train_classifier(x, y, epochs=8, seed=0, lr=2e-3):
    """A :func:`small_classifier` fitted to (x, y), quietly."""
    from .optim import Adam
    from .train import Trainer

    model = small_classifier(x.shape[-1], int(y.max()) + 1, seed)
    trainer = Trainer(model, Adam(model.parameters(), lr=lr), progress=False)
    trainer.fit(_data.DataLoader((x, y), 32, shuffle=True, seed=seed), epochs)
    return model


def class_match(data, draw, num_classes, per_class, full):
    """How well a class-conditional generator keeps to its class: a classifier trained
    separately on the real training images (data["train"] = (x, y), x in [-1, 1]) labels
    `per_class` samples of each class, drawn by ``draw(labels)`` (in [-1, 1]) -> its accuracy on
    the real test images and the fraction of samples it puts in their conditioning class."""
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    clf = train_classifier(x_train, y_train, epochs=8 if full else 1, seed=1)
    labels = np.repeat(np.arange(num_classes), per_class)
    return {"classifier_test_accuracy": float((predict(clf, x_test) == y_test).mean()),
            "sample_accuracy": float((predict(clf, draw(labels)) == labels).mean())}


def predict(model, x, batch_size=256):
    return _eval_mode(model, lambda: np.concatenate(
        [model(Tensor(b)).data.argmax(axis=1) for (b,) in _batches((x,), batch_size)]))


# ---------------------------------------------------------------------------------------------
# Recipes


class Recipe:
    """One model's training recipe. Subclasses set the defaults and fill in the hooks."""

    name = ""
    description = ""
    epochs, batch_size, lr = 10, 64, 1e-3
    lr_decay = 1.0  # the learning rate after epoch k is lr * lr_decay ** k
    default_data = "digits"
    options = ()  # names of model-specific settings (class attributes) ``pyconv train`` may change

    def with_options(self, **options):
        """A copy of this recipe with some of its model-specific settings changed."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{self.name}: no option {', '.join(unknown)} "
                             f"(its options: {', '.join(self.options) or 'none'})")
        recipe = copy.copy(self)
        for key, value in options.items():
            setattr(recipe, key, value)
        return recipe

    # -- data and model
    def load_data(self, spec, seed=0, limit=None) -> dict:
        raise NotImplementedError

    def config(self, data) -> dict:
        """The model's construction arguments for this data."""
        return {}

    def build(self, config):
        raise NotImplementedError

    # -- training
    def trainer(self, model, lr, **kwargs):
        from .optim import Adam
        from .train import Trainer

        return Trainer(model, Adam(model.parameters(), lr=lr), **kwargs)

    def train_loader(self, data, batch_size, seed):
        return _data.DataLoader(data["train"], batch_size, shuffle=True, seed=seed)

    def val_loader(self, data, batch_size):
        return None

    def epoch_metrics(self, trainer, data, out) -> dict:
        """Extra figures logged after each epoch (e.g. a test loss); may write pictures to
        folder `out`."""
        return {}

    # -- results
    def summary(self, trainer, data) -> dict:
        """The quality figures measured after training."""
        return {}

    def pictures(self, trainer, data, out) -> list[str]:
        """Writes the model's pictures into folder `out`; returns their paths."""
        return []

    def sample(self, model, n, label=None, temperature=1.0, rng=None):
        """-> (samples, labels or None): images (n, C, H, W) in [0, 1], or text."""
        raise NotImplementedError(f"{self.name}: the model does not sample")


class LeNetRecipe(Recipe):
    name = "lenet"
    description = "LeNet-5 digit classifier (test accuracy, saliency maps)"
    epochs, batch_size, lr = 30, 32, 2e-3
    lr_decay = 0.9

    def train_loader(self, data, batch_size, seed):
        # shifts of up to 2 of the 32 pixels: the 1437 training digits alone overfit
        return _data.DataLoader(data["train"], batch_size, shuffle=True, seed=seed,
                                transform=_data.random_shift(2))

    def load_data(self, spec, seed=0, limit=None):
        x_train, y_train, x_test, y_test = load_images(spec, 32, seed, limit)
        return {"train": (x_train, y_train), "test": (x_test, y_test)}

    def build(self, config):
        from .models import LeNet5

        return LeNet5(**config)

    def trainer(self, model, lr, **kwargs):
        from .optim import Adam
        from .train import Trainer, accuracy

        return Trainer(model, Adam(model.parameters(), lr=lr), metrics={"accuracy": accuracy}, **kwargs)

    def val_loader(self, data, batch_size):
        return _data.DataLoader(data["test"], 256)

    def summary(self, trainer, data):
        x, y = data["test"]
        return {"test_accuracy": float((predict(trainer.model, x) == y).mean())}

    def pictures(self, trainer, data, out):
        from .nn import saliency

        x, y = data["test"]
        picks = [int(np.flatnonzero(y == k)[0]) for k in np.unique(y)[:10]]
        images = x[picks]
        trainer.model.eval()
        maps = saliency(trainer.model, images, y[picks])
        trainer.model.train()
        maps = maps / np.maximum(maps.reshape(len(maps), -1).max(axis=1), 1e-12)[:, None, None]
        path = os.path.join(out, "saliency.png")
        pictures.save_grid(np.concatenate([images[:, 0], maps]), path, nrow=len(picks), scale=3)
        return [path]


class DCGANRecipe(Recipe):
    name = "dcgan"
    description = "DCGAN on the digits (sample grid)"
    epochs, batch_size, lr = 40, 64, 5e-4
    conditional = False

    def load_data(self, spec, seed=0, limit=None):
        size = 32 if spec.startswith("mnist:") else 16
        x_train, y_train, x_test, y_test = load_images(spec, size, seed, limit)
        return {"train": (x_train * 2 - 1, y_train), "test": (x_test * 2 - 1, y_test),
                "image_size": size}

    def config(self, data):
        return {"image_size": data["image_size"], "conditional": self.conditional}

    def build(self, config):
        from .models import DCGAN

        return DCGAN(**config)

    def trainer(self, model, lr, **kwargs):
        from .train import GANTrainer

        return GANTrainer(model, lr=lr, fixed_samples=100 if self.conditional else 64, **kwargs)

    def epoch_metrics(self, trainer, data, out):
        """The fixed noise batch's samples after every epoch (out/epochs/), comparable
        picture to picture."""
        folder = os.path.join(out, "epochs")
        os.makedirs(folder, exist_ok=True)
        pictures.save_grid(trainer.sample_fixed(), os.path.join(folder, f"samples_{trainer.epoch:03d}.png"),
                           nrow=10 if self.conditional else 8)
        return {}

    def pictures(self, trainer, data, out):
        path = os.path.join(out, "samples.png")
        pictures.save_grid(trainer.sample_fixed(), path, nrow=10 if self.conditional else 8)
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

    def summary(self, trainer, data):
        """Accuracy of an independently trained classifier on generated samples labelled with
        the class they were conditioned on."""
        model = trainer.model
        full = len(data["train"][0]) > 500  # a tiny run (tests) gets a token check

        def draw(labels):
            z = model.noise(len(labels), np.random.default_rng(12345))
            return model.sample(z=z, labels=labels) * 2 - 1
        return class_match(data, draw, model.num_classes, 100 if full else 5, full)


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
        from .models import VAE

        return VAE(**config)

    def trainer(self, model, lr, **kwargs):
        from .optim import Adam
        from .train import Trainer

        def step(trainer, batch):
            loss = trainer.model.loss(batch[0])
            trainer.optimizer.zero_grad()
            loss.backward()
            trainer.optimizer.step()
            return {"neg_elbo": float(loss.item())}

        return Trainer(model, Adam(model.parameters(), lr=lr), step_fn=step, **kwargs)

    def held_out_elbo(self, model, x):
        """Mean ELBO (nats per image) over x, one latent draw per image from a fixed seed."""
        from .nn.functional import kl_normal

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
        pictures.save_grid(np.concatenate([originals, model.reconstruct(originals)]), paths[1], nrow=16)
        firsts = [int(np.flatnonzero(y == k)[0]) for k in range(10)]
        rows = [model.interpolate(x[firsts[k]], x[firsts[(k + 1) % 10]], steps=10) for k in range(10)]
        pictures.save_grid(np.concatenate(rows), paths[2], nrow=10)
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
        from .models import PixelCNN

        return PixelCNN(**config)

    def trainer(self, model, lr, **kwargs):
        from .optim import Adam
        from .train import Trainer

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
            pictures.save_grid(images, path, nrow=model.num_classes)
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


class CharLSTMRecipe(Recipe):
    name = "charlstm"
    description = "character LSTM on a generated corpus with long-range dependencies (bits/char vs unigram and a plain RNN)"
    epochs, batch_size, lr = 16, 16, 3e-3
    default_data = "corpus"
    seq_len = 100
    cue = "speaks "  # in the built-in corpus the next letter needs the country named long before

    def load_data(self, spec, seed=0, limit=None):
        if spec == "corpus":
            text = _data.synthetic_corpus(80_000, seed)
        elif spec.startswith("text:"):
            with open(spec[len("text:"):], encoding="utf-8") as f:
                text = f.read()
        else:
            raise ValueError(f"unknown text data {spec!r} (expected 'corpus' or 'text:FILE')")
        if limit:
            text = text[:limit * self.seq_len]
        cut = int(len(text) * 0.9)
        return {"train_text": text[:cut], "test_text": text[cut:], "vocab": "".join(sorted(set(text))),
                "train": (np.zeros(cut),)}

    def config(self, data):
        return {"vocab": data["vocab"], "num_layers": 2, "hidden_size": 128, "cell": "lstm"}

    def build(self, config):
        from .models import CharLSTM

        return CharLSTM(**config)

    def train_loader(self, data, batch_size, seed):
        model_vocab = {ch: i for i, ch in enumerate(data["vocab"])}
        ids = np.array([model_vocab[ch] for ch in data["train_text"]], np.int64)
        return _data.TextStreams(ids, batch_size, self.seq_len)

    def trainer(self, model, lr, **kwargs):
        from .optim import Adam
        from .train import Trainer

        carry = {}

        def step(trainer, batch):
            """Truncated BPTT: the state flows on from the previous window, its graph cut."""
            x, y, first = batch
            state = None if first[0] else carry.get("state")
            loss, state = trainer.model.loss(x, y, state)
            carry["state"] = trainer.model.detach_state(state)
            trainer.optimizer.zero_grad()
            loss.backward()
            trainer.optimizer.step()
            return {"bits_per_char": float(loss.item()) / LN2}

        return Trainer(model, Adam(model.parameters(), lr=lr), step_fn=step, **kwargs)

    def epoch_metrics(self, trainer, data, out):
        return {"val_bits_per_char": trainer.model.bits_per_char(trainer.model.encode(data["test_text"]))}

    def cue_accuracy(self, model, text):
        """How often the most likely next character after the cue is the right one."""
        ids = model.encode(text)
        positions = [i + len(self.cue) for i in range(len(text) - len(self.cue))
                     if text.startswith(self.cue, i)]
        if not positions:
            return float("nan")

        def run():
            logits, _ = model(ids[None, :-1])
            return logits.data[0].argmax(axis=1)
        predicted = _eval_mode(model, run)
        return float(np.mean([predicted[p - 1] == ids[p] for p in positions]))

    def summary(self, trainer, data):
        from collections import Counter

        from . import manual_seed

        model = trainer.model
        test_ids = model.encode(data["test_text"])
        counts = Counter(data["train_text"])
        total = len(data["train_text"]) + len(data["vocab"])
        unigram = -np.mean([math.log2((counts[ch] + 1) / total) for ch in data["test_text"]])
        out = {"test_bits_per_char": model.bits_per_char(test_ids), "unigram_bits_per_char": float(unigram),
               "test_cue_accuracy": self.cue_accuracy(model, data["test_text"])}
        # the same network with plain RNN layers, trained the same way, for comparison
        print(f"charlstm: training the same network with plain RNN layers ({trainer.epoch} epochs) "
              f"for comparison", flush=True)
        config = dict(model.config, cell="rnn")
        manual_seed(0)
        rnn = self.build(config)
        rnn_trainer = self.trainer(rnn, trainer.optimizer.lr, progress=False)
        loader = self.train_loader(data, data["batch_size"], 0)
        rnn_trainer.fit(loader, trainer.epoch)
        out["rnn_test_bits_per_char"] = rnn.bits_per_char(test_ids)
        out["rnn_test_cue_accuracy"] = self.cue_accuracy(rnn, data["test_text"])
        return out

    def pictures(self, trainer, data, out):
        path = os.path.join(out, "samples.txt")
        prefix = data["test_text"][:20]
        with open(path, "w") as f:
            for t in (0.5, 1.0):
                text = trainer.model.sample(prefix, 240, temperature=t, rng=np.random.default_rng(0))
                f.write(f"--- temperature {t}\n{text}\n")
        return [path]

    def sample(self, model, n, label=None, temperature=1.0, rng=None):
        if label is not None:
            raise ValueError("charlstm: the model is not conditional (no --label)")
        rng = rng or np.random.default_rng(0)
        prefix = model.vocab[int(rng.integers(len(model.vocab)))]
        return model.sample(prefix, n, temperature, rng), None


class SegNetRecipe(Recipe):
    name = "segnet"
    description = "SegNet on synthetic shapes with masks (pixel accuracy, IoU, overlays)"
    epochs, batch_size, lr = 10, 16, 3e-3
    default_data = "shapes"

    def load_data(self, spec, seed=0, limit=None):
        if spec != "shapes":
            raise ValueError(f"segnet: unknown data {spec!r} (only the synthetic 'shapes')")
        n = limit or 600
        x, masks = _data.synthetic_shapes(n + max(n // 5, 8), 32, seed)
        return {"train": (x[:n], masks[:n]), "test": (x[n:], masks[n:])}

    def config(self, data):
        return {"in_channels": 1, "num_classes": len(_data.SHAPE_CLASSES), "widths": [16, 32]}

    def build(self, config):
        from .models import SegNet

        return SegNet(**config)

    def trainer(self, model, lr, **kwargs):
        from .optim import Adam
        from .train import Trainer

        def pixel_accuracy(out, target):
            return float((out.data.argmax(axis=1) == target).mean())

        return Trainer(model, Adam(model.parameters(), lr=lr), metrics={"pixel_accuracy": pixel_accuracy},
                       **kwargs)

    def val_loader(self, data, batch_size):
        return _data.DataLoader(data["test"], 64)

    def summary(self, trainer, data):
        from .models.segnet import segmentation_scores

        x, masks = data["test"]
        scores = segmentation_scores(trainer.model.predict(x), masks, len(_data.SHAPE_CLASSES))
        out = {"test_pixel_accuracy": scores["pixel_accuracy"], "test_mean_iou": scores["mean_iou"]}
        out.update({f"test_iou_{name}": v for name, v in zip(_data.SHAPE_CLASSES, scores["iou"])})
        return out

    def pictures(self, trainer, data, out):
        x, masks = data["test"]
        x, masks = x[:8], masks[:8]
        rows = [np.repeat(x, 3, axis=1), pictures.overlay_masks(x, masks),
                pictures.overlay_masks(x, trainer.model.predict(x))]
        path = os.path.join(out, "segmentation.png")
        pictures.save_grid(np.concatenate(rows), path, nrow=8, scale=3)
        return [path]


class MotifRecipe(Recipe):
    name = "motif"
    description = "motif CNN (conv1d) on synthetic DNA with planted IUPAC motifs (accuracy, filter heat maps)"
    epochs, batch_size, lr = 15, 32, 3e-3
    default_data = "dna"
    motifs = ("TGASTCA", "GGGRNTTYCC")

    def load_data(self, spec, seed=0, limit=None):
        if spec != "dna":
            raise ValueError(f"motif: unknown data {spec!r} (only the synthetic 'dna')")
        n = limit or 2000
        x, y, _ = _data.synthetic_dna(n + max(n // 4, 8), 80, self.motifs, seed)
        return {"train": (x[:n], y[:n]), "test": (x[n:], y[n:])}

    def config(self, data):
        return {"num_classes": len(self.motifs) + 1, "n_filters": 16, "filter_size": 12}

    def build(self, config):
        from .models import MotifCNN

        return MotifCNN(**config)

    trainer = LeNetRecipe.trainer
    val_loader = LeNetRecipe.val_loader
    summary = LeNetRecipe.summary

    def pictures(self, trainer, data, out):
        model = trainer.model
        filters = model.filters()
        # the filters the classifier leans on most for the motif classes, strongest first
        weight = np.abs(model.classifier.weight.data[1:]).sum(axis=0)
        order = np.argsort(-weight)[:8]
        titles = [f"filter {k} (weight {weight[k]:.2f})" for k in order]
        path = os.path.join(out, "filters.png")
        pictures.save_heatmaps(filters[order], path, titles=titles, row_labels="ACGT", ncols=2)
        return [path]


RECIPES = {r.name: r for r in (LeNetRecipe(), DCGANRecipe(), CGANRecipe(), VAERecipe(),
                                PixelCNNRecipe(), CharLSTMRecipe(), SegNetRecipe(), MotifRecipe())}


# ---------------------------------------------------------------------------------------------
# The train and sample commands


def _format(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def train(name, epochs=None, batch_size=None, lr=None, data=None, out=None, resume=False, seed=0,
          limit=None, progress=True, print_fn=print, options=None) -> dict:
    """Trains model `name` and writes into `out`: checkpoint.npz (the Trainer's checkpoint,
    also what ``pyconv sample`` reads), history.json (per-epoch logs, the final summary and
    the timing), loss.png and the model's pictures. `options`: model-specific settings (the
    recipe's ``options``, e.g. ``{"levels": 256, "conditional": True}`` for pixelcnn). Returns
    the history.json content."""
    import json
    import time

    from . import manual_seed

    recipe = RECIPES[name].with_options(**(options or {}))
    epochs = epochs or recipe.epochs
    batch_size = batch_size or recipe.batch_size
    lr = lr or recipe.lr
    spec = data or recipe.default_data
    out = out or os.path.join("runs", name)
    os.makedirs(out, exist_ok=True)

    dataset = recipe.load_data(spec, seed, limit)
    dataset["batch_size"] = batch_size
    config = recipe.config(dataset)
    manual_seed(seed)
    model = recipe.build(config)
    metadata = {"model": name, "config": json.dumps(config), "data": spec}
    trainer = recipe.trainer(model, lr, checkpoint_path=os.path.join(out, "checkpoint.npz"),
                             progress=progress, metadata=metadata)
    loader = recipe.train_loader(dataset, batch_size, seed)
    val = recipe.val_loader(dataset, batch_size)
    n_train = len(dataset["train"][0])
    print_fn(f"{name}: {recipe.description}; {n_train} training samples from {spec!r}, "
             f"{sum(p.size for p in model.parameters()):,} parameters, {epochs} epochs")

    start = time.perf_counter()
    epoch_start = [start]

    def on_epoch_end(trainer, logs):
        for opt in trainer.optimizers.values():
            opt.lr = lr * recipe.lr_decay ** trainer.epoch
        logs.update(recipe.epoch_metrics(trainer, dataset, out))
        now = time.perf_counter()
        logs["seconds"] = now - epoch_start[0]
        epoch_start[0] = now
        shown = "  ".join(f"{k} {_format(v)}" for k, v in logs.items() if k not in ("epoch",))
        print_fn(f"epoch {trainer.epoch}/{epochs}  {shown}")

    history = trainer.fit(loader, epochs, val_loader=val, resume=resume, on_epoch_end=on_epoch_end)
    train_seconds = time.perf_counter() - start
    summary = recipe.summary(trainer, dataset)
    files = [os.path.join(out, "checkpoint.npz")]
    if history:
        pictures.save_curves(history, os.path.join(out, "loss.png"), title=name)
        files.append(os.path.join(out, "loss.png"))
    files += recipe.pictures(trainer, dataset, out)
    result = {"model": name, "config": config, "data": spec, "epochs": trainer.epoch,
              "batch_size": batch_size, "lr": lr, "seed": seed, "history": history,
              "summary": summary, "train_seconds_this_run": train_seconds,
              "train_seconds_total": sum(h.get("seconds", 0.0) for h in history)}
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump(result, f, indent=1)
    files.insert(1, os.path.join(out, "history.json"))
    print_fn(f"summary ({name}, {trainer.epoch} epochs, {result['train_seconds_total']:.1f} s of training):")
    for key, value in summary.items():
        print_fn(f"  {key:<28} {_format(value)}")
    print_fn("wrote " + ", ".join(files))
    return result


def load_model(checkpoint):
    """(recipe name, model) from a checkpoint written by :func:`train`."""
    import json

    from .serialization import CheckpointError, load

    state = load(checkpoint)
    if "metadata" not in state or "model" not in state:
        raise CheckpointError(f"{checkpoint!r} is not a checkpoint written by 'pyconv train'")
    name = str(state["metadata"]["model"])
    recipe = RECIPES[name]
    model = recipe.build(json.loads(str(state["metadata"]["config"])))
    model.load_state_dict(state["model"])
    return name, model


def sample(name, checkpoint, out, n=64, npz=None, temperature=1.0, label=None, seed=0,
           print_fn=print):
    """Writes n samples of the model in `checkpoint`: a PNG grid (or a text file for text
    models) at `out`, and with `npz` the raw samples (``samples``, and ``labels`` for
    conditional models)."""
    saved_name, model = load_model(checkpoint)
    if saved_name != name:
        raise ValueError(f"sample: {checkpoint!r} holds a {saved_name!r} model, not {name!r}")
    recipe = RECIPES[name]
    samples, labels = recipe.sample(model, n, label=label, temperature=temperature,
                                    rng=np.random.default_rng(seed))
    if isinstance(samples, str):
        with open(out, "w") as f:
            f.write(samples)
    else:
        conditional_rows = labels is not None and label is None
        pictures.save_grid(samples, out, nrow=10 if conditional_rows else 8)
    if npz:
        arrays = {"samples": np.asarray(samples) if not isinstance(samples, str) else np.array(samples)}
        if labels is not None:
            arrays["labels"] = labels
        np.savez(npz, **arrays)
    print_fn(f"wrote {out}" + (f" and {npz}" if npz else ""))
    return samples, labels
