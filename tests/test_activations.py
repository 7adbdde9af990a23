"""The fused activations and dropout beyond the conformance table: the accuracy of the C++
kernels' vectorised e^x (in ulps, on every ISA build), special values as NumPy / PyTorch give
them (ReLU's bit for bit, subnormals included, on every backend), Philox4x32-10
against its published known-answer vectors, and dropout masks that depend on the seed alone
(not on the thread count or the backend) with the asked-for keep rate."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import numpy_backends_with, on_backend, to_numpy

import pyconv
from pyconv import ops
from pyconv.backends.reference import dropout_words, philox4x32_10

HAS_CPU = "cpu" in pyconv.backends()
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="the cpu backend is not built")


def _isas():
    if not HAS_CPU:
        return []
    order = ["avx512", "avx2", "generic"]
    return [isa for isa in order[order.index(pyconv._C.best_isa()):] if isa in pyconv._C.compiled_isas()]


def _ulps(actual, exact, dtype):
    """|actual - exact| in units of the last place of exact rounded to dtype (below the normal
    range, of the smallest normal number: the kernels flush subnormals)."""
    spacing = np.spacing(np.abs(exact.astype(dtype))).astype(np.float64)
    spacing = np.maximum(spacing, np.finfo(dtype).tiny)
    return np.abs(actual.astype(np.float64) - exact) / spacing


def _points():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.uniform(-100, 100, 1_000_000), rng.uniform(-1, 1, 100_000),
                           rng.uniform(-1e-3, 1e-3, 100_000)])


def _exact(name, x):
    with np.errstate(over="ignore"):
        return {
            "sigmoid": lambda: 1 / (1 + np.exp(-x)),
            "tanh": lambda: np.tanh(x),
            "elu": lambda: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
            "exp": lambda: np.exp(np.minimum(x, 0)),
        }[name]()


def _run(name, x):
    if name == "exp":  # e^x through ELU's backward: grad_out * alpha * e^x with both 1
        return np.where(x > 0, 1, ops.elu_backward(np.ones_like(x), x, 1.0))
    return getattr(ops, name)(x)


# The bounds csrc/elementwise/exp.h states: float32 against float64, float64 against NumPy.
ULP_BOUNDS = {
    np.float32: {"exp": 1.5, "elu": 1.5, "sigmoid": 3.0, "tanh": 2.0},
    np.float64: {"exp": 1.5, "elu": 1.5, "sigmoid": 5.0, "tanh": 4.0},
}


@needs_cpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["exp", "elu", "sigmoid", "tanh"])
def test_vectorised_exp_is_accurate_to_a_few_ulps(name, dtype, isa):
    x = _points().astype(dtype)
    exact = _exact(name, x.astype(np.float64))
    worst = _ulps(_run(name, x), exact, dtype).max()
    assert worst <= ULP_BOUNDS[dtype][name], f"{name} {np.dtype(dtype).name} on {isa}: {worst:.2f} ulps"


SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 88.5, 89.0, -88.5, -104.0,
            709.0, 710.0, -745.0, -746.0, 1e6, -1e6]


@needs_cpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["elu", "sigmoid", "tanh"])
def test_special_values_as_torch(name, dtype, isa, torch):
    x = np.array(SPECIALS, dtype)
    expected = {"elu": torch.nn.functional.elu, "sigmoid": torch.sigmoid,
                "tanh": torch.tanh}[name](torch.from_numpy(x)).numpy()
    got = getattr(ops, name)(x)
    # Subnormal results are flushed to zero by the kernels (csrc/common/denormals.h).
    tiny = np.finfo(dtype).tiny
    expected = np.where(np.abs(expected) < tiny, np.copysign(0, expected), expected)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))  # -0 stays -0


def _relu_edges(dtype):
    """Signed zeros, subnormals and the smallest normals of both signs, +-1, +-inf, NaN of both
    signs, and a random spread; 67 values, so that the C++ kernels' last vector is partial."""
    tiny, sub = np.finfo(dtype).tiny, np.finfo(dtype).smallest_subnormal
    edges = [0.0, -0.0, sub, -sub, 3 * sub, -3 * sub, tiny, -tiny, 1.0, -1.0, np.inf, -np.inf,
             np.nan, -np.nan, 1e30, -1e30]
    spread = np.random.default_rng(0).standard_normal(51)
    return np.concatenate([edges, spread]).astype(dtype)


def _same_bits_as(got, expected):
    """Equal values, NaN where NaN is, and the same sign of every zero."""
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))


@pytest.fixture(params=["reference", "numba", "cuda"] + [f"cpu/{isa}" for isa in _isas()])
def relu_backend(request):
    """Every backend, the cpu backend under each of its ISA builds."""
    backend, _, isa = request.param.partition("/")
    if backend not in pyconv.backends():
        pytest.skip(f"the {backend} backend is not available")
    if not isa:
        yield backend
        return
    saved = pyconv._C.isa()
    pyconv._C.set_isa(isa)
    yield backend
    pyconv._C.set_isa(saved)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_special_values_as_torch(dtype, relu_backend, torch):
    """0 for every x < 0 (-inf and negative subnormals included), x itself otherwise (NaN and
    -0.0 too); the gradient is 0 where the output is <= 0 and passes at NaN, as in PyTorch."""
    x = _relu_edges(dtype)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = torch.relu(xt)
    g = np.arange(1, x.size + 1, dtype=dtype)
    yt.backward(torch.from_numpy(g))
    x_on, g_on = on_backend(relu_backend, x, g)
    y = ops.relu(x_on, backend=relu_backend)
    _same_bits_as(to_numpy(y), yt.detach().numpy())
    _same_bits_as(to_numpy(ops.relu_backward(g_on, y, backend=relu_backend)), xt.grad.numpy())
    from_input = ops.relu_backward(g_on, x_on, backend=relu_backend)
    _same_bits_as(to_numpy(from_input), xt.grad.numpy())


@needs_cpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_relu_is_relu_of_the_sum_bit_for_bit(dtype, isa):
    """_C.add_relu (the ONNX graph's Conv+Add+Relu step): max(a + b, 0) with ReLU's rules (NaN
    and -0 kept, -inf to 0) in one pass, the same bits as the sum followed by ReLU, in place
    over either operand, on a partial last vector and on an array the threads share (2^16
    elements), at 1 and 2 threads. Sums that would be subnormal are left out: the kernels flush
    them to zero (README). Where both addends are NaN, IEEE 754 leaves open which one's sign and
    payload the sum carries (x86 keeps the first operand's, and a compiler may swap the
    operands of an addition): the sum is NaN there, and its sign is not compared."""
    edges = _relu_edges(dtype)
    tiny = np.finfo(dtype).tiny
    edges = edges[(edges == 0) | ~(np.abs(edges) < 4 * tiny)]  # no subnormal sums with the 0s
    rng = np.random.default_rng(7)
    threads_before = pyconv.get_num_threads()
    try:
        for n in (edges.size, 1 << 16):
            a = rng.permutation(np.resize(edges, n)).astype(dtype)
            b = rng.permutation(np.resize(edges, n)).astype(dtype)
            b[:8] = [0.0, -0.0, 0.0, -0.0, 1.0, -1.0, np.inf, -np.inf]
            a[:8] = [0.0, 0.0, -0.0, -0.0, -1.0, 1.0, -np.inf, -np.inf]  # +0, +0, +0, -0, ..., NaN, -inf
            with np.errstate(invalid="ignore", over="ignore"):
                total = a + b
            expected = np.where(total < 0, dtype(0), total)
            both_nan = np.isnan(a) & np.isnan(b)
            expected[both_nan] = np.abs(expected[both_nan])
            for threads in (1, 2):
                pyconv.set_num_threads(threads)
                y = np.empty_like(a)
                pyconv._C.add_relu(a, b, y)
                y[both_nan] = np.abs(y[both_nan])
                _same_bits_as(y, expected)
                in_place = a.copy()
                pyconv._C.add_relu(in_place, b, in_place)
                in_place[both_nan] = np.abs(in_place[both_nan])
                _same_bits_as(in_place, expected)
    finally:
        pyconv.set_num_threads(threads_before)


def test_philox_known_answers():
    """The published known-answer vectors of Philox4x32-10 (Random123's kat_vectors)."""
    counters = [[0, 0, 0, 0], [0xFFFFFFFF] * 4, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344]]
    keys = [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0xA4093822, 0x299F31D0)]
    expected = [[0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8],
                [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
                [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]]
    for counter, key, words in zip(counters, keys, expected):
        assert philox4x32_10(np.array([counter]), key)[0].tolist() == words


def test_dropout_words_follow_the_element_index():
    """Element i reads word i % 4 of block i // 4, keyed by the seed's two halves."""
    seed = 0x0123456789ABCDEF
    words = dropout_words(10, seed)
    key = (seed & 0xFFFFFFFF, seed >> 32)
    block2 = philox4x32_10(np.array([[2, 0, 0, 0]]), key)[0]
    assert words[8:10].tolist() == block2[:2].tolist()


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_dropout_mask_does_not_depend_on_the_thread_count(threads):
    x = np.ones(200_003, np.float32)  # past the parallel threshold, with a partial last chunk
    saved = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(threads)
        y, mask = ops.dropout(x, 0.3, 99, backend="cpu")
    finally:
        pyconv.set_num_threads(saved)
    expected_y, expected_mask = ops.dropout(x, 0.3, 99, backend="reference")
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(y, expected_y)


@pytest.mark.parametrize("backend", numpy_backends_with("dropout"))
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_one_minus_p(backend, p):
    n = 400_000
    y, mask = ops.dropout(np.ones(n), p, 2024, backend=backend)
    kept = mask.mean()
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # five standard deviations
    np.testing.assert_array_equal(y, np.where(mask == 1, 1 / (1 - p), 0.0))
    # No lane of a Philox block, and no place in a 64-element chunk, keeps at another rate.
    for period in (4, 64):
        by_place = mask.reshape(-1, period).mean(axis=0)
        bound = 5 * np.sqrt(p * (1 - p) / (n // period))
        assert np.abs(by_place - (1 - p)).max() < bound


def test_dropout_masks_change_with_the_seed_and_repeat_with_it():
    x = np.ones(1000)
    a = ops.dropout(x, 0.5, 1, backend="reference")[1]
    assert not np.array_equal(a, ops.dropout(x, 0.5, 2, backend="reference")[1])
    assert not np.array_equal(a, ops.dropout(x, 0.5, 1 + 2**32, backend="reference")[1])  # high half
    np.testing.assert_array_equal(a, ops.dropout(x, 0.5, 1, backend="reference")[1])


def test_dropout_multiplies_dropped_inf_and_nan_by_zero_as_torch():
    x = np.array([np.inf, -np.inf, np.nan, 1.0])
    for backend in numpy_backends_with("dropout"):
        y, mask = ops.dropout(x, 1.0, 3, backend=backend)
        assert mask.tolist() == [0, 0, 0, 0]
        np.testing.assert_array_equal(y, [np.nan, np.nan, np.nan, 0.0])


def test_nn_dropout_is_reproducible_from_manual_seed():
    from pyconv import nn

    layer = nn.Dropout(0.4)
    x = pyconv.Tensor(np.ones((8, 50)))
    pyconv.manual_seed(5)
    first = layer(x).data
    pyconv.manual_seed(5)
    np.testing.assert_array_equal(layer(x).data, first)
    assert not np.array_equal(layer(x).data, first)  # the next draw moves on
    layer.eval()
    assert layer(x) is x


@needs_cpu
def test_prelu_weight_gradient_does_not_depend_on_the_thread_count():
    """Each (sample, channel) row is summed whole by one thread, then the rows of a channel in
    order: the sum is the same bits for any number of threads."""
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((2, 16, 8, 40, 40)).astype(np.float32)
    results = []
    saved = pyconv.get_num_threads()
    try:
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            results.append([ops.prelu_backward(g, x, w, backend="cpu")
                            for w in (np.full(8, 0.2, np.float32), np.full(1, 0.2, np.float32))])
    finally:
        pyconv.set_num_threads(saved)
    for other in results[1:]:
        for (gx, gw), (gx0, gw0) in zip(other, results[0]):
            np.testing.assert_array_equal(gx, gx0)
            np.testing.assert_array_equal(gw, gw0)


@needs_cpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gated_tanh_on_every_isa(dtype, isa):
    """gated_tanh and its backward under each ISA build against the reference backend: rows of
    a length that ends on a partial vector (masked loads and stores), the split on the first
    and the last axis, and a size the threads share."""
    rng = np.random.default_rng(3)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for shape, dim in (((3, 6, 5, 7), 1), ((10, 3, 3), 0), ((5, 38), -1), ((2, 8, 64, 70), 1)):
        x = (rng.standard_normal(shape) * 4).astype(dtype)
        out_shape = list(shape)
        out_shape[dim] //= 2
        g = rng.standard_normal(out_shape).astype(dtype)
        np.testing.assert_allclose(ops.gated_tanh(x, dim, backend="cpu"),
                                   ops.gated_tanh(x, dim, backend="reference"), **tol)
        np.testing.assert_allclose(ops.gated_tanh_backward(g, x, dim, backend="cpu"),
                                   ops.gated_tanh_backward(g, x, dim, backend="reference"), **tol)


@needs_cpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_is_numpys_sum_bit_for_bit(dtype, isa):
    """_C.add (the autograd's threaded sums) gives NumPy's bits under each ISA build, at 1 and 2
    threads, in place too: subnormal sums kept (it runs without the kernels' flush)."""
    tiny = np.finfo(dtype).tiny
    rng = np.random.default_rng(5)
    threads_before = pyconv.get_num_threads()
    try:
        for n in (37, 1 << 16):
            a = rng.standard_normal(n).astype(dtype)
            b = rng.standard_normal(n).astype(dtype)
            a[:4], b[:4] = [tiny, -tiny, 3 * tiny, 1.0], [-tiny / 2, tiny / 4, -2.5 * tiny, -1.0]
            expected = a + b
            for threads in (1, 2):
                pyconv.set_num_threads(threads)
                y = np.empty_like(a)
                pyconv._C.add(a, b, y)
                assert y.tobytes() == expected.tobytes()
                in_place = a.copy()
                pyconv._C.add(in_place, b, in_place)
                assert in_place.tobytes() == expected.tobytes()
    finally:
        pyconv.set_num_threads(threads_before)
