"""The cpu backend's input gradient by whole column blocks (csrc/conv/col2im.h,
conv2d_grad_input_col_rows: stride 1, no dilation, one group, AVX-512): grad_x against the
reference backend in float32 and float64 — padding on either side, rows wider than a vector,
kernels wider than the output, blocks of several images and a last partial block — and the
same bits on any thread count."""
import numpy as np
import pytest

import pyconv
from pyconv import _C, ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

TOL = {np.float32: 2e-5, np.float64: 1e-12}

# (x shape, w shape, padding): small (c, r, s) x (ho, wo) blocks, so several images per block.
CASES = {
    "lenet_conv2": ((5, 6, 14, 14), (16, 6, 5, 5), 0),
    "padding_1": ((3, 4, 9, 11), (8, 4, 3, 3), 1),
    "padding_2_1": ((3, 3, 8, 13), (5, 3, 5, 3), (2, 1)),
    "rows_wider_than_a_vector": ((2, 2, 6, 37), (3, 2, 3, 4), (1, 2)),
    "kernel_wider_than_output": ((2, 2, 5, 6), (4, 2, 5, 6), 0),
    "one_channel_out": ((7, 3, 10, 10), (1, 3, 3, 3), 1),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_grad_input_against_reference(case, dtype):
    x_shape, w_shape, padding = CASES[case]
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    y = ops.conv2d(x, w, None, 1, padding, backend="reference")
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, _, _ = ops.conv2d_backward(gy, x, w, 1, padding, needs=(True, False, False), backend="cpu")
    ref, _, _ = ops.conv2d_backward(gy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), 1,
                                    padding, needs=(True, False, False), backend="reference")
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(gx, ref, rtol=0, atol=TOL[dtype] * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_counts_give_the_same_bits(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 6, 14, 14)).astype(dtype)
    w = rng.standard_normal((16, 6, 5, 5)).astype(dtype)
    gy = rng.standard_normal((37, 16, 10, 10)).astype(dtype)
    before = pyconv.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            results.append(ops.conv2d_backward(gy, x, w, 1, 0, needs=(True, False, False), backend="cpu")[0])
    finally:
        pyconv.set_num_threads(before)
    for gx in results[1:]:
        np.testing.assert_array_equal(gx, results[0])
