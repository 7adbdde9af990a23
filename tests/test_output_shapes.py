"""Output shapes against PyTorch on random seeded geometries.

Every backend takes its output shape from the same shape rules (pyconv/_spec/), so the
conformance suite cannot see a wrong rule; here each op's output shape is compared with
PyTorch's for many small random geometries, batched and unbatched.
"""
import numpy as np
import pytest

from pyconv import ops

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = [pytest.mark.torch,
              pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")]

DRAWS = 150  # geometries per op


def ints(rng, low, high, n=2):
    return tuple(int(v) for v in rng.integers(low, high, n))


def outcome(fn):
    """fn()'s output shape, or None when it rejects the geometry."""
    try:
        return tuple(fn().shape)
    except (ValueError, RuntimeError):
        return None


def assert_same_shape(ours, theirs, geometry, pyconv_may_reject=False):
    """pyconv accepts the geometry with PyTorch's output shape, or both reject it; where
    `pyconv_may_reject` (a geometry pyconv documents as an error though PyTorch accepts it),
    pyconv may reject it instead."""
    if ours is None and pyconv_may_reject:
        return
    assert ours == theirs, f"{geometry}: pyconv {ours}, PyTorch {theirs}"


def windows_hold_input(shape, x_shape, kernel_size, stride, padding, dilation=1):
    """Whether every pooling window of an output of `shape` covers at least one input pixel
    (pyconv rejects a geometry with a window that covers only padding; PyTorch allows it)."""
    def pairs(v):
        return v if isinstance(v, tuple) else (v, v)

    stride = kernel_size if stride is None else stride
    for out, n, k, s, p, d in zip(shape[-2:], x_shape[-2:], *map(pairs, (kernel_size, stride, padding, dilation))):
        for o in range(out):
            if not any(0 <= o * s - p + j * d < n for j in range(k)):
                return False
    return True


def batch(rng):
    """The leading batch axis (1,), or, one time in three, none: an unbatched input."""
    return () if rng.random() < 1 / 3 else (1,)


def draws(seed):
    rng = np.random.default_rng(seed)
    return [rng for _ in range(DRAWS)]


def test_conv1d_and_conv2d():
    accepted = 0
    for nd, seed in ((2, 1), (1, 2)):
        for rng in draws(seed):
            groups = int(rng.choice([1, 2]))
            C, K = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
            spatial, kernel = ints(rng, 1, 12, nd), ints(rng, 1, 6, nd)
            stride, dilation = ints(rng, 1, 4, nd), ints(rng, 1, 4, nd)
            padding = rng.choice(["same", "valid", "ints"])
            padding = ints(rng, 0, 4, nd) if padding == "ints" else str(padding)
            if padding == "same":
                stride = (1,) * nd
            geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
            x, w = np.zeros(batch(rng) + (C,) + spatial), np.zeros((K, C // groups) + kernel)
            conv, tconv = (ops.conv2d, F.conv2d) if nd == 2 else (ops.conv1d, F.conv1d)
            ours = outcome(lambda: conv(x, w, **geometry, backend="reference"))
            theirs = outcome(lambda: tconv(torch.from_numpy(x), torch.from_numpy(w), **geometry))
            assert_same_shape(ours, theirs, (x.shape, w.shape, geometry))
            accepted += ours is not None
    assert accepted > DRAWS  # most geometries are valid: the shapes were compared


def test_conv_transpose2d():
    accepted = 0
    for rng in draws(3):
        groups = int(rng.choice([1, 2]))
        C, Kg = groups * int(rng.integers(1, 3)), int(rng.integers(1, 3))
        stride, dilation = ints(rng, 1, 4), ints(rng, 1, 3)
        geometry = dict(stride=stride, padding=ints(rng, 0, 3), dilation=dilation, groups=groups,
                        output_padding=tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation)))
        x, w = np.zeros(batch(rng) + (C,) + ints(rng, 1, 8)), np.zeros((C, Kg) + ints(rng, 1, 5))
        ours = outcome(lambda: ops.conv_transpose2d(x, w, **geometry, backend="reference"))
        theirs = outcome(lambda: F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), **geometry))
        assert_same_shape(ours, theirs, (x.shape, w.shape, geometry))
        accepted += ours is not None
    assert accepted > DRAWS // 2


def draw_pool(rng):
    kernel = ints(rng, 1, 5)
    return np.zeros(batch(rng) + (1,) + ints(rng, 1, 12)), dict(
        kernel_size=kernel, stride=None if rng.random() < 0.2 else ints(rng, 1, 4),
        padding=tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel), ceil_mode=bool(rng.random() < 0.6))


def test_max_pool2d():
    accepted = 0
    for rng in draws(4):
        x, geometry = draw_pool(rng)
        geometry["dilation"] = ints(rng, 1, 4)
        ours = outcome(lambda: ops.max_pool2d(x, **geometry, backend="reference"))
        theirs = outcome(lambda: F.max_pool2d(torch.from_numpy(x), **geometry))
        empty_windows = theirs is not None and not windows_hold_input(
            theirs, x.shape, geometry["kernel_size"], geometry["stride"], geometry["padding"], geometry["dilation"])
        assert_same_shape(ours, theirs, (x.shape, geometry), pyconv_may_reject=empty_windows)
        accepted += ours is not None
    assert accepted > DRAWS // 2


def test_avg_pool2d():
    accepted = 0
    for rng in draws(5):
        x, geometry = draw_pool(rng)
        ours = outcome(lambda: ops.avg_pool2d(x, **geometry, backend="reference"))
        theirs = outcome(lambda: F.avg_pool2d(torch.from_numpy(x), **geometry))
        empty_windows = theirs is not None and not windows_hold_input(
            theirs, x.shape, geometry["kernel_size"], geometry["stride"], geometry["padding"])
        assert_same_shape(ours, theirs, (x.shape, geometry), pyconv_may_reject=empty_windows)
        accepted += ours is not None
    assert accepted > DRAWS // 2


def test_max_unpool2d_with_and_without_output_size():
    accepted = 0
    for rng in draws(6):
        kernel, stride, spatial = ints(rng, 1, 5), ints(rng, 1, 4), ints(rng, 1, 8)
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        default = [(n - 1) * s - 2 * p + k for n, s, p, k in zip(spatial, stride, padding, kernel)]
        output_size = None if rng.random() < 0.3 else tuple(
            int(d + rng.integers(-s, s + 1)) for d, s in zip(default, stride))
        geometry = dict(kernel_size=kernel, stride=stride, padding=padding, output_size=output_size)
        shape = batch(rng) + (1,) + spatial
        x, idx = np.zeros(shape), np.zeros(shape, np.int64)
        ours = outcome(lambda: ops.max_unpool2d(x, idx, **geometry, backend="reference"))
        theirs = outcome(lambda: F.max_unpool2d(torch.from_numpy(x), torch.from_numpy(idx), **geometry))
        empty_output = theirs is not None and min(theirs) == 0
        assert_same_shape(ours, theirs, (x.shape, geometry), pyconv_may_reject=empty_output)
        accepted += ours is not None
    assert accepted > DRAWS // 3
