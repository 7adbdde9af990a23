"""The data helpers the models use: resizing the digits, random-shift augmentation drawn from
the loader's own generator (so a resumed run sees the same shifts)."""
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
