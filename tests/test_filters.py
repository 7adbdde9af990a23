"""pyconv.filters: the classic 3x3 image kernels, applied with ops.conv2d."""
import numpy as np
import pytest

from pyconv import filters, ops

# An 8x8 image whose Sobel-x response at the top left is 5.
IMAGE = np.array([
    [2, 2, 6, 8, 2, 0, 1, 2], [4, 3, 4, 5, 1, 9, 6, 3], [3, 9, 4, 4, 7, 7, 6, 9],
    [1, 3, 4, 6, 8, 2, 2, 1], [8, 4, 6, 2, 3, 1, 8, 8], [5, 8, 9, 0, 1, 0, 2, 3],
    [9, 2, 6, 6, 3, 6, 2, 1], [9, 8, 8, 2, 6, 3, 4, 5],
], np.float32)


def conv(image, kernel):
    return ops.conv2d(image[None, None], np.ascontiguousarray(kernel)[None, None], backend="reference")[0, 0]


def test_sobel_x_gives_5_at_the_top_left():
    assert conv(IMAGE, filters.sobel_x)[0, 0] == 5
    np.testing.assert_array_equal(filters.sobel_y, filters.sobel_x.T)


def test_identity_sharpen_blur_edge():
    np.testing.assert_array_equal(conv(IMAGE, filters.identity), IMAGE[1:-1, 1:-1])
    np.testing.assert_allclose(conv(IMAGE, filters.box_blur)[0, 0], IMAGE[:3, :3].mean(), rtol=1e-6)
    assert filters.sharpen.sum() == 1 and np.isclose(filters.box_blur.sum(), 1)
    assert len(filters.edge) == 3 and all(k.sum() == 0 and k.shape == (3, 3) for k in filters.edge)
    flat = np.full((5, 5), 7, np.float32)  # edges of a constant image: none
    assert all(np.all(conv(flat, k) == 0) for k in filters.edge)


def test_filters_are_read_only():
    with pytest.raises(ValueError):
        filters.sobel_x[0, 0] = 3
