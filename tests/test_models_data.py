"""The data helpers the models use: resizing the digits, random-shift and random-affine
augmentation drawn from the loader's own generator (so a resumed run sees the same shifts)."""
import numpy as np

from pyconv import data


def test_resize_images():
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    up = data.resize_images(x, 4)
    assert up.shape == (1, 1, 4, 4) and up.dtype == np.float32
    np.testing.assert_allclose(up[0, 0, 0], [0, 0.25, 0.75, 1])  # aligned pixel centres
    np.testing.assert_allclose(up.mean(), x.mean())
    np.testing.assert_allclose(data.resize_images(x, 2), x)


def test_random_shift_moves_images_and_resumes_exactly():
    x = np.zeros((6, 1, 8, 8), np.float32)
    x[:, :, 3:5, 3:5] = 1
    y = np.arange(6)

    def loader():
        return data.DataLoader((x, y), 3, shuffle=True, seed=4, transform=data.random_shift(2))

    first = loader()
    epoch1 = [b[0] for b in first]
    state = first.state_dict()
    epoch2 = [b[0] for b in first]
    assert all(b.shape == (3, 1, 8, 8) and b.sum() == 3 * 4 for b in epoch1)  # the square stays whole
    moved = np.concatenate(epoch1)
    assert len({tuple(np.argwhere(img[0])[0]) for img in moved}) > 1
    resumed = loader()
    resumed.load_state_dict(state)
    for a, b in zip(epoch2, [b[0] for b in resumed]):
        np.testing.assert_array_equal(a, b)


class _Highest:
    """A generator stub whose uniform draws are the upper bounds: the largest rotation and
    scale, and the largest shift downwards (none sideways)."""

    def uniform(self, low, high, size):
        if isinstance(size, tuple):  # the (2, n) shifts: rows, then columns
            return np.stack([np.full(size[1], high), np.zeros(size[1])])
        return np.full(size, high, np.float64)


def test_random_affine_rotates_scales_and_shifts():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 6, 6)).astype(np.float32)
    labels = np.arange(2)
    same, kept = data.random_affine(0, 0, 0)((x, labels), rng)
    assert same.dtype == np.float32 and kept is labels
    np.testing.assert_allclose(same, x, atol=1e-6)
    # a quarter turn about the centre (clockwise as displayed, rows downwards)
    turned = data.random_affine(90, 0, 0)(x, _Highest())
    np.testing.assert_allclose(turned, np.rot90(x, -1, axes=(2, 3)), atol=1e-5)
    # a whole-pixel shift down: zeros come in at the top
    shifted = data.random_affine(0, 0, 1)(x, _Highest())
    expected = np.zeros_like(x)
    expected[:, :, 1:] = x[:, :, :-1]
    np.testing.assert_allclose(shifted, expected, atol=1e-6)
    # half a pixel: the mean of the two neighbours (bilinear)
    half = data.random_affine(0, 0, 0.5)(x, _Highest())
    np.testing.assert_allclose(half[:, :, 1:], (x[:, :, :-1] + x[:, :, 1:]) / 2, atol=1e-6)
    # twice the size about the centre: the centre pixel spreads over its neighbours
    x1 = np.zeros((1, 1, 5, 5), np.float32)
    x1[0, 0, 2, 2] = 1
    grown = data.random_affine(0, 1.0, 0)(x1, _Highest())
    assert grown[0, 0, 2, 2] == 1 and grown.sum() == 1 + 4 * 0.5 + 4 * 0.25
