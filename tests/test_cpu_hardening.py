"""The cpu backend under hostile inputs: geometries whose sizes overflow or explode, NaN boxes.

Calls that used to crash the interpreter run in a fresh interpreter (a segfault there fails
the test instead of killing pytest); each script prints "ok" when every check in it passed.
"""
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from pyconv import _C, ops



def run_script(body, timeout=120):
    script = "import numpy as np, pyconv\nfrom pyconv import _C, ops\n" + textwrap.dedent(body)
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timed out after {timeout} s")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}")


# ---- Strides and dilations far beyond the input -----------------------------------------------

def test_huge_strides_and_dilations_give_the_right_answer():
    """Every output of these reads x[0, 0] (or only padding); the stride-phase grid's scratch,
    sized by stride and dilation, used to overflow and be written past."""
    run_script("""
        x = np.ones((1, 2, 4, 4), np.float32)
        w = np.ones((3, 2, 1, 1), np.float32)
        for stride in (2**31, 2**32, 2**61, (1, 2**61), (2**40, 3)):
            y = ops.conv2d(x, w, stride=stride, backend="cpu")
            expected = ops.conv2d(x, w, stride=tuple(min(s, 4) for s in np.broadcast_to(stride, 2)),
                                  backend="reference")
            assert np.array_equal(y, expected), (stride, y, expected)
        y = ops.conv1d(x[:, :, 0], w[:, :, 0], stride=2**61, backend="cpu")
        assert y.shape == (1, 3, 1) and np.all(y == 2), y
        # Rows ho - 2**60 and ho + 2**60: padding above, nothing below.
        y = ops.conv2d(x[:, :1], np.ones((1, 1, 2, 1), np.float32), dilation=(2**61, 1),
                       padding=(2**60, 0), backend="cpu")
        assert y.shape == (1, 1, 4, 4) and np.all(y == 0), y
        gx, gw, gb = ops.conv2d_backward(np.ones((1, 3, 1, 1), np.float32), x, w, stride=2**31,
                                         backend="cpu")
        expected_gx = np.zeros_like(x)
        expected_gx[:, :, 0, 0] = 3
        assert np.array_equal(gx, expected_gx) and np.all(gw == 1) and np.all(gb == 1)
        print("ok")
    """)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strides_and_dilations_beyond_the_input_match_the_reference(isa, rng, dtype):
    """Every pass, every algorithm family (depthwise, channel-vectorised, GEMM), on shapes whose
    padded copies would be far larger than their operands."""
    cases = [  # (C, K, groups, R, stride, padding, dilation)
        (8, 8, 8, 3, 5000, 1, 1),          # depthwise (direct loops)
        (16, 64, 1, 3, 3000, 2, 1),        # 64 output channels (channel-vectorised)
        (4, 16, 1, 2, 1, 500, 1000),       # dilation and padding far beyond the input
        (4, 4, 1, 1, 4000, 0, 1),          # 1x1
    ]
    for C, K, groups, R, stride, padding, dilation in cases:
        x = rng.standard_normal((2, C, 5, 6)).astype(dtype)
        w = rng.standard_normal((K, C // groups, R, R)).astype(dtype)
        args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        y = ops.conv2d(x, w, **args, backend="cpu")
        np.testing.assert_allclose(y, ops.conv2d(x, w, **args, backend="reference"), rtol=1e-5, atol=1e-5)
        dy = rng.standard_normal(y.shape).astype(dtype)
        got = ops.conv2d_backward(dy, x, w, **args, backend="cpu")
        expected = ops.conv2d_backward(dy, x, w, **args, backend="reference")
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_large_stride_is_fast():
    """A (1, 3, 1, 1) output must not cost time or memory in proportion to the stride."""
    run_script("""
        import time
        x = np.ones((1, 2, 4, 4), np.float32)
        w = np.ones((3, 2, 1, 1), np.float32)
        start = time.perf_counter()
        for stride in (20000, 100000, 10**9):
            assert np.all(ops.conv2d(x, w, stride=stride, backend="cpu") == 2)
            ops.conv2d_backward(np.ones((1, 3, 1, 1), np.float32), x, w, stride=stride, backend="cpu")
        assert time.perf_counter() - start < 5, time.perf_counter() - start
        print("ok")
    """)


def geometry(**fields):
    """A ConvGeom look-alike, for calls into _C that bypass pyconv._spec's checks."""
    g = dict(N=1, C=1, H=4, W=4, K=1, R=1, S=1, Ho=1, Wo=1, sh=1, sw=1, ph=0, pw=0, dh=1, dw=1,
             groups=1)
    g.update(fields)
    return types.SimpleNamespace(**g)


def test_direct_calls_with_overflowing_geometry_raise():
    """The C++ side is safe on its own: a geometry whose index arithmetic would overflow int64
    is a ValueError naming the op, and one that fits (a stride of 2**62 with one output) runs."""
    run_script("""
        import types
        def geometry(**fields):
            g = dict(N=1, C=1, H=4, W=4, K=1, R=1, S=1, Ho=1, Wo=1, sh=1, sw=1, ph=0, pw=0, dh=1,
                     dw=1, groups=1)
            g.update(fields)
            return types.SimpleNamespace(**g)
        x, w = np.ones((1, 1, 4, 4), np.float32), np.full((1, 1, 1, 1), 2, np.float32)
        y = np.empty((1, 1, 1, 1), np.float32)
        _C.conv2d(x, w, None, y, geometry(sh=2**62, sw=2**62))
        assert y[0, 0, 0, 0] == 2
        y2 = np.empty((1, 1, 2, 2), np.float32)
        for fields in (dict(Ho=2, Wo=2, sh=2**62, sw=2**62), dict(Ho=2, Wo=2, dh=2**62, R=3)):
            for call in (lambda g: _C.conv2d(x, np.ones((1, 1, g.R, 1), np.float32), None, y2, g),
                         lambda g: _C.conv2d_grad_input(y2, np.ones((1, 1, g.R, 1), np.float32),
                                                        np.empty_like(x), g)):
                try:
                    call(geometry(**fields))
                except ValueError as e:
                    assert "conv2d" in str(e) and "overflow" in str(e), e
                else:
                    raise AssertionError(f"no error for {fields}")
        print("ok")
    """)


def test_pooling_with_huge_windows_and_strides():
    run_script("""
        x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
        y = ops.max_pool2d(x, 2, stride=2**61, backend="cpu")
        assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == 5, y
        # A window of 2**60 elements, padding counted (windows whose area passes 2**62 are
        # refused by the spec; test_argument_ranges.py runs a 2**40-row one on every backend).
        y = ops.avg_pool2d(x, (2**40, 2**20), stride=(2**40, 2**20), padding=(2**39, 2**19),
                           backend="cpu")
        assert y.shape == (1, 1, 1, 1), y.shape
        np.testing.assert_allclose(y[0, 0, 0, 0], 120 / 2.0**60, rtol=1e-6)
        print("ok")
    """)


def test_allocation_failure_is_a_memory_error_naming_the_op():
    """Scratch memory that cannot be had is a MemoryError that names the op and the size, not
    a bare std::bad_alloc (address space limited in a child interpreter)."""
    run_script("""
        import resource
        pyconv.set_num_threads(1)
        x = np.ones((1, 32, 1024, 1024), np.float32)          # 128 MiB
        w = np.ones((1, 32, 3, 3), np.float32)
        ops.conv2d(x[:, :, :8, :8], w, stride=2, padding=1, backend="cpu")  # threads started
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (48 << 20), resource.RLIM_INFINITY))
        try:
            ops.conv2d(x, w, stride=2, padding=1, backend="cpu")  # its phase grid needs ~128 MiB
        except MemoryError as e:
            assert "conv2d" in str(e) and "bytes" in str(e), e
        else:
            raise AssertionError("no MemoryError")
        print("ok")
    """)


# ---- NaN boxes ------------------------------------------------------------------------------

def nan_boxes(rng, n, dtype):
    boxes = rng.uniform(0, 10, (n, 4))
    boxes[:, 2:] += boxes[:, :2]
    boxes[rng.random((n, 4)) < 0.08] = np.nan
    boxes[rng.random((n, 4)) < 0.03] = np.inf
    boxes[rng.random((n, 4)) < 0.03] = -np.inf
    return boxes.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_iou_propagates_nan_as_the_reference(isa, rng, dtype):
    a = np.array([[0, 0, 2, 2], [np.nan, 0, 2, 2], [0, 0, np.nan, 2], [1, 1, 3, 3]], dtype)
    got = ops.box_iou(a, a, backend="cpu")
    np.testing.assert_array_equal(got, ops.box_iou(a, a, backend="reference"))
    assert np.isnan(got[1]).all() and np.isnan(got[:, 2]).all()
    a, b = nan_boxes(rng, 37, dtype), nan_boxes(rng, 41, dtype)
    with np.errstate(invalid="ignore"):
        expected = ops.box_iou(a, b, backend="reference")
    np.testing.assert_allclose(ops.box_iou(a, b, backend="cpu"), expected, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.3, 0.7])
def test_nms_with_nan_boxes_keeps_what_the_reference_keeps(isa, rng, dtype, threshold):
    boxes = nan_boxes(rng, 300, dtype)
    scores = rng.random(300).astype(dtype)
    idxs = rng.integers(0, 3, 300)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(ops.nms(boxes, scores, threshold, backend="cpu"),
                                      ops.nms(boxes, scores, threshold, backend="reference"))
        np.testing.assert_array_equal(
            ops.batched_nms(boxes, scores, idxs, threshold, backend="cpu"),
            ops.batched_nms(boxes, scores, idxs, threshold, backend="reference"))


# ---- Subnormal floats: flushed to zero inside the kernels, the caller's MXCSR untouched --------

FTZ_DAZ = 0x8040  # MXCSR bits 15 (flush to zero) and 6 (denormals are zero)


def run_every_op(rng):
    """One call of every cpu kernel family, on small inputs."""
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    y = ops.conv2d(x, w, padding=1, stride=2, backend="cpu")
    ops.conv2d_backward(np.ones_like(y), x, w, padding=1, stride=2, backend="cpu")
    ops.conv2d(x, np.ones((8, 1, 3, 3), np.float32), groups=8, backend="cpu")
    ops.max_pool2d(x, 2, return_indices=True, backend="cpu")
    ops.avg_pool2d(x, 3, stride=2, padding=1, backend="cpu")
    seq = rng.standard_normal((3, 2, 5)).astype(np.float32)
    h = np.zeros((2, 4), np.float32)
    ops.lstm(seq, h, h, rng.standard_normal((16, 5)).astype(np.float32),
             rng.standard_normal((16, 4)).astype(np.float32), backend="cpu")
    boxes = nan_boxes(rng, 50, np.float32)
    ops.box_iou(boxes, boxes, backend="cpu")
    ops.nms(boxes, rng.random(50).astype(np.float32), 0.5, backend="cpu")
    rotated = np.concatenate([boxes[:, :2], np.abs(boxes[:, 2:] - boxes[:, :2]), boxes[:, :1]], axis=1)
    ops.box_iou_rotated(rotated, rotated, backend="cpu")
    ops.nms_rotated(rotated, rng.random(50).astype(np.float32), 0.5, backend="cpu")


def test_kernels_leave_every_threads_mxcsr_as_they_found_it(rng):
    import pyconv

    threads = pyconv.get_num_threads()
    pyconv.set_num_threads(3)
    try:
        caller = _C.mxcsr()
        assert not caller & FTZ_DAZ
        run_every_op(rng)
        assert _C.mxcsr() == caller
        workers = _C.worker_mxcsrs()
        assert len(workers) >= 2  # the ops above ran on the pool's workers
        assert not any(csr & FTZ_DAZ for csr in workers)
    finally:
        pyconv.set_num_threads(threads)


@pytest.mark.parametrize("dtype, tiny", [(np.float32, 1e-39), (np.float64, 1e-310)])
def test_subnormal_weights_act_as_zero(isa, rng, dtype, tiny):
    """Subnormal weights are read as zero: the result equals that of the weights flushed."""
    x = rng.standard_normal((2, 16, 12, 12)).astype(dtype)
    b = rng.standard_normal(32).astype(dtype)
    w = rng.standard_normal((32, 16, 3, 3)).astype(dtype)
    subnormal = rng.random(w.shape) < 0.5
    w[subnormal] *= tiny
    assert np.all(np.abs(w[subnormal]) < np.finfo(dtype).tiny)
    flushed = np.where(subnormal, 0, w).astype(dtype)
    for args in (dict(padding=1), dict(stride=2), dict(groups=16)):
        wa, fa = (w, flushed) if "groups" not in args else (w[:, :1], flushed[:, :1])
        np.testing.assert_array_equal(ops.conv2d(x, wa, b, **args, backend="cpu"),
                                      ops.conv2d(x, fa, b, **args, backend="cpu"))
    w_all = (rng.standard_normal((32, 16, 3, 3)) * tiny).astype(dtype)
    y = ops.conv2d(x, w_all, b, padding=1, backend="cpu")
    np.testing.assert_array_equal(y, np.broadcast_to(b[:, None, None], y.shape[1:])[None].repeat(2, 0))
    gx, _, _ = ops.conv2d_backward(np.ones_like(y), x, w_all, padding=1, backend="cpu")
    assert not np.any(gx)


# ---- Geometry objects, read field by field ------------------------------------------------------

def test_a_geometry_is_read_by_field_name_with_clear_errors():
    from pyconv import _spec
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    g = _spec.conv2d(x, w, None, 1, 1, 1, 1)
    fields = {name: getattr(g, name) for name in g._fields}
    y = np.empty(g.output_shape, np.float32)
    # any object with the fields, NumPy integers included
    _C.conv2d(x, w, None, y, types.SimpleNamespace(**{k: np.int64(v) if isinstance(v, int) else v
                                                     for k, v in fields.items()}))
    np.testing.assert_array_equal(y, ops.conv2d(x, w, padding=1, backend="cpu"))
    missing = types.SimpleNamespace(**{k: v for k, v in fields.items() if k != "Wo"})
    with pytest.raises(TypeError, match="expected a ConvGeom .* without field 'Wo'"):
        _C.conv2d(x, w, None, y, missing)
    with pytest.raises(TypeError, match="field 'sh' of the ConvGeom must be an integer"):
        _C.conv2d(x, w, None, y, types.SimpleNamespace(**{**fields, "sh": 1.0}))
    with pytest.raises(TypeError, match="field 'algorithm' of the ConvGeom must be an integer"):
        _C.conv2d(x, w, None, y, types.SimpleNamespace(**{**fields, "algorithm": "auto"}))


def test_a_named_tuple_is_read_by_position_only_when_its_fields_are_in_order():
    """pyconv's geometries (NamedTuples) are read by position once their type lists the fields
    in the kernels' order; a NamedTuple with the same fields in another order, or with extra
    ones, is still read by name."""
    import collections
    from pyconv import _spec
    x = np.random.default_rng(0).random((2, 3, 9, 7)).astype(np.float32)
    w = np.random.default_rng(1).random((4, 3, 3, 2)).astype(np.float32)
    g = _spec.conv2d(x, w, None, (2, 1), (1, 0), 1, 1)
    expected = ops.conv2d(x, w, stride=(2, 1), padding=(1, 0), backend="reference")
    fields = g._asdict()
    shuffled = collections.namedtuple("Shuffled", list(reversed(g._fields)))
    extra = collections.namedtuple("Extra", list(g._fields) + ["note"])
    pool = _spec.max_pool2d(x, (2, 2), (2, 2), (0, 0), (1, 1), False)
    for geometry in (g, g, shuffled(**fields), g, extra(**fields, note=7), g, g._replace(algorithm=3), pool):
        y = np.full(g.output_shape, np.nan, np.float32)
        if geometry is pool:  # the pool's geometry in between: the cache of its own
            _C.max_pool2d(x, np.empty(pool.output_shape, np.float32), None, pool)
            continue
        _C.conv2d(x, w, None, y, geometry)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
