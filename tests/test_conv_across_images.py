"""The cpu backend's channel-vectorised forward with tiles across images, which skips the taps
on padding (csrc/conv/by_channels.h, conv2d_forward_by_channels_across_images): the rule that
routes strided, padded layers on small images to it, its edges against the reference backend
on every ISA variant this CPU runs (float32 and float64; batches that do and do not fill the
last tile of images, output channels on either side of a panel, windows wholly on padding,
dilation, unequal strides and padding, taps in several reduction blocks) and thread counts. With
algorithm="gemm": "auto" runs 4x4 stride-2 layers such as the DCGAN's through Winograd
(tests/test_winograd_stride2.py)."""
import numpy as np
import pytest

import pyconv
from pyconv import _C, _spec, ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

TOL = {np.float32: 2e-5, np.float64: 1e-12}
ACROSS = "gemm (by channels, across images)"


def algorithm_of(x_shape, w_shape, stride, padding, dilation=1, dtype=np.float32):
    g = _spec.conv2d(_spec.ShapeDtype(x_shape, dtype), _spec.ShapeDtype(w_shape, dtype), None, stride,
                     padding, dilation, 1, algorithm="gemm")
    return _C.conv2d_algorithm(g, np.dtype(dtype))


# (x shape, w shape, stride, padding, dilation)
CASES = {
    # The DCGAN discriminator's second layer, a smaller batch of two whole tiles of images.
    "dcgan_d2": ((12, 64, 14, 14), (128, 64, 4, 4), 2, 1, 1),
    # 7 images (a last tile of one), 70 output channels (a panel and a ragged one), 144 taps.
    "ragged_batch_and_channels": ((7, 16, 5, 5), (70, 16, 3, 3), 2, 2, 1),
    # Windows wholly on padding (output row and column 0 and 2) give zeros.
    "windows_on_padding": ((5, 32, 2, 2), (20, 32, 2, 2), 2, 2, 1),
    "dilated_unequal": ((12, 20, 10, 9), (33, 20, 3, 3), (2, 3), (2, 1), (2, 1)),
    "no_bias": ((12, 40, 6, 6), (24, 40, 4, 4), 2, 1, 1),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_reference(case, dtype, isa):
    x_shape, w_shape, stride, padding, dilation = CASES[case]
    assert algorithm_of(x_shape, w_shape, stride, padding, dilation, dtype) == ACROSS
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if case != "no_bias" else None
    y = ops.conv2d(x, w, b, stride, padding, dilation, algorithm="gemm", backend="cpu")
    ref = ops.conv2d(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                     stride, padding, dilation, backend="reference")
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[dtype] * scale)


def test_the_same_bytes_on_any_thread_count():
    x_shape, w_shape, stride, padding, dilation = CASES["ragged_batch_and_channels"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    before = pyconv.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            outs.append(ops.conv2d(x, w, None, stride, padding, dilation, algorithm="gemm", backend="cpu"))
    finally:
        pyconv.set_num_threads(before)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((16, 16, 32, 32), (32, 16, 3, 3), 2, 1),  # large images: little padding
    ((8, 64, 14, 14), (128, 64, 4, 4), 2, 1),  # 8 images: the last tile of 6 mostly repeats
    ((12, 64, 14, 14), (128, 64, 4, 4), 1, 1),  # stride 1
    ((12, 64, 14, 14), (128, 64, 4, 4), 2, 0),  # no padding
])
def test_the_rule_leaves_the_rest(x_shape, w_shape, stride, padding):
    assert algorithm_of(x_shape, w_shape, stride, padding) != ACROSS
