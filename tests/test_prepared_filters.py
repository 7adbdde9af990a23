"""Filters transformed once for many calls (the cpu backend's conv2d_prepare, used by
pyconv.onnx for constant weights): the same bits as the convolution that transforms them
itself, on every layout and ISA, and a clear error for filters of another array."""
import numpy as np
import pytest

import pyconv
from pyconv import _spec
from conftest import runnable_isas

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

# (N, C, H, W, K, padding[, stride]): Winograd block by block, by position (256 x 256 pairs),
# with overhanging tiles; the channel-vectorised GEMM (stride 2, its weight panels kept); a
# layer whose algorithm keeps nothing.
SHAPES = [(16, 64, 8, 8, 64, 1), (8, 256, 14, 14, 256, 1), (16, 32, 17, 15, 32, 1), (16, 16, 32, 32, 32, 1, 2),
          (2, 8, 9, 9, 16, 1, 2)]


def test_the_shapes_cover_the_algorithms_that_keep_filters():
    """(The algorithm rules differ a little between ISAs; these are the AVX-512 kernels'.)"""
    from pyconv import _C
    if _C.isa() != "avx512":
        pytest.skip("the shapes were chosen for the AVX-512 kernels' rules")
    algorithms = [_C.conv2d_algorithm(conv_case(s, np.float32)[3], np.dtype(np.float32)) for s in SHAPES]
    assert algorithms == ["winograd", "winograd (by position)", "winograd", "gemm (by channels)",
                          "direct (phase grid)"]  # the last keeps nothing


def conv_case(shape, dtype, seed=0):
    N, C, H, W, K, pad, *stride = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    S = _spec.ShapeDtype
    g = _spec.conv2d(S(x.shape, dtype), S(w.shape, dtype), S(b.shape, dtype), stride[0] if stride else 1, pad, 1, 1)
    residual = rng.standard_normal(g.output_shape).astype(dtype)
    return x, w, b, g, residual


def run(x, w, b, g, **kw):
    from pyconv import _C
    y = np.empty(g.output_shape, x.dtype)
    _C.conv2d(x, w, b, y, g, **kw)
    return y


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepared_filters_give_the_same_bits(isa, shape, dtype):
    from pyconv import _C
    x, w, b, g, residual = conv_case(shape, dtype)
    filters = _C.conv2d_prepare(w, g)
    for epilogue in ({}, {"residual": residual, "relu": True}):
        expected = run(x, w, b, g, **epilogue)
        for _ in range(2):
            np.testing.assert_array_equal(run(x, w, b, g, filters=filters, **epilogue), expected)


def test_filters_prepared_under_another_isa_are_recomputed():
    """Each ISA's kernels lay the transformed filters out for their own GEMM tile."""
    from pyconv import _C
    runnable = runnable_isas()
    if len(runnable) < 2:
        pytest.skip("one ISA runs here")
    x, w, b, g, _ = conv_case(SHAPES[0], np.float32)
    in_use = _C.isa()
    try:
        for prepared_under in runnable:
            _C.set_isa(prepared_under)
            filters = _C.conv2d_prepare(w, g)
            for run_under in runnable:
                _C.set_isa(run_under)
                np.testing.assert_array_equal(run(x, w, b, g, filters=filters), run(x, w, b, g))
    finally:
        _C.set_isa(in_use)


def test_filters_of_another_array_are_refused():
    from pyconv import _C
    x, w, b, g, _ = conv_case(SHAPES[0], np.float32)
    filters = _C.conv2d_prepare(w, g)
    with pytest.raises(ValueError, match="conv2d: filters were prepared from another array than w"):
        run(x, w.copy(), b, g, filters=filters)
    with pytest.raises(TypeError, match="conv2d: filters must come from conv2d_prepare"):
        run(x, w, b, g, filters=object())


def record_calls(monkeypatch, name):
    """A list that receives the result of each call pyconv.onnx makes of the C++ kernel `name`
    from now on."""
    from pyconv.onnx import _ops_dense
    results, extension = [], _ops_dense._extension

    def recording(kernel_name):
        kernel = extension(kernel_name)
        if kernel_name != name:
            return kernel
        return lambda *args: results.append(kernel(*args)) or results[-1]

    monkeypatch.setattr(_ops_dense, "_extension", recording)
    return results


def test_onnx_graphs_prepare_constant_weights(monkeypatch, tmp_path):
    """pyconv.onnx transforms a constant weight once, and its runs keep ONNX Runtime's result."""
    pytest.importorskip("onnx")
    import pyconv.onnx
    from pyconv import nn

    prepared = record_calls(monkeypatch, "conv2d_prepare")
    pyconv.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
    x = np.random.default_rng(0).standard_normal((8, 16, 12, 12)).astype(np.float32)
    path = str(tmp_path / "convs.onnx")
    pyconv.onnx.export(model, x, path)
    graph = pyconv.onnx.load(path)
    prepared.clear()
    first = graph.run(None, {graph.input_names[0]: x})[0]
    assert len(prepared) == 2  # one per Conv
    np.testing.assert_array_equal(graph.run(None, {graph.input_names[0]: x})[0], first)
    assert len(prepared) == 2  # not again
    np.testing.assert_allclose(first, model(x).numpy(), rtol=1e-5, atol=1e-5)


# One image on 12+ columns: with prepared filters the forward takes Winograd (the filter
# transform, paid once, no longer outweighs the few tiles); without, the direct or GEMM forms.
ONE_IMAGE = [(1, 32, 16, 16, 32, 1), (1, 16, 32, 32, 16, 1), (2, 64, 12, 12, 64, 1)]


@pytest.mark.parametrize("shape", ONE_IMAGE)
def test_prepared_filters_take_winograd_from_one_image(shape):
    from pyconv import _C
    x, w, b, g, residual = conv_case(shape, np.float32)
    f32 = np.dtype(np.float32)
    assert "winograd" not in _C.conv2d_algorithm(g, f32)
    assert "winograd" in _C.conv2d_algorithm(g, f32, prepared=True)
    S = _spec.ShapeDtype
    forced = _spec.conv2d(S(x.shape, x.dtype), S(w.shape, w.dtype), S(b.shape, b.dtype), 1, 1, 1, 1,
                          algorithm="winograd")
    filters = _C.conv2d_prepare(w, g)
    for epilogue in ({}, {"residual": residual, "relu": True}):
        np.testing.assert_array_equal(run(x, w, b, g, filters=filters, **epilogue),
                                      run(x, w, b, forced, **epilogue))


# The input gradient, which is also the transposed convolution (pyconv.onnx's ConvTranspose):
# the channels-last form keeps its tap panels. (N, C, H, W, K, stride, padding) of the forward
# convolution: a DCGAN generator's upsampling at one image, two panels of channels, and a
# shape whose algorithm keeps nothing.
GRAD_INPUT_SHAPES = [(1, 32, 8, 8, 64, 2, 1), (2, 80, 9, 9, 48, 2, 1), (2, 8, 9, 9, 16, 1, 1)]


def grad_input_case(shape, dtype, seed=0):
    N, C, H, W, K, stride, pad = shape
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, C, 4, 4)).astype(dtype)
    S = _spec.ShapeDtype
    g = _spec.conv2d(S((N, C, H, W), dtype), S(w.shape, dtype), None, stride, pad, 1, 1)
    dy = rng.standard_normal(g.output_shape).astype(dtype)
    return dy, w, g


def grad_input(dy, w, g, **kw):
    from pyconv import _C
    dx = np.empty(g.input_shape, dy.dtype)
    _C.conv2d_grad_input(dy, w, dx, g, **kw)
    return dx


@pytest.mark.parametrize("shape", GRAD_INPUT_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepared_grad_input_filters_give_the_same_bits(isa, shape, dtype):
    from pyconv import _C
    dy, w, g = grad_input_case(shape, dtype)
    filters = _C.conv2d_grad_input_prepare(w, g)
    assert filters.kept == (shape != GRAD_INPUT_SHAPES[-1])
    expected = grad_input(dy, w, g)
    for _ in range(2):
        np.testing.assert_array_equal(grad_input(dy, w, g, filters=filters), expected)


def test_grad_input_filters_of_another_array_or_pass_are_handled():
    from pyconv import _C
    dy, w, g = grad_input_case(GRAD_INPUT_SHAPES[0], np.float32)
    filters = _C.conv2d_grad_input_prepare(w, g)
    with pytest.raises(ValueError, match="conv2d_grad_input: filters were prepared from another array than w"):
        grad_input(dy, w.copy(), g, filters=filters)
    with pytest.raises(TypeError, match="conv2d_grad_input: filters must come from conv2d_grad_input_prepare"):
        grad_input(dy, w, g, filters=object())
    # the forward's filters of the same w are not the input gradient's: recomputed, not misread
    forward = _C.conv2d_prepare(w, g)
    np.testing.assert_array_equal(grad_input(dy, w, g, filters=forward), grad_input(dy, w, g))


def test_onnx_conv_transpose_packs_constant_weights_once(monkeypatch, tmp_path):
    pytest.importorskip("onnx")
    import pyconv.onnx
    from pyconv import nn

    prepared = record_calls(monkeypatch, "conv2d_grad_input_prepare")
    pyconv.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU())
    x = np.random.default_rng(0).standard_normal((1, 64, 4, 4)).astype(np.float32)
    path = str(tmp_path / "transpose.onnx")
    pyconv.onnx.export(model, x, path)
    graph = pyconv.onnx.load(path)
    prepared.clear()  # export checked its graph by running it
    first = graph.run(None, {graph.input_names[0]: x})[0]
    assert len(prepared) == 1 and prepared[0].kept
    np.testing.assert_array_equal(graph.run(None, {graph.input_names[0]: x})[0], first)
    assert len(prepared) == 1  # not again
    np.testing.assert_allclose(first, model(x).numpy(), rtol=1e-5, atol=1e-5)
