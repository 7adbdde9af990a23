"""pyconv.torch: the pyconv::* custom operators (opcheck, gradcheck, agreement with torch),
the converted modules (same parameters and state dict, same training losses as torch's own
modules, torch.compile without graph breaks), the refusals, and the torchvision-style box ops."""
from __future__ import annotations

import copy
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pyconv.torch as pt  # noqa: E402
from pyconv.torch import _library as lib  # noqa: E402

pytestmark = pytest.mark.torch
nn = torch.nn
TF = torch.nn.functional


def _randn(*shape, grad=True, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, requires_grad=grad)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def test_import_pyconv_does_not_import_torch():
    code = "import sys, pyconv, pyconv.ops, pyconv.nn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# Every operator under torch.library.opcheck: schema, autograd registration, fake tensor
# (shapes and dtypes of the fake implementation against the real one), AOT dispatch with
# dynamic shapes.


def _boxes(n, grad=False):
    xy = torch.rand(n, 2, dtype=torch.float64) * 10
    wh = torch.rand(n, 2, dtype=torch.float64) * 5 + 0.5
    return torch.cat([xy, xy + wh], 1).requires_grad_(grad)


def _rotated(n):
    return torch.cat([_boxes(n)[:, :2], torch.rand(n, 2, dtype=torch.float64) * 5 + 0.5,
                      torch.rand(n, 1, dtype=torch.float64) * 90], 1)


def _opcheck_samples():
    x4, w4, b4 = _randn(2, 4, 7, 7), _randn(6, 2, 3, 3), _randn(6)
    x3, w3 = _randn(2, 4, 9), _randn(6, 4, 3)
    wt = _randn(4, 3, 3, 3)
    y_pool, idx = TF.max_pool2d(x4.detach(), 2, return_indices=True)
    lstm_args = (_randn(5, 3, 4), _randn(3, 6), _randn(3, 6), _randn(24, 4), _randn(24, 6),
                 _randn(24), _randn(24))
    cell_args = (_randn(3, 4), _randn(3, 6), _randn(3, 6), _randn(24, 4), _randn(24, 6),
                 _randn(24), None)
    g = lambda *s: _randn(*s, grad=False)  # noqa: E731
    return {
        "conv2d": (x4, w4, b4, [2, 1], [1, 0], False, [1, 2], 2, "cpu"),
        "conv1d": (x3, w3, None, [1], [0], True, [2], 1, "cpu"),
        "conv2d_backward": (g(2, 6, 4, 3), x4, w4, [2, 1], [1, 0], False, [1, 2], 2,
                            [True, False, True], "cpu"),
        "conv1d_backward": (g(2, 6, 9), x3, w3, [1], [0], True, [1], 1, [True, True, True], "cpu"),
        "conv_transpose2d": (x4, wt, None, [2, 2], [1, 1], [1, 0], 1, [1, 1], "cpu"),
        "conv_transpose2d_backward": (g(2, 3, 14, 13), x4, wt, [2, 2], [1, 1], [1, 0], 1, [1, 1],
                                      [True, True, True], "cpu"),
        "max_pool2d": (x4, [3, 2], [2, 2], [1, 0], [1, 1], True, True, "cpu"),
        "max_pool2d_backward": (g(2, 4, 3, 3), idx, [2, 4, 7, 7], "cpu"),
        "avg_pool2d": (x4, [3, 3], [2, 2], [1, 1], True, False, None, "cpu"),
        "avg_pool2d_backward": (g(2, 4, 4, 4), [2, 4, 7, 7], [3, 3], [2, 2], [1, 1], True, False,
                                None, "cpu"),
        "max_unpool2d": (y_pool.requires_grad_(), idx, [2, 2], [2, 2], [0, 0], [7, 7], "cpu"),
        "lstm_cell": (*cell_args, "cpu"),
        "lstm_cell_backward": (g(3, 6), g(3, 6), *cell_args, "cpu"),
        "lstm": (*lstm_args, True, "cpu"),
        "rnn_cell": (_randn(3, 4), _randn(3, 6), _randn(6, 4), _randn(6, 6), _randn(6), None, "tanh",
                     "cpu"),
        "rnn_cell_backward": (g(3, 6), _randn(3, 4), None, torch.relu(g(3, 6)), _randn(6, 4),
                              _randn(6, 6), None, _randn(6), "relu", "cpu"),
        "lstm_backward": (g(5, 3, 6), g(3, 6), g(3, 6), *lstm_args, None, None, None, "cpu"),
        "box_iou": (_boxes(5), _boxes(3), "cpu"),
        "nms": (_boxes(8), torch.rand(8, dtype=torch.float64), 0.3, "cpu"),
        "batched_nms": (_boxes(8), torch.rand(8, dtype=torch.float64),
                        torch.tensor([0, 1, 0, 1, 2, 0, 1, 2]), 0.3, False, "cpu"),
        "soft_nms": (_boxes(8), torch.rand(8, dtype=torch.float64), 0.5, 0.3, 0.001, "linear",
                     "cpu"),
        "diou_nms": (_boxes(8), torch.rand(8, dtype=torch.float64), 0.3, "cpu"),
        "matrix_nms": (_boxes(8), torch.rand(8, dtype=torch.float64),
                       torch.tensor([0, 1, 0, 1, 2, 0, 1, 2]), "gaussian", 2.0, "cpu"),
        "box_iou_rotated": (_rotated(5), _rotated(3), "cpu"),
        "nms_rotated": (_rotated(8), torch.rand(8, dtype=torch.float64), 0.3, "cpu"),
        "relu": (x4, "cpu"),
        "relu_backward": (g(2, 4, 7, 7), torch.relu(x4), "cpu"),
        "leaky_relu": (x4, 0.2, "cpu"),
        "leaky_relu_backward": (g(2, 4, 7, 7), x4, 0.2, "cpu"),
        "matmul": (_randn(4, 3), _randn(5, 4), True, True, "cpu"),
        "embedding": (_randn(5, 3), torch.tensor([[0, 4], [2, 0]]), 2, "cpu"),
        "embedding_backward": (g(2, 2, 3), torch.tensor([[0, 4], [2, 0]]), 5, -1, "cpu"),
        "batch_norm_train": (x4, _randn(4), None, 1e-5, "cpu"),
        "batch_norm_train_backward": (g(2, 4, 7, 7), x4, g(4), g(4).abs() + 0.5, _randn(4),
                                      "cpu"),
        "elu": (x4, 0.7, "cpu"),
        "elu_backward": (g(2, 4, 7, 7), x4, 0.7, "cpu"),
        "prelu": (x4, _randn(4), "cpu"),
        "prelu_backward": (g(2, 4, 7, 7), x4, _randn(1), "cpu"),
        "sigmoid": (x4, "cpu"),
        "sigmoid_backward": (g(2, 4, 7, 7), torch.sigmoid(g(2, 4, 7, 7)), "cpu"),
        "tanh": (x4, "cpu"),
        "tanh_backward": (g(2, 4, 7, 7), torch.tanh(g(2, 4, 7, 7)), "cpu"),
        "gated_tanh": (x4, 1, "cpu"),
        "gated_tanh_backward": (g(2, 2, 7, 7), x4, -3, "cpu"),
        "dropout": (x4, 0.3, 5, "cpu"),
        "dropout_backward": (g(2, 4, 7, 7), (torch.rand(2, 4, 7, 7) > 0.3).to(torch.uint8), 0.3,
                             "cpu"),
        "softmax": (_randn(3, 5), "cpu"),
        "softmax_backward": (g(3, 5), torch.softmax(g(3, 5), -1), "cpu"),
        "log_softmax": (_randn(2, 3, 4), "cpu"),
        "log_softmax_backward": (g(3, 5), torch.log_softmax(g(3, 5), -1), "cpu"),
        "cross_entropy": (_randn(6, 4), torch.tensor([0, 3, -100, 1, 2, 2]), g(4).abs(), -100,
                          0.1, "cpu"),
        "cross_entropy_backward": (g(6), g(6, 4), torch.tensor([0, 3, -100, 1, 2, 2]),
                                   torch.logsumexp(g(6, 4), -1), None, -100, 0.0, "cpu"),
        "binary_cross_entropy_with_logits": (_randn(5, 3), torch.rand(5, 3, dtype=torch.float64),
                                             g(3).abs(), "cpu"),
        "binary_cross_entropy_with_logits_backward": (g(5, 3), g(5, 3), torch.rand(5, 3, dtype=torch.float64),
                                                      None, "cpu"),
        "sgd_step": ([g(3, 2), g(4)], [g(3, 2), g(4)], [g(3, 2), g(4)], 0.1, 0.9, 0.0, True, 0.01,
                     False, "cpu"),
        "adam_step": ([g(3, 2), g(4)], [g(3, 2), g(4)], [g(3, 2), g(4)], [g(3, 2).abs(), g(4).abs()],
                      2, 1e-2, 0.9, 0.999, 1e-8, 0.01, True, "cpu"),
    }


def test_every_pyconv_op_has_an_operator():
    from pyconv import ops

    assert set(lib.OPERATORS) == set(ops.__all__)
    assert set(_opcheck_samples()) == set(ops.__all__)


@pytest.mark.parametrize("name", sorted(lib.OPERATORS))
def test_opcheck(name):
    args = _opcheck_samples()[name]
    if name.endswith("_backward"):  # not differentiable themselves (no double backward)
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    # nms' output size depends on the data: AOT tracing with dynamic shapes needs the config
    # that lets it produce sizes unknown at trace time.
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        result = torch.library.opcheck(lib.OPERATORS[name], args)
    assert set(result.values()) == {"SUCCESS"}, result


BOX_OPERATORS = ["box_iou", "nms", "batched_nms", "soft_nms", "diou_nms", "matrix_nms",
                 "box_iou_rotated", "nms_rotated"]


@pytest.mark.parametrize("name", BOX_OPERATORS)
def test_fake_box_operators_check_their_arguments(name):
    """Traced on fake tensors, a box operator refuses bad boxes (3 coordinates) as the eager
    op does, naming itself."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    bad_boxes, *rest = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                        for a in (torch.zeros(8, 3, dtype=torch.float64), *_opcheck_samples()[name][1:])]
    with mode:
        with pytest.raises(ValueError, match=f"^{name}: boxes1? must have shape"):
            lib.OPERATORS[name](bad_boxes, *rest)


# --------------------------------------------------------------------------------------------
# Gradients in float64: torch.autograd.gradcheck through the pyconv backward operators.

GRADCHECK_CASES = {
    "conv2d": (lambda x, w, b: pt.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2),
                                         groups=2), (_randn(2, 4, 7, 6), _randn(6, 2, 3, 2), _randn(6))),
    "conv2d_same": (lambda x, w: pt.conv2d(x, w, padding="same"), (_randn(1, 2, 5, 6), _randn(3, 2, 2, 3))),
    "conv1d": (lambda x, w, b: pt.conv1d(x, w, b, stride=2, padding=1),
               (_randn(2, 3, 9), _randn(4, 3, 3), _randn(4))),
    "conv_transpose2d": (lambda x, w, b: pt.conv_transpose2d(x, w, b, stride=2, padding=1,
                                                             output_padding=1, groups=2),
                         (_randn(2, 4, 3, 4), _randn(4, 3, 3, 3), _randn(6))),
    "max_pool2d": (lambda x: pt.max_pool2d(x, 3, 2, padding=1, ceil_mode=True), (_randn(2, 3, 7, 6),)),
    "avg_pool2d": (lambda x: pt.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True,
                                           count_include_pad=False), (_randn(2, 3, 7, 6),)),
    "avg_pool2d_divisor": (lambda x: pt.avg_pool2d(x, 2, divisor_override=3), (_randn(1, 2, 4, 4),)),
    "max_unpool2d": (lambda y: pt.max_unpool2d(y, _UNPOOL_IDX, 2), (_randn(1, 2, 3, 3),)),
    "lstm_cell": (lambda x, h, c, wi, wh, bi, bh: pt.lstm_cell(x, h, c, wi, wh, bi, bh),
                  (_randn(3, 4), _randn(3, 5), _randn(3, 5), _randn(20, 4), _randn(20, 5),
                   _randn(20), _randn(20))),
    "lstm": (lambda x, h, c, wi, wh, bi: _flat(pt.lstm(x, h, c, wi, wh, bi)),
             (_randn(4, 2, 3), _randn(2, 5), _randn(2, 5), _randn(20, 3), _randn(20, 5), _randn(20))),
    "rnn_cell": (lambda x, h, wi, wh, bi, bh: pt.rnn_cell(x, h, wi, wh, bi, bh),
                 (_randn(3, 4), _randn(3, 5), _randn(5, 4), _randn(5, 5), _randn(5), _randn(5))),
    "rnn_cell_relu_unbatched": (lambda x, wi, wh, bh: pt.rnn_cell(x, None, wi, wh, None, bh, "relu"),
                                (_randn(4), _randn(5, 4), _randn(5, 5), _randn(5))),
    "leaky_relu": (lambda x: pt.leaky_relu(x, 0.1), (_randn(3, 4, 5),)),
    "matmul": (pt.matmul, (_randn(3, 4), _randn(4, 5))),
    "embedding": (lambda w: pt.embedding(torch.tensor([[0, 4, 4], [2, 0, 1]]), w), (_randn(5, 3),)),
    "matmul_trans_a": (lambda a, b: pt.matmul(a, b, trans_a=True), (_randn(4, 3), _randn(4, 5))),
    "matmul_trans_b": (lambda a, b: pt.matmul(a, b, trans_b=True), (_randn(3, 4), _randn(5, 4))),
    "matmul_trans_both": (lambda a, b: pt.matmul(a, b, True, True), (_randn(4, 3), _randn(5, 4))),
    "batch_norm_train": (lambda x, w, b: pt.batch_norm_train(x, w, b, eps=1e-3)[0],
                         (_randn(3, 4, 2, 3), _randn(4), _randn(4))),
    "batch_norm_train_no_affine": (lambda x: pt.batch_norm_train(x)[0], (_randn(4, 3, 5),)),
    "elu": (lambda x: torch.ops.pyconv.elu(x, 0.7, "cpu"), (_randn(3, 4, 5),)),
    "prelu": (lambda x, w: torch.ops.pyconv.prelu(x, w, "cpu"), (_randn(3, 4, 5), _randn(4))),
    "prelu_one_slope": (lambda x, w: torch.ops.pyconv.prelu(x, w, "cpu"), (_randn(3, 4, 5), _randn(1))),
    "relu": (lambda x: torch.ops.pyconv.relu(x, "cpu"), (_randn(3, 4, 5),)),
    "sigmoid": (lambda x: torch.ops.pyconv.sigmoid(x, "cpu"), (_randn(3, 4, 5),)),
    "tanh": (lambda x: torch.ops.pyconv.tanh(x, "cpu"), (_randn(3, 4, 5),)),
    "dropout": (lambda x: torch.ops.pyconv.dropout(x, 0.4, 9, "cpu")[0], (_randn(3, 4, 5),)),
    "softmax": (lambda x: lib.call(lib.softmax, x, "cpu"), (_randn(3, 5),)),
    "log_softmax": (lambda x: lib.call(lib.log_softmax, x, "cpu"), (_randn(2, 3, 4),)),
    "cross_entropy": (lambda x: lib.call(lib.cross_entropy, x, torch.tensor([0, 3, -100, 1, 2]),
                                         torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=torch.float64),
                                         -100, 0.2, "cpu")[0], (_randn(5, 4),)),
    "binary_cross_entropy_with_logits": (
        lambda x: lib.call(lib.binary_cross_entropy_with_logits, x,
                           torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
                           torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64), "cpu"), (_randn(4, 3),)),
}


def _flat(out):
    seq, (h, c) = out
    return seq, h, c


_UNPOOL_IDX = TF.max_pool2d(torch.randn(1, 2, 6, 6), 2, return_indices=True)[1]


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck(name):
    fn, inputs = GRADCHECK_CASES[name]
    # Keep the inputs away from the kinks of max and the relus (finite differences straddle them).
    if name in ("max_pool2d", "relu", "leaky_relu", "elu", "prelu", "prelu_one_slope"):
        inputs = tuple(torch.linspace(-3, 3, a.numel(), dtype=torch.float64)[torch.randperm(a.numel())]
                       .reshape(a.shape).requires_grad_() for a in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Agreement with torch's own functions


def _close(a, b, dtype=torch.float64):
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functions_match_torch(dtype):
    x, w = torch.randn(2, 4, 9, 8, dtype=dtype), torch.randn(6, 2, 3, 3, dtype=dtype)
    _close(pt.conv2d(x, w, None, 2, 1, 1, 2), TF.conv2d(x, w, None, 2, 1, 1, 2), dtype)
    _close(pt.conv2d(x[0], w, padding="same", groups=2), TF.conv2d(x[0], w, padding="same", groups=2), dtype)
    _close(pt.conv1d(x[:, :, 0], w[:, :, 0], stride=2, groups=2),
           TF.conv1d(x[:, :, 0], w[:, :, 0], stride=2, groups=2), dtype)
    wt = torch.randn(4, 3, 3, 3, dtype=dtype)
    _close(pt.conv_transpose2d(x, wt, None, 2, 1, 1), TF.conv_transpose2d(x, wt, None, 2, 1, 1), dtype)
    y, i = pt.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    y_ref, i_ref = TF.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    _close(y, y_ref, dtype)
    assert torch.equal(i, i_ref)
    _close(pt.max_unpool2d(y, i, 3, 2, 1, x.shape), TF.max_unpool2d(y, i, 3, 2, 1, x.shape), dtype)
    _close(pt.avg_pool2d(x, 3, 2, 1, True, False), TF.avg_pool2d(x, 3, 2, 1, True, False), dtype)
    _close(pt.leaky_relu(x, 0.3), TF.leaky_relu(x, 0.3), dtype)
    pyc = torch.ops.pyconv
    _close(pyc.elu(x, 0.7, "cpu"), TF.elu(x, 0.7), dtype)
    slopes = torch.randn(4, dtype=dtype)
    _close(pyc.prelu(x, slopes, "cpu"), TF.prelu(x, slopes), dtype)
    _close(pyc.relu(x, "cpu"), torch.relu(x), dtype)
    _close(pyc.sigmoid(x, "cpu"), torch.sigmoid(x), dtype)
    _close(pyc.tanh(x, "cpu"), torch.tanh(x), dtype)
    table, picks = torch.randn(7, 5, dtype=dtype, requires_grad=True), torch.randint(0, 7, (4, 6))
    _close(pt.embedding(picks, table, padding_idx=2), TF.embedding(picks, table, padding_idx=2), dtype)
    grad = torch.randn(4, 6, 5, dtype=dtype)
    ours, = torch.autograd.grad(pt.embedding(picks, table, padding_idx=2), table, grad)
    theirs, = torch.autograd.grad(TF.embedding(picks, table, padding_idx=2), table, grad)
    _close(ours, theirs, dtype)
    a, b = x[0, 0], x[1, 1]  # (9, 8) each
    _close(pt.matmul(a, b, trans_b=True), a @ b.T, dtype)
    _close(pt.matmul(a, b, trans_a=True), a.T @ b, dtype)
    weight, bias = torch.randn(4, dtype=dtype), torch.randn(4, dtype=dtype)
    y, mean, var = pt.batch_norm_train(x, weight, bias, eps=1e-3)
    _close(y, TF.batch_norm(x, None, None, weight, bias, training=True, eps=1e-3), dtype)
    _close(mean, x.mean((0, 2, 3)), dtype)
    _close(var, x.var((0, 2, 3), unbiased=False), dtype)


def _boxes_scores_labels(n, dtype):
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * 20
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=gen, dtype=dtype) * 8 + 1], 1)
    return boxes, torch.rand(n, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functions_return_what_pyconv_ops_returns(dtype):
    """matmul, batch_norm_train, the NMS variants and batched_nms' class_agnostic, against
    the pyconv ops they wrap (same backend, so exactly)."""
    from pyconv import ops

    boxes, scores, labels = _boxes_scores_labels(40, dtype)
    a, b, c = (torch.randn(5, 7, dtype=dtype), torch.randn(6, 7, dtype=dtype),
               torch.randn(6, 5, dtype=dtype))
    x, w, bias = (torch.randn(3, 4, 5, dtype=dtype), torch.randn(4, dtype=dtype),
                  torch.randn(4, dtype=dtype))
    n = lambda t: t.numpy()  # noqa: E731
    cases = [
        (pt.matmul(a, b, trans_b=True), ops.matmul(n(a), n(b), trans_b=True)),
        (pt.matmul(b, c, True, False), ops.matmul(n(b), n(c), True, False)),
        (pt.matmul(c, a), ops.matmul(n(c), n(a))),
        (pt.batch_norm_train(x, w, bias, 1e-3), ops.batch_norm_train(n(x), n(w), n(bias), 1e-3)),
        (pt.batch_norm_train(x), ops.batch_norm_train(n(x))),
        (pt.soft_nms(boxes, scores), ops.soft_nms(n(boxes), n(scores))),
        (pt.soft_nms(boxes, scores, 0.3, 0.2, 0.05, "linear"),
         ops.soft_nms(n(boxes), n(scores), 0.3, 0.2, 0.05, "linear")),
        (pt.diou_nms(boxes, scores, 0.3), ops.diou_nms(n(boxes), n(scores), 0.3)),
        (pt.matrix_nms(boxes, scores, labels), ops.matrix_nms(n(boxes), n(scores), n(labels))),
        (pt.matrix_nms(boxes, scores, labels, "linear", 0.5),
         ops.matrix_nms(n(boxes), n(scores), n(labels), "linear", 0.5)),
        (pt.batched_nms(boxes, scores, labels, 0.3), ops.batched_nms(n(boxes), n(scores), n(labels), 0.3)),
        (pt.batched_nms(boxes, scores, None, 0.3, class_agnostic=True),
         ops.batched_nms(n(boxes), n(scores), None, 0.3, class_agnostic=True)),
    ]
    for got, expected in cases:
        got = got if isinstance(got, tuple) else (got,)
        expected = expected if isinstance(expected, tuple) else (expected,)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert isinstance(g, torch.Tensor) and g.dtype == torch.from_numpy(e).dtype
            torch.testing.assert_close(g, torch.from_numpy(e), rtol=0, atol=0)
    kept = pt.batched_nms(boxes, scores, labels, 0.3, class_agnostic=True)
    assert torch.equal(kept, pt.nms(boxes, scores, 0.3))  # the categories are ignored
    assert len(kept) < len(pt.batched_nms(boxes, scores, labels, 0.3))


def test_batch_norm_gradients_match_torch():
    """Only y carries a gradient; with no bias given, none is computed for it."""
    x, w = _randn(4, 3, 5), _randn(3)
    y, mean, var = pt.batch_norm_train(x, w)
    assert y.requires_grad and not mean.requires_grad and not var.requires_grad
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w), g)
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    expected = torch.autograd.grad(TF.batch_norm(x2, None, None, w2, None, training=True), (x2, w2), g)
    _close(grads, expected)


def test_zero_copy_on_the_cpu():
    t = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    a = lib.to_array(t)
    assert a.__array_interface__["data"][0] == t.data_ptr()
    back = lib.to_tensor(a)
    assert back.data_ptr() == t.data_ptr()
    with pytest.raises(TypeError, match="float16"):
        lib.to_array(t.detach().half())


def test_backend_selection():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    expected = TF.conv2d(x, w)
    _close(pt.conv2d(x, w, backend="reference"), expected, torch.float32)
    pt.set_backend("reference")
    try:
        assert pt.get_backend() == "reference"
        _close(pt.conv2d(x, w), expected, torch.float32)
    finally:
        pt.set_backend(None)
    with pytest.raises(ValueError, match="unknown backend"):
        pt.set_backend("tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        pt.conv2d(x, w, backend="tpu")


def test_bad_arguments_name_the_op():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 4, 3, 3)
    with pytest.raises(ValueError, match="conv2d: w expects 4 input channels"):
        pt.conv2d(x, w)
    with pytest.raises(ValueError, match="max_pool2d: stride must be >= 1"):
        pt.max_pool2d(x, 2, stride=0)
    with pytest.raises(TypeError, match="conv2d: .*float32 and float64"):
        pt.conv2d(x.half(), w.half())


# --------------------------------------------------------------------------------------------
# Boxes, with torchvision's signatures and semantics


def test_box_ops_as_torchvision():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.9])
    iou = pt.box_iou(boxes, boxes[:2])
    _close(iou[1, 0], torch.tensor(81 / 119), torch.float32)
    assert iou.shape == (4, 2)
    keep = pt.nms(boxes, scores, 0.5)
    assert keep.dtype == torch.int64 and keep.tolist() == [0, 2]  # equal scores: lower index first
    assert pt.nms(boxes, scores, 0.9).tolist() == [0, 1, 2]
    keep = pt.batched_nms(boxes, scores, torch.tensor([0, 1, 0, 1]), 0.5)
    assert keep.tolist() == [0, 3, 2]  # box 1 overlaps box 3, of its category, by 81/119
    empty = pt.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    rotated = torch.tensor([[5, 5, 10, 4, 0], [5, 5, 4, 10, 90], [30, 30, 2, 2, 45.]])
    _close(pt.box_iou_rotated(rotated, rotated)[0, 1], torch.tensor(1.0), torch.float32)
    assert pt.nms_rotated(rotated, torch.tensor([0.5, 0.9, 0.1]), 0.5).tolist() == [1, 2]


# --------------------------------------------------------------------------------------------
# Models: a ResNet-style net, a DCGAN generator, LSTMs


class ResidualBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def resnet(dtype, width=8, classes=10):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        ResidualBlock(width), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(), ResidualBlock(2 * width),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * width * 2 * 2, classes),
    ).to(dtype)


def dcgan_generator(dtype, nz=8, width=8):
    return nn.Sequential(
        nn.Unflatten(1, (nz, 1, 1)),
        nn.ConvTranspose2d(nz, 2 * width, 4, 1, 0, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.ConvTranspose2d(width, 1, 4, 2, 1, bias=False), nn.Tanh(),
    ).to(dtype)


class SequenceModel(nn.Module):
    def __init__(self, bidirectional=False):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.cell = nn.LSTMCell(6 * (2 if bidirectional else 1), 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        h1, _ = self.cell(out[:, -1])
        return self.head(h1) + h.sum(0)[:, :3]


def _train(model, make_batch, steps, opt_cls, **opt_kw):
    opt = opt_cls(model.parameters(), **opt_kw)
    losses = []
    for step in range(steps):
        x, target = make_batch(step)
        opt.zero_grad()
        loss = TF.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _batches(in_shape, out_shape, dtype):
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(*in_shape, generator=gen, dtype=dtype),
             torch.randn(*out_shape, generator=gen, dtype=dtype)) for _ in range(4)]
    return lambda step: data[step % len(data)]


MODELS = {
    "resnet": (resnet, (4, 3, 16, 16), (4, 10), torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "dcgan": (dcgan_generator, (4, 8), (4, 1, 16, 16), torch.optim.SGD, dict(lr=0.1, momentum=0.5)),
    "lstm": (lambda dt: SequenceModel().to(dt), (3, 5, 4), (3, 3), torch.optim.Adam, dict(lr=1e-2)),
    "bilstm": (lambda dt: SequenceModel(True).to(dt), (3, 5, 4), (3, 3), torch.optim.SGD, dict(lr=0.1)),
}

# float64: the kernels sum in another order than torch's, so results differ by round-off of
# order 1e-16 relative; after a few steps losses still agree to 1e-10. float32: 1e-4 relative.
LOSS_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_converted_model_trains_like_torch(name, dtype):
    make, in_shape, out_shape, opt_cls, opt_kw = MODELS[name]
    native = make(dtype)
    converted = copy.deepcopy(native)
    state = converted.state_dict()
    params = list(converted.parameters())
    assert pt.convert(converted) is converted
    assert list(converted.state_dict()) == list(state)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(converted.state_dict().values(),
                                                            state.values()))
    assert all(a is b for a, b in zip(converted.parameters(), params))
    swapped = [m for m in converted.modules() if type(m).__module__ == "pyconv.torch.nn"]
    assert swapped, "nothing was converted"
    batches = _batches(in_shape, out_shape, dtype)
    expected = _train(native, batches, 4, opt_cls, **opt_kw)
    got = _train(converted, batches, 4, opt_cls, **opt_kw)
    np.testing.assert_allclose(got, expected, rtol=LOSS_TOLERANCE[dtype], atol=0)
    for (k, a), b in zip(converted.state_dict().items(), native.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=100 * LOSS_TOLERANCE[dtype], atol=1e-6, msg=k)


def test_convert_ops_limits_the_types():
    model = resnet(torch.float32)
    pt.convert(model, ops=["Conv2d"])
    assert isinstance(model[0], pt.nn.Conv2d) and isinstance(model[4], nn.MaxPool2d)
    assert not isinstance(model[4], pt.nn.MaxPool2d)
    pt.convert(model, ops=[nn.MaxPool2d])
    assert isinstance(model[4], pt.nn.MaxPool2d)
    with pytest.raises(ValueError, match="ops must name module types"):
        pt.convert(model, ops=["Linear"])
    root = nn.Conv2d(1, 2, 3)
    twin = pt.convert(root, backend="reference")
    assert isinstance(twin, pt.nn.Conv2d) and twin.weight is root.weight
    assert twin.backend == "reference"
    x = torch.randn(1, 1, 5, 5)
    torch.testing.assert_close(twin(x), root(x))
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        pt.convert(nn.Conv2d(1, 2, 3), backend="tpu")


@pytest.mark.parametrize("module, message", [
    (nn.Conv2d(2, 2, 3, padding_mode="reflect"), r"block\.0 \(Conv2d\): padding_mode='reflect'"),
    (nn.LSTM(3, 4, proj_size=2), r"block\.0 \(LSTM\): proj_size=2"),
    (nn.Conv1d(2, 2, 3).half(), r"block\.0 \(Conv1d\): weight is torch.float16"),
])
def test_convert_refuses_what_pyconv_cannot_run(module, message):
    model = nn.Sequential()
    model.add_module("block", nn.Sequential(module, nn.Conv2d(2, 2, 1)))
    with pytest.raises(ValueError, match=message):
        pt.convert(model)
    assert type(model.block[1]) is nn.Conv2d  # nothing changed


def test_converted_modules_handle_torch_calling_conventions():
    torch.manual_seed(0)
    pool, unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
    up = nn.ConvTranspose2d(3, 2, 3, stride=2)
    lstm, cell = nn.LSTM(3, 4, batch_first=True), nn.LSTMCell(3, 4)
    rnn = nn.RNNCell(3, 4, nonlinearity="relu")
    x = torch.randn(3, 5, 5)
    seq = torch.randn(6, 3)
    expected = (pool(x), unpool(*pool(x), output_size=(5, 5)), up(x, output_size=(12, 12)),
                lstm(seq), cell(seq), rnn(seq), rnn(seq[0]), rnn(seq[0], rnn(seq[1])))
    pool, unpool, up, lstm, cell, rnn = (pt.convert(m) for m in (pool, unpool, up, lstm, cell, rnn))
    assert type(rnn) is pt.nn.RNNCell
    got = (pool(x), unpool(*pool(x), output_size=(5, 5)), up(x, output_size=(12, 12)),
           lstm(seq), cell(seq), rnn(seq), rnn(seq[0]), rnn(seq[0], rnn(seq[1])))
    torch.testing.assert_close(got, expected)
    packed = nn.utils.rnn.pack_sequence([torch.randn(4, 3)])
    with pytest.raises(TypeError, match="PackedSequence"):
        lstm(packed)


# --------------------------------------------------------------------------------------------
# torch.compile: each pyconv operator is one opaque node; no graph breaks


def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    model = pt.convert(resnet(torch.float64))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = model(x)
    expected.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-12)


def test_compile_lstm_and_nms():
    torch._dynamo.reset()
    model = pt.convert(SequenceModel().double())
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(torch.compile(model, backend="aot_eager", fullgraph=True)(x), model(x))

    def detect(boxes, scores):
        kept, soft_scores = pt.soft_nms(boxes, scores, method="linear")
        return pt.nms(boxes, scores, 0.5), kept, soft_scores

    boxes, scores = _boxes(20), torch.rand(20, dtype=torch.float64)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        kept = torch.compile(detect, backend="eager", fullgraph=True)(boxes, scores)
    for got, expected in zip(kept, detect(boxes, scores)):
        assert torch.equal(got, expected)


@pytest.mark.gpu
def test_cuda_tensors_run_on_the_cuda_backend():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.randn(2, 3, 8, 8, device="cuda")
    w = torch.randn(4, 3, 3, 3, device="cuda")
    torch.testing.assert_close(pt.conv2d(x, w, padding=1), TF.conv2d(x, w, padding=1),
                               rtol=1e-4, atol=1e-4)



@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_converted_model_trains_like_torch_on_cuda(name, dtype, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    # cuDNN would run the native model's float32 convolutions in TF32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    make, in_shape, out_shape, opt_cls, opt_kw = MODELS[name]
    native = make(dtype).cuda()
    converted = pt.convert(copy.deepcopy(native))
    cpu_batches = _batches(in_shape, out_shape, dtype)

    def batches(step):
        return tuple(t.cuda() for t in cpu_batches(step))

    expected = _train(native, batches, 4, opt_cls, **opt_kw)
    got = _train(converted, batches, 4, opt_cls, **opt_kw)
    np.testing.assert_allclose(got, expected, rtol=LOSS_TOLERANCE[dtype], atol=0)
    assert all(p.is_cuda for p in converted.parameters())

def test_readme_example_runs(tmp_path):
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## From PyTorch", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    root = str(pathlib.Path(__file__).parents[1])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["torch.Size([8, 10])", "tensor([0, 2])"]


def test_bench_torch_model_runs(capsys):
    from pyconv import cli

    cli.main(["bench", "--torch-model", "--quick", "--reps", "1"])
    out = capsys.readouterr().out
    assert "| ResNet-style (32x32x3, width 32) | training step |" in out
    assert "| DCGAN (28x28, nz 100) | forward |" in out
    assert "| 3.conv1 | Conv2d | (8, 32, 32, 32) |" in out


def test_eager_calls_and_dispatcher_calls_agree():
    """Plain eager calls skip torch's dispatcher (pyconv.torch._library.call); under the
    profiler they go through it. Both give the same values and gradients."""
    model = pt.convert(resnet(torch.float64))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)

    def run():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out, [p.grad.clone() for p in model.parameters()]

    eager = run()
    with torch.profiler.profile() as prof:
        dispatched = run()
    names = {e.key for e in prof.key_averages()}
    assert {"pyconv::conv2d", "pyconv::conv2d_backward", "pyconv::max_pool2d"} <= names
    torch.testing.assert_close(dispatched, eager, rtol=0, atol=0)


def test_lstm_dropout_between_layers_draws_as_torch():
    native = nn.LSTM(3, 4, num_layers=3, dropout=0.5, bidirectional=True).double()
    converted = pt.convert(copy.deepcopy(native))
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    results = []
    for model in (native, converted):
        torch.manual_seed(1)
        out, (h, c) = model(x)
        (out.sum() + h.sum() + c.sum()).backward()
        results.append((out, h, c, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-12)


def test_lstm_backward_reuses_the_forward_record():
    args = [_randn(5, 3, 4, grad=False), _randn(3, 6, grad=False), _randn(3, 6, grad=False),
            _randn(24, 4, grad=False), _randn(24, 6, grad=False), _randn(24, grad=False), None]
    out, h, c, gates, cells = torch.ops.pyconv.lstm(*args, True, "cpu")
    grads = (_randn(5, 3, 6, grad=False), _randn(3, 6, grad=False), _randn(3, 6, grad=False))
    reused = torch.ops.pyconv.lstm_backward(*grads, *args, out, gates, cells, "cpu")
    recomputed = torch.ops.pyconv.lstm_backward(*grads, *args, None, None, None, "cpu")
    torch.testing.assert_close(reused, recomputed, rtol=1e-12, atol=1e-12)
    result = torch.library.opcheck(torch.ops.pyconv.lstm_backward.default,
                                   (*grads, *args, out, gates, cells, "cpu"))
    assert set(result.values()) == {"SUCCESS"}, result


def test_operators_check_their_arguments_once_per_signature(monkeypatch):
    """The convolution and pooling operators run the op's argument checks the first time they
    see a signature (shapes, dtypes, settings, backend), then call the kernel directly: same
    values as the public op, a new signature checked again, a bad one refused as before."""
    from pyconv import _spec, ops

    x, w, b = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    expected = torch.from_numpy(ops.conv2d(x.numpy(), w.numpy(), b.numpy(), 2, 1))
    checks = []
    real = _spec.conv2d
    monkeypatch.setattr(_spec, "conv2d", lambda *a: checks.append(a) or real(*a))
    monkeypatch.setattr(lib, "_GEOMETRY", {})
    for _ in range(3):
        y = pt.conv2d(x, w, b, stride=2, padding=1)
    assert len(checks) == 1
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    pt.conv2d(x[:1], w, b, stride=2, padding=1)
    pt.conv2d(x, w, b, stride=2, padding=1, backend="reference")
    pt.conv2d(x.double(), w.double(), b.double(), stride=2, padding=1)
    assert len(checks) == 4
    with pytest.raises(ValueError, match="conv2d: w expects 3 input channels"):
        pt.conv2d(torch.randn(2, 5, 9, 9), w)
    # a non-contiguous input is copied for the kernel, as the public op does
    xt = torch.randn(2, 3, 9, 9).transpose(2, 3)
    torch.testing.assert_close(pt.conv2d(xt, w), pt.conv2d(xt.contiguous(), w), rtol=0, atol=0)
    # the pools and their gradients, against the public ops
    xg = torch.randn(2, 3, 8, 8, requires_grad=True)
    for pool, op in ((pt.max_pool2d, ops.max_pool2d), (pt.avg_pool2d, ops.avg_pool2d)):
        y = pool(xg, 3, 2, 1)
        torch.testing.assert_close(y.detach(), torch.from_numpy(op(xg.detach().numpy(), 3, 2, 1)), rtol=0, atol=0)
        (grad,) = torch.autograd.grad(y.sum(), xg)
        xr = xg.detach().clone().requires_grad_()
        (expected,) = torch.autograd.grad(pool(xr, 3, 2, 1, backend="reference").sum(), xr)
        torch.testing.assert_close(grad, expected)
