"""The reference backend against PyTorch (values and gradients, by autograd) on random seeded
shapes and parameters; against a loop-based oracle of torchvision's box semantics; and its
backward kernels against float64 central finite differences. Unbatched samples (one sample
without its batch axis) run on every NumPy backend against PyTorch."""
import importlib

import numpy as np
import pytest
import oracles
from conftest import assert_close, central_difference

import pyconv
from pyconv import _spec, ops

registry = importlib.import_module("pyconv.backends")

# PyTorch warns that "same" padding with even kernels copies the input: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")

REF = dict(backend="reference")
DTYPES = [np.float32, np.float64]
SEEDS = range(10)


def draw_until_valid(draw, check):
    """Calls draw() until check(case) accepts it (raises no ValueError); returns the case.
    Deterministic for a seeded draw."""
    for _ in range(1000):
        case = draw()
        try:
            check(case)
            return case
        except ValueError:
            continue
    raise AssertionError("no valid case drawn")


def normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def maybe(rng, value):
    """value or None, at random."""
    return value if rng.random() < 0.5 else None


def torch_grads(torch, out, grad_out, *inputs):
    """Runs out.backward(grad_out); returns each input's .grad as NumPy (None where unused)."""
    out.backward(torch.tensor(grad_out))
    return [None if t is None else t.grad.numpy() for t in inputs]


def leaf(torch, a):
    return None if a is None else torch.tensor(a, requires_grad=True)


# --------------------------------------------------------------------------------------------
# Convolutions


def draw_conv(rng, nd):
    groups = int(rng.choice([1, 1, 2, 3]))
    kernel = tuple(int(k) for k in rng.integers(1, 5, nd))
    dilation = tuple(int(d) for d in rng.integers(1, 3, nd))
    mode = rng.choice(["int", "tuple", "same", "valid"])
    stride = (1,) * nd if mode == "same" else tuple(int(s) for s in rng.integers(1, 4, nd))
    padding = {"int": int(rng.integers(0, 3)), "tuple": tuple(int(p) for p in rng.integers(0, 3, nd)),
               "same": "same", "valid": "valid"}[mode]
    spatial = tuple(int(n) for n in rng.integers(1, 11, nd))
    N, C, K = int(rng.integers(1, 3)), groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    return dict(x_shape=(N, C) + spatial, w_shape=(K, C // groups) + kernel, stride=stride,
                padding=padding, dilation=dilation, groups=groups, bias=bool(rng.random() < 0.5))


def check_conv(nd):
    def check(case):
        x, w = np.empty(case["x_shape"]), np.empty(case["w_shape"])
        _spec._conv_geom("conv", x, w, None, case["stride"], case["padding"], case["dilation"],
                         case["groups"], nd)
    return check


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("seed", SEEDS)
def test_conv_against_torch(torch, seed, nd, dtype):
    rng = np.random.default_rng(seed)
    case = draw_until_valid(lambda: draw_conv(rng, nd), check_conv(nd))
    x, w = normal(rng, case["x_shape"], dtype), normal(rng, case["w_shape"], dtype)
    b = normal(rng, case["w_shape"][0], dtype) if case["bias"] else None
    params = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    xt, wt, bt = leaf(torch, x), leaf(torch, w), leaf(torch, b)
    conv, conv_backward = (ops.conv1d, ops.conv1d_backward) if nd == 1 else (ops.conv2d, ops.conv2d_backward)
    torch_conv = torch.nn.functional.conv1d if nd == 1 else torch.nn.functional.conv2d
    yt = torch_conv(xt, wt, bt, **params)
    y = conv(x, w, b, **params, **REF)
    assert y.dtype == dtype and y.flags.c_contiguous
    assert_close(y, yt.detach().numpy(), dtype)

    grad_out = normal(rng, y.shape, dtype)
    expected = torch_grads(torch, yt, grad_out, xt, wt, bt)
    got = conv_backward(grad_out, x, w, **params, needs=(True, True, b is not None), **REF)
    for name, g, e in zip(("x", "w", "b"), got, expected):
        if e is not None:
            assert g.dtype == dtype, name
            assert_close(g, e, dtype)


def draw_conv_transpose(rng):
    groups = int(rng.choice([1, 1, 2]))
    stride = tuple(int(s) for s in rng.integers(1, 4, 2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    C, Kg = groups * int(rng.integers(1, 3)), int(rng.integers(1, 3))
    return dict(x_shape=(int(rng.integers(1, 3)), C) + tuple(int(n) for n in rng.integers(1, 6, 2)),
                w_shape=(C, Kg) + tuple(int(k) for k in rng.integers(1, 4, 2)),
                stride=stride, padding=tuple(int(p) for p in rng.integers(0, 3, 2)),
                output_padding=output_padding, groups=groups, dilation=dilation,
                bias=bool(rng.random() < 0.5))


def check_conv_transpose(case):
    params = {k: case[k] for k in ("stride", "padding", "output_padding", "groups", "dilation")}
    _spec.conv_transpose2d(np.empty(case["x_shape"]), np.empty(case["w_shape"]), None, **params)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_conv_transpose2d_against_torch(torch, seed, dtype):
    rng = np.random.default_rng(100 + seed)
    case = draw_until_valid(lambda: draw_conv_transpose(rng), check_conv_transpose)
    params = {k: case[k] for k in ("stride", "padding", "output_padding", "groups", "dilation")}
    x, w = normal(rng, case["x_shape"], dtype), normal(rng, case["w_shape"], dtype)
    b = normal(rng, case["w_shape"][1] * case["groups"], dtype) if case["bias"] else None
    xt, wt, bt = leaf(torch, x), leaf(torch, w), leaf(torch, b)
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, **params)
    y = ops.conv_transpose2d(x, w, b, **params, **REF)
    assert y.dtype == dtype
    assert_close(y, yt.detach().numpy(), dtype)

    grad_out = normal(rng, y.shape, dtype)
    expected = torch_grads(torch, yt, grad_out, xt, wt, bt)
    got = ops.conv_transpose2d_backward(grad_out, x, w, **params, **REF)
    for g, e in zip(got, expected):
        if e is not None:
            assert_close(g, e, dtype)


# --------------------------------------------------------------------------------------------
# Pooling


def draw_pool(rng, with_dilation):
    kernel = tuple(int(k) for k in rng.integers(1, 5, 2))
    stride = None if rng.random() < 0.3 else tuple(int(s) for s in rng.integers(1, 4, 2))
    padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2)) if with_dilation else 1
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) + tuple(int(n) for n in rng.integers(1, 10, 2))
    return dict(shape=shape, kernel_size=kernel, stride=stride, padding=padding,
                dilation=dilation, ceil_mode=bool(rng.random() < 0.5))


def check_pool(case):
    _spec.pool_geom("pool", case["shape"], case["kernel_size"], case["stride"], case["padding"],
                    case["dilation"], case["ceil_mode"])


def tied_values(rng, shape, dtype, specials=True):
    """Small integers (so windows hold ties), with a few NaN and -inf where asked."""
    x = rng.integers(0, 4, shape).astype(dtype)
    if specials:
        for value in (np.nan, -np.inf, np.inf):
            x.flat[rng.integers(0, x.size, int(rng.integers(0, 3)))] = value
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(20))
def test_max_pool2d_against_torch(torch, seed, dtype):
    rng = np.random.default_rng(200 + seed)
    case = draw_until_valid(lambda: draw_pool(rng, True), check_pool)
    params = {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    x = tied_values(rng, case["shape"], dtype, specials=seed % 2 == 0)
    if seed % 4 == 1:
        x[...] = -np.inf  # every window all -inf: the index of its first input pixel
    xt = leaf(torch, x)
    yt, it = torch.nn.functional.max_pool2d(xt, return_indices=True, **params)
    y, idx = ops.max_pool2d(x, return_indices=True, **params, **REF)
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, yt.detach().numpy())  # NaN at the same places
    np.testing.assert_array_equal(idx, it.numpy())
    np.testing.assert_array_equal(ops.max_pool2d(x, **params, **REF), y)

    grad_out = normal(rng, y.shape, dtype)
    (expected,) = torch_grads(torch, yt, grad_out, xt)
    assert_close(ops.max_pool2d_backward(grad_out, idx, x.shape, **REF), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(20))
def test_avg_pool2d_against_torch(torch, seed, dtype):
    rng = np.random.default_rng(300 + seed)
    case = draw_until_valid(lambda: draw_pool(rng, False), check_pool)
    params = {k: case[k] for k in ("kernel_size", "stride", "padding", "ceil_mode")}
    params.update(count_include_pad=bool(seed % 2), divisor_override=maybe(rng, int(rng.integers(1, 6))))
    x = normal(rng, case["shape"], dtype)
    xt = leaf(torch, x)
    yt = torch.nn.functional.avg_pool2d(xt, **params)
    y = ops.avg_pool2d(x, **params, **REF)
    assert y.dtype == dtype
    assert_close(y, yt.detach().numpy(), dtype)

    grad_out = normal(rng, y.shape, dtype)
    (expected,) = torch_grads(torch, yt, grad_out, xt)
    assert_close(ops.avg_pool2d_backward(grad_out, x.shape, **params, **REF), expected, dtype)


# Ceil mode where the last window runs past the padding: PyTorch clips it to the padded input
# before counting its size (shape, kernel, stride, padding).
CLIPPED_WINDOWS = [
    ((1, 2, 6, 6), 3, 2, 1),
    ((2, 1, 6, 8), 3, 2, 1),
    ((1, 2, 6, 7), (3, 4), (3, 2), 1),
]


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape, kernel_size, stride, padding", CLIPPED_WINDOWS)
def test_avg_pool2d_clipped_ceil_windows_against_torch(torch, shape, kernel_size, stride, padding,
                                                       count_include_pad):
    rng = np.random.default_rng(sum(shape))
    params = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=True,
                  count_include_pad=count_include_pad)
    x = normal(rng, shape, np.float64)
    xt = leaf(torch, x)
    yt = torch.nn.functional.avg_pool2d(xt, **params)
    assert_close(ops.avg_pool2d(x, **params, **REF), yt.detach().numpy())
    grad_out = normal(rng, yt.shape, np.float64)
    (expected,) = torch_grads(torch, yt, grad_out, xt)
    assert_close(ops.avg_pool2d_backward(grad_out, shape, **params, **REF), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(12))
def test_max_unpool2d_against_torch(torch, seed, dtype):
    """Unpooling what max pooling returned. With overlapping windows indices repeat; the values
    written there are then equal (PyTorch itself does not fix which of several different values
    wins: see test_max_unpool2d_last_write_wins)."""
    rng = np.random.default_rng(400 + seed)
    use_output_size = seed % 2 == 1

    def unpool_args(case):
        params = {k: case[k] for k in ("kernel_size", "stride", "padding")}
        return params, (case["shape"][-2:] if use_output_size else None)

    def draw():
        case = draw_pool(rng, False) | dict(ceil_mode=False, dilation=1)
        return case | dict(x=tied_values(rng, case["shape"], dtype, specials=False))

    def check(case):
        """Valid pooling whose indices fit the unpooled plane."""
        check_pool(case)
        params, output_size = unpool_args(case)
        _, idx = ops.max_pool2d(case["x"], return_indices=True, **params, **REF)
        _spec.max_unpool2d(np.empty(idx.shape), idx, output_size=output_size, **params)

    case = draw_until_valid(draw, check)
    params, output_size = unpool_args(case)
    values, idx = torch.nn.functional.max_pool2d(torch.tensor(case["x"]), return_indices=True, **params)
    values = values.numpy()
    expected = torch.nn.functional.max_unpool2d(torch.tensor(values), idx, output_size=output_size, **params)
    y = ops.max_unpool2d(values, idx.numpy(), output_size=output_size, **params, **REF)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, expected.numpy())


def test_max_unpool2d_last_write_wins():
    """pyconv's rule for repeated indices: the last one in row-major order wins."""
    x = np.arange(1.0, 9.0).reshape(1, 1, 2, 4)
    indices = np.array([[0, 0, 3, 0], [5, 3, 5, 1]])[None, None]
    y = ops.max_unpool2d(x, indices, (1, 1), output_size=(2, 4), **REF)
    np.testing.assert_array_equal(y[0, 0], [[4, 8, 0, 6], [0, 7, 0, 0]])


# --------------------------------------------------------------------------------------------
# LSTM


def lstm_weights(rng, I, H, dtype, bias):
    scale = float(1 / np.sqrt(H))  # a Python float keeps the arrays in dtype
    w_ih, w_hh = (scale * normal(rng, shape, dtype) for shape in ((4 * H, I), (4 * H, H)))
    b_ih, b_hh = (scale * normal(rng, 4 * H, dtype) if bias else None for _ in range(2))
    return w_ih, w_hh, b_ih, b_hh


def copy_weights(torch, module, weights, suffix=""):
    with torch.no_grad():
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), weights):
            if value is not None:
                getattr(module, name + suffix).copy_(torch.tensor(value))
    return [getattr(module, n + suffix, None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def torch_dtype(torch, dtype):
    return torch.float32 if dtype == np.float32 else torch.float64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_lstm_cell_against_torch(torch, seed, dtype):
    rng = np.random.default_rng(500 + seed)
    B, I, H = (int(v) for v in rng.integers(1, 6, 3))
    bias = seed % 3 != 0
    weights = lstm_weights(rng, I, H, dtype, bias)
    x, h, c = normal(rng, (B, I), dtype), normal(rng, (B, H), dtype), normal(rng, (B, H), dtype)
    cell = torch.nn.LSTMCell(I, H, bias=bias, dtype=torch_dtype(torch, dtype))
    params = copy_weights(torch, cell, weights)
    xt, ht, ct = leaf(torch, x), leaf(torch, h), leaf(torch, c)
    h_new_t, c_new_t = cell(xt, (ht, ct))
    h_new, c_new = ops.lstm_cell(x, h, c, *weights, **REF)
    assert h_new.dtype == c_new.dtype == dtype
    assert_close(h_new, h_new_t.detach().numpy(), dtype)
    assert_close(c_new, c_new_t.detach().numpy(), dtype)

    grad_h = maybe(rng, normal(rng, (B, H), dtype)) if seed % 2 else normal(rng, (B, H), dtype)
    grad_c = normal(rng, (B, H), dtype)
    loss = (c_new_t * torch.tensor(grad_c)).sum()
    if grad_h is not None:
        loss = loss + (h_new_t * torch.tensor(grad_h)).sum()
    loss.backward()
    got = ops.lstm_cell_backward(grad_h, grad_c, x, h, c, *weights, **REF)
    expected = [xt, ht, ct] + params
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        else:
            assert g.dtype == dtype
            assert_close(g, e.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_lstm_against_torch(torch, seed, dtype):
    rng = np.random.default_rng(600 + seed)
    T, B, I, H = (int(v) for v in rng.integers(1, 6, 4))
    bias = seed % 3 != 0
    weights = lstm_weights(rng, I, H, dtype, bias)
    x, h0, c0 = normal(rng, (T, B, I), dtype), normal(rng, (B, H), dtype), normal(rng, (B, H), dtype)
    net = torch.nn.LSTM(I, H, bias=bias, dtype=torch_dtype(torch, dtype))
    params = copy_weights(torch, net, weights, suffix="_l0")
    xt, ht, ct = leaf(torch, x), leaf(torch, h0), leaf(torch, c0)
    out_t, (hT_t, cT_t) = net(xt, (ht[None], ct[None]))
    out, (hT, cT) = ops.lstm(x, h0, c0, *weights, **REF)
    assert out.dtype == dtype and out.shape == (T, B, H)
    assert_close(out, out_t.detach().numpy(), dtype)
    assert_close(hT, hT_t[0].detach().numpy(), dtype)
    assert_close(cT, cT_t[0].detach().numpy(), dtype)

    # Some upstream gradients are None (zero) in some cases.
    grad_out = normal(rng, (T, B, H), dtype) if seed != 1 else None
    grad_hT = normal(rng, (B, H), dtype) if seed != 2 else None
    grad_cT = normal(rng, (B, H), dtype) if seed != 3 else None
    loss = 0
    for t, g in ((out_t, grad_out), (hT_t[0], grad_hT), (cT_t[0], grad_cT)):
        if g is not None:
            loss = loss + (t * torch.tensor(g)).sum()
    loss.backward()
    got = ops.lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, *weights, **REF)
    for g, e in zip(got, [xt, ht, ct] + params):
        if e is None:
            assert g is None
        else:
            assert g.dtype == dtype
            assert_close(g, e.grad.numpy(), dtype)


# --------------------------------------------------------------------------------------------
# Unbatched samples: one sample without its batch axis, as PyTorch's functions take it
# (conv (C, H, W) / (C, L), pooling and unpooling (C, H, W), LSTM (I,) and (T, I)), on every
# NumPy backend: values, shapes and gradients as PyTorch's.

NUMPY_BACKENDS = [b for b in pyconv.backends() if registry.get(b).array_kind == "numpy"]


def assert_same(got, expected, dtype=np.float64):
    expected = expected.detach().numpy() if hasattr(expected, "detach") else expected
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(got, expected)
    else:
        assert_close(got, expected, dtype)


def assert_grads(got, torch_leaves):
    for g, t in zip(got, torch_leaves):
        if t is None:
            assert g is None
        else:
            assert_same(g, t.grad)


UNBATCHED_CONV = [
    (1, (3, 9), (4, 3, 3), dict(stride=2, padding=1)),
    (1, (4, 8), (4, 2, 4), dict(padding="same", groups=2)),
    (2, (3, 7, 8), (4, 3, 3, 2), dict(stride=(2, 1), padding=1, dilation=(1, 2))),
    (2, (4, 6, 6), (4, 1, 3, 3), dict(groups=4, padding="valid")),
]


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
@pytest.mark.parametrize("case", range(len(UNBATCHED_CONV)))
def test_unbatched_conv_against_torch(torch, case, backend):
    nd, x_shape, w_shape, params = UNBATCHED_CONV[case]
    rng = np.random.default_rng(900 + case)
    x, w, b = (normal(rng, s, np.float64) for s in (x_shape, w_shape, w_shape[0]))
    xt, wt, bt = leaf(torch, x), leaf(torch, w), leaf(torch, b)
    yt = getattr(torch.nn.functional, f"conv{nd}d")(xt, wt, bt, **params)
    y = getattr(ops, f"conv{nd}d")(x, w, b, **params, backend=backend)
    assert_same(y, yt)
    grad_out = normal(rng, y.shape, np.float64)
    yt.backward(torch.tensor(grad_out))
    assert_grads(getattr(ops, f"conv{nd}d_backward")(grad_out, x, w, **params, backend=backend), (xt, wt, bt))


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
def test_unbatched_conv_transpose2d_against_torch(torch, backend):
    rng = np.random.default_rng(910)
    params = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2))
    x, w, b = (normal(rng, s, np.float64) for s in ((4, 3, 5), (4, 3, 3, 2), 6))
    xt, wt, bt = leaf(torch, x), leaf(torch, w), leaf(torch, b)
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, **params)
    y = ops.conv_transpose2d(x, w, b, **params, backend=backend)
    assert_same(y, yt)
    grad_out = normal(rng, y.shape, np.float64)
    yt.backward(torch.tensor(grad_out))
    assert_grads(ops.conv_transpose2d_backward(grad_out, x, w, **params, backend=backend), (xt, wt, bt))


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
def test_unbatched_pooling_against_torch(torch, backend):
    F = torch.nn.functional
    rng = np.random.default_rng(920)
    x = rng.integers(0, 4, (3, 7, 8)).astype(np.float64)  # ties
    xt = leaf(torch, x)
    params = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    yt, it = F.max_pool2d(xt, **params, return_indices=True)
    y, idx = ops.max_pool2d(x, **params, return_indices=True, backend=backend)
    assert_same(y, yt)
    assert_same(idx, it.numpy())
    grad_out = normal(rng, y.shape, np.float64)
    yt.backward(torch.tensor(grad_out))
    assert_same(ops.max_pool2d_backward(grad_out, idx, x.shape, backend=backend), xt.grad)
    unpooled = ops.max_unpool2d(y, idx, 3, 2, 1, output_size=x.shape[-2:], backend=backend)
    assert_same(unpooled, F.max_unpool2d(yt.detach(), it, 3, 2, 1, output_size=x.shape[-2:]))

    xt = leaf(torch, x)
    params = dict(kernel_size=(3, 2), stride=(2, 1), padding=1, ceil_mode=True, count_include_pad=False)
    yt = F.avg_pool2d(xt, **params)
    y = ops.avg_pool2d(x, **params, backend=backend)
    assert_same(y, yt)
    grad_out = normal(rng, y.shape, np.float64)
    yt.backward(torch.tensor(grad_out))
    assert_same(ops.avg_pool2d_backward(grad_out, x.shape, **params, backend=backend), xt.grad)


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
def test_unbatched_lstm_cell_and_sequence_against_torch(torch, backend):
    rng = np.random.default_rng(930)
    T, I, H = 4, 3, 5
    weights = lstm_weights(rng, I, H, np.float64, True)
    x, h, c = normal(rng, I, np.float64), normal(rng, H, np.float64), normal(rng, H, np.float64)
    cell = torch.nn.LSTMCell(I, H, dtype=torch.float64)
    params = copy_weights(torch, cell, weights)
    xt, ht, ct = leaf(torch, x), leaf(torch, h), leaf(torch, c)
    h_new_t, c_new_t = cell(xt, (ht, ct))
    h_new, c_new = ops.lstm_cell(x, h, c, *weights, backend=backend)
    assert_same(h_new, h_new_t)
    assert_same(c_new, c_new_t)
    grad_h, grad_c = normal(rng, H, np.float64), normal(rng, H, np.float64)
    ((h_new_t * torch.tensor(grad_h)).sum() + (c_new_t * torch.tensor(grad_c)).sum()).backward()
    got = ops.lstm_cell_backward(grad_h, grad_c, x, h, c, *weights, backend=backend)
    assert_grads(got, [xt, ht, ct] + params)

    # nn.LSTM takes an unbatched (T, I) sequence with (num_layers, H) states: here one layer.
    x = normal(rng, (T, I), np.float64)
    net = torch.nn.LSTM(I, H, dtype=torch.float64)
    params = copy_weights(torch, net, weights, suffix="_l0")
    xt, ht, ct = leaf(torch, x), leaf(torch, h), leaf(torch, c)
    out_t, (hT_t, cT_t) = net(xt, (ht[None], ct[None]))
    out, (hT, cT), saved = ops.lstm(x, h, c, *weights, backend=backend, save_for_backward=True)
    assert_same(out, out_t)
    assert_same(hT, hT_t[0])
    assert_same(cT, cT_t[0])
    grad_out, grad_hT = normal(rng, (T, H), np.float64), normal(rng, H, np.float64)
    ((out_t * torch.tensor(grad_out)).sum() + (hT_t[0] * torch.tensor(grad_hT)).sum()).backward()
    for record in (None, saved):
        got = ops.lstm_backward(grad_out, grad_hT, None, x, h, c, *weights, backend=backend, saved=record)
        assert_grads(got, [xt, ht, ct] + params)


# --------------------------------------------------------------------------------------------
# Boxes: a loop-based oracle of torchvision's semantics (torchvision is not a dependency), with
# pyconv's convention that a degenerate box (x2 < x1 or y2 < y1) is empty. The arithmetic is
# done in the boxes' dtype, as the kernels do; thresholds are compared in float64.


def random_boxes(rng, n, dtype):
    """Boxes on a small integer grid (so many overlap), some degenerate, some identical."""
    top_left = rng.integers(0, 12, (n, 2))
    size = rng.integers(-2, 9, (n, 2))
    boxes = np.concatenate([top_left, top_left + size], axis=1).astype(dtype)
    if n > 2:
        boxes[1] = boxes[0]
    return boxes + rng.random((n, 4)).astype(dtype) * (rng.random() < 0.5)


def random_scores(rng, n, dtype):
    scores = rng.integers(0, 5, n).astype(dtype)  # ties
    scores[rng.random(n) < 0.1] = np.nan
    return scores


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(8))
def test_box_iou_against_oracle(seed, dtype):
    rng = np.random.default_rng(700 + seed)
    a, b = random_boxes(rng, int(rng.integers(0, 8)), dtype), random_boxes(rng, int(rng.integers(1, 8)), dtype)
    iou = ops.box_iou(a, b, **REF)
    assert iou.dtype == dtype and iou.shape == (len(a), len(b))
    expected = oracles.iou_matrix(a, b)
    assert_close(iou, expected, dtype)
    assert np.all((iou >= 0) & (iou <= 1))


def test_box_iou_special_cases():
    boxes = np.array([[0, 0, 2, 2], [3, 3, 1, 1], [1, 1, 1, 5], [0, 0, np.nan, 2]], np.float64)
    iou = ops.box_iou(boxes, boxes, **REF)
    assert iou[0, 0] == 1
    assert iou[1, 1] == 0 and iou[0, 1] == 0  # degenerate: empty, union 0 -> 0
    assert iou[2, 2] == 0  # zero width: empty
    assert np.isnan(iou[3, 0]) and np.isnan(iou[0, 3])  # NaN coordinates propagate


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(12))
def test_nms_against_oracle(seed, dtype):
    rng = np.random.default_rng(800 + seed)
    n = int(rng.integers(0, 25))
    boxes, scores = random_boxes(rng, n, dtype), random_scores(rng, n, dtype)
    threshold = float(rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 1.0]))
    kept = ops.nms(boxes, scores, threshold, **REF)
    assert kept.dtype == np.int64
    np.testing.assert_array_equal(kept, oracles.nms(boxes, scores, threshold))

    idxs = rng.integers(0, 3, n)
    kept = ops.batched_nms(boxes, scores, idxs, threshold, **REF)
    assert kept.dtype == np.int64
    np.testing.assert_array_equal(kept, oracles.nms(boxes, scores, threshold, idxs))


def test_nms_special_cases():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.9, 0.9, np.nan], np.float32)
    # 1 and 2 tie at 0.9: the lower index leads; box 0 equals box 1; the NaN score ranks last.
    # IoU(1, 2) = 0.5 exactly: only a strictly larger IoU suppresses.
    np.testing.assert_array_equal(ops.nms(boxes, scores, 0.5, **REF), [1, 2, 3])
    np.testing.assert_array_equal(ops.nms(boxes, scores, 0.49, **REF), [1, 3])
    # A suppressed box suppresses nothing: box 1 is dropped by box 0, so it cannot drop box 2.
    chain = np.array([[0, 0, 4, 1], [1, 0, 5, 1], [2, 0, 6, 1]], np.float64)
    np.testing.assert_array_equal(ops.nms(chain, np.array([3.0, 2.0, 1.0]), 0.5, **REF), [0, 2])
    empty = ops.nms(np.zeros((0, 4)), np.zeros(0), 0.5, **REF)
    assert empty.dtype == np.int64 and empty.shape == (0,)
    # Categories never suppress each other: 1 and 2 (IoU 0.5) both stay; 2 drops 0 in category 0.
    np.testing.assert_array_equal(
        ops.batched_nms(boxes, scores, np.array([0, 1, 0, 0]), 0.49, **REF), [1, 2, 3])


# --------------------------------------------------------------------------------------------
# float64 finite-difference checks of every backward kernel (no PyTorch involved)


def numerical_gradient(loss, a, eps=1e-6):
    """Central differences of loss() with respect to every element of `a` (mutated in place
    and restored)."""
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        grad[i] = central_difference(loss, a, i, eps)
    return grad


def assert_gradients(loss, arrays, grads):
    for name, a in arrays.items():
        if a is None:
            continue
        np.testing.assert_allclose(grads[name], numerical_gradient(loss, a), rtol=1e-6, atol=1e-8,
                                   err_msg=f"gradient of {name}")


@pytest.mark.parametrize("params", [
    dict(stride=2, padding=1, dilation=(1, 2), groups=2),
    dict(stride=1, padding="same", dilation=1, groups=1),
    dict(stride=(1, 3), padding=(2, 0), dilation=2, groups=4),
])
def test_conv2d_backward_finite_differences(rng, params):
    x, w, b = rng.standard_normal((2, 4, 6, 7)), rng.standard_normal((4, 4 // params["groups"], 3, 2)), rng.standard_normal(4)
    G = rng.standard_normal(ops.conv2d(x, w, b, **params, **REF).shape)
    gx, gw, gb = ops.conv2d_backward(G, x, w, **params, **REF)
    assert_gradients(lambda: np.sum(ops.conv2d(x, w, b, **params, **REF) * G),
                     dict(x=x, w=w, b=b), dict(x=gx, w=gw, b=gb))


def test_conv1d_backward_finite_differences(rng):
    params = dict(stride=2, padding=2, dilation=2, groups=3)
    x, w, b = rng.standard_normal((2, 3, 9)), rng.standard_normal((6, 1, 3)), rng.standard_normal(6)
    G = rng.standard_normal(ops.conv1d(x, w, b, **params, **REF).shape)
    gx, gw, gb = ops.conv1d_backward(G, x, w, **params, **REF)
    assert_gradients(lambda: np.sum(ops.conv1d(x, w, b, **params, **REF) * G),
                     dict(x=x, w=w, b=b), dict(x=gx, w=gw, b=gb))


def test_conv_transpose2d_backward_finite_differences(rng):
    params = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(2, 1))
    x, w, b = rng.standard_normal((2, 4, 3, 4)), rng.standard_normal((4, 2, 2, 3)), rng.standard_normal(4)
    G = rng.standard_normal(ops.conv_transpose2d(x, w, b, **params, **REF).shape)
    gx, gw, gb = ops.conv_transpose2d_backward(G, x, w, **params, **REF)
    assert_gradients(lambda: np.sum(ops.conv_transpose2d(x, w, b, **params, **REF) * G),
                     dict(x=x, w=w, b=b), dict(x=gx, w=gw, b=gb))


def test_max_pool2d_backward_finite_differences(rng):
    # Distinct values far apart (no ties within eps); overlapping windows share maxima.
    x = 0.01 * rng.permutation(2 * 3 * 6 * 7).reshape(2, 3, 6, 7)
    params = dict(kernel_size=3, stride=1, padding=1, ceil_mode=True)
    y, idx = ops.max_pool2d(x, return_indices=True, **params, **REF)
    G = rng.standard_normal(y.shape)
    grad = ops.max_pool2d_backward(G, idx, x.shape, **REF)
    assert_gradients(lambda: np.sum(ops.max_pool2d(x, **params, **REF) * G), dict(x=x), dict(x=grad))


@pytest.mark.parametrize("params", [
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), ceil_mode=True, count_include_pad=True),
    dict(kernel_size=3, stride=2, padding=0, ceil_mode=True, divisor_override=4),
])
def test_avg_pool2d_backward_finite_differences(rng, params):
    x = rng.standard_normal((2, 2, 7, 6))
    G = rng.standard_normal(ops.avg_pool2d(x, **params, **REF).shape)
    grad = ops.avg_pool2d_backward(G, x.shape, **params, **REF)
    assert_gradients(lambda: np.sum(ops.avg_pool2d(x, **params, **REF) * G), dict(x=x), dict(x=grad))


def lstm_arrays(rng, T, B, I, H):
    x = rng.standard_normal((T, B, I) if T else (B, I))
    h, c = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    b_ih, b_hh = rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    return dict(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)


def test_lstm_cell_backward_finite_differences(rng):
    a = lstm_arrays(rng, 0, 2, 3, 4)
    Gh, Gc = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))

    def loss():
        h, c = ops.lstm_cell(*a.values(), **REF)
        return np.sum(h * Gh) + np.sum(c * Gc)

    grads = ops.lstm_cell_backward(Gh, Gc, *a.values(), **REF)
    assert_gradients(loss, a, dict(zip(a, grads)))


def test_lstm_backward_finite_differences(rng):
    a = lstm_arrays(rng, 4, 2, 3, 3)
    Go, Gh, Gc = rng.standard_normal((4, 2, 3)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))

    def loss():
        out, (h, c) = ops.lstm(*a.values(), **REF)
        return np.sum(out * Go) + np.sum(h * Gh) + np.sum(c * Gc)

    grads = ops.lstm_backward(Go, Gh, Gc, *a.values(), **REF)
    assert_gradients(loss, a, dict(zip(a, grads)))


# --------------------------------------------------------------------------------------------
# Elementwise activations


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 1.5, -0.3])
def test_leaky_relu_against_torch(dtype, slope):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 17)).astype(dtype)
    x[0, :6] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-30]
    g = rng.standard_normal(x.shape).astype(dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.nn.functional.leaky_relu(xt, slope)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(ops.leaky_relu(x, slope, **REF), yt.detach().numpy())
    np.testing.assert_array_equal(ops.leaky_relu_backward(g, x, slope, **REF), xt.grad.numpy())
