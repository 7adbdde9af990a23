"""Recipes of the supervised models: LeNet-5 on the digits, SegNet on synthetic shapes, the motif
CNN on synthetic DNA."""
from __future__ import annotations

import os

import numpy as np

from .. import data as _data
from .. import pictures
from .common import Recipe, load_images, predict


class LeNetRecipe(Recipe):
    name = "lenet"
    description = "LeNet-5 digit classifier (test accuracy, saliency maps)"
    epochs, batch_size, lr = 60, 32, 2e-3
    lr_decay = 0.93

    def train_loader(self, data, batch_size, seed, rank=0, world_size=1):
        # the 1438 training digits alone overfit: each epoch sees them rotated by up to 10
        # degrees, scaled by up to 10% and shifted by up to 2 of the 32 pixels (shifts alone
        # left some train/test splits under 98%)
        return _data.DataLoader(data["train"], batch_size, shuffle=True, seed=seed,
                                transform=_data.random_affine(10, 0.1, 2), rank=rank,
                                world_size=world_size)

    def load_data(self, spec, seed=0, limit=None):
        x_train, y_train, x_test, y_test = load_images(spec, 32, seed, limit)
        return {"train": (x_train, y_train), "test": (x_test, y_test)}

    def build(self, config):
        from ..models import LeNet5

        return LeNet5(**config)

    def trainer(self, model, lr, **kwargs):
        from ..optim import Adam
        from ..train import Trainer, accuracy

        return Trainer(model, Adam(model.parameters(), lr=lr), metrics={"accuracy": accuracy}, **kwargs)

    def val_loader(self, data, batch_size, rank=0, world_size=1):
        return _data.DataLoader(data["test"], 256, rank=rank, world_size=world_size, even_shards=False)

    def summary(self, trainer, data):
        x, y = data["test"]
        return {"test_accuracy": float((predict(trainer.model, x) == y).mean())}

    def pictures(self, trainer, data, out):
        from ..nn import saliency

        x, y = data["test"]
        picks = [int(np.flatnonzero(y == k)[0]) for k in np.unique(y)[:10]]
        images = x[picks]
        trainer.model.eval()
        maps = saliency(trainer.model, images, y[picks])
        trainer.model.train()
        maps = maps / np.maximum(maps.reshape(len(maps), -1).max(axis=1), 1e-12)[:, None, None]
        path = os.path.join(out, "saliency.png")
        pictures.save_grid(np.concatenate([images[:, 0], maps]), path, nrow=len(picks), scale=3,
                           row_labels=["digit", "saliency"], col_labels=[str(y[k]) for k in picks])
        return [path]


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
        from ..models import SegNet

        return SegNet(**config)

    def trainer(self, model, lr, **kwargs):
        from ..optim import Adam
        from ..train import Trainer

        def pixel_accuracy(out, target):
            return float((out.data.argmax(axis=1) == target).mean())

        return Trainer(model, Adam(model.parameters(), lr=lr), metrics={"pixel_accuracy": pixel_accuracy},
                       **kwargs)

    def val_loader(self, data, batch_size, rank=0, world_size=1):
        return _data.DataLoader(data["test"], 64, rank=rank, world_size=world_size, even_shards=False)

    def summary(self, trainer, data):
        from ..models.segnet import segmentation_scores

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
        pictures.save_grid(np.concatenate(rows), path, nrow=8, scale=3,
                           row_labels=["input", "true", "predicted"])
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
        from ..models import MotifCNN

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
