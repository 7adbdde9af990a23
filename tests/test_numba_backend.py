"""The "numba" backend against PyTorch (values and autograd gradients), against a loop oracle
for the box ops, and its backward kernels against float64 central finite differences.
(The shared conformance suite also compares every kernel with the reference backend.)"""
import numpy as np
import pytest
import oracles
from conftest import assert_close, central_difference

from pyconv import ops

pytest.importorskip("numba")
torch = pytest.importorskip("torch")
F = torch.nn.functional

NB = dict(backend="numba")
DTYPES = [np.float32, np.float64]


def normal(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def leaf(a):
    return None if a is None else torch.tensor(a, requires_grad=True)


def torch_grads(out, grad_out, *leaves):
    out.backward(torch.tensor(grad_out))
    return [None if t is None else t.grad.numpy() for t in leaves]


# --------------------------------------------------------------------------------------------
# Convolution

CONV_CASES = [  # x shape, w shape, parameters
    ((2, 4, 7, 8), (6, 2, 3, 3), dict(stride=2, padding=1, groups=2)),
    ((1, 3, 6, 5), (4, 3, 2, 3), dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1))),
    ((2, 2, 5, 5), (3, 2, 3, 2), dict(padding="same")),
    ((2, 4, 6, 6), (8, 1, 3, 3), dict(padding=1, groups=4)),  # depthwise, multiplier 2
    ((1, 3, 4, 9), (3, 1, 1, 3), dict(stride=3, dilation=2, groups=3)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # PyTorch's note on even kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, params", CONV_CASES)
def test_conv2d_and_backward(rng, x_shape, w_shape, params, dtype):
    x, w, b = normal(rng, x_shape, dtype), normal(rng, w_shape, dtype), normal(rng, w_shape[0], dtype)
    xt, wt, bt = leaf(x), leaf(w), leaf(b)
    yt = F.conv2d(xt, wt, bt, **params)
    y = ops.conv2d(x, w, b, **params, **NB)
    assert y.dtype == dtype
    assert_close(y, yt.detach().numpy())
    grad_out = normal(rng, y.shape, dtype)
    for got, expected in zip(ops.conv2d_backward(grad_out, x, w, **params, **NB),
                             torch_grads(yt, grad_out, xt, wt, bt)):
        assert_close(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_and_backward(rng, dtype):
    params = dict(stride=2, padding=2, dilation=2, groups=3)
    x, w = normal(rng, (2, 3, 11), dtype), normal(rng, (6, 2, 3), dtype)[:, :1].copy()
    xt, wt = leaf(x), leaf(w)
    yt = F.conv1d(xt, wt, **params)
    y = ops.conv1d(x, w, **params, **NB)
    assert_close(y, yt.detach().numpy())
    grad_out = normal(rng, y.shape, dtype)
    gx, gw, _ = ops.conv1d_backward(grad_out, x, w, **params, needs=(True, True, False), **NB)
    ex, ew = torch_grads(yt, grad_out, xt, wt)
    assert_close(gx, ex)
    assert_close(gw, ew)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", [
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(2, 1)),
])
def test_conv_transpose2d_and_backward(rng, params, dtype):
    x, w, b = normal(rng, (2, 4, 3, 4), dtype), normal(rng, (4, 3, 3, 3), dtype), None
    if params.get("groups", 1) == 1:
        b = normal(rng, 3, dtype)
    xt, wt, bt = leaf(x), leaf(w), leaf(b)
    yt = F.conv_transpose2d(xt, wt, bt, **params)
    y = ops.conv_transpose2d(x, w, b, **params, **NB)
    assert_close(y, yt.detach().numpy())
    grad_out = normal(rng, y.shape, dtype)
    got = ops.conv_transpose2d_backward(grad_out, x, w, **params, needs=(True, True, b is not None), **NB)
    for g, e in zip(got, torch_grads(yt, grad_out, xt, wt, bt)):
        if e is not None:
            assert_close(g, e)


# --------------------------------------------------------------------------------------------
# Pooling

MAX_POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), ceil_mode=True),
    dict(kernel_size=3, stride=1, padding=1),  # overlapping windows: repeated indices
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", MAX_POOL_CASES)
def test_max_pool2d_and_backward(rng, params, dtype):
    x = normal(rng, (2, 3, 7, 8), dtype)
    x[0, 0, 1, 1] = x[0, 1, 2, 3] = np.nan  # NaN wins and its index is reported
    x[1, 2, 4:6, 4:6] = 5.0  # ties: the first maximum in window order wins
    xt = leaf(x)
    yt, it = F.max_pool2d(xt, **params, return_indices=True)
    y, idx = ops.max_pool2d(x, **params, return_indices=True, **NB)
    assert_close(y, yt.detach().numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    assert_close(ops.max_pool2d(x, **params, **NB), y)  # without indices: same values
    grad_out = normal(rng, y.shape, dtype)
    got = ops.max_pool2d_backward(grad_out, idx, x.shape, **NB)
    assert_close(got, torch_grads(yt, grad_out, xt)[0])


@pytest.mark.parametrize("params", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=(2, 3), stride=(2, 2), dilation=(2, 1), ceil_mode=True),
])
def test_max_pool2d_ties_nan_and_inf_everywhere(rng, params):
    """Values from {-inf, 0, 1, 2, NaN}: most windows hold ties and several NaNs, so the
    winner's index checks the tie and NaN rules (the rows-then-columns path of overlapping
    windows meets candidates out of window order)."""
    x = rng.integers(0, 3, (2, 3, 9, 11)).astype(np.float32)
    u = rng.random(x.shape)
    x[u < 0.1], x[u > 0.9] = np.nan, -np.inf
    yt, it = F.max_pool2d(torch.from_numpy(x), **params, return_indices=True)
    y, idx = ops.max_pool2d(x, **params, return_indices=True, **NB)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())


AVG_POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), divisor_override=5),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params", AVG_POOL_CASES)
def test_avg_pool2d_and_backward(rng, params, dtype):
    x = normal(rng, (2, 3, 7, 6), dtype)
    xt = leaf(x)
    yt = F.avg_pool2d(xt, **params)
    y = ops.avg_pool2d(x, **params, **NB)
    assert_close(y, yt.detach().numpy())
    grad_out = normal(rng, y.shape, dtype)
    got = ops.avg_pool2d_backward(grad_out, x.shape, **params, **NB)
    assert_close(got, torch_grads(yt, grad_out, xt)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_unpool2d_last_write_wins(rng, dtype):
    x = normal(rng, (2, 3, 6, 7), dtype)
    # Overlapping windows repeat indices; the unpooled value is the last one in row-major order.
    y, idx = ops.max_pool2d(x, 3, 1, 1, return_indices=True, **NB)
    y = y + normal(rng, y.shape, dtype)  # distinct values at repeated indices
    assert len(np.unique(idx[0, 0])) < idx[0, 0].size
    got = ops.max_unpool2d(y, idx, 3, 1, 1, output_size=x.shape[2:], **NB)
    expected = F.max_unpool2d(torch.tensor(y), torch.tensor(idx), 3, 1, 1, output_size=x.shape[2:])
    assert_close(got, expected.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_unpool2d_default_size(rng, dtype):
    x = normal(rng, (1, 2, 6, 8), dtype)
    y, idx = ops.max_pool2d(x, 2, return_indices=True, **NB)
    got = ops.max_unpool2d(y, idx, 2, **NB)
    assert_close(got, F.max_unpool2d(torch.tensor(y), torch.tensor(idx), 2).numpy())


# --------------------------------------------------------------------------------------------
# LSTM


def lstm_arrays(rng, T, B, I, H, dtype, biases=(True, True)):
    x = normal(rng, (T, B, I) if T else (B, I), dtype)
    h, c = normal(rng, (B, H), dtype), normal(rng, (B, H), dtype)
    w_ih, w_hh = normal(rng, (4 * H, I), dtype) / 2, normal(rng, (4 * H, H), dtype) / 2
    b_ih = normal(rng, 4 * H, dtype) if biases[0] else None
    b_hh = normal(rng, 4 * H, dtype) if biases[1] else None
    return dict(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)


def torch_lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    gates = x @ w_ih.T + h @ w_hh.T
    for b in (b_ih, b_hh):
        if b is not None:
            gates = gates + b
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("biases", [(True, True), (True, False), (False, False)])
def test_lstm_cell_and_backward(rng, biases, dtype):
    a = lstm_arrays(rng, 0, 3, 5, 4, dtype, biases)
    leaves = {k: leaf(v) for k, v in a.items()}
    ht, ct = torch_lstm_step(*leaves.values())
    h, c = ops.lstm_cell(*a.values(), **NB)
    assert_close(h, ht.detach().numpy())
    assert_close(c, ct.detach().numpy())
    grad_h, grad_c = normal(rng, h.shape, dtype), normal(rng, c.shape, dtype)
    (ht * torch.tensor(grad_h) + ct * torch.tensor(grad_c)).sum().backward()
    got = ops.lstm_cell_backward(grad_h, grad_c, *a.values(), **NB)
    for name, g in zip(a, got):
        expected = leaves[name]
        if expected is None:
            assert g is None, name
        else:
            assert_close(g, expected.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_against_torch_module(rng, dtype):
    T, B, I, H = 5, 3, 4, 6
    a = lstm_arrays(rng, T, B, I, H, dtype)
    module = torch.nn.LSTM(I, H).to(torch.float32 if dtype == np.float32 else torch.float64)
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            getattr(module, name.replace("w_", "weight_").replace("b_", "bias_") + "_l0").copy_(
                torch.tensor(a[name]))
    xt, ht, ct = leaf(a["x"]), leaf(a["h"][None]), leaf(a["c"][None])
    out_t, (hT_t, cT_t) = module(xt, (ht, ct))
    out, (hT, cT) = ops.lstm(*a.values(), **NB)
    assert_close(out, out_t.detach().numpy())
    assert_close(hT, hT_t[0].detach().numpy())
    assert_close(cT, cT_t[0].detach().numpy())

    grad_out, grad_hT, grad_cT = (normal(rng, s, dtype) for s in (out.shape, hT.shape, cT.shape))
    loss = ((out_t * torch.tensor(grad_out)).sum() + (hT_t[0] * torch.tensor(grad_hT)).sum()
            + (cT_t[0] * torch.tensor(grad_cT)).sum())
    loss.backward()
    got = ops.lstm_backward(grad_out, grad_hT, grad_cT, *a.values(), **NB)
    expected = [xt.grad.numpy(), ht.grad[0].numpy(), ct.grad[0].numpy()] + [
        p.grad.numpy() for p in (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                                 module.bias_hh_l0)]
    for g, e in zip(got, expected):
        assert_close(g, e)


def test_lstm_backward_without_output_grads(rng):
    a = lstm_arrays(rng, 3, 2, 3, 4, np.float64, biases=(False, True))
    grad_hT = normal(rng, (2, 4))
    got = ops.lstm_backward(None, grad_hT, None, *a.values(), **NB)
    zeros = np.zeros((3, 2, 4))
    again = ops.lstm_backward(zeros, grad_hT, zeros[0], *a.values(), **NB)
    assert got[5] is None and got[6] is not None
    for g, e in zip(got, again):
        if e is not None:
            assert_close(g, e)


# --------------------------------------------------------------------------------------------
# Boxes


def random_boxes(rng, n, dtype, spread=20.0):
    """Clustered boxes on a coarse grid (so scores and coordinates repeat), a few degenerate."""
    corner = np.round(rng.uniform(0, spread, (n, 2)) * 2) / 2
    size = np.round(rng.uniform(-1, 8, (n, 2)) * 2) / 2
    return np.concatenate([corner, corner + size], axis=1).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou(rng, dtype):
    a, b = random_boxes(rng, 17, dtype), random_boxes(rng, 11, dtype)
    b[0] = [1, 1, 1, 1]  # zero area
    a[0] = b[0]  # union 0 -> IoU 0
    got = ops.box_iou(a, b, **NB)
    assert got.dtype == dtype and got[0, 0] == 0
    assert_close(got, oracles.iou_matrix(a.astype(float), b.astype(float)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.9])
def test_nms_against_oracle(rng, thr, dtype):
    boxes = random_boxes(rng, 120, dtype)
    scores = (rng.integers(0, 30, 120) / 30).astype(dtype)  # many ties
    scores[[3, 50, 77]] = np.nan
    got = ops.nms(boxes, scores, thr, **NB)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, oracles.nms(boxes.astype(float), scores, thr))
    categories = rng.integers(0, 4, 120)
    np.testing.assert_array_equal(ops.batched_nms(boxes, scores, categories, thr, **NB),
                                  oracles.nms(boxes.astype(float), scores, thr, categories))


def test_nms_special_cases():
    empty = ops.nms(np.zeros((0, 4)), np.zeros(0), 0.5, **NB)
    assert empty.dtype == np.int64 and empty.shape == (0,)
    # IoU exactly 0.5: suppressed only when the threshold is below it (strictly greater).
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    np.testing.assert_array_equal(ops.nms(boxes, scores, 0.5, **NB), [0, 1])
    np.testing.assert_array_equal(ops.nms(boxes, scores, 0.49, **NB), [0])
    # Equal scores keep the lower index first; identical boxes suppress each other.
    same = np.array([[0, 0, 1, 1]] * 3, np.float64)
    np.testing.assert_array_equal(ops.nms(same, np.ones(3), 0.5, **NB), [0])
    # Degenerate boxes are empty: they overlap nothing, so they are all kept.
    flat = np.array([[0, 0, 0, 5], [0, 0, 0, 5], [3, 3, 1, 1]], np.float64)
    np.testing.assert_array_equal(ops.nms(flat, np.array([1.0, 2.0, 3.0]), 0.0, **NB), [2, 1, 0])
    # NaN scores rank last; a NaN coordinate never suppresses and is never suppressed.
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [np.nan, 0, 1, 1]], np.float64)
    np.testing.assert_array_equal(ops.nms(boxes, np.array([np.nan, 1.0, 2.0]), 0.5, **NB), [2, 1])


# --------------------------------------------------------------------------------------------
# Backward kernels against central finite differences (float64)


def assert_gradient(loss, a, grad, rng, samples=12, eps=1e-6):
    """Central differences of loss() at a few random elements of `a` (mutated, restored)."""
    for flat in rng.choice(a.size, min(samples, a.size), replace=False):
        i = np.unravel_index(flat, a.shape)
        np.testing.assert_allclose(grad[i], central_difference(loss, a, i, eps), rtol=1e-6, atol=1e-8)


def test_conv_backward_finite_differences(rng):
    params = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    x, w, b = normal(rng, (2, 4, 6, 7)), normal(rng, (4, 2, 3, 2)), normal(rng, 4)
    G = normal(rng, ops.conv2d(x, w, b, **params, **NB).shape)
    grads = ops.conv2d_backward(G, x, w, **params, **NB)
    for a, g in zip((x, w, b), grads):
        assert_gradient(lambda: np.sum(ops.conv2d(x, w, b, **params, **NB) * G), a, g, rng)


def test_pool_backward_finite_differences(rng):
    x = rng.permutation(2 * 3 * 6 * 7).reshape(2, 3, 6, 7) / 100  # no ties, gaps >> eps
    params = dict(kernel_size=3, stride=1, padding=1, ceil_mode=True)
    y, idx = ops.max_pool2d(x, return_indices=True, **params, **NB)
    G = normal(rng, y.shape)
    grad = ops.max_pool2d_backward(G, idx, x.shape, **NB)
    assert_gradient(lambda: np.sum(ops.max_pool2d(x, **params, **NB) * G), x, grad, rng)

    params = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    G = normal(rng, ops.avg_pool2d(x, **params, **NB).shape)
    grad = ops.avg_pool2d_backward(G, x.shape, **params, **NB)
    assert_gradient(lambda: np.sum(ops.avg_pool2d(x, **params, **NB) * G), x, grad, rng)


def test_lstm_backward_finite_differences(rng):
    a = lstm_arrays(rng, 4, 2, 3, 3, np.float64)
    Go, Gh, Gc = normal(rng, (4, 2, 3)), normal(rng, (2, 3)), normal(rng, (2, 3))

    def loss():
        out, (h, c) = ops.lstm(*a.values(), **NB)
        return np.sum(out * Go) + np.sum(h * Gh) + np.sum(c * Gc)

    for array, grad in zip(a.values(), ops.lstm_backward(Go, Gh, Gc, *a.values(), **NB)):
        assert_gradient(loss, array, grad, rng)
