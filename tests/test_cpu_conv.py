"""The cpu backend's convolution kernels and packed GEMM (csrc/gemm/, csrc/conv/)
against PyTorch and NumPy, on every ISA variant this CPU can run."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from pyconv import _C, ops  # noqa: E402
from pyconv._spec import ConvGeom  # noqa: E402

ISAS = [isa for isa in ("generic", "avx2", "avx512")
        if ("generic", "avx2", "avx512").index(isa) <= ("generic", "avx2", "avx512").index(_C.best_isa())]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test with the kernels of one ISA variant, then restores the best one."""
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa(_C.best_isa())


def close(actual, expected, dtype):
    """Compares relative to the largest magnitude, as a sum of many products warrants."""
    expected = expected.detach().numpy() if hasattr(expected, "detach") else expected
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    tol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1),             # one element
    (2, 3, 9, 11, 5, 3, 3, 1, 1, 1, 1),             # odd sizes
    (2, 4, 10, 10, 6, 3, 3, 2, 1, 1, 1),            # stride 2
    (3, 6, 13, 7, 4, 2, 5, (2, 3), (1, 2), (2, 1), 2),  # everything asymmetric, 2 groups
    (2, 8, 12, 12, 8, 3, 3, 1, 1, 1, 8),            # depthwise (direct kernel)
    (2, 8, 12, 12, 16, 3, 3, 2, 1, 2, 8),           # depthwise x2, strided, dilated
    (2, 12, 9, 9, 12, 3, 3, 1, 0, 1, 4),            # grouped, 3 channels per group (direct)
    (2, 7, 17, 19, 13, 5, 3, 3, 2, 2, 1),           # primes, stride 3, dilation 2
    (2, 5, 6, 6, 7, 1, 1, 1, 0, 1, 1),              # 1x1
    (3, 16, 7, 7, 16, 1, 1, 1, 0, 1, 2),            # 1x1, full tiles stored in place across images
    (2, 8, 9, 9, 16, 1, 1, 2, 0, 1, 1),             # 1x1 strided
    (1, 3, 31, 37, 70, 3, 3, 1, 1, 1, 1),           # K > one MR panel, pixels > NR, ragged
    (2, 20, 9, 9, 9, 3, 3, 1, 1, 1, 1),             # reduction 180 taps, ragged
    (1, 40, 5, 7, 3, 3, 3, 1, 1, 1, 1),             # reduction 360 taps > one KC block
    (3, 64, 14, 14, 1, 4, 4, 2, 1, 1, 1),           # one input channel to the transpose side
    (2, 3, 5, 5, 4, 5, 5, 1, 4, 1, 1),              # padding as large as the kernel
    (2, 48, 9, 8, 16, 3, 2, 1, (2, 0), (1, 2), 1),  # grad_x as a forward conv (C >= 32)
    (1, 64, 6, 7, 16, 3, 3, 1, 1, 1, 2),            # ... per group
    (1, 40, 6, 6, 8, 2, 2, 1, 2, 1, 1),             # ... padding beyond the kernel: col2im
    # Vectorised over output channels (>= 64 per group, kernels larger than 1x1):
    (2, 9, 7, 6, 64, 3, 3, 2, 1, 2, 1),             # one full channel panel, strided, dilated
    (2, 6, 5, 5, 130, 2, 2, 1, 1, 1, 2),            # 65 per group: a ragged last panel
    (1, 70, 9, 8, 64, 3, 3, 1, 1, 1, 1),            # 630 taps: several reduction blocks; grad_x too
    (2, 5, 10, 9, 64, 3, 2, (2, 1), 0, 1, 1),       # no padding: x is read in place
    (2, 66, 9, 8, 8, 3, 3, 2, 1, 1, 1),             # strided grad_x over 66 channels, channels-last
]


def torch_conv(x, w, b, stride, padding, dilation, groups, gy):
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    ty.backward(torch.tensor(gy))
    return ty, tx.grad, tw.grad, tb.grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_forward_and_gradients(isa, case, dtype):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = rand(rng, (N, C, H, W), dtype), rand(rng, (K, C // groups, R, S), dtype), rand(rng, (K,), dtype)
    y = ops.conv2d(x, w, b, stride, padding, dilation, groups, backend="cpu")
    gy = rand(rng, y.shape, dtype)
    ty, tgx, tgw, tgb = torch_conv(x, w, b, stride, padding, dilation, groups, gy)
    close(y, ty, dtype)
    gx, gw, gb = ops.conv2d_backward(gy, x, w, stride, padding, dilation, groups, backend="cpu")
    close(gx, tgx, dtype)
    close(gw, tgw, dtype)
    close(gb, tgb, dtype)


# (N, Cin, H, W, Cout, R, S, stride, padding, output_padding, groups, dilation)
TRANSPOSE_CASES = [
    (2, 6, 5, 5, 4, 4, 4, 2, 1, 0, 1, 1),           # DCGAN-like
    (2, 8, 7, 7, 1, 4, 4, 2, 1, 0, 1, 1),           # one output channel
    (2, 4, 5, 6, 6, 3, 3, 2, 1, 1, 2, 1),           # output_padding, groups
    (1, 3, 4, 5, 2, 3, 2, (3, 2), (1, 0), (2, 1), 1, (1, 2)),  # stride 3, dilation, asymmetric
    (2, 6, 5, 5, 6, 3, 3, 2, 0, 1, 6, 2),           # depthwise transpose, output_padding < dilation
    (1, 5, 3, 3, 3, 5, 5, 1, 2, 0, 1, 1),           # stride 1
    (2, 3, 4, 4, 5, 2, 2, 3, 0, 2, 1, 1),           # stride > kernel: phases without taps
    # 64+ output channels: grad_x vectorised over channels, accumulated channels-last
    (2, 5, 7, 7, 64, 4, 4, 2, 1, 0, 1, 1),          # DCGAN generator layer
    (3, 7, 4, 5, 70, 3, 3, 2, 1, 1, 1, 2),          # a ragged channel panel, output_padding, dilation
    (2, 130, 3, 3, 65, 4, 4, (2, 3), 2, 0, 1, 1),   # 130 input channels: two reduction blocks
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose2d_forward_and_gradients(isa, case, dtype):
    N, Cin, H, W, Cout, R, S, stride, padding, out_pad, groups, dilation = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x = rand(rng, (N, Cin, H, W), dtype)
    w = rand(rng, (Cin, Cout // groups, R, S), dtype)
    b = rand(rng, (Cout,), dtype)
    y = ops.conv_transpose2d(x, w, b, stride, padding, out_pad, groups, dilation, backend="cpu")
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv_transpose2d(tx, tw, tb, stride, padding, out_pad, groups, dilation)
    close(y, ty, dtype)
    gy = rand(rng, y.shape, dtype)
    ty.backward(torch.tensor(gy))
    gx, gw, gb = ops.conv_transpose2d_backward(gy, x, w, stride, padding, out_pad, groups, dilation,
                                               backend="cpu")
    close(gx, tx.grad, dtype)
    close(gw, tw.grad, dtype)
    close(gb, tb.grad, dtype)


def test_conv1d_and_same_padding(isa):
    rng = np.random.default_rng(1)
    x, w = rand(rng, (3, 4, 23), np.float64), rand(rng, (6, 2, 4), np.float64)
    y = ops.conv1d(x, w, None, 1, "same", 2, 2, backend="cpu")
    close(y, F.conv1d(torch.tensor(x), torch.tensor(w), None, 1, "same", 2, 2), np.float64)


def test_non_contiguous_inputs():
    rng = np.random.default_rng(2)
    base = rand(rng, (4, 6, 20, 18), np.float32)
    x = base[::2, :, ::2, 1::3].transpose(0, 1, 3, 2)  # strided and transposed view
    w = rand(rng, (5, 6, 3, 3), np.float32)[:, :, ::-1, :]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y = ops.conv2d(x, w, None, 1, 1, backend="cpu")
    close(y, F.conv2d(torch.tensor(np.ascontiguousarray(x)), torch.tensor(w.copy()), None, 1, 1), np.float32)
    gy = rand(rng, (y.shape[0], y.shape[1], y.shape[3], y.shape[2]), np.float32).transpose(0, 1, 3, 2)
    gx, gw, _ = ops.conv2d_backward(gy, x, w, 1, 1, backend="cpu")
    _, tgx, tgw, _ = torch_conv(np.ascontiguousarray(x), w.copy(), np.zeros(5, np.float32), 1, 1, 1, 1,
                                np.ascontiguousarray(gy))
    close(gx, tgx, np.float32)
    close(gw, tgw, np.float32)


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
