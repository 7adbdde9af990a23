"""The cpu backend's direct forward convolution on the phase grid or on column copies of x
(csrc/conv/direct_grid.h): its edges against the reference backend on every ISA variant this
CPU runs, float32 and float64 — widths on either side of the vector length, padding, strides,
dilation, groups, output-channel counts on either side of the register tile — the rules that
route small layers to it and pick the layout, what its read-ahead past an image may and may
not reach, and thread counts."""
import numpy as np
import pytest

import pyconv
from pyconv import _C, _spec, ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

TOL = {np.float32: 2e-5, np.float64: 1e-12}


def algorithm_of(x_shape, w_shape, dtype=np.float32, stride=1, padding=0, dilation=1, groups=1,
                 algorithm="auto"):
    g = _spec.conv2d(_spec.ShapeDtype(x_shape, dtype), _spec.ShapeDtype(w_shape, dtype), None, stride,
                     padding, dilation, groups, algorithm=algorithm)
    return _C.conv2d_algorithm(g, np.dtype(dtype))


def data(x_shape, w_shape, dtype, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, w, b


GRID, COLUMNS = "direct (phase grid)", "direct (column copies)"
# Layers of 16 output channels at stride 1 without padding take the direct forward by channels
# on AVX-512 (csrc/conv/direct_channels.h, tests/test_direct_channels.py).
BY_CHANNELS = "direct (by channels)" if _C.best_isa() == "avx512" else GRID


def check(x, w, b, stride=1, padding=0, dilation=1, groups=1, algorithm="direct", layout=None):
    assert algorithm_of(x.shape, w.shape, x.dtype.type, stride, padding, dilation, groups,
                        algorithm) in ((GRID, COLUMNS) if layout is None else (layout,))
    y = ops.conv2d(x, w, b, stride, padding, dilation, groups, algorithm=algorithm, backend="cpu")
    ref = ops.conv2d(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                     stride, padding, dilation, groups, backend="reference")
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[x.dtype.type] * scale)
    return y


# (x shape, w shape, stride, padding, dilation, groups): output widths below, at and past one
# and two vectors (4, 8, 16 lanes), channel counts below, at and past a register tile (6 or
# 12 channels, split into equal blocks with zero channels at the end).
EDGES = {
    "width1": ((2, 1, 5, 1), (3, 1, 3, 1), 1, (1, 0), 1, 1),
    "width7_k6_5x5_pad2": ((2, 1, 7, 7), (6, 1, 5, 5), 1, 2, 1, 1),
    "width10_lenet_conv2": ((3, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1, 1),
    "width15_k13": ((2, 3, 9, 17), (13, 3, 3, 3), 1, 0, 1, 1),
    "width16": ((1, 2, 6, 18), (7, 2, 3, 3), 1, 0, 1, 1),
    "width17_k1": ((2, 2, 6, 17), (1, 2, 1, 3), 1, (0, 1), 1, 1),
    "width33_k25": ((1, 1, 5, 35), (25, 1, 3, 3), 1, 0, 1, 1),
    "width28_k64_7x7": ((2, 1, 28, 28), (64, 1, 7, 7), 1, 3, 1, 1),
    "k70_blocks_with_zero_channels": ((2, 3, 8, 11), (70, 3, 3, 3), 1, 1, 1, 1),
    "stride2_pad1_4x4": ((3, 1, 13, 12), (64, 1, 4, 4), 2, 1, 1, 1),
    "stride_2_3_odd_input": ((2, 2, 11, 14), (5, 2, 3, 2), (2, 3), (1, 0), 1, 1),
    "dilation_2_3": ((2, 2, 12, 13), (9, 2, 3, 3), 1, 2, (2, 3), 1),
    "stride2_dilation2": ((2, 3, 15, 15), (8, 3, 3, 3), 2, 1, 2, 1),
    "padding_beyond_kernel": ((1, 2, 4, 5), (3, 2, 2, 2), 1, 3, 1, 1),
    "groups2": ((2, 4, 9, 9), (10, 2, 3, 3), 1, 1, 1, 2),
    "depthwise": ((2, 5, 10, 19), (5, 1, 3, 3), 1, 1, 1, 5),
    "depthwise_x3_strided": ((1, 4, 11, 11), (12, 1, 3, 3), 2, 1, 1, 4),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", EDGES, ids=str)
def test_edges_against_reference(isa, case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = EDGES[case]
    x, w, b = data(x_shape, w_shape, dtype, seed=len(case))
    check(x, w, b, stride, padding, dilation, groups)


# The same edges on column copies (kernels 4+ columns wide whose phase grid would drop columns,
# at most 16 copies of each input row, 128+ multiply-adds per copy): row strides (one plane
# per row phase), column strides (gathered), dilation, padding on either axis, groups, widths
# around one and two vectors, and the channel counts of a register tile.
COLUMN_EDGES = {
    "width10_k32_three_blocks": ((3, 3, 14, 14), (32, 3, 5, 5), 1, 0, 1, 1),
    "width7_pad2_k26": ((2, 1, 7, 7), (26, 1, 5, 5), 1, 2, 1, 1),
    "width16_k30": ((1, 2, 9, 20), (30, 2, 5, 5), 1, 0, 1, 1),
    "width17_k40": ((2, 2, 9, 21), (40, 2, 4, 5), 1, 0, 1, 1),
    "width28_7x7_k64": ((2, 1, 28, 28), (64, 1, 7, 7), 1, 3, 1, 1),
    "stride2_4x4_k64": ((3, 1, 13, 12), (64, 1, 4, 4), 2, 1, 1, 1),
    "stride_2_3_pads_1_2": ((2, 2, 11, 20), (40, 2, 4, 5), (2, 3), (1, 2), 1, 1),
    "stride3_dilation2": ((2, 3, 17, 19), (48, 3, 3, 5), 3, 2, 2, 1),
    "dilation_2_1": ((2, 2, 12, 13), (30, 2, 5, 5), 1, (2, 1), (2, 1), 1),
    "groups2": ((2, 4, 9, 9), (60, 2, 5, 5), 1, 1, 1, 2),
    "padding_beyond_kernel": ((1, 2, 4, 5), (32, 2, 4, 4), 1, 5, 1, 1),
    # Rows copied as whole vectors that run on into the plane's next rows: rows of 3 (a vector
    # spans the plane's last rows and must stop at its end), a left padding wider than a
    # vector, and rows wider than the stack buffer (kColumnRowMax: copied without it).
    "width3_vector_spans_rows": ((2, 2, 6, 6), (32, 2, 4, 4), 1, 0, 1, 1),
    "width3_stride2": ((2, 1, 8, 8), (32, 1, 4, 4), 2, 0, 1, 1),
    "pad_w20": ((1, 1, 5, 6), (32, 1, 4, 4), 1, (1, 20), 1, 1),
    "width1037_unbuffered": ((1, 1, 4, 1040), (32, 1, 4, 4), 1, 0, 1, 1),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", COLUMN_EDGES, ids=str)
@pytest.mark.parametrize("algorithm", ["direct", "auto"])
def test_column_copies_against_reference(isa, case, dtype, algorithm):
    x_shape, w_shape, stride, padding, dilation, groups = COLUMN_EDGES[case]
    x, w, b = data(x_shape, w_shape, dtype, seed=len(case))
    if algorithm == "auto" and algorithm_of(x_shape, w_shape, dtype, stride, padding, dilation, groups) != COLUMNS:
        pytest.skip("the rules send this shape to another algorithm when not asked for direct")
    check(x, w, b, stride, padding, dilation, groups, algorithm, layout=COLUMNS)


@pytest.mark.parametrize("case,layout", [
    ("pixelcnn_7x7", COLUMNS), ("dcgan_d_4x4_s2_28", COLUMNS), ("vae_4x4_s2_32", COLUMNS),
    ("rgb_3x3", GRID),                 # 3x3 kernels stay on the grid
    ("lenet_conv1", GRID),             # 6 channels x 5 rows: 30 multiply-adds per copied element
    ("lenet_conv2", BY_CHANNELS),      # 16 channels at stride 1 without padding
    ("many_channels_5x5", BY_CHANNELS),
    ("many_channels_5x5_padded", GRID),  # 8 channels x 5 kernel columns: 40 copies of each row
])
def test_layout_rule(case, layout):
    shapes = {"lenet_conv1": ((64, 1, 32, 32), (6, 1, 5, 5), 1, 0),
              "lenet_conv2": ((64, 6, 14, 14), (16, 6, 5, 5), 1, 0),
              "pixelcnn_7x7": ((32, 1, 28, 28), (64, 1, 7, 7), 1, 3),
              "vae_4x4_s2_32": ((64, 1, 32, 32), (32, 1, 4, 4), 2, 1),
              "rgb_3x3": ((16, 3, 32, 32), (64, 3, 3, 3), 1, 1),
              "dcgan_d_4x4_s2_28": ((64, 1, 28, 28), (64, 1, 4, 4), 2, 1),
              "many_channels_5x5": ((8, 8, 14, 14), (16, 8, 5, 5), 1, 0),
              "many_channels_5x5_padded": ((8, 8, 14, 14), (16, 8, 5, 5), 1, 2)}
    x_shape, w_shape, stride, padding = shapes[case]
    assert algorithm_of(x_shape, w_shape, stride=stride, padding=padding) == layout


def test_without_bias(isa):
    x, w, _ = data((2, 3, 9, 13), (7, 3, 3, 3), np.float32)
    check(x, w, None, padding=1)


# (x shape, w shape, stride, padding, groups): the rule's cases (csrc/conv/dispatch.h).
ROUTED = {
    "lenet_conv1": ((64, 1, 28, 28), (6, 1, 5, 5), 1, 2, 1),
    "lenet_conv2": ((64, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1),
    "pixelcnn_first_7x7": ((32, 1, 28, 28), (64, 1, 7, 7), 1, 3, 1),
    "rgb_input_3x3": ((16, 3, 32, 32), (64, 3, 3, 3), 1, 1, 1),
    "few_channels_many_taps": ((8, 256, 14, 14), (16, 256, 3, 3), 1, 1, 1),
    "depthwise_multiplier4": ((8, 16, 28, 28), (64, 1, 3, 3), 1, 1, 16),
    "grouped_4_per_group": ((8, 32, 28, 28), (32, 4, 3, 3), 1, 1, 8),
    "dcgan_d_conv1_strided_16_taps": ((64, 1, 28, 28), (64, 1, 4, 4), 2, 1, 1),
    "vae_conv1_strided_16_taps": ((64, 1, 32, 32), (32, 1, 4, 4), 2, 1, 1),
    "strided_9_taps": ((64, 1, 32, 32), (32, 1, 3, 3), 2, 1, 1),
    # Stride 1, up to 32 outputs: any tap count.
    "pixelcnn_horizontal_grad_input_192_taps": ((64, 64, 32, 32), (32, 64, 1, 3), 1, (0, 2), 1),
    "k32_1x3_384_taps": ((16, 128, 16, 16), (32, 128, 1, 3), 1, (0, 1), 1),
    "k32_3x3_144_taps_14x14": ((64, 16, 14, 14), (32, 16, 3, 3), 1, 1, 1),
}
NOT_ROUTED = {
    "stride_1_9_taps": ((64, 1, 28, 28), (64, 1, 3, 3), 1, 1, 1),
    "strided_288_taps": ((16, 32, 32, 32), (64, 32, 3, 3), 2, 1, 1),
    "resnet_strided_144_taps": ((16, 16, 32, 32), (32, 16, 3, 3), 2, 1, 1),
    "k64_1x3_192_taps": ((64, 64, 32, 32), (64, 64, 1, 3), 1, (0, 1), 1),
    "pointwise": ((8, 16, 28, 28), (8, 16, 1, 1), 1, 0, 1),
    "vgg_winograd": ((8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
    # Depthwise with up to 2 output channels per group: conv/depthwise.h (tests/test_depthwise.py).
    "depthwise": ((8, 64, 56, 56), (64, 1, 3, 3), 1, 1, 64),
}


@pytest.mark.parametrize("case", ROUTED, ids=str)
def test_the_rule_routes_small_layers_here(case):
    x_shape, w_shape, stride, padding, groups = ROUTED[case]
    assert algorithm_of(x_shape, w_shape, stride=stride, padding=padding, groups=groups) in (GRID, COLUMNS, BY_CHANNELS)
    x, w, b = data((2,) + x_shape[1:], w_shape, np.float32)
    check(x, w, b, stride, padding, groups=groups, algorithm="auto", layout=algorithm_of(
        x.shape, w_shape, stride=stride, padding=padding, groups=groups))


@pytest.mark.parametrize("case", NOT_ROUTED, ids=str)
def test_the_rule_leaves_the_rest(case):
    x_shape, w_shape, stride, padding, groups = NOT_ROUTED[case]
    assert algorithm_of(x_shape, w_shape, stride=stride, padding=padding, groups=groups) not in (GRID, COLUMNS)


@pytest.mark.parametrize("x_shape, w_shape, stride", [
    ((16, 16, 32, 32), (32, 16, 3, 3), 2),        # ResNet's 16 -> 32 downsampling
    ((16, 32, 16, 16), (24, 32, 3, 3), (2, 1)),
])
def test_strided_layers_with_16_to_63_channels_and_many_taps_run_by_channels(x_shape, w_shape, stride):
    assert algorithm_of(x_shape, w_shape, stride=stride, padding=1) == "gemm (by channels)"
    assert algorithm_of(x_shape, w_shape, stride=1, padding=1) != "gemm (by channels)"


@pytest.mark.parametrize("poison", [np.nan, np.inf])
@pytest.mark.parametrize("kernel,layout", [(5, COLUMNS), (3, GRID)])
def test_read_ahead_reaches_only_dropped_outputs(poison, kernel, layout):
    """A tile that ends past an image's last pixel reads past its planes (the zeros after the
    image in the thread's buffer): what it computes there is never stored, and a NaN or inf in
    image 1 leaves image 0 untouched."""
    x, w, b = data((2, 2, 7, 7), (32 if layout == COLUMNS else 6, 2, kernel, kernel), np.float32)
    clean = check(x[:1], w, b, padding=kernel // 2, layout=layout)
    x[1] = poison
    y = ops.conv2d(x, w, b, 1, kernel // 2, algorithm="direct", backend="cpu")
    np.testing.assert_array_equal(y[0], clean[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [13, 32])  # the phase grid, column copies
@pytest.mark.parametrize("batch", [1, 12])  # below and above the one-thread floor (2^20 multiply-adds)
def test_thread_counts_give_the_same_bits(dtype, channels, batch):
    x, w, b = data((batch, 3, 17, 23), (channels, 3, 5, 5), dtype)
    before = pyconv.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 4):
            pyconv.set_num_threads(threads)
            results.append(ops.conv2d(x, w, b, 1, 2, algorithm="direct", backend="cpu"))
    finally:
        pyconv.set_num_threads(before)
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])
