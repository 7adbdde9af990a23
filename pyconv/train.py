"""``pyconv.train.Trainer``: the training loop, with a progress bar, metrics, evaluation,
early stopping, atomic checkpoints and exact resume.

    trainer = Trainer(model, SGD(model.parameters(), lr=0.05, momentum=0.9),
                      loss_fn=F.cross_entropy, metrics={"accuracy": accuracy},
                      checkpoint_path="run/last.npz")
    history = trainer.fit(train_loader, epochs=10, val_loader=val_loader, resume=True)

A checkpoint, written at the end of every epoch, holds the model's state, every optimiser's
state, pyconv's random generator (dropout), the training loader's shuffling generator, the
history and the early-stopping counters: a run resumed from it continues exactly as the
uninterrupted run would have, bit for bit.

Custom training steps replace the default step: ``step_fn(trainer, batch) -> dict of
floats``; ``trainer.optimizers`` is then a dict of named optimisers. :class:`GANTrainer` is such
a trainer: alternating discriminator and generator steps with the non-saturating generator loss.

Data-parallel training (``distributed=True``, or automatically when launched by ``mpiexec`` on
more than one rank, see :mod:`pyconv.distributed`): rank 0's weights and optimiser states are
broadcast at the start, every optimiser's parameters get a gradient reducer (the GAN's two
networks each their own), the logged losses and metrics are averaged over the ranks, and only
rank 0 shows the progress bar and writes checkpoints; after every epoch the floating-point
buffers (batch norm's running statistics, per rank unless the model uses
:class:`~pyconv.distributed.SyncBatchNorm`) are replaced by their mean over the ranks. Each
rank shards the data itself (give the training loader ``rank=`` and ``world_size=``; the
validation loader too, with ``even_shards=False``, so that every rank evaluates a part). On
resume every rank reads the checkpoint (the ranks must share a file system) and restores its
own random generator.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import distributed as _dist
from . import random as _random
from .autograd import Tensor, array_module, no_grad
from .serialization import CheckpointError, load, save

__all__ = ["Trainer", "GANTrainer", "accuracy", "supervised_step", "gan_step"]

_FORMAT = "pyconv.Trainer/1"


def accuracy(output, target) -> float:
    """Fraction of rows whose highest score is the target class."""
    scores = output.data if isinstance(output, Tensor) else output
    return float((scores.argmax(axis=1) == target).mean())


def _to_device(batch, device):
    if device == "cpu":
        return batch
    import cupy

    return tuple(cupy.asarray(a) for a in batch)


def supervised_step(trainer, batch) -> dict:
    """The default step: forward, loss, backward, optimiser step; returns loss and metrics."""
    x, y = batch[0], batch[1]
    out = trainer.model(Tensor(x))
    loss = trainer.loss_fn(out, y)
    trainer.optimizer.zero_grad()
    loss.backward()
    trainer.optimizer.step()
    logs = {"loss": float(loss.item())}
    for name, fn in trainer.metrics.items():
        logs[name] = fn(out, y)
    return logs


def _split_random_stream():
    """Gives each rank its own stream of pyconv's generator (dropout masks, GAN noise): the
    shared stream jumped ahead rank times, so that the ranks do not draw the same numbers."""
    if _dist.rank() > 0:
        bit_generator = _random.generator().bit_generator
        bit_generator.state = bit_generator.jumped(_dist.rank()).state


class Trainer:
    """Trains `model` with `optimizer` (one Optimizer, or a dict of them for custom steps).

    loss_fn(output, target) -> scalar Tensor; metrics: {name: fn(output, target) -> float};
    step_fn(trainer, batch) -> {name: float} replaces the default supervised step;
    early_stopping: stop after this many epochs without improvement of `monitor`
    ("val_loss" by default; mode "min" or "max"); checkpoint_path: where each epoch's
    checkpoint goes (atomically); progress: show a tqdm bar with the running loss/metrics.
    distributed: data-parallel over the MPI ranks (None: when launched on more than one rank);
    bucket_cap_mb: the size of its gradient buckets.
    """

    def __init__(self, model, optimizer, loss_fn=None, metrics=None, step_fn=None, device="cpu",
                 checkpoint_path=None, early_stopping=None, monitor="val_loss", mode="min",
                 progress=True, metadata=None, distributed=None, bucket_cap_mb=1.0):
        if loss_fn is None and step_fn is None:
            from .nn.functional import cross_entropy as loss_fn
        if mode not in ("min", "max"):
            raise ValueError(f"Trainer: mode must be 'min' or 'max', got {mode!r}")
        self.model = model.to(device) if device != "cpu" else model
        self.optimizers = optimizer if isinstance(optimizer, dict) else {"optimizer": optimizer}
        self.loss_fn, self.metrics = loss_fn, dict(metrics or {})
        self.step_fn = step_fn or supervised_step
        self.device, self.checkpoint_path = device, checkpoint_path
        self.early_stopping, self.monitor, self.mode = early_stopping, monitor, mode
        self.progress = progress
        self.metadata = dict(metadata or {})
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.best = None
        self.bad_epochs = 0
        if distributed is None:
            distributed = _dist.init() > 1
        self.distributed = bool(distributed)
        self.reducers = []
        if self.distributed:
            _dist.init()
            self.progress = progress and _dist.is_main()
            self._synchronize_replicas()
            self.reducers = [_dist.GradientReducer(opt.params, bucket_cap_mb)
                             for opt in self.optimizers.values()]
            _split_random_stream()

    def _synchronize_replicas(self):
        """Rank 0's weights, buffers and optimiser states on every rank."""
        _dist.broadcast_parameters(self.model)
        for opt in self.optimizers.values():
            _dist.broadcast_optimizer_state(opt)

    def _is_writer(self) -> bool:
        return not self.distributed or _dist.is_main()

    def _mean_over_ranks(self, totals, count) -> dict:
        """{name: total / count}, totals and counts summed over the ranks when distributed."""
        names = list(totals)  # every rank logs the same names in the same order
        if self.distributed:
            summed = _dist.allreduce(np.array([totals[k] for k in names] + [count], np.float64))
            totals, count = dict(zip(names, summed[:-1].tolist())), summed[-1]
        return {k: totals[k] / max(count, 1) for k in names}

    @property
    def optimizer(self):
        if len(self.optimizers) != 1:
            raise AttributeError("Trainer.optimizer: this trainer has several optimizers; use trainer.optimizers[name]")
        return next(iter(self.optimizers.values()))

    # -- the loop
    def fit(self, train_loader, epochs, val_loader=None, resume=False, on_epoch_end=None) -> list[dict]:
        """Trains until `epochs` epochs are complete (counting those of a resumed run).
        resume: True to continue from checkpoint_path when that file exists, or a path.
        on_epoch_end(trainer, logs): called after each epoch, before its checkpoint; it may add
        entries (e.g. a test metric) to `logs`, which go into the history."""
        if resume:
            path = self.checkpoint_path if resume is True else resume
            exists = path is not None and os.path.exists(path)
            if self.distributed:  # rank 0 decides, so that no rank resumes alone
                exists = _dist.broadcast_object(exists)
            if exists:
                self.load_checkpoint(path, train_loader)
            elif resume is not True:
                raise FileNotFoundError(f"Trainer.fit: no checkpoint at {path!r} to resume from")
        while self.epoch < epochs:
            logs = self.train_epoch(train_loader, epochs)
            if self.distributed:  # per-rank batch-norm statistics -> their mean, on every rank
                _dist.average_buffers(self.model)
            if val_loader is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(val_loader).items()})
            self.epoch += 1
            logs["epoch"] = self.epoch
            if on_epoch_end is not None:
                on_epoch_end(self, logs)
            self.history.append(logs)
            stop = self._update_early_stopping(logs)
            if self.distributed:  # rank 0's decision, so that no rank stops alone
                stop = _dist.broadcast_object(stop)
            if self.checkpoint_path is not None:
                self.save_checkpoint(self.checkpoint_path, train_loader)
                if self.distributed:  # the file is complete before any rank may read it
                    _dist.barrier()
            if stop:
                break
        return self.history

    def train_epoch(self, loader, epochs=None) -> dict:
        from tqdm.auto import tqdm

        self.model.train()
        totals, count = {}, 0
        desc = f"epoch {self.epoch + 1}" + (f"/{epochs}" if epochs else "")
        bar = tqdm(loader, desc=desc, disable=not self.progress, dynamic_ncols=True)
        for batch in bar:
            batch = _to_device(batch if isinstance(batch, tuple) else (batch,), self.device)
            n = len(batch[0])
            logs = self.step_fn(self, batch)
            for k, v in logs.items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            count += n
            bar.set_postfix({k: f"{v / count:.4f}" for k, v in totals.items()}, refresh=False)
        bar.refresh()  # the epoch's final running means stay on screen
        bar.close()
        return self._mean_over_ranks(totals, count)

    def evaluate(self, loader) -> dict:
        """Mean loss and metrics over `loader`, in eval mode without a graph. When distributed,
        each rank must call it, with its own shard of the data (e.g. a DataLoader with
        ``rank``, ``world_size`` and ``even_shards=False``): the result is the mean over all
        the ranks' samples, as one process computes it over the whole data set, since the
        ranks' sums and sample counts are added up before dividing. The loss and every metric
        must be means over the samples of a batch."""
        self.model.eval()
        # named before the first batch: a rank with an empty shard sends its zeros all the same
        totals = dict.fromkeys((["loss"] if self.loss_fn else []) + list(self.metrics), 0.0)
        count = 0
        with no_grad():
            for batch in loader:
                x, y = _to_device(batch, self.device)[:2]
                out = self.model(Tensor(x))
                logs = {"loss": float(self.loss_fn(out, y).item())} if self.loss_fn else {}
                logs.update({name: fn(out, y) for name, fn in self.metrics.items()})
                for k, v in logs.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * len(x)
                count += len(x)
        self.model.train()
        return self._mean_over_ranks(totals, count)

    def _update_early_stopping(self, logs) -> bool:
        if self.early_stopping is None:
            return False
        if self.monitor not in logs:
            raise KeyError(f"Trainer: early stopping monitors {self.monitor!r}, but the epoch logged "
                           f"only {sorted(logs)} (pass a val_loader or another monitor)")
        value = logs[self.monitor]
        improved = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.early_stopping

    # -- checkpoints
    def save_checkpoint(self, path, train_loader=None):
        """Writes model, optimisers, RNG states and counters to `path`, atomically. When
        distributed, every rank must call it (the ranks' random generators are gathered) and
        rank 0 alone writes."""
        rank_rngs = _dist.allgather_object(_random.get_rng_state()) if self.distributed else None
        if not self._is_writer():
            return
        state = {
            "format": _FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "rng": _random.get_rng_state(),
            "history": json.dumps(self.history),
            "early_stopping": {"best": np.nan if self.best is None else self.best,
                               "bad_epochs": self.bad_epochs},
        }
        if rank_rngs is not None:
            state["rank_rngs"] = json.dumps(rank_rngs)
        if self.metadata:
            state["metadata"] = self.metadata
        if train_loader is not None and hasattr(train_loader, "state_dict"):
            state["loader"] = train_loader.state_dict()
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        save(state, path)

    def load_checkpoint(self, path, train_loader=None):
        """Restores everything :meth:`save_checkpoint` wrote. Raises FileNotFoundError,
        or CheckpointError (a ValueError) for a truncated, corrupt or mismatched file. All or
        nothing: every part of the checkpoint is read and checked before the trainer changes,
        and a model or optimiser state that does not fit puts back what was loaded before it."""
        state = load(path)
        if "format" not in state or str(state["format"]) != _FORMAT:
            raise CheckpointError(f"Trainer: {path!r} is not a pyconv Trainer checkpoint")
        try:
            saved_opts = state["optimizers"]
            if set(saved_opts) != set(self.optimizers):
                raise ValueError(f"the checkpoint has optimizers {sorted(saved_opts)}, this trainer "
                                 f"{sorted(self.optimizers)}")
            epoch = int(state["epoch"])
            history = json.loads(str(state["history"]))
            best = float(state["early_stopping"]["best"])
            bad_epochs = int(state["early_stopping"]["bad_epochs"])
            rng_state = str(state["rng"])
            json.loads(rng_state)
            model_before = self.model.state_dict()
            optimizers_before = {name: opt.state_dict() for name, opt in self.optimizers.items()}
            try:
                self.model.load_state_dict(state["model"])
                for name, opt in self.optimizers.items():
                    opt.load_state_dict(saved_opts[name])
            except BaseException:
                self.model.load_state_dict(model_before)
                for name, opt in self.optimizers.items():
                    opt.load_state_dict(optimizers_before[name])
                raise
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"Trainer: checkpoint {path!r} does not fit this model/optimizer: {e}") from e
        _random.set_rng_state(rng_state)
        if self.distributed:
            rank_rngs = json.loads(str(state["rank_rngs"])) if "rank_rngs" in state else []
            if len(rank_rngs) == _dist.world_size():
                _random.set_rng_state(rank_rngs[_dist.rank()])
            else:  # saved by a run on another number of ranks
                _split_random_stream()
        if train_loader is not None and "loader" in state and hasattr(train_loader, "load_state_dict"):
            train_loader.load_state_dict(state["loader"])
        self.epoch = epoch
        self.history = history
        self.best = None if np.isnan(best) else best
        self.bad_epochs = bad_epochs


# ---------------------------------------------------------------------------------------------
# GANs


def gan_step(trainer, batch) -> dict:
    """One GAN update on a batch of real images (and labels, for a conditional model):

    1. the discriminator learns to tell the real images (target 1) from the generator's
       samples (target 0), the generator frozen;
    2. the generator learns to make the discriminator call its samples real, the
       discriminator frozen. The loss is the non-saturating -log D(G(z)) rather than
       log(1 - D(G(z))), whose gradient vanishes while the discriminator wins easily, as it
       does early in training. With ``trainer.mode_seeking`` = w > 0 the generator also pays
       w / (ratio + 1e-5), where ratio is the mean absolute difference between the images of
       two halves of its batch (the same labels, different noise) over that of their noise
       (Mao et al. 2019, mode seeking): a generator that ignores its noise, making one image
       per class, pays a lot.

    `trainer.model` has ``generator``, ``discriminator``, ``conditional`` and ``noise(n)``;
    `trainer.optimizers` has "generator" and "discriminator"."""
    from .nn.functional import binary_cross_entropy_with_logits as bce

    gan = trainer.model
    G, D = gan.generator, gan.discriminator
    real = Tensor(batch[0])
    labels = batch[1] if gan.conditional else None
    n = len(batch[0])
    mode_seeking = getattr(trainer, "mode_seeking", 0.0)
    xp = array_module(batch[0])  # the batch's device: NumPy or CuPy
    ones, zeros = xp.ones(n, real.dtype), xp.zeros(n, real.dtype)

    def noise(k):  # drawn on the host from pyconv's generator: the same stream on every device
        return xp.asarray(gan.noise(k))

    G.requires_grad_(False)
    fake = G(noise(n), labels)  # no graph: nothing in G requires a gradient
    d_real, d_fake = D(real, labels), D(fake, labels)
    loss_d = bce(d_real, ones) + bce(d_fake, zeros)
    trainer.optimizers["discriminator"].zero_grad()
    loss_d.backward()
    trainer.optimizers["discriminator"].step()
    G.requires_grad_(True)

    D.requires_grad_(False)
    half = n // 2
    if mode_seeking and half:
        # the second half repeats the first half's labels with its own noise
        g_labels = None if labels is None else xp.concatenate([labels[:half], labels[:half]])
        z = noise(2 * half)
        generated = G(z, g_labels)
        image_gap = (generated[:half] - generated[half:]).abs().mean()
        noise_gap = float(xp.abs(z[:half] - z[half:]).mean())
        loss_g = bce(D(generated, g_labels), ones[:2 * half])
        loss_g = loss_g + mode_seeking / (image_gap / noise_gap + 1e-5)
    else:
        loss_g = bce(D(G(noise(n), labels), labels), ones)
    trainer.optimizers["generator"].zero_grad()
    loss_g.backward()
    trainer.optimizers["generator"].step()
    D.requires_grad_(True)

    def mean_probability(logits):
        return float((1 / (1 + xp.exp(-logits.data.astype(np.float64)))).mean())

    return {"loss_d": float(loss_d.item()), "loss_g": float(loss_g.item()),
            "D(x)": mean_probability(d_real), "D(G(z))": mean_probability(d_fake)}


class GANTrainer(Trainer):
    """A :class:`Trainer` for a GAN (e.g. :class:`pyconv.models.DCGAN`): Adam for both networks
    (lr 2e-4, betas (0.5, 0.999) as DCGAN) and :func:`gan_step`, which reads `mode_seeking`
    (the weight of its term against a generator that ignores its noise; 0: none). A fixed
    batch of noise (and labels in blocks of equal size, class by class, for a conditional
    model), drawn once from `seed`, is reused by :meth:`sample_fixed` after every epoch, so
    that the sample grids of successive epochs and of resumed runs show the same latent
    points.

        trainer = GANTrainer(DCGAN(), checkpoint_path="run/last.npz")
        trainer.fit(loader, epochs=20, on_epoch_end=lambda t, logs: save_grid(t.sample_fixed(), ...))
    """

    def __init__(self, gan, lr=2e-4, betas=(0.5, 0.999), fixed_samples=64, seed=0, mode_seeking=0.0,
                 **kwargs):
        from .optim import Adam

        self.mode_seeking = float(mode_seeking)
        optimizers = {"generator": Adam(gan.generator.parameters(), lr=lr, betas=betas),
                      "discriminator": Adam(gan.discriminator.parameters(), lr=lr, betas=betas)}
        super().__init__(gan, optimizers, step_fn=gan_step, **kwargs)
        self.fixed_noise = gan.noise(fixed_samples, np.random.default_rng(seed))
        # Conditional: class 0 for the first n/K samples, then class 1, ... (a row per class).
        per_class = -(-fixed_samples // gan.num_classes)
        self.fixed_labels = np.repeat(np.arange(gan.num_classes), per_class)[:fixed_samples] \
            if gan.conditional else None

    def sample_fixed(self) -> np.ndarray:
        """The generator's images (in [0, 1]) for the fixed noise batch."""
        return self.model.sample(z=self.fixed_noise, labels=self.fixed_labels)
