"""Small examples worked out by hand (pooling, unpooling, a Sobel filter, a transposed
convolution, the output-size formula), checked exactly on every backend that implements the
kernel."""
import numpy as np
import pytest
from conftest import backends_with, on_backend, to_numpy

from pyconv import ops

POOL_INPUT = [[2, 3, 1, 9], [4, 7, 3, 5], [8, 2, 2, 2], [1, 3, 4, 5]]
UNPOOL_SOURCE = [[1, 2, 6, 3], [3, 5, 2, 1], [1, 2, 2, 1], [7, 3, 4, 8]]

# An 8x8 image whose Sobel response at the top left is 5.
IMAGE = [
    [2, 2, 6, 8, 2, 0, 1, 2],
    [4, 3, 4, 5, 1, 9, 6, 3],
    [3, 9, 4, 4, 7, 7, 6, 9],
    [1, 3, 4, 6, 8, 2, 2, 1],
    [8, 4, 6, 2, 3, 1, 8, 8],
    [5, 8, 9, 0, 1, 0, 2, 3],
    [9, 2, 6, 6, 3, 6, 2, 1],
    [9, 8, 8, 2, 6, 3, 4, 5],
]
SOBEL_X = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]

BINARY_IMAGE = [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]
X_KERNEL = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]

DTYPES = [np.float32, np.float64]


def plane(values, dtype):
    """A 2-D list as a (1, 1, H, W) array."""
    return np.array(values, dtype=dtype)[None, None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backends_with("max_pool2d"))
def test_max_pool_2x2(backend, dtype):
    y = ops.max_pool2d(on_backend(backend, plane(POOL_INPUT, dtype)), 2, 2, backend=backend)
    np.testing.assert_array_equal(to_numpy(y)[0, 0], [[7, 9], [8, 5]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backends_with("avg_pool2d"))
def test_avg_pool_2x2(backend, dtype):
    # The bottom-left window holds 8, 2, 1, 3: its mean is 3.5 (PyTorch agrees).
    y = ops.avg_pool2d(on_backend(backend, plane(POOL_INPUT, dtype)), 2, 2, backend=backend)
    np.testing.assert_array_equal(to_numpy(y)[0, 0], [[4, 4.5], [3.5, 3.25]])


@pytest.mark.parametrize("backend", backends_with("max_pool2d"))
def test_max_pool_indices(backend):
    x = on_backend(backend, plane(UNPOOL_SOURCE, np.float32))
    y, idx = ops.max_pool2d(x, 2, return_indices=True, backend=backend)
    np.testing.assert_array_equal(to_numpy(y)[0, 0], [[5, 6], [7, 8]])
    np.testing.assert_array_equal(to_numpy(idx)[0, 0], [[5, 2], [12, 15]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backends_with("max_unpool2d"))
def test_max_unpool(backend, dtype):
    # The indices are those max pooling of UNPOOL_SOURCE remembers (checked above).
    indices = np.array([[5, 2], [12, 15]], np.int64)[None, None]
    x, indices = on_backend(backend, plane([[1, 2], [3, 4]], dtype), indices)
    y = ops.max_unpool2d(x, indices, 2, backend=backend)
    expected = [[0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [3, 0, 0, 4]]
    np.testing.assert_array_equal(to_numpy(y)[0, 0], expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backends_with("conv2d"))
def test_sobel_top_left_is_5(backend, dtype):
    x, w = on_backend(backend, plane(IMAGE, dtype), plane(SOBEL_X, dtype))
    y = to_numpy(ops.conv2d(x, w, backend=backend))
    assert y.shape == (1, 1, 6, 6)
    assert y[0, 0, 0, 0] == 5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backends_with("conv2d"))
def test_binary_image_convolution(backend, dtype):
    x, w = on_backend(backend, plane(BINARY_IMAGE, dtype), plane(X_KERNEL, dtype))
    y = to_numpy(ops.conv2d(x, w, backend=backend))
    np.testing.assert_array_equal(y[0, 0], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backends_with("conv2d_grad_input"))
def test_transpose_conv_of_ones(backend, dtype):
    x, w = on_backend(backend, np.ones((1, 1, 4, 4), dtype), np.ones((1, 1, 3, 3), dtype))
    y = to_numpy(ops.conv_transpose2d(x, w, stride=1, backend=backend))
    profile = np.array([1, 2, 3, 3, 2, 1])
    np.testing.assert_array_equal(y[0, 0], np.outer(profile, profile))


def output_size(H, kernel, pad_before, pad_after, stride):
    """The textbook formula: H'' = 1 + floor((H - H' + P- + P+) / S)."""
    return 1 + (H - kernel + pad_before + pad_after) // stride


@pytest.mark.parametrize("backend", backends_with("conv2d"))
@pytest.mark.parametrize("H, kernel, padding, stride", [
    (8, 3, 0, 1), (8, 3, 1, 1), (9, 3, 1, 2), (10, 4, 2, 3), (7, 7, 0, 1), (5, 2, 1, 2),
    (8, 4, "same", 1), (8, 3, "same", 1), (6, 2, "same", 1), (9, 5, "valid", 2),
])
def test_output_size_formula(backend, H, kernel, padding, stride):
    if padding == "same":
        before, after = (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2  # odd pixel after
    elif padding == "valid":
        before = after = 0
    else:
        before = after = padding
    x, w = on_backend(backend, np.ones((1, 1, H, H + 1)), np.ones((1, 1, kernel, kernel)))
    y = ops.conv2d(x, w, stride=stride, padding=padding, backend=backend)
    expected = output_size(H, kernel, before, after, stride)
    assert y.shape == (1, 1, expected, output_size(H + 1, kernel, before, after, stride))
    # The top-left window covers `before` rows/columns of padding: ones counted = its overlap.
    overlap = (kernel - before) ** 2
    assert float(to_numpy(y)[0, 0, 0, 0]) == overlap
