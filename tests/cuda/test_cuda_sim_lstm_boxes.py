"""LSTM and box kernels of the 'cuda' backend under the CUDA simulator."""
import numpy as np
import pytest

import oracles
from cuda_sim_util import assert_close, poison_outputs, randn, requires_simulator  # noqa: F401

torch = pytest.importorskip("torch")

from pyconv import ops  # noqa: E402

pytestmark = requires_simulator


def _lstm_params(rng, I, H, dtype, biases):
    w_ih, w_hh = randn(rng, (4 * H, I), dtype) * 0.5, randn(rng, (4 * H, H), dtype) * 0.5
    b_ih = randn(rng, (4 * H,), dtype) if biases[0] else None
    b_hh = randn(rng, (4 * H,), dtype) if biases[1] else None
    return w_ih, w_hh, b_ih, b_hh


def _torch_lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """PyTorch's LSTM recurrence written out with its cell (gate order i, f, g, o)."""
    cell = torch.nn.LSTMCell(w_ih.shape[1], h0.shape[1], dtype=torch.from_numpy(x).dtype)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.from_numpy(w_ih))
        cell.weight_hh.copy_(torch.from_numpy(w_hh))
        cell.bias_ih.copy_(torch.from_numpy(b_ih) if b_ih is not None else torch.zeros(4 * h0.shape[1]))
        cell.bias_hh.copy_(torch.from_numpy(b_hh) if b_hh is not None else torch.zeros(4 * h0.shape[1]))
    xt, ht, ct = (torch.from_numpy(a).requires_grad_() for a in (x, h0, c0))
    h, c, outs = ht, ct, []
    for t in range(x.shape[0]):
        h, c = cell(xt[t], (h, c))
        outs.append(h)
    return torch.stack(outs), h, c, (xt, ht, ct, cell)


@pytest.mark.parametrize("dtype,biases", [(np.float64, (True, True)), (np.float32, (False, True)),
                                          (np.float64, (False, False))])
def test_lstm_sequence_forward_and_bptt(dtype, biases):
    rng = np.random.default_rng(20)
    T, B, I, H = 3, 2, 4, 5
    x, h0, c0 = randn(rng, (T, B, I), dtype), randn(rng, (B, H), dtype), randn(rng, (B, H), dtype)
    params = _lstm_params(rng, I, H, dtype, biases)
    out, (hT, cT) = ops.lstm(x, h0, c0, *params, backend="cuda")
    out_t, hT_t, cT_t, (xt, ht, ct, cell) = _torch_lstm(x, h0, c0, *params)
    assert_close(out, out_t)
    assert_close(hT, hT_t)
    assert_close(cT, cT_t)
    g_out, g_h, g_c = randn(rng, out.shape, dtype), randn(rng, (B, H), dtype), randn(rng, (B, H), dtype)
    ((out_t * torch.from_numpy(g_out)).sum() + (hT_t * torch.from_numpy(g_h)).sum()
     + (cT_t * torch.from_numpy(g_c)).sum()).backward()
    grads = ops.lstm_backward(g_out, g_h, g_c, x, h0, c0, *params, backend="cuda")
    want = [xt.grad, ht.grad, ct.grad, cell.weight_ih.grad, cell.weight_hh.grad,
            cell.bias_ih.grad if biases[0] else None, cell.bias_hh.grad if biases[1] else None]
    for got, w in zip(grads, want):
        if w is None:
            assert got is None
        else:
            assert_close(got, w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_cell_forward_and_backward(dtype):
    rng = np.random.default_rng(21)
    B, I, H = 3, 4, 6
    x, h, c = randn(rng, (B, I), dtype), randn(rng, (B, H), dtype), randn(rng, (B, H), dtype)
    params = _lstm_params(rng, I, H, dtype, (True, True))
    h1, c1 = ops.lstm_cell(x, h, c, *params, backend="cuda")
    out_t, h_t, c_t, (xt, ht, ct, cell) = _torch_lstm(x[None], h, c, *params)
    assert_close(h1, h_t)
    assert_close(c1, c_t)
    g_h, g_c = randn(rng, (B, H), dtype), randn(rng, (B, H), dtype)
    ((h_t * torch.from_numpy(g_h)).sum() + (c_t * torch.from_numpy(g_c)).sum()).backward()
    grads = ops.lstm_cell_backward(g_h, g_c, x, h, c, *params, backend="cuda")
    want = [xt.grad[0], ht.grad, ct.grad, cell.weight_ih.grad, cell.weight_hh.grad, cell.bias_ih.grad,
            cell.bias_hh.grad]
    for got, w in zip(grads, want):
        assert_close(got, w)


@pytest.mark.parametrize("dtype,nonlinearity,biases", [(np.float32, "tanh", (True, True)),
                                                       (np.float64, "relu", (False, True))])
def test_rnn_cell_forward_and_backward(dtype, nonlinearity, biases):
    rng = np.random.default_rng(22)
    B, I, H = 3, 4, 6
    x, h = randn(rng, (B, I), dtype), randn(rng, (B, H), dtype)
    w_ih, w_hh = randn(rng, (H, I), dtype) * 0.5, randn(rng, (H, H), dtype) * 0.5
    b_ih, b_hh = (randn(rng, (H,), dtype) if given else None for given in biases)
    h_new = ops.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, backend="cuda")
    cell = torch.nn.RNNCell(I, H, bias=True, nonlinearity=nonlinearity, dtype=torch.from_numpy(x).dtype)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.from_numpy(w_ih))
        cell.weight_hh.copy_(torch.from_numpy(w_hh))
        cell.bias_ih.copy_(torch.from_numpy(b_ih) if b_ih is not None else torch.zeros(H))
        cell.bias_hh.copy_(torch.from_numpy(b_hh) if b_hh is not None else torch.zeros(H))
    xt, ht = (torch.from_numpy(a).requires_grad_() for a in (x, h))
    h_t = cell(xt, ht)
    assert_close(h_new, h_t)
    g = randn(rng, (B, H), dtype)
    (h_t * torch.from_numpy(g)).sum().backward()
    grads = ops.rnn_cell_backward(g, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity, backend="cuda")
    want = [xt.grad, ht.grad, cell.weight_ih.grad, cell.weight_hh.grad,
            cell.bias_ih.grad if b_ih is not None else None, cell.bias_hh.grad]
    for got, w in zip(grads, want):
        if w is None:
            assert got is None
        else:
            assert_close(got, w)


# ------------------------------------------------------------------------------------------------
# Boxes: NumPy oracles written from the documented semantics.


def _random_boxes(rng, n, dtype):
    corner = rng.uniform(0, 10, (n, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0, 4, (n, 2))], axis=1).astype(dtype)
    boxes[3] = [5, 5, 4, 4]  # inverted: empty
    boxes[4] = [1, 1, 1, 1]  # a point: empty, and its union with itself is empty
    return boxes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_iou(dtype):
    rng = np.random.default_rng(30)
    a, b = _random_boxes(rng, 9, dtype), _random_boxes(rng, 7, dtype)
    b[0] = a[0]
    got = ops.box_iou(a, b, backend="cuda")
    assert_close(got, oracles.iou_matrix(a, b), dtype)
    assert got[0, 0] == pytest.approx(1.0) and got[4, 4] == 0
    assert ops.box_iou(a[:0], b, backend="cuda").shape == (0, 7)


@pytest.mark.parametrize("n,thr,dtype", [(70, 0.3, np.float32),
                                           pytest.param(70, 0.5, np.float64, marks=pytest.mark.slow),
                                           (5, 0.0, np.float32)])
def test_nms_matches_greedy_oracle(n, thr, dtype):
    rng = np.random.default_rng(31)
    boxes = _random_boxes(rng, n, dtype)
    scores = rng.uniform(size=n).astype(dtype)
    scores[1] = scores[2]  # a tie: the lower index first
    if n > 9:
        scores[9] = np.nan  # ranks last
    keep = ops.nms(boxes, scores, thr, backend="cuda")
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, oracles.nms(boxes, scores, thr))


def test_batched_nms_and_empty_input():
    rng = np.random.default_rng(32)
    boxes = _random_boxes(rng, 70, np.float32)
    scores = rng.uniform(size=70).astype(np.float32)
    cats = rng.integers(0, 3, 70)
    keep = ops.batched_nms(boxes, scores, cats, 0.3, backend="cuda")
    np.testing.assert_array_equal(keep, oracles.nms(boxes, scores, 0.3, cats))
    empty = ops.nms(boxes[:0], scores[:0], 0.5, backend="cuda")
    assert empty.shape == (0,) and empty.dtype == np.int64


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_box_iou_and_nms_follow_the_reference_on_nan_and_inf():
    rng = np.random.default_rng(4)
    values = [0, 1, 2, np.nan, np.inf, -np.inf]
    boxes = rng.choice(values, (30, 4)).astype(np.float32)
    boxes[:3] = [[0, 0, 2, 2], [np.nan, 0, 2, 2], [0, 0, 1, 1]]
    np.testing.assert_array_equal(ops.box_iou(boxes, boxes, backend="cuda"),
                                  ops.box_iou(boxes, boxes, backend="reference"))
    scores = rng.random(30).astype(np.float32)
    for threshold in (0.5, 0.0, -0.5):
        np.testing.assert_array_equal(ops.nms(boxes, scores, threshold, backend="cuda"),
                                      ops.nms(boxes, scores, threshold, backend="reference"))
