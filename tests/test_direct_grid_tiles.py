"""The direct forward's tile shapes and the taps it leaves out (csrc/conv/direct_grid.h): tiles of
3 vectors x 8 channels (AVX-512, stride 1, 32+ output channels per group) with an image's last
tile 1, 2 or 3 vectors long, the kernel rows skipped where a tile's output rows see only
padding, and the grid filled image by image in each thread's buffer (the zeros after it that
the last taps and the read-ahead reach) — against the reference backend on every ISA variant
this CPU runs (the `isa` fixture of conftest.py), float32 and float64, and at 1-3 threads."""
import numpy as np
import pytest

import pyconv
from pyconv import _C, _spec, ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

TOL = {np.float32: 2e-5, np.float64: 1e-12}
GRID, COLUMNS = "direct (phase grid)", "direct (column copies)"


def algorithm_of(x_shape, w_shape, dtype, stride, padding, dilation=1, groups=1, algorithm="auto"):
    g = _spec.conv2d(_spec.ShapeDtype(x_shape, dtype), _spec.ShapeDtype(w_shape, dtype), None, stride,
                     padding, dilation, groups, algorithm=algorithm)
    return _C.conv2d_algorithm(g, np.dtype(dtype))


def data(x_shape, w_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype),
            rng.standard_normal(w_shape[0]).astype(dtype))


def check(x, w, b, stride, padding, dilation=1, groups=1, algorithm="direct"):
    assert algorithm_of(x.shape, w.shape, x.dtype.type, stride, padding, dilation, groups, algorithm) in (GRID, COLUMNS)
    y = ops.conv2d(x, w, b, stride, padding, dilation, groups, algorithm=algorithm, backend="cpu")
    ref = ops.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride, padding, dilation,
                     groups, backend="reference")
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[x.dtype.type] * scale)
    return y


# (x shape, w shape, stride, padding, dilation, groups). Output planes (grid pixels: Ho rows of
# Wq = Wo + S - 1 on the grid, Wo on column copies) whose last tile of 3 vectors holds 1, 2 or 3
# of them for 16 lanes (float32 AVX-512) and for 8 (float64), channel counts of 32 and more
# (blocks of 8, with zero channels past Kg), and padding taller than the kernel's reach, so that
# tiles whose rows all lie in the padding skip every kernel row.
CASES = {
    # grid 6 x 8 = 48 pixels: one whole tile of 3 float32 vectors, 6 of 8 lanes in float64
    "grid_one_whole_tile_k32": ((2, 2, 6, 6), (32, 2, 3, 3), 1, 1, 1, 1),
    # grid 5 x 12 = 60: a tile of 3, then 1 vector (float32)
    "grid_tail_1_vector_k40": ((2, 3, 5, 10), (40, 3, 3, 3), 1, 1, 1, 1),
    # grid 6 x 12 = 72: a tile of 3, then 2 vectors
    "grid_tail_2_vectors_k33": ((1, 2, 6, 10), (33, 2, 3, 3), 1, 1, 1, 1),
    # grid 7 x 12 = 84: a tile of 3, then 3 vectors, the last partly past the image
    "grid_tail_3_vectors_k48": ((1, 2, 7, 10), (48, 2, 3, 3), 1, 1, 1, 1),
    # grid 9 x 14 = 126: two tiles of 3, then 2 vectors, 3 -> 64 as the RGB input layer
    "grid_rgb_3_to_64": ((2, 3, 9, 12), (64, 3, 3, 3), 1, 1, 1, 1),
    "grid_70_channels_9_blocks": ((2, 3, 8, 11), (70, 3, 3, 3), 1, 1, 1, 1),
    "grid_dilated": ((2, 2, 12, 13), (32, 2, 3, 3), 1, 2, 2, 1),
    "grid_groups2": ((2, 4, 9, 9), (64, 2, 3, 3), 1, 1, 1, 2),
    "grid_padding_beyond_kernel": ((1, 2, 4, 5), (32, 2, 2, 2), 1, 3, 1, 1),
    "grid_tall_padding": ((2, 1, 3, 20), (32, 1, 3, 3), 1, (4, 1), 1, 1),
    # column copies, 7x7 padding 3 (PixelCNN's first layer): rows 0-2 and 25-27 of a 28x28
    # output skip kernel rows; 28 x 28 = 784 pixels = 16 tiles of 48 + 1 vector
    "columns_7x7_pad3_k64": ((2, 1, 28, 28), (64, 1, 7, 7), 1, 3, 1, 1),
    "columns_5x5_pad2_k32": ((2, 3, 11, 9), (32, 3, 5, 5), 1, 2, 1, 1),
    "columns_tall_padding": ((1, 2, 4, 6), (32, 2, 4, 4), 1, 5, 1, 1),
    # stride 2 keeps tiles of 2 vectors; the rows skipped for a strided layer
    "columns_stride2_4x4_k64": ((3, 1, 13, 12), (64, 1, 4, 4), 2, 1, 1, 1),
    "grid_stride2_3x3_pad2": ((2, 2, 9, 15), (32, 2, 3, 3), 2, 2, 1, 1),
    # fewer than 32 channels: tiles of 2 vectors, rows skipped likewise
    "grid_6_channels_pad2": ((2, 1, 7, 7), (6, 1, 5, 5), 1, 2, 1, 1),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_tiles_against_reference(isa, case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = CASES[case]
    x, w, b = data(x_shape, w_shape, dtype, seed=len(case))
    check(x, w, b, stride, padding, dilation, groups)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["grid_rgb_3_to_64", "columns_7x7_pad3_k64", "grid_stride2_3x3_pad2"])
def test_thread_counts_give_the_same_bits(isa, case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = CASES[case]
    x, w, b = data((12,) + x_shape[1:], w_shape, dtype)  # above the one-thread floor
    before = pyconv.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            pyconv.set_num_threads(threads)
            results.append(check(x, w, b, stride, padding, dilation, groups))
    finally:
        pyconv.set_num_threads(before)
    for y in results[1:]:
        np.testing.assert_array_equal(y, results[0])


@pytest.mark.parametrize("x_shape, w_shape, padding, layout", [
    ((16, 3, 32, 32), (64, 3, 3, 3), 1, GRID),      # the RGB input layer
    ((32, 1, 28, 28), (64, 1, 7, 7), 3, COLUMNS),   # PixelCNN's first layer
])
def test_table_layers_take_the_direct_forward(x_shape, w_shape, padding, layout):
    assert algorithm_of(x_shape, w_shape, np.float32, 1, padding) == layout
