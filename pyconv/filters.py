"""The classic 3x3 image kernels (identity, edge detection, sharpen, box blur, Sobel) as
float32 arrays, for ``ops.conv2d`` on images:

    y = pyconv.ops.conv2d(image[None, None], pyconv.filters.sobel_x[None, None])

Deep-learning convolutions are cross-correlations: the kernel is applied as written, not
flipped.
"""
import numpy as np

__all__ = ["identity", "edge", "sharpen", "box_blur", "sobel_x", "sobel_y"]


def _k(rows, scale=1.0):
    a = np.array(rows, np.float32) * np.float32(scale)
    a.flags.writeable = False  # shared module constants: copy before changing
    return a


identity = _k([[0, 0, 0], [0, 1, 0], [0, 0, 0]])

# The three edge-detection kernels of the seed's table, from weakest to strongest response.
edge = (
    _k([[1, 0, -1], [0, 0, 0], [-1, 0, 1]]),
    _k([[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
    _k([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]),
)

sharpen = _k([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
box_blur = _k([[1, 1, 1], [1, 1, 1], [1, 1, 1]], 1 / 9)

# Horizontal gradient (responds to vertical edges) and its transpose.
sobel_x = _k([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
sobel_y = _k([[-1, -2, -1], [0, 0, 0], [1, 2, 1]])
