"""``pyconv train`` and ``pyconv sample`` end to end on tiny settings: the files each run
writes, the printed summary, --resume, and the samples (with labels for a conditional model)."""
import json
import os
import struct

import numpy as np
import pytest

from pyconv import cli, load

TINY = ["--epochs", "1", "--limit", "48", "--batch-size", "16", "--no-progress"]


def train(model, out, *extra):
    assert cli.main(["train", model, "--out", str(out)] + TINY + list(extra)) == 0
    with open(os.path.join(out, "history.json")) as f:
        return json.load(f)


def test_cgan_train_resume_and_sample(tmp_path, capsys):
    out = tmp_path / "cgan"
    first = train("cgan", out)
    assert [h["epoch"] for h in first["history"]] == [1]
    for name in ("checkpoint.npz", "history.json", "loss.png", "samples.png", "epochs/samples_001.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and "sample_accuracy" in printed
    assert 0 <= first["summary"]["sample_accuracy"] <= 1

    resumed = train("cgan", out, "--resume", "--epochs", "2")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == first["history"][0]  # epoch 1 came from the checkpoint
    assert int(load(out / "checkpoint.npz")["epoch"]) == 2

    grid, npz = tmp_path / "sevens.png", tmp_path / "sevens.npz"
    assert cli.main(["sample", "cgan", "--checkpoint", str(out / "checkpoint.npz"), "--out", str(grid),
                     "--n", "6", "--label", "7", "--npz", str(npz)]) == 0
    saved = np.load(npz)
    assert saved["samples"].shape == (6, 1, 16, 16) and list(saved["labels"]) == [7] * 6
    assert 0 <= saved["samples"].min() and saved["samples"].max() <= 1
    assert grid.stat().st_size > 0
    with pytest.raises(ValueError, match="cgan"):
        cli.main(["sample", "vae", "--checkpoint", str(out / "checkpoint.npz"), "--out", str(grid)])


@pytest.mark.parametrize("model, pictures, figure", [
    ("lenet", ["saliency.png"], "test_accuracy"),
    ("vae", ["samples.png", "reconstructions.png", "interpolations.png"], "test_neg_elbo_nats"),
    ("pixelcnn", ["samples.png"], "test_bits_per_dim"),
    ("segnet", ["segmentation.png"], "test_mean_iou"),
    ("motif", ["filters.png"], "test_accuracy"),
])
def test_train_writes_the_model_pictures(tmp_path, model, pictures, figure):
    result = train(model, tmp_path)
    for name in ["checkpoint.npz", "loss.png"] + pictures:
        assert (tmp_path / name).stat().st_size > 0, name
    assert figure in result["summary"] and np.isfinite(result["summary"][figure])


def test_charlstm_train_and_sample_text(tmp_path):
    result = train("charlstm", tmp_path)
    assert (tmp_path / "samples.txt").read_text().startswith("--- temperature")
    for figure in ("test_bits_per_char", "unigram_bits_per_char", "rnn_test_bits_per_char"):
        assert np.isfinite(result["summary"][figure])
    out = tmp_path / "text.txt"
    assert cli.main(["sample", "charlstm", "--checkpoint", str(tmp_path / "checkpoint.npz"),
                     "--out", str(out), "--n", "50", "--temperature", "0.5"]) == 0
    assert len(out.read_text()) == 51


def test_train_on_mnist_idx_files(tmp_path):
    """--data mnist:PATH reads the IDX files (here a small fake set with MNIST's layout)."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            (tmp_path / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())
    result = train("lenet", tmp_path / "run", "--data", f"mnist:{tmp_path}")
    assert result["data"] == f"mnist:{tmp_path}" and result["config"] == {}
    assert np.isfinite(result["summary"]["test_accuracy"])
