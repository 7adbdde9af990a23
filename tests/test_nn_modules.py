"""pyconv.nn modules: gradient checks of every layer (float64), PyTorch state-dict
interchange and output comparisons, initialisation, the Module API, summary and saliency."""
import math
from collections import OrderedDict

import numpy as np
import pytest

import pyconv
import pyconv.nn as nn
from pyconv import Tensor
from pyconv.testing import gradcheck
from pyconv.models import LeNet5

try:
    import torch
except ImportError:
    torch = None

def needs_torch(test):
    """Marks a PyTorch comparison (`-m "not torch"` deselects it); skips it without PyTorch."""
    return pytest.mark.torch(pytest.mark.skipif(torch is None, reason="PyTorch not installed")(test))


@pytest.fixture(autouse=True)
def reference_backend():
    # Layers call pyconv.ops; these tests run them on the reference backend, which implements
    # every kernel. Per-backend checks are in test_nn_functional.
    with pyconv.use_backend("reference"):
        yield


def rand(shape, seed=0, requires_grad=True):
    return Tensor(np.random.default_rng(seed).uniform(-1, 1, shape), requires_grad=requires_grad)


def _first(out):
    while isinstance(out, tuple):
        out = out[0]
    return out


# ---------------------------------------------------------------------------------------------
# Gradient checks: input and every parameter, float64

MODULE_CASES = {
    "Linear": (lambda: nn.Linear(4, 3), (2, 4)),
    "Conv1d": (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 2, 6)),
    "Conv2d": (lambda: nn.Conv2d(2, 4, (3, 2), padding=1, groups=2), (2, 2, 4, 4)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), (1, 2, 3, 3)),
    "MaskedConv2d_A": (lambda: nn.MaskedConv2d("A", 2, 3, 3, padding=1), (1, 2, 4, 4)),
    "MaskedConv2d_B": (lambda: nn.MaskedConv2d("B", 2, 2, 3, padding=1), (1, 2, 4, 4)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (1, 2, 4, 4)),
    "MaxPool2d_unbatched": (lambda: nn.MaxPool2d(2), (2, 4, 4)),
    "AvgPool2d_unbatched": (lambda: nn.AvgPool2d(2), (2, 4, 5)),
    "Conv2d_unbatched": (lambda: nn.Conv2d(2, 4, 3, padding=1, groups=2), (2, 4, 4)),
    "LSTMCell_unbatched": (lambda: nn.LSTMCell(3, 2), (3,)),
    "LSTM_2layers_unbatched": (lambda: nn.LSTM(3, 2, num_layers=2, batch_first=True), (4, 3)),
    "AvgPool2d": (lambda: nn.AvgPool2d(3, 2, 1), (1, 2, 5, 5)),
    "BatchNorm1d_train": (lambda: nn.BatchNorm1d(3), (4, 3)),
    "BatchNorm1d_eval": (lambda: nn.BatchNorm1d(3).eval(), (4, 3, 2)),
    "BatchNorm2d_train": (lambda: nn.BatchNorm2d(2), (3, 2, 2, 2)),
    "Dropout": (lambda: nn.Dropout(0.3), (3, 4)),
    "ReLU": (lambda: nn.ReLU(), (3, 4)),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), (3, 4)),
    "PReLU": (lambda: nn.PReLU(3), (2, 3, 2)),
    "ELU": (lambda: nn.ELU(), (3, 4)),
    "Sigmoid": (lambda: nn.Sigmoid(), (3, 4)),
    "Tanh": (lambda: nn.Tanh(), (3, 4)),
    "Softmax": (lambda: nn.Softmax(1), (3, 4)),
    "LogSoftmax": (lambda: nn.LogSoftmax(1), (3, 4)),
    "Maxout": (lambda: nn.Maxout(4, 3, pool_size=2), (2, 4)),
    "Flatten": (lambda: nn.Flatten(), (2, 3, 2)),
    "RNNCell": (lambda: nn.RNNCell(3, 4), (2, 3)),
    "LSTMCell": (lambda: nn.LSTMCell(3, 2), (2, 3)),
    "LSTM_2layers_batch_first": (lambda: nn.LSTM(3, 2, num_layers=2, batch_first=True), (2, 3, 3)),
    "ResidualBlock_downsample": (lambda: nn.ResidualBlock(2, 3, stride=2), (2, 2, 4, 4)),
    "ResidualBlock_identity": (lambda: nn.ResidualBlock(2, 2), (2, 2, 3, 3)),
    "Sequential": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)), (2, 1, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(MODULE_CASES))
def test_gradcheck_modules(name):
    make, shape = MODULE_CASES[name]
    pyconv.manual_seed(0)
    module = make().double()
    x = rand(shape)

    def run(x, *params):
        if isinstance(module, nn.Dropout):
            pyconv.manual_seed(3)  # the same mask at every evaluation
        out = module(x)
        flat = []
        for o in out if isinstance(out, tuple) else (out,):
            flat.extend(o if isinstance(o, tuple) else (o,))
        return tuple(flat)

    assert gradcheck(run, [x] + module.parameters())


def test_gradcheck_embedding_and_unpool():
    emb = nn.Embedding(5, 3).double()
    assert gradcheck(lambda w: emb(np.array([[0, 4], [4, 2]])), [emb.weight])
    pool, unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
    y, idx = pool(rand((1, 2, 4, 4), 5, requires_grad=False))
    assert gradcheck(lambda y: unpool(y, idx), [y.detach().requires_grad_()])


# ---------------------------------------------------------------------------------------------
# PyTorch interchange: load torch's state_dict, compare outputs and gradients (float64)


class TorchBasicBlock(torch.nn.Module if torch else object):
    """torchvision's BasicBlock, written out (torchvision is not installable beside torch-cpu)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        t = torch.nn
        self.conv1 = t.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = t.BatchNorm2d(cout)
        self.conv2 = t.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = t.BatchNorm2d(cout)
        self.downsample = t.Sequential(t.Conv2d(cin, cout, 1, stride, bias=False), t.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


TORCH_PAIRS = {
    "Linear": (lambda: nn.Linear(4, 3), lambda: torch.nn.Linear(4, 3), (2, 4)),
    "Conv1d": (lambda: nn.Conv1d(2, 4, 3, padding=1, groups=2), lambda: torch.nn.Conv1d(2, 4, 3, padding=1, groups=2), (2, 2, 5)),
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), lambda: torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 5, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1),
                        lambda: torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1), (1, 3, 3, 3)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), lambda: torch.nn.BatchNorm2d(3), (4, 3, 2, 2)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), lambda: torch.nn.BatchNorm1d(3), (5, 3)),
    "PReLU": (lambda: nn.PReLU(3), lambda: torch.nn.PReLU(3), (2, 3, 4)),
    "RNNCell": (lambda: nn.RNNCell(3, 4), lambda: torch.nn.RNNCell(3, 4), (2, 3)),
    "LSTMCell": (lambda: nn.LSTMCell(3, 4), lambda: torch.nn.LSTMCell(3, 4), (2, 3)),
    "LSTM": (lambda: nn.LSTM(3, 4, num_layers=2, batch_first=True),
             lambda: torch.nn.LSTM(3, 4, num_layers=2, batch_first=True), (2, 5, 3)),
    # Unbatched inputs: one sample without its batch axis.
    "Conv1d_unbatched": (lambda: nn.Conv1d(2, 4, 3, padding=1, groups=2), lambda: torch.nn.Conv1d(2, 4, 3, padding=1, groups=2), (2, 5)),
    "Conv2d_unbatched": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), lambda: torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 5, 5)),
    "ConvTranspose2d_unbatched": (lambda: nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1),
                                  lambda: torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1), (3, 3, 3)),
    "LSTMCell_unbatched": (lambda: nn.LSTMCell(3, 4), lambda: torch.nn.LSTMCell(3, 4), (3,)),
    "RNNCell_relu_unbatched": (lambda: nn.RNNCell(3, 4, nonlinearity="relu"),
                               lambda: torch.nn.RNNCell(3, 4, nonlinearity="relu"), (3,)),
    "LSTM_unbatched": (lambda: nn.LSTM(3, 4, num_layers=2, batch_first=True),
                       lambda: torch.nn.LSTM(3, 4, num_layers=2, batch_first=True), (5, 3)),
    "ResidualBlock": (lambda: nn.ResidualBlock(2, 3, stride=2), lambda: TorchBasicBlock(2, 3, 2), (2, 2, 5, 5)),
    "Sequential": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2)),
                   lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(8, 2)),
                   (2, 1, 4, 4)),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(TORCH_PAIRS))
def test_loads_torch_state_dict_and_matches(name):
    make, make_torch, shape = TORCH_PAIRS[name]
    torch.manual_seed(0)
    theirs = make_torch().double()
    mine = make().double()
    state = OrderedDict((k, v.detach().numpy()) for k, v in theirs.state_dict().items())
    assert list(mine.state_dict()) == list(state)  # same names, same order
    mine.load_state_dict(state)
    x = np.random.default_rng(1).standard_normal(shape)
    out, tout = _first(mine(Tensor(x))), _first(theirs(torch.tensor(x)))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-9, atol=1e-12)
    w = np.random.default_rng(2).standard_normal(out.shape)
    (out * Tensor(w)).sum().backward()
    (tout * torch.tensor(w)).sum().backward()
    for (pname, p), (tname, tp) in zip(mine.named_parameters(), theirs.named_parameters()):
        assert pname == tname
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=pname)
    for key, value in theirs.state_dict().items():  # running statistics evolve alike
        np.testing.assert_allclose(mine.state_dict()[key], value.numpy(), rtol=1e-12, err_msg=key)


@needs_torch
@pytest.mark.parametrize("name", ["Linear", "Conv2d", "ConvTranspose2d", "LSTM", "BatchNorm2d", "PReLU"])
def test_default_init_matches_torch_distribution(name):
    """Same shapes, and each parameter's range equals PyTorch's bound (max |w| of a big layer)."""
    big = {
        "Linear": (lambda: nn.Linear(300, 200), lambda: torch.nn.Linear(300, 200)),
        "Conv2d": (lambda: nn.Conv2d(16, 64, 5), lambda: torch.nn.Conv2d(16, 64, 5)),
        "ConvTranspose2d": (lambda: nn.ConvTranspose2d(64, 16, 5), lambda: torch.nn.ConvTranspose2d(64, 16, 5)),
        "LSTM": (lambda: nn.LSTM(30, 50), lambda: torch.nn.LSTM(30, 50)),
        "BatchNorm2d": (lambda: nn.BatchNorm2d(8), lambda: torch.nn.BatchNorm2d(8)),
        "PReLU": (lambda: nn.PReLU(), lambda: torch.nn.PReLU()),
    }[name]
    pyconv.manual_seed(0)
    torch.manual_seed(0)
    mine, theirs = big[0](), big[1]()
    for (pname, p), (_, tp) in zip(mine.named_parameters(), theirs.named_parameters()):
        tp = tp.detach().numpy()
        assert p.shape == tp.shape and p.dtype == np.float32
        np.testing.assert_allclose(np.abs(p.data).max(), np.abs(tp).max(), rtol=0.1, err_msg=pname)
        if p.size >= 1000:  # enough samples for the mean of |U(-b, b)| = b/2 to settle
            np.testing.assert_allclose(np.abs(p.data).mean(), np.abs(tp).mean(), rtol=0.05, err_msg=pname)


def test_linear_and_conv_bounds_follow_fan_in():
    pyconv.manual_seed(0)
    lin = nn.Linear(400, 50)
    assert np.abs(lin.weight.data).max() <= 1 / math.sqrt(400) and np.abs(lin.bias.data).max() <= 1 / math.sqrt(400)
    conv = nn.Conv2d(8, 16, 3, groups=2)
    assert np.abs(conv.weight.data).max() <= 1 / math.sqrt(4 * 9) + 1e-7
    assert np.abs(conv.weight.data).max() > 0.95 / math.sqrt(4 * 9)


def test_manual_seed_makes_models_reproducible():
    pyconv.manual_seed(7)
    a = LeNet5().state_dict()
    pyconv.manual_seed(7)
    b = LeNet5().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Module API


def test_named_parameters_buffers_and_modes():
    block = nn.ResidualBlock(2, 3, stride=2)
    names = [n for n, _ in block.named_parameters()]
    assert names == ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias",
                     "downsample.0.weight", "downsample.1.weight", "downsample.1.bias"]
    assert "bn1.running_var" in dict(block.named_buffers())
    block.eval()
    assert not any(m.training for m in block.modules())
    block.train()
    assert all(m.training for m in block.modules())


def test_requires_grad_false_freezes():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    model(rand((2, 3), requires_grad=False)).sum().backward()
    assert model[0].weight.grad is None and model[2].weight.grad is not None


def test_dropout_and_batchnorm_respect_eval():
    x = rand((4, 3), requires_grad=False)
    drop = nn.Dropout(0.5).eval()
    assert drop(x) is x
    bn = nn.BatchNorm1d(3)
    bn(x)
    assert bn.num_batches_tracked == 1
    bn.eval()
    before = bn.running_mean.copy()
    bn(x)
    assert np.array_equal(before, bn.running_mean) and bn.num_batches_tracked == 1


def test_state_dict_save_load_gives_identical_outputs(tmp_path):
    pyconv.manual_seed(0)
    model = LeNet5()
    x = rand((2, 1, 32, 32), requires_grad=False).astype(np.float32)
    pyconv.save(model.state_dict(), tmp_path / "lenet.npz")
    pyconv.manual_seed(1)
    other = LeNet5()
    assert not np.array_equal(model(x).data, other(x).data)
    other.load_state_dict(pyconv.load(tmp_path / "lenet.npz"))
    assert np.array_equal(model(x).data, other(x).data)


def test_load_state_dict_errors():
    model = nn.Sequential(nn.Linear(3, 2))
    state = model.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['0.bias'\]"):
        model.load_state_dict({"0.weight": state["0.weight"]})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        model.load_state_dict({**state, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(3, 3\) in the state but \(2, 3\)"):
        model.load_state_dict({**state, "0.weight": np.zeros((3, 3))})
    model.load_state_dict({"0.weight": state["0.weight"]}, strict=False)


def test_parameter_attribute_must_stay_a_parameter():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="is a parameter"):
        lin.weight = np.zeros((2, 2))
    lin.bias = None
    assert [n for n, _ in lin.named_parameters()] == ["weight"]


def test_to_cpu_and_dtype_conversion():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert model.to("cpu") is model
    model.double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model[1].running_mean.dtype == np.float64 and model[1].num_batches_tracked.dtype == np.int64
    with pytest.raises(ValueError, match="device"):
        model.to("gpu")


def test_masked_conv_never_sees_the_future():
    x = rand((1, 1, 5, 5), seed=3)
    for mask_type in "AB":
        conv = nn.MaskedConv2d(mask_type, 1, 1, 3, padding=1, bias=False).double()
        x.grad = None
        conv(x)[0, 0, 2, 2].backward()
        g = x.grad[0, 0]
        assert np.all(g[3:] == 0) and np.all(g[2, 3:] == 0)  # rows below, pixels to the right
        assert (g[2, 2] == 0) == (mask_type == "A")
        assert np.all(g[1:3, 1:2] != 0)


def test_lenet_shapes_and_errors():
    assert LeNet5()(rand((2, 1, 32, 32), requires_grad=False).astype(np.float32)).shape == (2, 10)
    assert LeNet5(padding=2)(rand((1, 1, 28, 28), requires_grad=False).astype(np.float32)).shape == (1, 10)
    with pytest.raises(ValueError, match="activation"):
        LeNet5(activation="gelu")


def test_layer_constructor_errors():
    with pytest.raises(ValueError, match="groups=3 must divide"):
        nn.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="mask_type"):
        nn.MaskedConv2d("C", 1, 1, 3)
    with pytest.raises(ValueError, match=r"expected a 4-D input, got shape \(2, 3\)"):
        nn.BatchNorm2d(3)(rand((2, 3)))
    with pytest.raises(ValueError, match=r"LSTM: expected input \(T, B, 3\)"):
        nn.LSTM(3, 2)(rand((2, 4, 5)))


# ---------------------------------------------------------------------------------------------
# Summary and saliency


def vgg16():
    layers, c = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(
        nn.Sequential(*layers), nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000),
    )


def test_summary_vgg16_totals():
    lines = []
    result = nn.summary(vgg16(), (3, 224, 224), print_fn=lines.append)
    assert result["total_params"] == 138_357_544 == result["trainable_params"]
    rows = result["layers"]
    assert rows[0]["output_shape"] == (1, 64, 224, 224) and rows[0]["params"] == 1_792
    assert rows[0]["activation_bytes"] == 64 * 224 * 224 * 4
    assert [r["output_shape"] for r in rows if r["type"] == "MaxPool2d"][-1] == (1, 512, 7, 7)
    assert rows[-1]["output_shape"] == (1, 1000)
    assert "Total params: 138,357,544" in lines[0]


def test_summary_runs_forward_for_custom_models():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    result = nn.summary(Custom(), (1, 6, 6), print_fn=None)
    assert [(r["name"], r["output_shape"]) for r in result["layers"]] == [("conv", (1, 2, 4, 4)), ("fc", (1, 3))]
    assert result["total_params"] == 20 + 99


def test_summary_lists_lenet_layers():
    result = nn.summary(LeNet5(), (1, 32, 32), print_fn=None)
    assert result["total_params"] == 61_706
    assert result["layers"][0]["output_shape"] == (1, 6, 28, 28)  # C1: 6 x 28 x 28 = 4704 neurons
    assert result["layers"][3]["output_shape"] == (1, 16, 10, 10)  # 1600 neurons


def test_saliency_of_a_linear_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4)).double()
    x = rand((2, 2, 3, 3), requires_grad=False)
    sal = nn.saliency(model, x, np.array([1, 3]))
    w = model[1].weight.data.reshape(4, 2, 3, 3)
    np.testing.assert_allclose(sal[0], np.abs(w[1]).max(axis=0))
    np.testing.assert_allclose(sal[1], np.abs(w[3]).max(axis=0))
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_penalties():
    model = nn.Sequential(nn.Linear(2, 2))
    w = model[0].weight.data
    assert np.isclose(nn.l1_penalty(model, 0.5).item(), 0.5 * np.abs(w).sum())
    assert np.isclose(nn.l2_penalty(model, 2.0).item(), 2.0 * (w ** 2).sum())
    assert np.isclose(nn.elastic_net_penalty(model, 1.0, 3.0).item(), np.abs(w).sum() + 3 * (w ** 2).sum())
    nn.l2_penalty(model.parameters()).backward()  # explicit list: bias included
    np.testing.assert_allclose(model[0].bias.grad, 2 * model[0].bias.data)


@needs_torch
def test_embedding_with_padding_idx_matches_torch():
    torch.manual_seed(0)
    theirs = torch.nn.Embedding(5, 3, padding_idx=1).double()
    mine = nn.Embedding(5, 3, padding_idx=1).double()
    assert np.all(mine.weight.data[1] == 0)
    mine.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    idx = np.array([[1, 2], [1, 4], [2, 2]])
    out, tout = mine(idx), theirs(torch.tensor(idx))
    np.testing.assert_array_equal(out.data, tout.detach().numpy())
    w = np.random.default_rng(0).standard_normal(out.shape)
    (out * Tensor(w)).sum().backward()
    (tout * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(mine.weight.grad, theirs.weight.grad.numpy(), rtol=1e-12)


@needs_torch
def test_batch_norm_cumulative_average_matches_torch():
    xs = np.random.default_rng(0).standard_normal((3, 5, 4, 2, 2))
    mine, theirs = nn.BatchNorm2d(4, momentum=None).double(), torch.nn.BatchNorm2d(4, momentum=None).double()
    for x in xs:
        mine(Tensor(x))
        theirs(torch.tensor(x))
    np.testing.assert_allclose(mine.running_mean, theirs.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(mine.running_var, theirs.running_var.numpy(), rtol=1e-12)


def test_flatten_range_of_axes():
    flat = nn.Flatten(1, 2)
    assert flat(rand((2, 3, 4, 5))).shape == (2, 12, 5) == flat.output_shape((2, 3, 4, 5))
    assert nn.Flatten(0)(rand((2, 3))).shape == (6,)


def test_add_module_apply_and_buffers():
    model = nn.Module()
    model.add_module("body", nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    seen = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "BatchNorm1d", "Sequential", "Module"]
    assert len(model.buffers()) == 3 and len(model.parameters()) == 4
    with pytest.raises(TypeError, match="must be a Module"):
        model.add_module("x", 3)
    with pytest.raises(NotImplementedError, match="bidirectional"):
        nn.LSTM(2, 2, bidirectional=True)


@needs_torch
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_lstm_takes_and_gives_layer_states_as_torch(batch_first):
    """An unbatched sequence (T, I): states (num_layers, H) in and out, batch_first ignored."""
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, batch_first=batch_first).double()
    mine = nn.LSTM(3, 4, num_layers=2, batch_first=batch_first, dtype=np.float64)
    mine.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(4)
    x, h0, c0 = rng.standard_normal((5, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    out, (h_n, c_n) = mine(Tensor(x), (Tensor(h0), Tensor(c0)))
    tout, (th_n, tc_n) = theirs(torch.tensor(x), (torch.tensor(h0), torch.tensor(c0)))
    for a, b in ((out, tout), (h_n, th_n), (c_n, tc_n)):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a.data, b.detach().numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer, shape, expected", [
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 5, 5), (4, 3, 3)),
    (lambda: nn.Conv1d(2, 4, 3), (2, 6), (4, 4)),
    (lambda: nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1), (3, 3, 3), (2, 6, 6)),
    (lambda: nn.MaxPool2d(2), (2, 5, 4), (2, 2, 2)),
    (lambda: nn.AvgPool2d(3, 2, 1), (2, 5, 5), (2, 3, 3)),
])
def test_output_shape_of_an_unbatched_input(layer, shape, expected):
    module = layer()
    assert module.output_shape(shape) == expected
    assert module(Tensor(np.zeros(shape, np.float32))).shape == expected
