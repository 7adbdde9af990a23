"""What the recipes share: offline image data, the independent-pixel baselines, a small
classifier that judges generated samples, and the Recipe base class."""
from __future__ import annotations

import copy
import math

import numpy as np

from .. import data as _data
from ..autograd import Tensor, no_grad

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
    from .. import manual_seed, nn

    manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, num_classes))


def train_classifier(x, y, epochs=8, seed=0, lr=2e-3):
    """A :func:`small_classifier` fitted to (x, y), quietly."""
    from ..optim import Adam
    from ..train import Trainer

    model = small_classifier(x.shape[-1], int(y.max()) + 1, seed)
    # distributed=False: only one rank judges the samples, after training
    trainer = Trainer(model, Adam(model.parameters(), lr=lr), progress=False, distributed=False)
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


def mean_pairwise_distance(x):
    """The mean Euclidean distance between two different images of x (N, ...)."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    squared = (flat ** 2).sum(axis=1)
    d2 = squared[:, None] + squared[None, :] - 2 * flat @ flat.T
    upper = np.triu_indices(len(flat), 1)
    return float(np.sqrt(np.maximum(d2[upper], 0)).mean())


def within_class_spread(samples, labels, real, real_labels):
    """How varied a conditional generator's samples of one class are, relative to the real
    images of that class: per class, the mean pairwise distance between its samples over that
    between its real images, averaged over the classes. About 1: as varied as the data; near
    0: one image per class whatever the noise (mode collapse). Classes with fewer than two
    samples or two real images (tiny runs) are left out; NaN when none is left."""
    ratios = [mean_pairwise_distance(samples[labels == k]) / mean_pairwise_distance(real[real_labels == k])
              for k in np.unique(labels)
              if (labels == k).sum() > 1 and (real_labels == k).sum() > 1]
    return float(np.mean(ratios)) if ratios else float("nan")


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
        from ..optim import Adam
        from ..train import Trainer

        return Trainer(model, Adam(model.parameters(), lr=lr), **kwargs)

    def train_loader(self, data, batch_size, seed, rank=0, world_size=1):
        """The training batches; with several ranks, this rank's shard of each epoch."""
        return _data.DataLoader(data["train"], batch_size, shuffle=True, seed=seed,
                                rank=rank, world_size=world_size)

    def val_loader(self, data, batch_size, rank=0, world_size=1):
        """The validation batches (None: no validation); with several ranks, this rank's part
        of the data, every sample in exactly one rank's part."""
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
