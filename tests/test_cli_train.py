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


def test_pixelcnn_grey_levels_conditional_train_and_sample(tmp_path):
    """--levels 256 --conditional reach the model (a 256-way softmax, the class embedding) and
    the data (grey levels, not binarised); sample --label K draws class K."""
    result = train("pixelcnn", tmp_path, "--levels", "256", "--conditional")
    assert result["config"] == {"image_size": 16, "levels": 256, "num_classes": 10}
    for figure in ("test_bits_per_dim", "baseline_bits_per_dim"):
        assert np.isfinite(result["summary"][figure])
    assert 0 <= result["summary"]["sample_accuracy"] <= 1  # samples in their conditioning class
    assert result["summary"]["baseline_bits_per_dim"] > 1  # grey levels: far more than 1 bit a pixel
    assert (tmp_path / "samples.png").stat().st_size > 0

    npz = tmp_path / "threes.npz"
    assert cli.main(["sample", "pixelcnn", "--checkpoint", str(tmp_path / "checkpoint.npz"),
                     "--out", str(tmp_path / "threes.png"), "--n", "2", "--label", "3",
                     "--npz", str(npz)]) == 0
    saved = np.load(npz)
    assert list(saved["labels"]) == [3, 3] and saved["samples"].shape == (2, 1, 16, 16)
    levels = saved["samples"] * 255
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)
    assert len(np.unique(np.rint(levels))) > 2  # grey levels, not black and white
    with pytest.raises(ValueError, match="no option levels"):
        train("lenet", tmp_path / "lenet", "--levels", "256")


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


def test_grey_level_baseline():
    """Per-pixel grey-level frequencies plus half a count of every level: a pixel always black
    in 10 training images costs -log2((10 + 0.5) / (10 + 128)) bits when black, and a level
    never seen costs -log2(0.5 / 138)."""
    from pyconv.recipes.common import grey_level_baseline_bits

    x_train = np.zeros((10, 1, 2, 2), np.float32)
    x_test = np.zeros((3, 1, 2, 2), np.float32)
    assert np.isclose(grey_level_baseline_bits(x_train, x_test), -np.log2(10.5 / 138))
    x_test[:, :, 0, 0] = 7 / 255
    expected = (3 * -np.log2(10.5 / 138) + -np.log2(0.5 / 138)) / 4
    assert np.isclose(grey_level_baseline_bits(x_train, x_test), expected)


def test_within_class_spread():
    """1 when the samples of each class are as far apart as the real images of that class,
    0 when every class has a single sample repeated (mode collapse)."""
    from pyconv.recipes.common import mean_pairwise_distance, within_class_spread

    assert np.isclose(mean_pairwise_distance(np.array([[0.0, 0], [3, 4], [6, 8]])), (5 + 10 + 5) / 3)
    rng = np.random.default_rng(0)
    real = rng.random((40, 1, 4, 4))
    labels = np.arange(40) % 2
    assert np.isclose(within_class_spread(real, labels, real, labels), 1)
    assert np.isclose(within_class_spread(2 * real, labels, real, labels), 2)
    collapsed = np.tile(real[:2], (20, 1, 1, 1))  # each class: one image, repeated
    assert within_class_spread(collapsed, labels, real, labels) == 0
    # a class with a single real image has no spread to compare with: left out
    assert np.isclose(within_class_spread(real[:4], labels[:4], real[:3], labels[:3]), 1)
    assert np.isnan(within_class_spread(real[:2], labels[:2], real, labels))


def test_grid_labels_go_in_margins(tmp_path):
    from PIL import Image

    from pyconv import pictures

    images = np.zeros((6, 1, 8, 8))  # black images on a white grid
    pictures.save_grid(images, tmp_path / "plain.png", nrow=3)
    pictures.save_grid(images, tmp_path / "labelled.png", nrow=3, row_labels=["first", "second"],
                       col_labels=["a", "b", "c"])
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    labelled = np.asarray(Image.open(tmp_path / "labelled.png"))
    top, left = labelled.shape[0] - plain.shape[0], labelled.shape[1] - plain.shape[1]
    assert top > 5 and left > 20
    np.testing.assert_array_equal(labelled[top:, left:], plain)
    assert labelled[top:, :left].min() < 128 and labelled[:top, left:].min() < 128  # text in both margins


def test_sample_offers_only_the_models_that_sample(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["sample", "lenet", "--checkpoint", str(tmp_path / "c.npz"), "--out", str(tmp_path / "g.png")])
    assert "invalid choice: 'lenet' (choose from 'cgan', 'charlstm', 'dcgan', 'pixelcnn', 'vae')" \
        in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["lenet", "segnet", "motif", "dcgan", "cgan", "vae", "pixelcnn",
                                   "charlstm"])
def test_train_on_the_gpu_follows_the_cpu_run(tmp_path, model):
    """`--backend cuda` trains on CuPy arrays; the same seed on the CPU gives the same losses
    (to 1e-3: float32 round-off grown over three Adam steps), and the files are written."""
    import pyconv
    from pyconv.backends import cuda_simulator

    cupy = pytest.importorskip("cupy")
    if not cupy.is_available() or cuda_simulator():
        pytest.skip("needs a real GPU")
    try:
        on_gpu = train(model, tmp_path / "gpu", "--backend", "cuda")
    finally:
        pyconv.set_backend(None)
    on_cpu = train(model, tmp_path / "cpu")
    for gpu_epoch, cpu_epoch in zip(on_gpu["history"], on_cpu["history"]):
        losses = [k for k in cpu_epoch if k.startswith(("loss", "neg_elbo", "bits_per"))]
        assert losses and set(gpu_epoch) == set(cpu_epoch)
        for key in losses:
            np.testing.assert_allclose(gpu_epoch[key], cpu_epoch[key], rtol=1e-3, err_msg=key)
    assert os.path.exists(tmp_path / "gpu" / "checkpoint.npz")


def test_sample_refuses_the_gpu_backend_clearly(monkeypatch):
    import importlib

    from pyconv import recipes

    backends = importlib.import_module("pyconv.backends")
    monkeypatch.setattr(backends, "cuda_simulator", lambda: False)
    monkeypatch.setattr(backends, "selected", lambda: "cuda")
    with pytest.raises(ValueError, match="pyconv sample: sampling runs on a CPU backend"):
        recipes.sample("dcgan", "no-such-checkpoint.npz", "grid.png")


def test_the_cuda_backend_trains_on_the_device_except_in_the_simulator(monkeypatch):
    import importlib

    from pyconv import recipes

    backends = importlib.import_module("pyconv.backends")
    assert recipes._training_device() == "cpu"
    monkeypatch.setattr(backends, "selected", lambda: "cuda")
    monkeypatch.setattr(backends, "cuda_simulator", lambda: True)
    assert recipes._training_device() == "cpu"  # the simulator runs on NumPy arrays
    monkeypatch.setattr(backends, "cuda_simulator", lambda: False)
    assert recipes._training_device() == "cuda"
