"""What is specific to the cpu backend's convolution: its packed GEMM against NumPy on every
ISA variant, thread counts, and the bindings' own buffer checks. (Every convolution path's
results are checked against the reference, under every ISA, in test_conformance.py.)"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from pyconv import _C, ops  # noqa: E402
from pyconv import _spec  # noqa: E402
from pyconv._spec import ConvGeom  # noqa: E402

TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


def close(actual, expected, dtype):
    """Compares relative to the largest magnitude, as a sum of many products warrants."""
    expected = expected.detach().numpy() if hasattr(expected, "detach") else expected
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    tol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def torch_conv(x, w, b, stride, padding, dilation, groups, gy):
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    ty.backward(torch.tensor(gy))
    return ty, tx.grad, tw.grad, tb.grad


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_agree(threads):
    """Every split of the work (split-K weight gradient included) gives the same numbers."""
    rng = np.random.default_rng(3)
    x, w = rand(rng, (4, 16, 24, 24), np.float64), rand(rng, (8, 16, 3, 3), np.float64)
    gy = rand(rng, (4, 8, 24, 24), np.float64)
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(threads)
        got = ops.conv2d_backward(gy, x, w, 1, 1, backend="cpu")
    finally:
        _C.set_num_threads(before)
    expected = torch_conv(x, w, np.zeros(8), 1, 1, 1, 1, gy)[1:]
    for a, e in zip(got, expected):
        close(a, e, np.float64)


# Weight gradients along output pixels (conv/weight_grad_rows.h: stride 1, at most 32
# channels per group or 64 outputs from fewer inputs, images of 256+ pixels, 16+ blocks of
# rows): partial tiles of output channels and taps, a partial last vector per block (odd
# widths), blocks of unequal height (37 rows in two), dilation and uneven padding, groups.
# Strided, with up to 32 taps and 64
# output channels (first layers): row phases and column shifts of x copied per block, stride
# on one axis only, stride 3 (three row phases), dilation with stride (a row phase unread),
# output rows whose taps reach past the input.
ROWS_CASES = [
    ((16, 16, 32, 32), (16, 16, 3, 3), dict(padding=1)),
    ((8, 16, 37, 37), (16, 16, 3, 3), dict(padding=1)),
    ((16, 1, 20, 23), (6, 1, 5, 5), dict(padding=2)),
    ((16, 3, 20, 21), (64, 3, 3, 3), dict(padding=1)),
    ((16, 1, 17, 18), (40, 1, 2, 5), dict(padding=(0, 2))),
    ((16, 24, 24, 25), (48, 24, 1, 3), dict(padding=(0, 1))),
    ((16, 5, 20, 19), (7, 5, 3, 2), dict(padding=(1, 0), dilation=2)),
    ((17, 12, 18, 17), (10, 6, 3, 3), dict(padding=(2, 1), groups=2)),
    ((16, 1, 28, 28), (64, 1, 4, 4), dict(stride=2, padding=1)),
    ((16, 1, 17, 19), (20, 1, 4, 4), dict(stride=2, padding=1)),
    ((16, 2, 15, 13), (33, 2, 3, 3), dict(stride=(2, 1), padding=1)),
    ((16, 1, 19, 20), (9, 1, 5, 3), dict(stride=(1, 3), padding=(2, 2))),
    ((16, 1, 26, 25), (17, 1, 5, 5), dict(stride=3, padding=2)),
    ((16, 1, 21, 22), (8, 1, 3, 3), dict(stride=2, padding=2, dilation=2)),
    ((18, 4, 20, 18), (40, 2, 4, 4), dict(stride=2, padding=(1, 3), groups=2)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ROWS_CASES, ids=str)
def test_weight_grad_along_pixels_matches_torch(isa, case, dtype):
    xs, ws, params = case
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    gy = rand(rng, ops.conv2d(x, w, **params, backend="reference").shape, dtype)
    stride, padding, dilation = params.get("stride", 1), params.get("padding", 0), params.get("dilation", 1)
    grad_w = ops.conv2d_backward(gy, x, w, stride, padding, dilation, params.get("groups", 1),
                                 needs=(False, True, False), backend="cpu")[1]
    expected = torch_conv(x, w, np.zeros(ws[0], dtype), stride, padding, dilation, params.get("groups", 1), gy)[2]
    close(grad_w, expected, dtype)


# Strided first and second layers (DCGAN discriminator, VAE encoder), whose passes the rules
# send to the direct forward on the phase grid, the weight gradient on the phase grid (under 64
# output channels and 64 taps) and the channels-last input gradient (32+ input channels):
# odd sizes, a stride of 2 on one axis only, channel counts on either side of a vector.
STRIDED_CASES = [
    ((4, 1, 32, 32), (32, 1, 4, 4), dict(stride=2, padding=1)),
    ((3, 3, 17, 15), (24, 3, 3, 3), dict(stride=2, padding=1)),
    ((5, 1, 14, 14), (32, 1, 3, 3), dict(stride=1, padding=1)),
    ((4, 32, 16, 16), (64, 32, 4, 4), dict(stride=2, padding=1)),
    ((3, 48, 9, 11), (40, 48, 4, 4), dict(stride=(2, 1), padding=1)),
    # 2304 pixels: the channel-vectorised weight gradient's reduction in two chunks.
    ((16, 32, 24, 24), (64, 32, 4, 4), dict(stride=2, padding=1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", STRIDED_CASES, ids=str)
def test_strided_small_layers_match_torch(isa, case, dtype):
    xs, ws, params = case
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, ws[:1], dtype)
    y = ops.conv2d(x, w, b, **params, backend="cpu")
    gy = rand(rng, y.shape, dtype)
    grad_x, grad_w, _ = ops.conv2d_backward(gy, x, w, params["stride"], params["padding"], backend="cpu")
    expected = torch_conv(x, w, b, params["stride"], params["padding"], 1, 1, gy)
    for actual, want in zip((y, grad_x, grad_w), expected[:3]):
        close(actual, want, dtype)


# Small images with many channels, every pass on the channel-vectorised forms
# (conv/by_channels.h): the forward's tiles span images within a group of images (groups of
# unequal size: 23 images of 7x7 in groups of 6, the last of 5), the input gradient packs the
# flipped weights straight from w (70 input channels: a partial panel), the weight gradient's
# register transposes of dw (630 taps, 65 output channels: partial blocks), x read in place
# without padding, groups; on 1 and 3 threads.
FEW_PIXELS_CASES = [
    ((5, 70, 7, 7), (65, 70, 3, 3), dict(padding=1)),
    ((23, 64, 7, 7), (64, 64, 3, 3), dict(padding=1)),
    ((9, 96, 5, 5), (128, 96, 3, 3), dict(padding=0)),
    ((3, 128, 6, 6), (192, 64, 3, 3), dict(padding=1, groups=2)),
]


# The channel-vectorised forward on strided layers (conv/by_channels.h): images in groups of
# equal size where a divisor of N allows (16 images of 8x8 outputs as 4 groups of 4; 9 as 3 of
# 3; 7, prime, as 6 and 1), runs of pixels cut at image ends and block ends (blocks of 90
# pixels of 16x16 outputs; 7x7, 9x9, 15x15 outputs) and stored with masks, output channels
# past the last whole vector (20, 40, 70: the scalar tail and partial panels), padding 0-2, odd
# sizes, groups; the same bits on 1, 2 and 3 threads.
STRIDED_BY_CHANNELS_CASES = [
    ((16, 32, 16, 16), (64, 32, 3, 3), dict(stride=2, padding=1)),
    ((9, 32, 16, 16), (40, 32, 3, 3), dict(stride=2, padding=1)),
    ((7, 16, 15, 15), (20, 16, 3, 3), dict(stride=2, padding=0)),
    ((3, 16, 32, 32), (32, 16, 3, 3), dict(stride=2, padding=1)),
    ((2, 24, 19, 17), (70, 24, 3, 3), dict(stride=2, padding=2)),
    ((4, 32, 17, 17), (64, 16, 3, 3), dict(stride=2, padding=1, groups=2)),
    ((5, 16, 31, 29), (48, 16, 3, 3), dict(stride=(2, 3), padding=(1, 2))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", STRIDED_BY_CHANNELS_CASES, ids=str)
def test_strided_forward_by_channels_matches_torch(isa, case, dtype):
    xs, ws, params = case
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, ws[:1], dtype)
    groups = params.get("groups", 1)
    g = _spec.conv2d(x, w, b, params["stride"], params["padding"], 1, groups)
    # (With the generic ISA's 4-image tiles 16 images leave no tile part empty, and 16x32x16x16
    # goes across images.)
    assert _C.conv2d_algorithm(g, np.dtype(dtype)).startswith("gemm (by channels")
    results = []
    before = _C.get_num_threads()
    try:
        for threads in (1, 2, 3):
            _C.set_num_threads(threads)
            results.append(ops.conv2d(x, w, b, params["stride"], params["padding"], 1, groups, backend="cpu"))
    finally:
        _C.set_num_threads(before)
    close(results[0], F.conv2d(*map(torch.tensor, (x, w, b)), params["stride"], params["padding"], 1, groups), dtype)
    for y in results[1:]:
        np.testing.assert_array_equal(y.view(np.uint8), results[0].view(np.uint8))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FEW_PIXELS_CASES, ids=str)
def test_few_pixels_many_channels_match_torch(isa, case, dtype, threads):
    xs, ws, params = case
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, ws[:1], dtype)
    groups = params.get("groups", 1)
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(threads)
        y = ops.conv2d(x, w, b, 1, params["padding"], 1, groups, backend="cpu")
        gy = rand(rng, y.shape, dtype)
        grad_x, grad_w, _ = ops.conv2d_backward(gy, x, w, 1, params["padding"], 1, groups, backend="cpu")
    finally:
        _C.set_num_threads(before)
    expected = torch_conv(x, w, b, 1, params["padding"], 1, groups, gy)
    for actual, want in zip((y, grad_x, grad_w), expected[:3]):
        close(actual, want, dtype)


# ---------------------------------------------------------------------------------------------
# GEMM against NumPy: sizes that are primes, 1, or just off the block sizes (MR, NR, KC, MC, NC).

GEMM_SIZES = [(1, 1, 1), (2, 3, 5), (7, 13, 11), (6, 64, 256), (8, 48, 256), (9, 49, 257),
              (97, 131, 67), (5, 1, 300), (1, 70, 3), (103, 1601, 257), (193, 65, 513)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mnk", GEMM_SIZES, ids=str)
def test_gemm_matches_numpy(isa, mnk, dtype):
    M, N, K = mnk
    rng = np.random.default_rng(M * 10007 + N * 101 + K)
    a, b = rand(rng, (M, K), dtype), rand(rng, (K, N), dtype)
    c = np.full((M, N), np.nan, dtype)
    _C.gemm(a, b, c)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    close(c, ref, dtype)
    c0 = rand(rng, (M, N), dtype)
    c = c0.copy()
    _C.gemm(a, b, c, accumulate=True)
    close(c, ref + c0, dtype)


def test_bindings_reject_bad_buffers():
    g = ConvGeom(N=1, C=2, H=5, W=5, K=3, R=3, S=3, Ho=3, Wo=3, sh=1, sw=1, ph=0, pw=0, dh=1, dw=1,
                 groups=1)
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        _C.conv2d(x, w, None, np.zeros((1, 3, 3, 4), np.float32), g)
    with pytest.raises(TypeError, match="dtype"):
        _C.conv2d(x, w.astype(np.float64), None, np.zeros((1, 3, 3, 3), np.float32), g)
    with pytest.raises(ValueError, match="contiguous"):
        _C.conv2d(x, w, None, np.zeros((1, 3, 3, 6), np.float32)[..., ::2], g)
    with pytest.raises(ValueError, match="groups"):
        _C.conv2d(x, w, None, np.zeros((1, 3, 3, 3), np.float32), g._replace(groups=2))
    with pytest.raises(TypeError, match="ConvGeom"):  # the geometry is read by field name
        _C.conv2d(x, w, None, np.zeros((1, 3, 3, 3), np.float32), tuple(g))
    with pytest.raises(ValueError, match="shape"):
        _C.gemm(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32), np.zeros((2, 2), np.float32))


# (x shape, w shape, stride, padding, algorithm): Winograd, whose output transform applies the
# epilogue as it stores (the block layout, with tiles cut at the image's edges, and the
# by-position layout, and over a larger kernel's 3x3 blocks), the forward by channels, which
# applies it as it stores its transposed tiles (whole and masked runs of pixels, output
# channels past the last whole vector: 20), the direct forward on the phase grid or column
# copies, which clamps its registers as it stores them where relu comes alone (masked stores of
# rows cut by the grid's dropped columns, stride 2, three-vector tiles), and forwards that apply
# it in a pass afterwards (subsampled 1x1; the direct forward's residual).
EPILOGUE_CASES = [
    ((2, 32, 13, 11), (32, 32, 3, 3), 1, 1, "winograd"),
    ((16, 64, 8, 8), (64, 64, 3, 3), 1, 1, "auto"),
    ((1, 256, 6, 6), (256, 256, 3, 3), 1, 1, "winograd"),
    ((2, 16, 15, 15), (32, 16, 3, 3), 2, 1, "auto"),
    ((3, 16, 13, 13), (20, 16, 3, 3), 2, 1, "auto"),
    ((2, 16, 16, 16), (32, 16, 1, 1), 2, 0, "auto"),
    ((2, 3, 9, 9), (6, 3, 5, 5), 1, 2, "auto"),
    ((3, 32, 28, 28), (32, 32, 5, 5), 1, 2, "auto"),  # Winograd over the kernel's 3x3 blocks
    ((1, 1, 32, 32), (6, 1, 5, 5), 1, 0, "direct"),  # LeNet-5's conv1 at batch 1
    ((2, 1, 28, 28), (12, 1, 5, 5), 2, 2, "direct"),
    ((1, 1, 28, 28), (64, 1, 4, 4), 2, 1, "direct"),  # column copies
    ((2, 3, 11, 13), (40, 3, 3, 3), 1, 1, "direct"),  # tiles of 3 vectors
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", EPILOGUE_CASES, ids=str)
def test_forward_epilogue_is_the_separate_passes_bit_for_bit(isa, case, dtype):
    """conv2d(..., residual, relu): the convolution, + residual, then relu's rules (-0 and NaN
    kept), the same bits as the add_relu / relu kernels run over the output afterwards."""
    x_shape, w_shape, stride, padding, algorithm = case
    rng = np.random.default_rng(7)
    x, w, b = rand(rng, x_shape, dtype), rand(rng, w_shape, dtype), rand(rng, w_shape[:1], dtype)
    g = _spec.conv2d(x, w, b, stride, padding, 1, 1, algorithm=algorithm)
    y = np.empty(g.output_shape, dtype)
    _C.conv2d(x, w, b, y, g)
    r = rand(rng, y.shape, dtype)
    r.flat[::7] = -y.flat[::7]  # sums of exactly zero (+0)
    r.flat[3] = np.nan
    for residual, relu in ((r, True), (None, True), (r, False)):
        expected = np.empty_like(y)
        if residual is not None and relu:
            _C.add_relu(y, residual, expected)
        elif relu:
            _C.relu(y, expected)
        else:
            np.add(y, residual, out=expected)
        got = np.empty_like(y)
        _C.conv2d(x, w, b, got, g, residual=residual, relu=relu)
        np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))


# (x, w, stride, padding) of transposed convolutions whose planes are a vector and more (16x16),
# shorter than a vector (4x4, 5x7) or longer with a tail (13x13), one or many channels.
GRAD_INPUT_EPILOGUE_CASES = [
    ((1, 16, 1, 1), (16, 64, 4, 4), 1, 0),
    ((2, 32, 8, 8), (32, 1, 4, 4), 2, 1),
    ((2, 8, 5, 7), (8, 5, 3, 3), 1, 1),
    ((3, 12, 6, 6), (12, 20, 3, 3), 2, 0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", GRAD_INPUT_EPILOGUE_CASES, ids=str)
def test_grad_input_bias_and_relu_are_the_separate_passes_bit_for_bit(isa, case, dtype):
    """conv2d_grad_input(..., bias, relu), a transposed convolution's forward: the kernel's
    output + bias per channel, then relu's rules (-0 and NaN kept), the same bits as NumPy's add
    and the relu kernel afterwards; a bias of the wrong length is refused by name."""
    x_shape, w_shape, stride, padding = case
    rng = np.random.default_rng(11)
    x, w = rand(rng, x_shape, dtype), rand(rng, w_shape, dtype)
    g = _spec.conv_transpose2d(x, w, None, stride, padding, 0, 1, 1)
    plain = np.empty(g.input_shape, dtype)
    _C.conv2d_grad_input(x, w, plain, g)
    b = rand(rng, (g.C,), dtype)
    b[0] = np.nan
    b[-1] = -plain[0, -1].flat[0]  # an output of exactly +0
    for bias, relu in ((b, True), (None, True), (b, False)):
        expected = plain + bias.reshape(1, -1, 1, 1) if bias is not None else plain.copy()
        if relu:
            _C.relu(expected, expected)
        got = np.empty_like(plain)
        _C.conv2d_grad_input(x, w, got, g, None, bias, relu)
        np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))
    with pytest.raises(ValueError, match="bias"):
        _C.conv2d_grad_input(x, w, got, g, None, b[:-1])
