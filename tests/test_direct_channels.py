"""The cpu backend's direct forward vectorised over 16 output channels (csrc/conv/direct_channels.h,
AVX-512 only): its edges against the reference backend in float32 and float64 — blocks of
columns and rows that overlap the block before them, one-column outputs, fewer pixels than a
vector, strided rows, dilation, no bias — the rule that routes layers to it, and thread counts."""
import numpy as np
import pytest

import pyconv
from pyconv import _C, _spec, ops

pytestmark = [
    pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built"),
    pytest.mark.skipif("cpu" in pyconv.backends() and _C.best_isa() != "avx512",
                       reason="the direct forward by channels is built for AVX-512 only"),
]

BY_CHANNELS = "direct (by channels)"
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def algorithm_of(x_shape, w_shape, dtype=np.float32, stride=1, padding=0, dilation=1):
    g = _spec.conv2d(_spec.ShapeDtype(x_shape, dtype), _spec.ShapeDtype(w_shape, dtype), None, stride,
                     padding, dilation, 1)
    return _C.conv2d_algorithm(g, np.dtype(dtype))


def data(x_shape, w_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype),
            rng.standard_normal(w_shape[0]).astype(dtype))


# (x shape, w shape, stride, dilation): 16 output channels, no padding, 48+ taps, at most 256
# output pixels. Columns in blocks of at most 12 (Wo = 13: two blocks of 7 starting at 0 and 6;
# Wo = 25: blocks of 9 at 0, 9 and 16), rows in blocks of 24 / (columns x vectors per pixel)
# capped at 4, the last block of each starting early enough to end at the image's edge.
EDGES = {
    "lenet_conv2_10x10": ((3, 6, 14, 14), (16, 6, 5, 5), 1, 1),
    "width13_overlapping_columns": ((2, 6, 9, 15), (16, 6, 3, 3), 1, 1),
    "width25_three_column_blocks": ((2, 6, 6, 27), (16, 6, 3, 3), 1, 1),
    "width12_one_block": ((2, 6, 11, 14), (16, 6, 3, 3), 1, 1),
    "width1_rows_of_4": ((2, 16, 9, 3), (16, 16, 3, 3), 1, 1),
    "12_pixels_below_a_vector": ((1, 6, 6, 5), (16, 6, 3, 3), 1, 1),
    "strided_rows": ((2, 6, 15, 12), (16, 6, 3, 3), (2, 1), 1),
    "dilation_2": ((2, 6, 15, 12), (16, 6, 3, 3), 1, 2),
    "dilation_2_1_non_square": ((2, 4, 14, 11), (16, 4, 3, 5), 1, (2, 1)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", EDGES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_edges_against_reference(case, dtype, bias):
    x_shape, w_shape, stride, dilation = EDGES[case]
    x, w, b = data(x_shape, w_shape, dtype, seed=len(case))
    b = b if bias else None
    assert algorithm_of(x_shape, w_shape, dtype, stride, 0, dilation) == BY_CHANNELS
    y = ops.conv2d(x, w, b, stride, 0, dilation, backend="cpu")
    ref = ops.conv2d(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                     stride, 0, dilation, backend="reference")
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[dtype] * scale)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((64, 6, 14, 14), (16, 6, 5, 5), 1, 0),      # LeNet's conv2
    ((64, 2, 14, 14), (16, 2, 5, 5), 1, 0),      # 50 taps
    ((64, 8, 12, 12), (16, 8, 3, 3), 1, 0),      # 72 taps on 10x10 outputs (from 16 columns: Winograd)
])
def test_the_rule_routes_here(x_shape, w_shape, stride, padding):
    assert algorithm_of(x_shape, w_shape, stride=stride, padding=padding) == BY_CHANNELS


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((64, 6, 14, 14), (16, 6, 5, 5), 1, 1),      # padding
    ((64, 6, 14, 14), (16, 6, 5, 5), (1, 2), 0),  # stride along rows
    ((64, 6, 14, 14), (15, 6, 5, 5), 1, 0),      # not 16 output channels
    ((64, 6, 14, 14), (32, 6, 5, 5), 1, 0),
    ((64, 1, 16, 16), (16, 1, 5, 5), 1, 0),      # 25 taps
    ((64, 1, 32, 32), (16, 1, 5, 5), 1, 0),      # 784 output pixels
    ((8, 6, 7, 14), (16, 6, 5, 5), 1, 0),        # 3 output rows: fewer than the largest block
])
def test_the_rule_leaves_the_rest(x_shape, w_shape, stride, padding):
    assert algorithm_of(x_shape, w_shape, stride=stride, padding=padding) != BY_CHANNELS


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [2, 40])  # below and above the one-thread floor (2^20 multiply-adds)
def test_thread_counts_give_the_same_bits(dtype, batch):
    x, w, b = data((batch, 6, 14, 14), (16, 6, 5, 5), dtype)
    before = pyconv.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            results.append(ops.conv2d(x, w, b, 1, 0, backend="cpu"))
    finally:
        pyconv.set_num_threads(before)
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])
