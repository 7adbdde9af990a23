"""Shape rules on abstract values: ``pyconv._spec`` given ``ShapeDtype(shape, dtype)`` in place
of arrays computes the same geometry, and raises the same error, as on real arrays. Also: the
"numba" backend is the package ``pyconv.backends.numba``, its kernels defined in its family
modules."""
import importlib

import numpy as np
import pytest

from pyconv import _spec
from pyconv._spec import ShapeDtype

registry = importlib.import_module("pyconv.backends")  # pyconv.backends is the listing function


def f32(*shape):
    return np.zeros(shape, np.float32)


def f64(*shape):
    return np.zeros(shape, np.float64)


def i64(*shape):
    return np.zeros(shape, np.int64)


# (id, rule, arguments): every array argument is given once as an array and once as ShapeDtype.
CASES = [
    ("conv2d", _spec.conv2d, (f32(2, 4, 7, 8), f32(6, 2, 3, 3), f32(6), 2, 1, 1, 2)),
    ("conv2d same", _spec.conv2d, (f64(2, 2, 5, 5), f64(3, 2, 3, 2), None, 1, "same", 1, 1)),
    ("conv2d dilated", _spec.conv2d, (f32(1, 3, 6, 5), f32(4, 3, 2, 3), None, (1, 2), (2, 0),
                                      (2, 1), 1)),
    ("conv2d channel mismatch", _spec.conv2d, (f32(1, 3, 5, 5), f32(4, 2, 3, 3), None, 1, 0, 1, 1)),
    ("conv2d mixed dtypes", _spec.conv2d, (f32(1, 2, 5, 5), f64(4, 2, 3, 3), None, 1, 0, 1, 1)),
    ("conv2d wrong ndim", _spec.conv2d, (f32(5, 5), f32(4, 2, 3, 3), None, 1, 0, 1, 1)),
    ("conv2d unbatched", _spec.conv2d, (f32(2, 5, 5), f32(4, 2, 3, 3), None, 1, 0, 1, 1)),
    ("conv2d unbatched channel mismatch", _spec.conv2d, (f32(3, 5, 5), f32(4, 2, 3, 3), None, 1, 0, 1, 1)),
    ("conv2d bad bias", _spec.conv2d, (f32(1, 2, 5, 5), f32(4, 2, 3, 3), f32(3), 1, 0, 1, 1)),
    ("conv2d empty output", _spec.conv2d, (f32(1, 1, 2, 2), f32(1, 1, 3, 3), None, 1, 0, 1, 1)),
    ("conv2d int dtype", _spec.conv2d, (i64(1, 1, 4, 4), i64(1, 1, 3, 3), None, 1, 0, 1, 1)),
    ("conv1d", _spec.conv1d, (f32(2, 3, 10), f32(4, 3, 3), None, 2, 1, 1, 1)),
    ("conv1d unbatched", _spec.conv1d, (f32(3, 10), f32(4, 3, 3), None, 2, 1, 1, 1)),
    ("conv2d_backward unbatched", _spec.conv_backward,
     (f32(6, 4, 4), f32(4, 7, 8), f32(6, 2, 3, 3), 2, 1, 1, 2, (True, True, False), 2)),
    ("conv2d_backward", _spec.conv_backward,
     (f32(2, 6, 4, 4), f32(2, 4, 7, 8), f32(6, 2, 3, 3), 2, 1, 1, 2, (True, True, False), 2)),
    ("conv2d_backward bad grad_out", _spec.conv_backward,
     (f32(2, 6, 5, 4), f32(2, 4, 7, 8), f32(6, 2, 3, 3), 2, 1, 1, 2, (True, True, True), 2)),
    ("conv_transpose2d", _spec.conv_transpose2d,
     (f32(1, 4, 5, 5), f32(4, 3, 3, 3), f32(3), 2, 1, 1, 1, 1)),
    ("conv_transpose2d grouped", _spec.conv_transpose2d,
     (f64(2, 4, 3, 6), f64(4, 1, 2, 3), None, (2, 1), 0, 0, 2, (1, 2))),
    ("conv_transpose2d bad output_padding", _spec.conv_transpose2d,
     (f32(1, 4, 5, 5), f32(4, 3, 3, 3), None, 2, 1, 2, 1, 1)),
    ("conv_transpose2d channel mismatch", _spec.conv_transpose2d,
     (f32(1, 4, 5, 5), f32(3, 3, 3, 3), None, 1, 0, 0, 1, 1)),
    ("conv_transpose2d_backward", _spec.conv_transpose2d_backward,
     (f32(1, 3, 10, 10), f32(1, 4, 5, 5), f32(4, 3, 3, 3), 2, 1, 1, 1, 1, (True, True, True))),
    ("max_pool2d ceil", _spec.max_pool2d, (f32(1, 2, 7, 7), 3, 2, 1, 1, True)),
    ("max_pool2d unbatched", _spec.max_pool2d, (f32(2, 7, 7), 3, 2, 1, 1, True)),
    ("max_pool2d wrong ndim", _spec.max_pool2d, (f32(7, 7), 3, 2, 1, 1, True)),
    ("max_pool2d dilated", _spec.max_pool2d, (f64(2, 1, 9, 8), (3, 2), (2, 1), (1, 0), 2, False)),
    ("max_pool2d too small", _spec.max_pool2d, (f32(1, 1, 1, 1), 3, 1, 0, 1, False)),
    ("max_pool2d float16", _spec.max_pool2d,
     (np.zeros((1, 1, 4, 4), np.float16), 2, 2, 0, 1, False)),
    ("avg_pool2d", _spec.avg_pool2d, (f32(1, 2, 6, 5), 3, 2, 1, True, 7)),
    ("avg_pool2d zero divisor", _spec.avg_pool2d, (f32(1, 2, 6, 5), 2, 2, 0, False, 0)),
    ("avg_pool2d_backward", _spec.avg_pool2d_backward,
     (f32(1, 2, 4, 3), (1, 2, 6, 5), 3, 2, 1, True, None)),
    ("avg_pool2d_backward bad grad_out", _spec.avg_pool2d_backward,
     (f32(1, 2, 3, 3), (1, 2, 6, 5), 3, 2, 1, True, None)),
    ("max_pool2d_backward", _spec.max_pool2d_backward,
     (f32(1, 2, 3, 3), i64(1, 2, 3, 3), (1, 2, 6, 6))),
    ("max_unpool2d", _spec.max_unpool2d, (f32(1, 1, 2, 2), i64(1, 1, 2, 2), 2, None, 0, (5, 5))),
    ("max_unpool2d unbatched", _spec.max_unpool2d, (f32(1, 2, 2), i64(1, 2, 2), 2, None, 0, (5, 5))),
    ("max_unpool2d float indices", _spec.max_unpool2d,
     (f32(1, 1, 2, 2), f32(1, 1, 2, 2), 2, None, 0, None)),
    ("max_unpool2d indices shape", _spec.max_unpool2d,
     (f32(1, 1, 2, 2), i64(1, 1, 2, 3), 2, None, 0, None)),
    ("lstm", _spec.lstm,
     (f32(5, 2, 3), f32(2, 4), f32(2, 4), f32(16, 3), f32(16, 4), f32(16), None)),
    ("lstm unbatched", _spec.lstm,
     (f32(5, 3), f32(4), f32(4), f32(16, 3), f32(16, 4), f32(16), None)),
    ("lstm unbatched batched state", _spec.lstm,
     (f32(5, 3), f32(1, 4), f32(4), f32(16, 3), f32(16, 4), f32(16), None)),
    ("lstm bad w_hh", _spec.lstm,
     (f32(5, 2, 3), f32(2, 4), f32(2, 4), f32(16, 3), f32(16, 3), None, None)),
]


def abstract(value):
    return ShapeDtype(value.shape, value.dtype) if isinstance(value, np.ndarray) else value


def outcome(rule, args):
    """What the rule returns, or the type and message of the error it raises."""
    try:
        return "returns", rule(*args)
    except (TypeError, ValueError) as e:
        return type(e), str(e)


@pytest.mark.parametrize("rule, args", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_shape_dtype_gives_what_arrays_give(rule, args):
    expected = outcome(rule, args)
    assert outcome(rule, [abstract(a) for a in args]) == expected


def test_cases_cover_results_and_errors():
    kinds = {outcome(rule, args)[0] for _, rule, args in CASES}
    assert kinds == {"returns", TypeError, ValueError}


def test_shape_dtype_normalises_and_is_not_an_array():
    a = ShapeDtype([2, np.int64(3)], "float32")
    assert a.shape == (2, 3) and type(a.shape[1]) is int
    assert a.dtype == np.dtype(np.float32) and a.ndim == 2
    assert a == ShapeDtype((2, 3), np.float32)
    with pytest.raises(TypeError):
        ShapeDtype((2, 3.5), np.float32)
    # Dispatch takes real arrays only: an abstract value cannot reach a kernel.
    with pytest.raises(TypeError, match="ShapeDtype"):
        _spec.array_kind(a)
    # Real arrays are still type-checked.
    with pytest.raises(TypeError, match="must be a numpy.ndarray or cupy.ndarray, got list"):
        _spec.conv2d([[[[0.0]]]], f32(1, 1, 1, 1), None, 1, 0, 1, 1)


def test_index_values_are_checked_on_arrays_only():
    """The one rule that reads values: indices out of range. An abstract value has none."""
    x, bad = f32(1, 1, 2, 2), np.full((1, 1, 2, 2), 99, np.int64)
    with pytest.raises(ValueError, match="must lie in"):
        _spec.max_unpool2d(x, bad, 2, None, 0, None)
    assert _spec.max_unpool2d(abstract(x), abstract(bad), 2, None, 0, None) == (1, 1, 4, 4)


def test_numba_backend_is_the_package():
    pytest.importorskip("numba")
    assert registry._MODULES["numba"] == "pyconv.backends.numba"
    package = importlib.import_module("pyconv.backends.numba")
    assert hasattr(package, "__path__")  # a package, one module per op family
    backend = registry.get("numba")
    assert backend is package.backend and backend.name == "numba"
    families = {fn.__module__ for fn in backend.kernels.values()}
    modules = ("conv", "pool", "lstm", "boxes", "elementwise", "boxes_rotated", "dense", "norm", "loss",
               "optim")
    assert families == {f"pyconv.backends.numba.{m}" for m in modules}
    # Inside the package, `import numba` still means the Numba library.
    jit = importlib.import_module("pyconv.backends.numba._jit")
    assert jit.numba.__name__ == "numba" and hasattr(jit.numba, "njit")
