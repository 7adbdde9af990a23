"""pyconv.train.Trainer: loss falls, exact resume, early stopping, checkpoint errors, custom
(GAN-style) steps, progress bar."""
import numpy as np
import pytest

import pyconv
import pyconv.nn as nn
import pyconv.nn.functional as F
from pyconv import Tensor, data
from pyconv.optim import SGD, Adam
from pyconv.train import Trainer, accuracy


@pytest.fixture(autouse=True)
def reference_backend():
    with pyconv.use_backend("reference"):
        yield


def mlp(seed=0):
    pyconv.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def blobs(seed=0, shuffle_seed=0):
    x, y = data.synthetic_classification(120, 2, 3, seed=seed)
    return data.DataLoader((x, y), 16, shuffle=True, seed=shuffle_seed)


def test_mlp_loss_falls_and_accuracy_rises():
    model = mlp()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1, momentum=0.9), metrics={"acc": accuracy},
                      progress=False)
    history = trainer.fit(blobs(), epochs=6, val_loader=data.DataLoader(data.synthetic_classification(60, 2, 3, seed=9), 30))
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["val_acc"] > 0.9 and [h["epoch"] for h in history] == list(range(1, 7))


def test_conv_net_loss_falls():
    pyconv.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    x, y = data.synthetic_images(48, 6, seed=0)
    trainer = Trainer(model, Adam(model.parameters(), lr=0.02), metrics={"acc": accuracy}, progress=False)
    history = trainer.fit(data.DataLoader((x, y), 16, shuffle=True, seed=0), epochs=5)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"] and history[-1]["acc"] > 0.9


def _run(tmp_path, name, epochs, resume=False, shuffle_seed=0, model_seed=0):
    model = mlp(model_seed)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    trainer = Trainer(model, opt, checkpoint_path=tmp_path / name, progress=False)
    trainer.fit(blobs(shuffle_seed=shuffle_seed), epochs=epochs, resume=resume)
    return trainer


def test_resume_equals_uninterrupted_training(tmp_path):
    pyconv.manual_seed(123)
    full = _run(tmp_path, "full.npz", 4)
    pyconv.manual_seed(123)
    _run(tmp_path, "part.npz", 2)
    pyconv.manual_seed(999)  # the resumed run must restore the generator from the checkpoint
    resumed = _run(tmp_path, "part.npz", 4, resume=True, shuffle_seed=55, model_seed=77)
    assert resumed.epoch == 4 and len(resumed.history) == 4
    assert resumed.history == full.history
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert np.array_equal(a, b), k


def test_checkpoint_is_written_each_epoch_atomically(tmp_path):
    _run(tmp_path, "ck.npz", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]
    state = pyconv.load(tmp_path / "ck.npz")
    assert int(state["epoch"]) == 2 and "0.weight" in state["model"]


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    _run(tmp_path, "ck.npz", 1)
    path = tmp_path / "ck.npz"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(pyconv.CheckpointError, match="truncated or corrupt"):
        _run(tmp_path, "ck.npz", 2, resume=True)


def test_mismatched_checkpoint_gives_clear_error(tmp_path):
    _run(tmp_path, "ck.npz", 1)
    other = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    trainer = Trainer(other, SGD(other.parameters(), lr=0.1), checkpoint_path=tmp_path / "ck.npz", progress=False)
    with pytest.raises(pyconv.CheckpointError, match=r"does not fit.*'0.weight' has shape \(16, 2\)"):
        trainer.fit(blobs(), epochs=2, resume=True)
    pyconv.save({"weights": np.ones(2)}, tmp_path / "plain.npz")
    with pytest.raises(pyconv.CheckpointError, match="not a pyconv Trainer checkpoint"):
        trainer.load_checkpoint(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        trainer.fit(blobs(), epochs=2, resume=tmp_path / "missing.npz")


def test_early_stopping(tmp_path):
    model = mlp()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.05), metrics={"const": lambda out, y: 1.0},
                      early_stopping=2, monitor="val_const", mode="max", progress=False)
    history = trainer.fit(blobs(), epochs=10, val_loader=blobs(1))
    assert len(history) == 3  # best at epoch 1, no improvement in 2 and 3
    with pytest.raises(KeyError, match="val_loss"):
        Trainer(model, SGD(model.parameters(), lr=0.05), early_stopping=1, progress=False).fit(blobs(), 1)


def test_custom_step_alternates_two_optimizers(tmp_path):
    """The hook a GAN needs: a discriminator step, then a generator step with the
    non-saturating loss, each with its own optimiser."""
    pyconv.manual_seed(0)

    class GAN(nn.Module):
        def __init__(self):
            super().__init__()
            self.generator = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
            self.discriminator = nn.Sequential(nn.Linear(2, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))

    gan = GAN()
    opts = {"d": Adam(gan.discriminator.parameters(), lr=1e-3), "g": Adam(gan.generator.parameters(), lr=1e-3)}

    def gan_step(trainer, batch):
        real = Tensor(batch[0])
        n = len(real)
        z = Tensor(pyconv.random.generator().standard_normal((n, 2)).astype(np.float32))
        fake = gan.generator(z)
        ones, zeros = np.ones((n, 1), np.float32), np.zeros((n, 1), np.float32)
        d_loss = (F.binary_cross_entropy_with_logits(gan.discriminator(real), ones)
                  + F.binary_cross_entropy_with_logits(gan.discriminator(fake.detach()), zeros))
        trainer.optimizers["d"].zero_grad(); d_loss.backward(); trainer.optimizers["d"].step()
        gan.discriminator.requires_grad_(False)
        g_loss = F.binary_cross_entropy_with_logits(gan.discriminator(fake), ones)  # non-saturating
        trainer.optimizers["g"].zero_grad(); g_loss.backward(); trainer.optimizers["g"].step()
        gan.discriminator.requires_grad_(True)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    before = gan.state_dict()
    trainer = Trainer(gan, opts, step_fn=gan_step, checkpoint_path=tmp_path / "gan.npz", progress=False)
    history = trainer.fit(blobs(), epochs=2)
    assert set(history[0]) == {"d_loss", "g_loss", "epoch"}
    after = gan.state_dict()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    assert set(pyconv.load(tmp_path / "gan.npz")["optimizers"]) == {"d", "g"}
    with pytest.raises(AttributeError, match="several optimizers"):
        trainer.optimizer


def test_progress_bar_shows_live_loss(capsys):
    model = mlp()
    Trainer(model, SGD(model.parameters(), lr=0.05), metrics={"acc": accuracy}).fit(blobs(), epochs=1)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "acc=" in err
