"""pyconv.nn.functional: finite-difference gradient checks (float64) of every differentiable
function, comparisons with torch.nn.functional (values and gradients), and error messages.

Functions that run kernels (convolutions, pooling, unpooling, LSTM) are checked on every CPU
backend that registers the kernels they need, so the real kernels are gradient-checked.
"""
import sys

import numpy as np
import pytest

import pyconv
import pyconv.nn.functional as F
from pyconv import Tensor
from pyconv.testing import gradcheck

try:
    import torch
    import torch.nn.functional as TF
except ImportError:
    torch = None

def needs_torch(test):
    """Marks a PyTorch comparison (`-m "not torch"` deselects it); skips it without PyTorch."""
    return pytest.mark.torch(pytest.mark.skipif(torch is None, reason="PyTorch not installed")(test))
_registry = sys.modules["pyconv.backends"]


@pytest.fixture(autouse=True)
def reference_backend():
    # Tests that are not per-backend run on the reference backend (the NumPy ground truth),
    # which implements every kernel; the per-backend checks pick their backends explicitly.
    with pyconv.use_backend("reference"):
        yield


def backends_with(*kernels):
    """The CPU backends (names) that register every kernel in `kernels`."""
    names = [n for n in pyconv.backends() if n != "cuda"
             and all(k in _registry.get(n).kernels for k in kernels)]
    return names or [pytest.param("reference", marks=pytest.mark.skip(reason=f"no backend has {kernels}"))]


def rand(shape, seed=0, low=-1.0, high=1.0, requires_grad=True):
    return Tensor(np.random.default_rng(seed).uniform(low, high, shape), requires_grad=requires_grad)


def randint(high, shape, seed=0):
    return np.random.default_rng(seed).integers(0, high, shape)


# ---------------------------------------------------------------------------------------------
# Kernel-backed functions, per backend

CONV = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias")
KERNEL_CASES = {
    "conv2d": (CONV, lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2)),
               [(2, 3, 5, 6), (4, 3, 3, 2), (4,)]),
    "conv2d_groups_nobias": (CONV, lambda x, w: F.conv2d(x, w, None, padding="same", groups=2),
                             [(1, 4, 4, 5), (6, 2, 3, 3)]),
    "conv1d": (CONV, lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1), [(2, 2, 7), (3, 2, 3), (3,)]),
    "conv_transpose2d": (CONV, lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
                         [(2, 4, 3, 3), (4, 3, 3, 3), (3,)]),
    "conv_transpose2d_groups": (CONV, lambda x, w: F.conv_transpose2d(x, w, None, stride=(1, 2), groups=2, dilation=2),
                                [(1, 4, 3, 2), (4, 1, 2, 2)]),
    "max_pool2d": (("max_pool2d", "max_pool2d_backward"),
                   lambda x: F.max_pool2d(x, 3, stride=2, padding=1), [(2, 2, 6, 5)]),
    "max_pool2d_ceil_dilated": (("max_pool2d", "max_pool2d_backward"),
                                lambda x: F.max_pool2d(x, 2, stride=2, dilation=2, ceil_mode=True), [(1, 2, 7, 7)]),
    "avg_pool2d": (("avg_pool2d", "avg_pool2d_backward"),
                   lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), [(2, 2, 6, 5)]),
    "avg_pool2d_divisor": (("avg_pool2d", "avg_pool2d_backward"),
                           lambda x: F.avg_pool2d(x, 2, divisor_override=3), [(1, 2, 4, 4)]),
    "max_unpool2d": (("max_pool2d", "max_unpool2d"),
                     lambda x: F.max_unpool2d(x * 2, F.max_pool2d(rand((2, 2, 4, 6), 9, requires_grad=False), 2,
                                                                  return_indices=True)[1], 2),
                     [(2, 2, 2, 3)]),
    "linear": (("matmul",), lambda x, w, b: F.linear(x, w, b), [(2, 3, 4), (5, 4), (5,)]),
    "linear_nobias": (("matmul",), lambda x, w: F.linear(x, w), [(3, 4), (2, 4)]),
    # More rows and columns than one register tile of the C++ GEMM.
    "linear_past_a_tile": (("matmul",), lambda x, w, b: F.linear(x, w, b), [(17, 9), (50, 9), (50,)]),
    # 260 rows: the bias gradient as a product with a row of ones.
    "linear_many_rows": (("matmul",), lambda x, w, b: F.linear(x, w, b), [(2, 130, 3), (5, 3), (5,)]),
    "batch_norm_train_fused": (("batch_norm_train", "batch_norm_train_backward"),
                               lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                               [(4, 3, 2, 5), (3,), (3,)]),
    "batch_norm_train_fused_no_affine": (("batch_norm_train", "batch_norm_train_backward"),
                                         lambda x: F.batch_norm(x, np.zeros(3), np.ones(3), training=True),
                                         [(5, 3)]),
    "lstm": (("lstm", "lstm_backward"), lambda x, h, c, wi, wh, bi, bh: F.lstm(x, h, c, wi, wh, bi, bh),
             [(3, 2, 4), (2, 5), (2, 5), (20, 4), (20, 5), (20,), (20,)]),
    "lstm_zero_state_nobias": (("lstm", "lstm_backward"), lambda x, wi, wh: F.lstm(x, None, None, wi, wh)[1],
                               [(2, 3, 2), (12, 2), (12, 3)]),
    "lstm_cell": (("lstm_cell", "lstm_cell_backward"), lambda x, h, c, wi, wh, bi, bh: F.lstm_cell(x, h, c, wi, wh, bi, bh),
                  [(2, 4), (2, 3), (2, 3), (12, 4), (12, 3), (12,), (12,)]),
    # Unbatched inputs (one sample, no batch axis), as PyTorch takes them.
    "conv2d_unbatched": (CONV, lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [(3, 5, 6), (4, 3, 3, 2), (4,)]),
    "conv1d_unbatched": (CONV, lambda x, w, b: F.conv1d(x, w, b, padding="same", groups=2), [(2, 7), (4, 1, 3), (4,)]),
    "conv_transpose2d_unbatched": (CONV, lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, output_padding=1),
                                   [(2, 3, 3), (2, 3, 2, 2), (3,)]),
    "max_pool2d_unbatched": (("max_pool2d", "max_pool2d_backward"),
                             lambda x: F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True), [(2, 6, 5)]),
    "avg_pool2d_unbatched": (("avg_pool2d", "avg_pool2d_backward"),
                             lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [(2, 6, 5)]),
    "max_unpool2d_unbatched": (("max_pool2d", "max_unpool2d"),
                               lambda x: F.max_unpool2d(x * 2, F.max_pool2d(rand((2, 4, 6), 9, requires_grad=False), 2,
                                                                            return_indices=True)[1], 2),
                               [(2, 2, 3)]),
    "lstm_unbatched": (("lstm", "lstm_backward"), lambda x, h, c, wi, wh, bi, bh: F.lstm(x, h, c, wi, wh, bi, bh),
                       [(3, 4), (5,), (5,), (20, 4), (20, 5), (20,), (20,)]),
    "lstm_unbatched_zero_state": (("lstm", "lstm_backward"), lambda x, wi, wh: F.lstm(x, None, None, wi, wh),
                                  [(2, 2), (12, 2), (12, 3)]),
    "lstm_cell_unbatched": (("lstm_cell", "lstm_cell_backward"),
                            lambda x, h, c, wi, wh, bi, bh: F.lstm_cell(x, h, c, wi, wh, bi, bh),
                            [(4,), (3,), (3,), (12, 4), (12, 3), (12,), (12,)]),
    # The fused activations and dropout, on every backend.
    "relu_fused": (("relu", "relu_backward"), F.relu, [(3, 4)]),
    "elu_fused": (("elu", "elu_backward"), lambda x: F.elu(x * 3, 0.7), [(3, 4, 5)]),
    "prelu_fused_channels": (("prelu", "prelu_backward"), F.prelu, [(2, 3, 2, 2), (3,)]),
    "prelu_fused_single": (("prelu", "prelu_backward"), F.prelu, [(2, 3), (1,)]),
    "sigmoid_fused": (("sigmoid", "sigmoid_backward"), lambda x: F.sigmoid(x * 4), [(3, 4, 5)]),
    "tanh_fused": (("tanh", "tanh_backward"), lambda x: F.tanh(x * 2), [(3, 4, 5)]),
    "gated_tanh_fused": (("gated_tanh", "gated_tanh_backward"), lambda x: F.gated_tanh(x * 2), [(2, 6, 3, 5)]),
    "gated_tanh_fused_last_axis": (("gated_tanh", "gated_tanh_backward"), lambda x: F.gated_tanh(x, -1), [(3, 4, 10)]),
    "dropout_fused": (("dropout", "dropout_backward"),
                      lambda x: (pyconv.manual_seed(3), F.dropout(x, 0.3))[1], [(4, 5, 3)]),
}


def _kernel_params():
    out = []
    for name, (kernels, _, _) in sorted(KERNEL_CASES.items()):
        for b in backends_with(*kernels):
            out.append(pytest.param(name, b, id=f"{name}-{b if isinstance(b, str) else 'none'}")
                       if isinstance(b, str) else pytest.param(name, "reference", marks=b.marks, id=f"{name}-none"))
    return out


def _flatten_outputs(fn):
    def wrapped(*args):
        out = fn(*args)
        flat = []
        for o in out if isinstance(out, tuple) else (out,):
            flat.extend(o if isinstance(o, tuple) else (o,))
        return tuple(flat)
    return wrapped


@pytest.mark.parametrize("name,backend", _kernel_params())
def test_gradcheck_kernel_functions(name, backend):
    _, fn, shapes = KERNEL_CASES[name]
    inputs = [rand(s, seed=i) for i, s in enumerate(shapes)]
    with pyconv.use_backend(backend):
        assert gradcheck(_flatten_outputs(fn), inputs)


# ---------------------------------------------------------------------------------------------
# Array-level functions (no kernels)

T2 = np.array([2, 0, 1, 2])
T2_IGNORED = np.array([2, -100, 1, 0])
CLASS_W = np.array([0.5, 2.0, 1.5])
T4 = randint(3, (2, 2, 3), seed=4)
SAME = np.array([1.0, 0.0, 1.0, 0.0])

CASES = {
    "relu": (F.relu, [(3, 4)]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), [(3, 4)]),
    "prelu_channels": (F.prelu, [(2, 3, 2, 2), (3,)]),
    "prelu_single": (F.prelu, [(2, 3), (1,)]),
    "elu": (lambda x: F.elu(x, 0.7), [(3, 4)]),
    "sigmoid": (F.sigmoid, [(3, 4)]),
    "tanh": (F.tanh, [(3, 4)]),
    "gated_tanh": (F.gated_tanh, [(3, 4, 2)]),
    "softmax": (lambda x: F.softmax(x, dim=1), [(2, 4, 3)]),
    "log_softmax": (lambda x: F.log_softmax(x, dim=-1), [(3, 5)]),
    "maxout": (lambda x: F.maxout(x, 3), [(2, 6, 2)]),
    "dropout": (lambda x: (pyconv.manual_seed(0), F.dropout(x, 0.4))[1], [(4, 5)]),
    "batch_norm_train": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [(4, 3, 2, 2), (3,), (3,)]),
    "batch_norm_train_1d": (lambda x: F.batch_norm(x, np.zeros(3), np.ones(3), training=True), [(5, 3)]),
    "batch_norm_eval": (lambda x, w, b: F.batch_norm(x, np.linspace(-1, 1, 3), np.linspace(0.5, 2, 3), w, b),
                        [(2, 3, 4), (3,), (3,)]),
    "embedding": (lambda w: F.embedding(np.array([[1, 3], [1, 0]]), w), [(4, 3)]),
    "rnn_cell": (lambda x, h, wi, wh, bi, bh: F.rnn_cell(x, h, wi, wh, bi, bh), [(2, 3), (2, 4), (4, 3), (4, 4), (4,), (4,)]),
    "rnn_cell_relu": (lambda x, wi, wh: F.rnn_cell(x, None, wi, wh, nonlinearity="relu"), [(2, 3), (4, 3), (4, 4)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, T2), [(4, 3)]),
    "cross_entropy_spatial_sum": (lambda x: F.cross_entropy(x, T4, reduction="sum"), [(2, 3, 2, 3)]),
    "cross_entropy_none": (lambda x: F.cross_entropy(x, T2, reduction="none"), [(4, 3)]),
    "cross_entropy_weight_ignore_smoothing": (lambda x: F.cross_entropy(x, T2_IGNORED, weight=CLASS_W, label_smoothing=0.2),
                                              [(4, 3)]),
    "nll_loss_weight_ignore": (lambda x: F.nll_loss(x, T2_IGNORED, weight=CLASS_W), [(4, 3)]),
    "multi_margin_loss_p2_weight": (lambda x: F.multi_margin_loss(x, T2, p=2, weight=CLASS_W), [(4, 3)]),
    "nll_loss": (lambda x: F.nll_loss(x, T2), [(4, 3)]),
    "nll_loss_spatial": (lambda x: F.nll_loss(x, T4, reduction="none"), [(2, 3, 2, 3)]),
    "multi_margin_loss": (lambda x: F.multi_margin_loss(x, T2, margin=0.5), [(4, 3)]),
    "mse_loss": (F.mse_loss, [(3, 4), (3, 4)]),
    "l1_loss": (lambda a, b: F.l1_loss(a, b, reduction="sum"), [(3, 4), (3, 4)]),
    "mean_bias_error": (F.mean_bias_error, [(3, 4), (3, 4)]),
    "binary_cross_entropy": (lambda p, t: F.binary_cross_entropy(F.sigmoid(p), F.sigmoid(t)), [(3, 4), (3, 4)]),
    "binary_cross_entropy_weighted": (lambda p, w: F.binary_cross_entropy(F.sigmoid(p), np.full((3, 4), 0.3), weight=w),
                                      [(3, 4), (4,)]),
    "bce_with_logits": (lambda x, t: F.binary_cross_entropy_with_logits(x, F.sigmoid(t)), [(3, 4), (3, 4)]),
    "bce_with_logits_pos_weight": (lambda x, t: F.binary_cross_entropy_with_logits(x, F.sigmoid(t), pos_weight=np.array([1., 2., 3., .5])),
                                   [(3, 4), (3, 4)]),
    "kl_normal": (F.kl_normal, [(3, 4), (3, 4)]),
    "kl_normal_per_sample": (lambda m, v: F.kl_normal(m, v, reduction="none"), [(3, 2, 2), (3, 2, 2)]),
    "kl_normal_per_element": (lambda m, v: F.kl_normal(m, v, reduction="sum"), [(5,), (5,)]),
    "contrastive_loss": (lambda a, b: F.contrastive_loss(a, b, SAME, margin=2.0), [(4, 3), (4, 3)]),
    "gram_matrix": (F.gram_matrix, [(2, 3, 2, 3)]),
    "adain": (F.adain, [(2, 3, 3, 3), (2, 3, 2, 4)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck_functions(name):
    fn, shapes = CASES[name]
    inputs = [rand(s, seed=i) for i, s in enumerate(shapes)]
    assert gradcheck(_flatten_outputs(fn), inputs)


# ---------------------------------------------------------------------------------------------
# Against PyTorch (float64 values and gradients)


def _compare(fn, tfn, shapes, seeds=None, rtol=1e-9, atol=1e-11):
    arrays = [np.random.default_rng(i if seeds is None else seeds[i]).uniform(-1, 1, s) for i, s in enumerate(shapes)]
    mine = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    out, tout = fn(*mine), tfn(*theirs)
    outs = out if isinstance(out, tuple) else (out,)
    touts = tout if isinstance(tout, tuple) else (tout,)
    weights = [np.random.default_rng(99 + k).standard_normal(o.shape) for k, o in enumerate(outs)]
    total = sum(((o * Tensor(w)).sum() for o, w in zip(outs, weights)), start=Tensor(np.zeros(())))
    ttotal = sum((o * torch.tensor(w)).sum() for o, w in zip(touts, weights))
    for o, to in zip(outs, touts):
        np.testing.assert_allclose(o.data, to.detach().numpy(), rtol=rtol, atol=atol)
    total.backward()
    ttotal.backward()
    for m, th in zip(mine, theirs):
        if th.grad is not None:
            np.testing.assert_allclose(m.grad, th.grad.numpy(), rtol=rtol, atol=atol)


def _t(a):
    return torch.tensor(a)


TORCH_CASES = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=(1, 0), dilation=1, groups=2),
               lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding=(1, 0), groups=2),
               [(2, 4, 6, 5), (6, 2, 3, 3), (6,)]),
    "conv2d_same": (lambda x, w: F.conv2d(x, w, padding="same", dilation=2),
                    lambda x, w: TF.conv2d(x, w, padding="same", dilation=2), [(1, 2, 5, 6), (3, 2, 2, 3)]),
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b, padding=2, dilation=2), lambda x, w, b: TF.conv1d(x, w, b, padding=2, dilation=2),
               [(2, 3, 8), (4, 3, 3), (4,)]),
    "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1),
                         lambda x, w, b: TF.conv_transpose2d(x, w, b, 2, 1, 1), [(2, 3, 3, 4), (3, 2, 3, 3), (2,)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), lambda x: TF.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                   [(2, 3, 7, 6)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                   lambda x: TF.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [(2, 3, 7, 6)]),
    "max_unpool2d": (lambda x: F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2),
                     lambda x: TF.max_unpool2d(*TF.max_pool2d(x, 2, return_indices=True), 2), [(2, 2, 4, 6)]),
    "lstm_cell": (lambda x, h, c, wi, wh, bi, bh: F.lstm_cell(x, h, c, wi, wh, bi, bh),
                  lambda x, h, c, wi, wh, bi, bh: torch._VF.lstm_cell(x, (h, c), wi, wh, bi, bh),
                  [(2, 4), (2, 3), (2, 3), (12, 4), (12, 3), (12,), (12,)]),
    "linear": (F.linear, TF.linear, [(2, 3, 4), (5, 4), (5,)]),
    "linear_many_rows": (F.linear, TF.linear, [(2, 130, 3), (5, 3), (5,)]),
    "relu": (F.relu, TF.relu, [(3, 4)]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), lambda x: TF.leaky_relu(x, 0.1), [(3, 4)]),
    "prelu": (F.prelu, TF.prelu, [(2, 3, 4), (3,)]),
    "elu": (lambda x: F.elu(x, 1.3), lambda x: TF.elu(x, 1.3), [(3, 4)]),
    "sigmoid": (F.sigmoid, torch.sigmoid if torch else None, [(3, 4)]),
    "tanh": (F.tanh, torch.tanh if torch else None, [(3, 4)]),
    "gated_tanh": (lambda x: F.gated_tanh(x, 1),
                   lambda x: torch.tanh(x[:, :3]) * torch.sigmoid(x[:, 3:]) if torch else None, [(2, 6, 4)]),
    "softmax": (lambda x: F.softmax(x, 1), lambda x: TF.softmax(x, 1), [(2, 4, 3)]),
    "log_softmax": (lambda x: F.log_softmax(x, 0), lambda x: TF.log_softmax(x, 0), [(2, 4, 3)]),
    "batch_norm_train": (lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
                         lambda x, w, b: TF.batch_norm(x, None, None, w, b, True), [(4, 3, 2, 3), (3,), (3,)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, T2), lambda x: TF.cross_entropy(x, _t(T2)), [(4, 3)]),
    "cross_entropy_spatial": (lambda x: F.cross_entropy(x, T4), lambda x: TF.cross_entropy(x, _t(T4)), [(2, 3, 2, 3)]),
    "nll_loss": (lambda x: F.nll_loss(x, T2, reduction="sum"), lambda x: TF.nll_loss(x, _t(T2), reduction="sum"), [(4, 3)]),
    "cross_entropy_options": (lambda x: F.cross_entropy(x, T2_IGNORED, weight=CLASS_W, label_smoothing=0.1),
                              lambda x: TF.cross_entropy(x, _t(T2_IGNORED), weight=_t(CLASS_W), label_smoothing=0.1),
                              [(4, 3)]),
    "cross_entropy_spatial_none_smoothing": (lambda x: F.cross_entropy(x, T4, reduction="none", label_smoothing=0.3),
                                             lambda x: TF.cross_entropy(x, _t(T4), reduction="none", label_smoothing=0.3),
                                             [(2, 3, 2, 3)]),
    "nll_loss_weight_ignore": (lambda x: F.nll_loss(x, T2_IGNORED, weight=CLASS_W),
                               lambda x: TF.nll_loss(x, _t(T2_IGNORED), weight=_t(CLASS_W)), [(4, 3)]),
    "multi_margin_loss_p2_weight": (lambda x: F.multi_margin_loss(x, T2, p=2, margin=0.5, weight=CLASS_W),
                                    lambda x: TF.multi_margin_loss(x, _t(T2), p=2, margin=0.5, weight=_t(CLASS_W)),
                                    [(4, 3)]),
    "multi_margin_loss": (lambda x: F.multi_margin_loss(x, T2, margin=0.7),
                          lambda x: TF.multi_margin_loss(x, _t(T2), margin=0.7), [(4, 3)]),
    "mse_loss": (F.mse_loss, TF.mse_loss, [(3, 4), (3, 4)]),
    "l1_loss": (F.l1_loss, TF.l1_loss, [(3, 4), (3, 4)]),
    "binary_cross_entropy": (lambda p, t: F.binary_cross_entropy(F.sigmoid(p), F.sigmoid(t)),
                             lambda p, t: TF.binary_cross_entropy(torch.sigmoid(p), torch.sigmoid(t)), [(3, 4), (3, 4)]),
    "bce_with_logits": (lambda x, t: F.binary_cross_entropy_with_logits(x * 5, F.sigmoid(t), pos_weight=np.array([1., 2., 3., .5])),
                        lambda x, t: TF.binary_cross_entropy_with_logits(x * 5, torch.sigmoid(t), pos_weight=_t(np.array([1., 2., 3., .5]))),
                        [(3, 4), (3, 4)]),
    "embedding": (lambda w: F.embedding(np.array([[1, 3], [1, 0]]), w), lambda w: TF.embedding(_t(np.array([[1, 3], [1, 0]])), w), [(4, 3)]),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_matches_torch(name):
    fn, tfn, shapes = TORCH_CASES[name]
    _compare(fn, tfn, shapes)


@needs_torch
def test_lstm_sequence_matches_torch():
    rng = np.random.default_rng(0)
    T, B, I, H = 4, 2, 3, 5
    lstm = torch.nn.LSTM(I, H).double()
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, B, H))
    weights = [p.detach().numpy() for p in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)]
    out, (h, c) = F.lstm(Tensor(x), Tensor(h0), Tensor(c0), *map(Tensor, weights))
    tout, (th, tc) = lstm(torch.tensor(x), (torch.tensor(h0)[None], torch.tensor(c0)[None]))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h.data, th[0].detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c.data, tc[0].detach().numpy(), rtol=1e-10, atol=1e-12)


@needs_torch
def test_rnn_cell_biases_get_gradients_of_their_own():
    # One array handed to both biases would let an in-place update of one change the other.
    rng = np.random.default_rng(0)
    x, w_ih, w_hh = (Tensor(rng.standard_normal(s)) for s in ((2, 3), (4, 3), (4, 4)))
    b_ih, b_hh = (Tensor(rng.standard_normal(4), requires_grad=True) for _ in range(2))
    F.rnn_cell(x, None, w_ih, w_hh, b_ih, b_hh).sum().backward()
    np.testing.assert_array_equal(b_ih.grad, b_hh.grad)
    before = b_hh.grad.copy()
    b_ih.grad += 1
    np.testing.assert_array_equal(b_hh.grad, before)


def test_rnn_cell_runs_one_fused_kernel_each_way(monkeypatch):
    """A step is one call of ops.rnn_cell forward and one of ops.rnn_cell_backward, with no
    separate products or activations (the per-call cost is what a recurrent step pays for)."""
    calls = []
    for name in ("rnn_cell", "rnn_cell_backward", "matmul", "tanh", "tanh_backward"):
        original = getattr(pyconv.ops, name)
        monkeypatch.setattr(pyconv.ops, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    rng = np.random.default_rng(0)
    x, h, w_ih, w_hh = (Tensor(rng.standard_normal(s), requires_grad=True) for s in ((2, 3), (2, 4), (4, 3), (4, 4)))
    F.rnn_cell(x, h, w_ih, w_hh).sum().backward()
    assert calls == ["rnn_cell", "rnn_cell_backward"]
    assert all(t.grad is not None for t in (x, h, w_ih, w_hh))


def test_batch_norm_running_stats_match_torch():
    x = np.random.default_rng(0).standard_normal((6, 3, 2, 2))
    rm, rv = np.zeros(3), np.ones(3)
    trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for _ in range(3):
        F.batch_norm(Tensor(x), rm, rv, training=True, momentum=0.2)
        TF.batch_norm(torch.tensor(x), trm, trv, training=True, momentum=0.2)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Values from the definitions


def test_mean_bias_error_sign_follows_the_seed():
    # MBE = sum(y - y_hat) / n with y the ground truth: predictions too low -> positive.
    assert F.mean_bias_error(Tensor(np.array([1.0, 2.0])), np.array([2.0, 4.0])).item() == 1.5


def test_multi_margin_loss_is_the_seed_svm_loss_over_c():
    scores = np.array([[3.2, 5.1, -1.7]])  # the classic cat example: SVM loss 2.9
    assert np.isclose(F.multi_margin_loss(Tensor(scores), np.array([0])).item() * 3, 2.9)


def test_kl_normal_is_zero_for_the_prior():
    assert F.kl_normal(Tensor(np.zeros((2, 3))), Tensor(np.zeros((2, 3)))).item() == 0


def test_contrastive_loss_values():
    a, b = np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([[3.0, 4.0], [0.3, 0.4]])
    loss = F.contrastive_loss(Tensor(a), Tensor(b), np.array([1.0, 0.0]), margin=1.0, reduction="none")
    np.testing.assert_allclose(loss.data, [0.5 * 25, 0.5 * 0.5 ** 2])


def test_gram_matrix_and_adain_statistics():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 3, 3))
    f = x.reshape(2, 9)
    np.testing.assert_allclose(F.gram_matrix(Tensor(x)).data[0], f @ f.T / 18)
    style = rng.standard_normal((1, 2, 4, 4)) * 3 + 1
    y = F.adain(Tensor(x), Tensor(style), eps=0).data
    np.testing.assert_allclose(y.mean(axis=(2, 3)), style.mean(axis=(2, 3)), atol=1e-12)
    np.testing.assert_allclose(y.std(axis=(2, 3)), style.std(axis=(2, 3)), rtol=1e-12)


def test_dropout_scales_and_is_identity_in_eval():
    x = Tensor(np.ones((100, 100)))
    pyconv.manual_seed(1)
    y = F.dropout(x, 0.3).data
    assert set(np.unique(y)) == {0.0, 1 / 0.7}
    assert abs((y == 0).mean() - 0.3) < 0.02
    assert F.dropout(x, 0.3, training=False) is x


def test_sigmoid_and_bce_with_logits_are_stable_for_large_inputs():
    x = Tensor(np.array([-800.0, 800.0]), requires_grad=True)
    assert np.all(np.isfinite(F.sigmoid(x).data))
    loss = F.binary_cross_entropy_with_logits(x, np.array([1.0, 0.0]), reduction="sum")
    loss.backward()
    np.testing.assert_allclose(loss.item(), 1600.0)
    np.testing.assert_allclose(x.grad, [-1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Errors name the argument and the shapes


@pytest.mark.parametrize("call,error,match", [
    (lambda: F.linear(rand((2, 3)), rand((4, 5))), ValueError, r"x of shape \(2, 3\).*weight of shape \(4, 5\)"),
    (lambda: F.linear(rand((2, 3)), rand((4, 3)), rand((5,))), ValueError, r"bias must have shape \(4,\)"),
    (lambda: F.cross_entropy(rand((4, 3)), np.array([0, 1, 2])), ValueError, r"target must have shape \(4,\)"),
    (lambda: F.cross_entropy(rand((2, 3)), np.array([0, 3])), ValueError, r"\[0, 3\)"),
    (lambda: F.cross_entropy(rand((2, 3)), np.array([0.0, 1.0])), TypeError, "integer class indices"),
    (lambda: F.cross_entropy(rand((2, 3)), np.array([0, 1]), reduction="avg"), ValueError, "reduction"),
    (lambda: F.cross_entropy(rand((2, 3)), np.array([0, 1]), weight=np.ones(2)), ValueError, r"weight must have shape \(3,\)"),
    (lambda: F.multi_margin_loss(rand((2, 3)), np.array([0, 1]), p=3), ValueError, "p must be 1 or 2"),
    (lambda: F.mse_loss(rand((2, 3)), rand((3, 2))), ValueError, r"\(2, 3\) and \(3, 2\)"),
    (lambda: F.binary_cross_entropy(rand((2,)) * 3, rand((2,))), ValueError, r"probabilities in \[0, 1\]"),
    (lambda: F.maxout(rand((2, 5)), 2), ValueError, r"pool_size=2 must divide the size 5"),
    (lambda: F.prelu(rand((2, 3, 4)), rand((4,))), ValueError, r"prelu: weight must have shape \(1,\) or \(3,\).*got \(4,\)"),
    (lambda: F.batch_norm(rand((2, 3)), np.zeros(4), np.ones(4)), ValueError, r"running_mean must have shape \(3,\)"),
    (lambda: F.batch_norm(rand((1, 3)), None, None, training=True), ValueError, "more than one value per channel"),
    (lambda: F.embedding(np.array([0, 5]), rand((4, 2))), ValueError, r"\[0, 4\)"),
    (lambda: F.embedding(np.array([0.0]), rand((4, 2))), TypeError, "indices must be an integer array"),
    (lambda: F.dropout(rand((2,)), 1.5), ValueError, r"p must be in \[0, 1\]"),
    (lambda: F.gram_matrix(rand((2, 3))), ValueError, r"\(N, C, H, W\)"),
    (lambda: F.contrastive_loss(rand((2, 3)), rand((2, 3)), np.ones(3)), ValueError, r"same must have shape \(2,\)"),
    (lambda: F.rnn_cell(rand((2, 3)), None, rand((4, 3)), rand((4, 4)), nonlinearity="gelu"), ValueError, "nonlinearity"),
    (lambda: F.rnn_cell(rand((2, 3)), None, rand((4, 2)), rand((4, 4))), ValueError, r"rnn_cell: x of shape \(2, 3\)"),
    (lambda: F.rnn_cell(rand((2, 3)), None, rand((4, 3)), rand((4, 3))), ValueError, r"rnn_cell: w_hh must have shape \(4, 4\)"),
    (lambda: F.rnn_cell(rand((2, 3)), rand((3, 4)), rand((4, 3)), rand((4, 4))), ValueError, r"rnn_cell: h must have shape \(2, 4\)"),
    (lambda: F.rnn_cell(rand((3,)), rand((2, 4)), rand((4, 3)), rand((4, 4))), ValueError, r"rnn_cell: h must have shape \(4,\)"),
    (lambda: F.rnn_cell(rand((2, 3)), None, rand((4, 3)), rand((4, 4)), None, rand((3,))), ValueError, r"rnn_cell: b_hh must have shape \(4,\)"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_conv_errors_come_from_ops_with_shapes():
    with pyconv.use_backend("reference"):
        with pytest.raises(ValueError, match=r"x.shape=\(1, 3, 5, 5\), w.shape=\(2, 4, 3, 3\)"):
            F.conv2d(rand((1, 3, 5, 5)), rand((2, 4, 3, 3)))
