"""Every model of pyconv.models against its PyTorch twin (pyconv.bench.twins) in float64:
the forward output, the loss and the gradient of every parameter agree to 1e-10 relative to
the largest magnitude of the torch value (max |pyconv - torch| <= 1e-10 * max |torch|).

Shapes are tiny: this checks that the two compute the same function, not speed."""
import numpy as np
import pytest

import pyconv
from pyconv import Tensor, models
from pyconv.nn import functional as F

RTOL = 1e-10
F64 = np.float64


def _close(ours, theirs, what):
    ours = np.asarray(ours.data if isinstance(ours, Tensor) else ours, F64)
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1e-300)
    err = float(np.abs(ours - theirs).max(initial=0.0))
    assert err <= RTOL * scale, f"{what}: max |diff| {err:.3g} > {RTOL} * {scale:.3g}"


def _compare(torch, model, tmodel, run, trun):
    """run(model) -> (output, loss) on pyconv, trun(tmodel) -> (output, loss) on torch: equal
    outputs, losses and every parameter's gradient."""
    out, loss = run(model)
    loss.backward()
    tout, tloss = trun(tmodel)
    tloss.backward()
    _close(out, tout, "output")
    _close(loss, tloss, "loss")
    grads = dict(tmodel.named_parameters())
    names = [name for name, _ in model.named_parameters()]
    assert names and set(names) == set(grads)
    for name, p in model.named_parameters():
        assert p.grad is not None and grads[name].grad is not None, name
        _close(p.grad, grads[name].grad, f"grad {name}")


@pytest.fixture
def twin(torch):
    from pyconv.bench import twins

    def make(model):
        return twins.twin(model)
    return make


def _rng():
    return np.random.default_rng(0)


def test_lenet5(torch, twin):
    pyconv.manual_seed(0)
    model = models.LeNet5(dtype=F64)
    x, y = _rng().standard_normal((3, 1, 32, 32)), np.array([1, 7, 3])
    tmodel = twin(model)

    def run(m):
        out = m(Tensor(x))
        return out, F.cross_entropy(out, y)

    def trun(m):
        out = m(torch.from_numpy(x))
        return out, torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    _compare(torch, model, tmodel, run, trun)


@pytest.mark.parametrize("conditional", [False, True])
def test_dcgan(torch, twin, conditional):
    """Generator then discriminator (and the label embeddings, when conditional): the
    generator's non-saturating loss reaches every parameter of both."""
    pyconv.manual_seed(0)
    model = models.DCGAN(z_dim=6, image_size=8, width=4, conditional=conditional, num_classes=3,
                         embed_dim=2, dtype=F64)
    rng = _rng()
    z, labels = rng.standard_normal((4, 6)), np.array([0, 2, 1, 2])
    lab = labels if conditional else None
    tmodel = twin(model)
    tlab = torch.from_numpy(labels) if conditional else None

    def run(m):
        out = m.discriminator(m.generator(z, lab), lab)
        return out, F.binary_cross_entropy_with_logits(out, np.ones(4))

    def trun(m):
        out = m.discriminator(m.generator(torch.from_numpy(z), tlab), tlab)
        return out, torch.nn.functional.binary_cross_entropy_with_logits(out, torch.ones(4, dtype=torch.float64))
    _compare(torch, model, tmodel, run, trun)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae(torch, twin, likelihood):
    pyconv.manual_seed(0)
    model = models.VAE(latent_dim=3, image_size=8, width=4, likelihood=likelihood, dtype=F64)
    x = _rng().random((4, 1, 8, 8))
    tmodel = twin(model)

    def run(m):
        pyconv.manual_seed(5)  # the reparameterisation's noise, drawn again below for the twin
        out = m(x)[0]
        pyconv.manual_seed(5)
        return out, m.loss(x)

    def trun(m):
        pyconv.manual_seed(5)
        eps = torch.from_numpy(pyconv.random.generator().standard_normal((4, 3)))
        out, _, _ = m(torch.from_numpy(x), eps)
        return out, m.loss(torch.from_numpy(x), eps)
    _compare(torch, model, tmodel, run, trun)


@pytest.mark.parametrize("levels, num_classes", [(2, 0), (256, 3)])
def test_pixelcnn(torch, twin, levels, num_classes):
    pyconv.manual_seed(0)
    model = models.PixelCNN(image_size=6, levels=levels, channels=4, n_layers=2, kernel_size=3,
                            hidden=5, num_classes=num_classes, dtype=F64)
    rng = _rng()
    x = (rng.integers(0, 256, (3, 1, 6, 6)) / 255) if levels == 256 else (rng.random((3, 1, 6, 6)) > 0.5) * 1.0
    labels = np.array([0, 2, 1]) if num_classes else None
    tmodel = twin(model)
    tlabels = torch.from_numpy(labels) if num_classes else None

    def run(m):
        return m(x, labels), m.loss(x, labels)

    def trun(m):
        tx = torch.from_numpy(x)
        return m(tx, tlabels), m.loss(tx, tlabels)
    _compare(torch, model, tmodel, run, trun)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_charlstm(torch, twin, cell):
    pyconv.manual_seed(0)
    model = models.CharLSTM(vocab="abcde", embed_dim=3, hidden_size=4, num_layers=2, cell=cell, dtype=F64)
    rng = _rng()
    ids, targets = rng.integers(0, 5, (2, 7)), rng.integers(0, 5, (2, 7))
    tmodel = twin(model)

    def run(m):
        return m(ids)[0], m.loss(ids, targets)[0]

    def trun(m):
        tids = torch.from_numpy(ids)
        return m(tids)[0], m.loss(tids, torch.from_numpy(targets))[0]
    _compare(torch, model, tmodel, run, trun)


def test_segnet(torch, twin):
    pyconv.manual_seed(0)
    model = models.SegNet(in_channels=1, num_classes=3, widths=(3, 4), dtype=F64)
    rng = _rng()
    x, masks = rng.standard_normal((2, 1, 8, 8)), rng.integers(0, 3, (2, 8, 8))
    tmodel = twin(model)

    def run(m):
        out = m(x)
        return out, F.cross_entropy(out, masks)

    def trun(m):
        out = m(torch.from_numpy(x))
        return out, torch.nn.functional.cross_entropy(out, torch.from_numpy(masks))
    _compare(torch, model, tmodel, run, trun)


def test_motif_cnn(torch, twin):
    pyconv.manual_seed(0)
    model = models.MotifCNN(num_classes=3, n_filters=5, filter_size=4, dtype=F64)
    rng = _rng()
    x = np.eye(4)[rng.integers(0, 4, (3, 20))].transpose(0, 2, 1).copy()  # one-hot (N, 4, L)
    y = np.array([0, 2, 1])
    tmodel = twin(model)

    def run(m):
        out = m(x)
        return out, F.cross_entropy(out, y)

    def trun(m):
        out = m(torch.from_numpy(x))
        return out, torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    _compare(torch, model, tmodel, run, trun)


def test_twin_refuses_an_unknown_model(torch):
    from pyconv import nn
    from pyconv.bench import twins

    with pytest.raises(TypeError, match="no PyTorch twin"):
        twins.twin(nn.Linear(2, 3))

