"""Training recipes behind ``pyconv train MODEL`` and ``pyconv sample MODEL``: for each model
its default data, size and hyper-parameters, its training step, the quality figures measured
after training, and the pictures it leaves in the output folder.

    recipe = RECIPES["vae"]
    data = recipe.load_data("digits", seed=0)
    model = recipe.build(recipe.config(data))

Every data set has an offline default: scikit-learn's bundled 8x8 digits (resized to the
model's input size), or a synthetic set generated here (shapes and masks, DNA with planted
motifs, a text corpus with long-range dependencies). One module per kind of model
(supervised, generative, text) over the shared pieces in ``common``.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from .. import pictures
from .common import Recipe
from .generative import CGANRecipe, DCGANRecipe, PixelCNNRecipe, VAERecipe
from .supervised import LeNetRecipe, MotifRecipe, SegNetRecipe
from .text import CharLSTMRecipe

__all__ = ["RECIPES", "Recipe", "train", "load_model", "sample"]

RECIPES = {r.name: r for r in (LeNetRecipe(), DCGANRecipe(), CGANRecipe(), VAERecipe(),
                                PixelCNNRecipe(), CharLSTMRecipe(), SegNetRecipe(), MotifRecipe())}


# ---------------------------------------------------------------------------------------------
# The train and sample commands


def _format(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _training_device() -> str:
    """'cuda' when the 'cuda' backend is selected on a real GPU, else 'cpu'. Every recipe's
    step keeps to its batch's device."""
    from ..backends import cuda_simulator, selected

    return "cuda" if selected() == "cuda" and not cuda_simulator() else "cpu"


@contextlib.contextmanager
def _on_host(trainer):
    """The recipes measure and draw on NumPy data: on a GPU run, the model visits the host
    (and a CPU backend) for that, and goes back to the GPU after."""
    if trainer.device == "cpu":
        yield
        return
    from ..backends import _default_for_numpy, use_backend

    trainer.model.to("cpu")
    try:
        with use_backend(_default_for_numpy()):
            yield
    finally:
        trainer.model.to(trainer.device)


def train(name, epochs=None, batch_size=None, lr=None, data=None, out=None, resume=False, seed=0,
          limit=None, progress=True, print_fn=print, options=None, distributed=None) -> dict:
    """Trains model `name` and writes into `out`: checkpoint.npz (the Trainer's checkpoint,
    also what ``pyconv sample`` reads), history.json (per-epoch logs, the final summary and
    the timing), loss.png and the model's pictures. `options`: model-specific settings (the
    recipe's ``options``, e.g. ``{"levels": 256, "conditional": True}`` for pixelcnn). Returns
    the history.json content.

    distributed: data-parallel over the MPI ranks this process was launched with (None: when
    there are several); each rank trains on its shard of every epoch with `batch_size` samples
    per step, and rank 0 alone prints, measures the model after training and writes the
    files. The other ranks return None once training is over."""
    import json
    import time

    from .. import distributed as dist
    from .. import get_num_threads, manual_seed

    if distributed is None:
        distributed = dist.init() > 1
    elif distributed:
        dist.init()
    main = not distributed or dist.is_main()
    if not main:
        def print_fn(*args, **kwargs):
            pass
        progress = False

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
                             progress=progress, metadata=metadata, distributed=distributed,
                             device=_training_device())
    ranks = dist.world_size() if distributed else 1
    rank = dist.rank() if distributed else 0
    loader = recipe.train_loader(dataset, batch_size, seed, rank=rank, world_size=ranks)
    val = recipe.val_loader(dataset, batch_size, rank=rank, world_size=ranks)
    n_train = len(dataset["train"][0])
    threads = get_num_threads()
    on_ranks = f" on {ranks} ranks x {threads} thread{'s' * (threads != 1)}" if distributed else ""
    print_fn(f"{name}: {recipe.description}; {n_train} training samples from {spec!r}, "
             f"{sum(p.size for p in model.parameters()):,} parameters, {epochs} epochs{on_ranks}")

    start = time.perf_counter()
    epoch_start = [start]

    def on_epoch_end(trainer, logs):
        for opt in trainer.optimizers.values():
            opt.lr = lr * recipe.lr_decay ** trainer.epoch
        if main:  # held-out figures and pictures: the replicas are equal, one rank measures
            with _on_host(trainer):
                logs.update(recipe.epoch_metrics(trainer, dataset, out))
        now = time.perf_counter()
        logs["seconds"] = now - epoch_start[0]
        epoch_start[0] = now
        shown = "  ".join(f"{k} {_format(v)}" for k, v in logs.items() if k not in ("epoch",))
        print_fn(f"epoch {trainer.epoch}/{epochs}  {shown}")

    history = trainer.fit(loader, epochs, val_loader=val, resume=resume, on_epoch_end=on_epoch_end)
    train_seconds = time.perf_counter() - start
    if not main:
        return None
    with _on_host(trainer):
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

    from ..serialization import CheckpointError, load

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
    from ..backends import cuda_simulator, selected

    if selected() == "cuda" and not cuda_simulator():
        raise ValueError("pyconv sample: sampling runs on a CPU backend (a checkpoint written by "
                         "a GPU run samples there too); drop --backend cuda")
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
        if labels is not None and label is None:  # the classes cycle: column k is class k
            columns = min(10, len(samples))
            pictures.save_grid(samples, out, nrow=10, col_labels=[str(k) for k in labels[:columns]])
        else:
            pictures.save_grid(samples, out, nrow=8)
    if npz:
        arrays = {"samples": np.asarray(samples) if not isinstance(samples, str) else np.array(samples)}
        if labels is not None:
            arrays["labels"] = labels
        np.savez(npz, **arrays)
    print_fn(f"wrote {out}" + (f" and {npz}" if npz else ""))
    return samples, labels
