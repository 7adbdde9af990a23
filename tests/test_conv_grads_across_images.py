"""The cpu backend's input and weight gradients with tiles across images, which skip the taps
on padding (csrc/conv/by_channels.h, conv2d_grad_input_across_images and
conv2d_grad_weight_across_images; rules grad_input_across_images_pays and
grad_weight_across_images_pays in csrc/conv/dispatch.h): against the reference backend on every
ISA variant this CPU runs, float32 and float64, with batches that do and do not fill the last
tile of images, input and output channels on either side of a 64-channel panel and half a
panel, windows wholly
on padding, dilation, unequal strides and padding, several reduction blocks, and on any thread
count. The gradients' rules add channel counts (and, for the weight gradient, the waste of its
channel tiles) to the forward's (forward_across_images_pays), so each case checks that its
forward goes across images and that its channels qualify; a bug planted in either kernel
fails these cases (no routing name is exposed for the gradients). With algorithm="gemm": "auto"
runs 4x4 stride-2 layers such as the DCGAN's through Winograd (tests/test_winograd_stride2.py)."""
import numpy as np
import pytest

import pyconv
from pyconv import _C, _spec, ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

TOL = {np.float32: 3e-5, np.float64: 1e-12}
ACROSS = "gemm (by channels, across images)"

# (x shape, w shape, stride, padding, dilation)
CASES = {
    # The DCGAN discriminator's second layer (and, transposed, the generator's last but one).
    "dcgan_d2": ((12, 64, 14, 14), (128, 64, 4, 4), 2, 1, 1),
    # 7 images (a last tile of one), 70 input channels (12 channel tiles, the last of 4; a
    # panel and a ragged one), 72 output channels (a ragged panel).
    "ragged_batch_and_channels": ((7, 70, 5, 5), (72, 70, 3, 3), 2, 2, 1),
    # Output row and column 0 and 2 see only padding; grad_x pixels no tap reaches.
    "windows_on_padding": ((5, 64, 2, 2), (64, 64, 2, 2), 2, 2, 1),
    "dilated_unequal": ((12, 64, 10, 9), (64, 64, 3, 3), (2, 3), (2, 1), (2, 1)),
    # 200 output channels: the input gradient's reduction in two blocks of K.
    "many_output_channels": ((12, 64, 8, 8), (200, 64, 3, 3), 2, 1, 1),
    # 32 input channels: half a panel (the input gradient), 6 channel tiles, the last of 2.
    "half_panel": ((12, 32, 8, 8), (64, 32, 4, 4), 2, 1, 1),
    # 130 output columns: a weight-gradient row of pixels in two blocks.
    "wide_rows": ((12, 64, 3, 260), (64, 64, 3, 3), 2, 1, 1),
}


def forward_algorithm(x_shape, w_shape, stride, padding, dilation, dtype=np.float32):
    g = _spec.conv2d(_spec.ShapeDtype(x_shape, dtype), _spec.ShapeDtype(w_shape, dtype), None, stride,
                     padding, dilation, 1, algorithm="gemm")
    return _C.conv2d_algorithm(g, np.dtype(dtype))


def gradients(case, dtype, backend):
    x_shape, w_shape, stride, padding, dilation = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    y = ops.conv2d(x, w, None, stride, padding, dilation, backend="reference")
    dy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, _ = ops.conv2d_backward(dy, x, w, stride, padding, dilation, needs=(True, True, False),
                                    algorithm="gemm" if backend == "cpu" else "auto", backend=backend)
    return gx, gw


@pytest.mark.parametrize("grad", ["x", "w"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_reference(case, dtype, grad, isa):
    x_shape, w_shape, stride, padding, dilation = CASES[case]
    assert forward_algorithm(x_shape, w_shape, stride, padding, dilation, dtype) == ACROSS
    assert x_shape[1] >= 32 and w_shape[0] >= 64 and x_shape[1] * w_shape[2] * w_shape[3] >= 128
    got = gradients(case, dtype, "cpu")[grad == "w"]
    # The same draws (rounded to dtype), the reference computed in float64.
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype).astype(np.float64)
    w = rng.standard_normal(w_shape).astype(dtype).astype(np.float64)
    y = ops.conv2d(x, w, None, stride, padding, dilation, backend="reference")
    dy = rng.standard_normal(y.shape).astype(dtype).astype(np.float64)
    ref = ops.conv2d_backward(dy, x, w, stride, padding, dilation, needs=(True, True, False),
                              backend="reference")[grad == "w"]
    assert got.dtype == dtype
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOL[dtype] * scale)


@pytest.mark.parametrize("case", ["ragged_batch_and_channels", "dcgan_d2"])
def test_the_same_bytes_on_any_thread_count(case):
    before = pyconv.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            outs.append(gradients(case, np.float32, "cpu"))
    finally:
        pyconv.set_num_threads(before)
    for gx, gw in outs[1:]:
        assert np.array_equal(outs[0][0], gx) and np.array_equal(outs[0][1], gw)
