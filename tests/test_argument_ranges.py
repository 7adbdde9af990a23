"""Integer arguments out of range, outputs too large to address, arguments of the wrong type,
and the defined behaviour of NaN and infinite box coordinates, on every CPU backend.

pyconv._spec bounds every integer argument and every quantity derived from them below 2**62
and every output below 2**62 bytes, so an out-of-range call is a ValueError naming the op and
the argument, raised before any backend runs, identical on every backend. Consistent large
values (a stride of 2**62 - 1 with one output position) stay valid.
"""
import importlib
import inspect
from fractions import Fraction

import numpy as np
import pytest

import pyconv
from pyconv import ops

from conftest import assert_close

_registry = importlib.import_module("pyconv.backends")

CPU_BACKENDS = [b for b in ("reference", "cpu", "numba") if b in pyconv.backends()]
# Every backend runs the large-but-valid geometries below (strides, dilations and windows up
# to 2**62 - 1) with scratch bounded by its operands.
LARGE_GEOMETRY_BACKENDS = CPU_BACKENDS


def f32(*shape):
    return np.ones(shape, np.float32)


X, W = f32(1, 2, 4, 4), f32(3, 2, 1, 1)
X1, W1 = f32(1, 2, 4), f32(3, 2, 1)
GO = f32(1, 3, 4, 4)                       # grad_out of conv2d(X, W)
WT = f32(2, 3, 1, 1)                       # conv_transpose2d(X, WT): (1, 3, 4, 4)
PG, PI = f32(1, 2, 2, 2), np.zeros((1, 2, 2, 2), np.int64)
LX, WIH, WHH = f32(3, 4), f32(20, 4), f32(20, 5)
BOXES, SCORES = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32), np.array([1, 2], np.float32)
# Zero-stride views: shapes far beyond memory that cost nothing, for the size checks.
MANY_BOXES = np.broadcast_to(np.float32(1), (2**31, 4))
MANY_SCORES = np.broadcast_to(np.float32(1), (2**31,))
MANY_IDXS = np.broadcast_to(np.int64(0), (2**31,))
ROTATED = np.array([[0, 0, 1, 1, 0], [0, 0, 2, 2, 30]], np.float32)
MANY_ROTATED = np.broadcast_to(np.float32(1), (2**31, 5))

# op, case id, args, kwargs, substrings the ValueError message must contain
OUT_OF_RANGE = [
    # integer arguments beyond (-2**62, 2**62)
    ("avg_pool2d", "divisor_override_2**70", (X, 2), dict(divisor_override=2**70), ["divisor_override"]),
    ("embedding_backward", "num_embeddings_2**62", (f32(2, 3), np.zeros(2, np.int64), 2**62), {}, ["num_embeddings"]),
    ("embedding_backward", "num_embeddings_too_large_a_table", (f32(2, 3), np.zeros(2, np.int64), 2**60), {},
     ["output"]),
    ("embedding_backward", "padding_idx_2**70", (f32(2, 3), np.zeros(2, np.int64), 4), dict(padding_idx=2**70),
     ["padding_idx"]),
    ("avg_pool2d", "divisor_override_-2**62", (X, 2), dict(divisor_override=-2**62), ["divisor_override"]),
    ("avg_pool2d_backward", "divisor_override_2**70", (PG, X.shape, 2), dict(divisor_override=2**70), ["divisor_override"]),
    ("conv2d", "stride_2**62", (X, W), dict(stride=2**62), ["stride"]),
    ("conv2d", "stride_2**70_pair", (X, W), dict(stride=(1, 2**70)), ["stride"]),
    ("conv2d", "stride_-2**70", (X, W), dict(stride=-2**70), ["stride"]),
    ("conv2d", "padding_2**62", (X, W), dict(padding=2**62), ["padding"]),
    ("conv2d", "dilation_2**70", (X, W), dict(dilation=2**70), ["dilation"]),
    ("conv2d", "groups_2**70", (X, W), dict(groups=2**70), ["groups"]),
    ("conv1d", "stride_2**62", (X1, W1), dict(stride=2**62), ["stride"]),
    ("conv2d_backward", "stride_2**70", (GO, X, W), dict(stride=2**70), ["stride"]),
    ("conv1d_backward", "dilation_2**62", (f32(1, 3, 4), X1, W1), dict(dilation=2**62), ["dilation"]),
    ("conv_transpose2d", "stride_2**62", (X, WT), dict(stride=2**62), ["stride"]),
    ("conv_transpose2d", "output_padding_2**70", (X, WT), dict(output_padding=2**70), ["output_padding"]),
    ("conv_transpose2d_backward", "padding_2**70", (GO, X, WT), dict(padding=2**70), ["padding"]),
    ("max_pool2d", "kernel_size_2**62", (X, 2**62), {}, ["kernel_size"]),
    ("max_pool2d", "stride_2**62", (X, 2), dict(stride=2**62), ["stride"]),
    ("max_pool2d", "padding_2**70", (X, 2), dict(padding=2**70), ["padding"]),
    ("max_pool2d", "dilation_2**70", (X, 2), dict(dilation=2**70), ["dilation"]),
    ("avg_pool2d", "kernel_size_2**70", (X, (2, 2**70)), {}, ["kernel_size"]),
    ("avg_pool2d", "stride_2**62", (X, 2), dict(stride=2**62), ["stride"]),
    ("max_unpool2d", "kernel_size_2**62", (PG, PI, 2**62), {}, ["kernel_size"]),
    ("max_unpool2d", "stride_2**70", (PG, PI, 2), dict(stride=2**70), ["stride"]),
    ("max_unpool2d", "output_size_2**70", (PG, PI, 2), dict(output_size=(4, 2**70)), ["output_size"]),
    ("max_pool2d_backward", "input_shape_2**70", (PG, PI, (1, 2, 2**70, 4)), {}, ["input_shape"]),
    ("avg_pool2d_backward", "input_shape_2**62", (PG, (1, 2, 4, 2**62), 2), {}, ["input_shape"]),
    # derived extents beyond 2**62
    ("conv2d", "padded_height", (X, W), dict(padding=(2**61, 0)), ["padded height"]),
    ("conv1d", "padded_width", (X1, W1), dict(padding=2**61), ["padded width"]),
    ("conv_transpose2d", "output_height", (X, WT), dict(stride=(2**61, 1)), ["output height"]),
    ("max_pool2d", "dilated_kernel", (X, 3), dict(stride=2**62 - 1, dilation=2**61, ceil_mode=True), ["dilated kernel"]),
    ("avg_pool2d", "window_area", (X, 2**32), dict(padding=2**31), ["window area"]),
    ("max_unpool2d", "reach", (f32(1, 2, 4, 4), np.zeros((1, 2, 4, 4), np.int64), 2), dict(stride=2**61), ["reach"]),
    # outputs of 2**62 bytes or more
    ("conv2d", "output_bytes", (X, W), dict(padding=2**40), ["output of shape"]),
    ("conv_transpose2d", "output_bytes", (X, WT), dict(stride=2**40), ["output of shape"]),
    ("max_pool2d_backward", "output_bytes", (PG, PI, (1, 2, 2**31, 2**31)), {}, ["output of shape"]),
    ("avg_pool2d_backward", "output_bytes", (f32(1, 2, 1, 1), (1, 2, 2**31, 2**31), 2**31), {}, ["output of shape"]),
    ("max_unpool2d", "output_bytes", (f32(1, 2, 2**0, 2**0), np.zeros((1, 2, 1, 1), np.int64), 2**31), {}, ["output of shape"]),
    ("box_iou", "output_bytes", (MANY_BOXES, MANY_BOXES), {}, ["output of shape"]),
    # more boxes than NMS ranks
    ("nms", "boxes_2**31", (MANY_BOXES, MANY_SCORES, 0.5), {}, ["2**31 - 1 boxes"]),
    ("batched_nms", "boxes_2**31", (MANY_BOXES, MANY_SCORES, MANY_IDXS, 0.5), {}, ["2**31 - 1 boxes"]),
    ("nms", "iou_threshold_10**400", (BOXES, SCORES, 10**400), {}, ["iou_threshold"]),
    ("box_iou_rotated", "output_bytes", (MANY_ROTATED, MANY_ROTATED), {}, ["output of shape"]),
    ("nms_rotated", "boxes_2**31", (MANY_ROTATED, MANY_SCORES, 0.5), {}, ["2**31 - 1 boxes"]),
    ("nms_rotated", "iou_threshold_10**400", (ROTATED, SCORES, 10**400), {}, ["iou_threshold"]),
    ("soft_nms", "boxes_2**31", (MANY_BOXES, MANY_SCORES), {}, ["2**31 - 1 boxes"]),
    ("soft_nms", "iou_threshold_inf", (BOXES, SCORES, 0.5, float("inf")), {}, ["iou_threshold", "finite"]),
    ("soft_nms", "score_threshold_inf", (BOXES, SCORES), {"score_threshold": -float("inf")}, ["score_threshold"]),
    ("soft_nms", "sigma_0", (BOXES, SCORES, 0.0), {}, ["sigma", "> 0"]),
    ("soft_nms", "sigma_inf", (BOXES, SCORES, float("inf")), {}, ["sigma"]),
    ("diou_nms", "boxes_2**31", (MANY_BOXES, MANY_SCORES, 0.5), {}, ["2**31 - 1 boxes"]),
    ("diou_nms", "iou_threshold_inf", (BOXES, SCORES, float("inf")), {}, ["iou_threshold", "finite"]),
    ("matrix_nms", "boxes_2**31", (MANY_BOXES, MANY_SCORES, MANY_IDXS), {}, ["2**31 - 1 boxes"]),
    ("matrix_nms", "sigma_negative", (BOXES, SCORES, np.zeros(2, np.int64)), {"sigma": -1.0}, ["sigma", "> 0"]),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op, args, kwargs, words",
                         [pytest.param(op, a, k, m, id=f"{op}-{cid}") for op, cid, a, k, m in OUT_OF_RANGE])
def test_out_of_range_is_a_value_error_naming_op_and_argument(op, args, kwargs, words, backend):
    with pytest.raises(ValueError) as info:
        getattr(ops, op)(*args, **kwargs, backend=backend)
    assert type(info.value) is ValueError
    message = str(info.value)
    assert message.startswith(f"{op}: "), message
    for word in words:
        assert word in message, message


SIZE_ARGUMENTS = {"stride", "padding", "dilation", "groups", "kernel_size", "output_padding",
                  "output_size", "input_shape", "divisor_override", "iou_threshold"}


def test_out_of_range_cases_cover_every_op_with_size_arguments():
    with_sizes = {op for op in ops.__all__
                  if SIZE_ARGUMENTS & set(inspect.signature(getattr(ops, op)).parameters)}
    assert {op for op, *_ in OUT_OF_RANGE} >= with_sizes


def test_the_message_is_the_same_on_every_backend():
    messages = set()
    for backend in CPU_BACKENDS:
        with pytest.raises(ValueError) as info:
            ops.avg_pool2d(X, 2, divisor_override=2**70, backend=backend)
        messages.add(str(info.value))
    assert len(messages) == 1


# --------------------------------------------------------------------------------------------
# Integer-like arguments: Python and NumPy integers are ints; bools, floats (even integral
# ones), strings and others are TypeErrors naming the op and the argument.

NOT_INTS = [True, np.True_, 2.0, np.float32(2), np.float64(2), Fraction(2, 1), "2", 2 + 0j, np.array(2)]
NUMPY_INTS = [np.int8(2), np.int32(2), np.int64(2), np.uint8(2), np.uint64(2)]

# op, argument name, call taking the value, and what the value replaces (2 in each call)
INT_ARGUMENTS = [
    ("conv2d", "stride", lambda v, be: ops.conv2d(X, W, stride=v, backend=be)),
    ("conv2d", "padding", lambda v, be: ops.conv2d(X, W, padding=(1, v), backend=be)),
    ("conv2d", "dilation", lambda v, be: ops.conv2d(X, W, dilation=v, backend=be)),
    ("conv2d", "groups", lambda v, be: ops.conv2d(X, f32(2, 1, 1, 1), groups=v, backend=be)),
    ("conv1d", "stride", lambda v, be: ops.conv1d(X1, W1, stride=v, backend=be)),
    ("conv_transpose2d", "stride", lambda v, be: ops.conv_transpose2d(X, WT, stride=v, backend=be)),
    ("conv_transpose2d", "output_padding", lambda v, be: ops.conv_transpose2d(
        X, WT, stride=3, output_padding=v, backend=be)),
    ("max_pool2d", "kernel_size", lambda v, be: ops.max_pool2d(X, v, backend=be)),
    ("max_pool2d", "stride", lambda v, be: ops.max_pool2d(X, 2, stride=(v, 1), backend=be)),
    ("max_pool2d", "dilation", lambda v, be: ops.max_pool2d(X, 2, dilation=v, backend=be)),
    ("avg_pool2d", "padding", lambda v, be: ops.avg_pool2d(f32(1, 2, 6, 6), 4, padding=v, backend=be)),
    ("avg_pool2d", "divisor_override", lambda v, be: ops.avg_pool2d(X, 2, divisor_override=v, backend=be)),
    ("max_unpool2d", "output_size", lambda v, be: ops.max_unpool2d(PG, PI, 1, output_size=(2, v),
                                                                   backend=be)),
    ("max_pool2d_backward", "input_shape", lambda v, be: ops.max_pool2d_backward(
        PG, PI, (1, v, 4, 4), backend=be)),
    ("avg_pool2d_backward", "input_shape", lambda v, be: ops.avg_pool2d_backward(
        PG, (1, v, 4, 4), 2, backend=be)),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("value", NOT_INTS, ids=lambda v: f"{type(v).__name__}-{v!r}")
@pytest.mark.parametrize("op, name, call", INT_ARGUMENTS, ids=[f"{op}-{name}" for op, name, _ in INT_ARGUMENTS])
def test_non_integers_are_type_errors(op, name, call, value, backend):
    with pytest.raises(TypeError) as info:
        call(value, backend)
    message = str(info.value)
    assert message.startswith(f"{op}: ") and name in message, message


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op, name, call", INT_ARGUMENTS, ids=[f"{op}-{name}" for op, name, _ in INT_ARGUMENTS])
def test_numpy_integers_are_ints(op, name, call, backend):
    expected = call(2, backend)
    for value in NUMPY_INTS:
        got = call(value, backend)
        for a, b in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, expected))):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# Large but consistent geometries stay valid: each gives what an equivalent small geometry
# gives (with one output position, any stride past the input reads the same window).


def _large_and_small():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    w = rng.standard_normal((3, 2, 1, 1)).astype(np.float32)
    w3 = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    x1, w1 = x[:, :, 0], rng.standard_normal((3, 2, 2)).astype(np.float32)
    wt = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    xt = x[:, :, :1, :1]                               # one pixel: the transposed output is one window
    g1 = rng.standard_normal((1, 3, 1, 1)).astype(np.float32)
    gp = rng.standard_normal((1, 2, 1, 1)).astype(np.float32)
    big = 2**62 - 1
    return [
        ("conv2d-stride_2**31", lambda s, be: ops.conv2d(x, w, stride=s, backend=be), 2**31, 100),
        ("conv2d-stride_2**62-1", lambda s, be: ops.conv2d(x, w3, stride=s, padding=1, backend=be), big, 100),
        ("conv2d-dilation_2**62-1_1x1", lambda d, be: ops.conv2d(x, w, dilation=d, backend=be), big, 1),
        ("conv1d-stride_2**62-1", lambda s, be: ops.conv1d(x1, w1, stride=s, backend=be), big, 100),
        ("conv2d_backward-stride_2**62-1", lambda s, be: ops.conv2d_backward(
            g1, x, w3, stride=s, backend=be), big, 100),
        ("conv_transpose2d-stride_2**62-1", lambda s, be: ops.conv_transpose2d(
            xt, wt, stride=s, backend=be), big, 100),
        ("max_pool2d-stride_2**62-1", lambda s, be: ops.max_pool2d(
            x, 3, stride=s, padding=1, return_indices=True, backend=be), big, 100),
        ("max_pool2d-dilation_2**62-1_kernel_1", lambda d, be: ops.max_pool2d(
            x, (2, 1), dilation=(1, d), return_indices=True, backend=be), big, 1),
        ("avg_pool2d-stride_2**62-1", lambda s, be: ops.avg_pool2d(x, 3, stride=s, padding=1, backend=be), big, 100),
        ("avg_pool2d_backward-stride_2**62-1", lambda s, be: ops.avg_pool2d_backward(
            gp, x.shape, 3, stride=s, padding=1, backend=be), big, 100),
        # A window 2**40 rows tall centred on the input: only 4 of its rows see the input.
        ("max_pool2d-kernel_2**40", lambda k, be: ops.max_pool2d(
            x, (k, 1), padding=(k // 2, 0), return_indices=True, backend=be), 2**40, 8),
        ("avg_pool2d-kernel_2**40-exclude_pad", lambda k, be: ops.avg_pool2d(
            x, (k, 1), padding=(k // 2, 0), count_include_pad=False, backend=be), 2**40, 8),
        ("avg_pool2d_backward-kernel_2**40-exclude_pad", lambda k, be: ops.avg_pool2d_backward(
            f32(1, 2, 1, 4), x.shape, (k, 1), padding=(k // 2, 0), count_include_pad=False, backend=be),
         2**40, 8),
        ("max_unpool2d-stride_2**62-1", lambda s, be: ops.max_unpool2d(
            gp, np.zeros((1, 2, 1, 1), np.int64), 2, stride=s, backend=be), big, 100),
    ]


LARGE = _large_and_small()


@pytest.mark.parametrize("backend", LARGE_GEOMETRY_BACKENDS)
@pytest.mark.parametrize("call, large, small", [pytest.param(c, lg, sm, id=i) for i, c, lg, sm in LARGE])
def test_large_consistent_geometry_is_valid(call, large, small, backend):
    expected = call(small, "reference")
    got = call(large, backend)
    for a, b in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, expected))):
        if b is None:
            assert a is None
        elif b.dtype.kind == "i":
            np.testing.assert_array_equal(a, b)
        else:
            assert_close(a, b)


@pytest.mark.parametrize("backend", LARGE_GEOMETRY_BACKENDS)
def test_huge_window_counting_padding_divides_by_its_size(backend):
    """count_include_pad: the divisor is the window's size, padding included (2**40 rows)."""
    x = np.arange(32, dtype=np.float64).reshape(1, 2, 4, 4)
    k = 2**40
    y = ops.avg_pool2d(x, (k, 1), padding=(k // 2, 0), backend=backend)
    np.testing.assert_allclose(y, x.sum(axis=2, keepdims=True) / k, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Outputs that are addressable but do not fit in memory: MemoryError naming the op.


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_output_beyond_memory_is_a_memory_error_naming_the_op(backend):
    if open("/proc/sys/vm/overcommit_memory").read().strip() == "1":
        pytest.skip("the kernel grants any allocation here; it would fail only when written")
    # (1, 1, 2**20 + 1, 2**20 + 1) float32: 4 TiB.
    with pytest.raises(MemoryError) as info:
        ops.conv2d(f32(1, 1, 1, 1), f32(1, 1, 1, 1), padding=2**19, backend=backend)
    assert str(info.value).startswith("conv2d: "), str(info.value)


# --------------------------------------------------------------------------------------------
# LSTM: h and c that disagree are named together.


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lstm_cell_names_both_states_when_they_disagree(backend):
    with pytest.raises(ValueError) as info:
        ops.lstm_cell(LX, f32(3, 5), f32(3, 4), f32(16, 4), f32(16, 4), backend=backend)
    message = str(info.value)
    assert "h and c disagree" in message and "(3, 5)" in message and "(3, 4)" in message, message


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lstm_names_both_initial_states_when_they_disagree(backend):
    with pytest.raises(ValueError) as info:
        ops.lstm(f32(2, 3, 4), f32(3, 4), f32(3, 5), WIH, WHH, backend=backend)
    message = str(info.value)
    assert "h0 and c0 disagree" in message and "(3, 4)" in message and "(3, 5)" in message, message


# --------------------------------------------------------------------------------------------
# The plane scatters of max_pool2d_backward and max_unpool2d, called directly on a backend
# (past the public ops' checks): indices out of range are skipped, counted and reported.

SCATTER_BACKENDS = [b for b in ("cpu", "numba") if b in pyconv.backends()]


@pytest.mark.parametrize("backend", SCATTER_BACKENDS)
@pytest.mark.parametrize("kernel", ["max_unpool2d", "max_pool2d_backward"])
def test_scatter_kernels_skip_and_report_bad_indices(kernel, backend):
    fn = _registry.get(backend).kernels[kernel]
    values = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2)
    good = np.array([0, 5, 10, 15, 1, 2, 3, 4], np.int64).reshape(1, 2, 2, 2)
    y = fn(values, good, (1, 2, 4, 4))
    expected = np.zeros((2, 16), np.float32)
    expected[0, [0, 5, 10, 15]] = [1, 2, 3, 4]
    expected[1, [1, 2, 3, 4]] = [5, 6, 7, 8]
    np.testing.assert_array_equal(y.reshape(2, 16), expected)
    for bad, count in [(good + 16, 8), (good - 1, 1), (good * 2**40, 7),
                       (np.full_like(good, np.iinfo(np.int64).min), 8)]:
        with pytest.raises(ValueError, match=rf"^{kernel}: {count} indices lie outside \[0, "):
            fn(values, bad, (1, 2, 4, 4))


@pytest.mark.parametrize("kernel", ["max_unpool2d", "max_pool2d_backward"])
def test_numba_scatter_checks_the_shapes_it_relies_on(kernel):
    if "numba" not in pyconv.backends():
        pytest.skip("numba backend not available")
    fn = _registry.get("numba").kernels[kernel]
    values = np.ones((1, 2, 2, 2), np.float32)
    for indices, shape in [(np.zeros((1, 2, 2, 1), np.int64), (1, 2, 4, 4)),   # indices too short
                           (np.zeros((1, 2, 2, 2), np.int64), (1, 3, 4, 4)),   # channels differ
                           (np.zeros((1, 2, 2, 2), np.int32), (1, 2, 4, 4))]:  # not int64
        with pytest.raises(ValueError, match=f"^{kernel}: "):
            fn(values, indices, shape)


# --------------------------------------------------------------------------------------------
# NaN and infinite box coordinates (the rule is in ops.box_iou's docstring).

nan, inf = np.nan, np.inf
BOX_BACKENDS = CPU_BACKENDS

# box a, box b, IoU
BOX_CASES = [
    ([0, 0, 2, 2], [nan, 0, 2, 2], nan),
    ([nan, 0, 2, 2], [0, 0, 2, 2], nan),
    ([0, 0, 2, 2], [0, 0, 2, nan], nan),
    ([0, 0, 2, 2], [5, 5, 6, nan], nan),           # disjoint, but NaN still wins
    ([1, 1, 0, 0], [0, 0, nan, 1], nan),           # an empty box against a NaN one
    ([0, 0, inf, inf], [0, 0, 1, 1], 0.0),         # 1 / inf
    ([0, 0, inf, inf], [0, 0, inf, inf], nan),     # inf / inf
    ([-inf, -inf, inf, inf], [0, 0, 1, 1], 0.0),
    ([0, 0, inf, 0], [0, 0, 1, 1], nan),           # zero height times infinite width
    ([inf, 0, inf, 1], [0, 0, 1, 1], nan),         # width inf - inf
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),
    ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),             # empty union
    ([2, 2, 0, 0], [0, 0, 2, 2], 0.0),             # inverted box: empty
]


@pytest.mark.parametrize("backend", BOX_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_iou_nan_and_inf(backend, dtype):
    a = np.array([c[0] for c in BOX_CASES], dtype)
    b = np.array([c[1] for c in BOX_CASES], dtype)
    expected = np.array([c[2] for c in BOX_CASES], dtype)
    got = np.diagonal(ops.box_iou(a, b, backend=backend))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.diagonal(ops.box_iou(b, a, backend=backend)), expected)


@pytest.mark.parametrize("backend", BOX_BACKENDS)
def test_box_iou_follows_torchvision_where_it_is_defined(backend, torch):
    """torchvision's formula (area (x2 - x1)*(y2 - y1), intersection clamped at 0, NaN
    propagating) on every box with coordinates from {0, 1, 2, nan, inf, -inf}, except where
    pyconv deviates on purpose: inverted boxes (empty here, negative area there) and empty
    unions (0 here, 0/0 there)."""
    values = [0.0, 1.0, 2.0, nan, inf, -inf]
    rng = np.random.default_rng(3)
    boxes = rng.choice(values, size=(300, 4))
    t = torch.from_numpy(boxes)
    area = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    wh = (torch.min(t[:, None, 2:], t[None, :, 2:]) - torch.max(t[:, None, :2], t[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, None] + area[None, :] - inter
    expected = (inter / union).numpy()
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    comparable = ~(inverted[:, None] | inverted[None, :]) & (union.numpy() != 0)
    got = ops.box_iou(boxes, boxes, backend=backend)
    assert comparable.sum() > 10000
    np.testing.assert_array_equal(got[comparable], expected[comparable])
    has_nan = np.isnan(boxes).any(axis=1)
    assert np.isnan(got[has_nan]).all() and np.isnan(got[:, has_nan]).all()


@pytest.mark.parametrize("backend, threshold", [(b, t) for b in CPU_BACKENDS for t in (0.5, 0.0, -1.0)])
def test_nms_nan_iou_never_suppresses(backend, threshold):
    boxes = np.array([[0, 0, 1, 1], [nan, 0, 1, 1], [0, 0, 1, 1], [0, 0, inf, inf]], np.float32)
    scores = np.array([4, 3, 2, 1], np.float32)
    kept = ops.nms(boxes, scores, threshold, backend=backend)
    # Box 2 duplicates box 0 (IoU 1); box 3 has IoU 0 with box 0 (kept at threshold >= 0).
    expected = {0.5: [0, 1, 3], 0.0: [0, 1, 3], -1.0: [0, 1]}[threshold]
    np.testing.assert_array_equal(kept, expected)


@pytest.mark.skipif("numba" not in pyconv.backends(), reason="numba backend not available")
def test_numba_kernels_check_the_geometry_they_rely_on():
    """Called directly with arrays or geometries the public ops would never pass, the numba
    kernels raise ValueError naming the kernel instead of indexing out of bounds."""
    from pyconv import _spec

    kernels = _registry.get("numba").kernels
    x = f32(1, 2, 4, 4)
    g = _spec.conv2d(x, W, None, 1, 0, 1, 1)
    pool = _spec.max_pool2d(x, 2, None, 0, 1, False)
    bad_calls = [
        ("conv2d", lambda: kernels["conv2d"](f32(1, 2, 5, 4), W, None, g)),
        ("conv2d", lambda: kernels["conv2d"](x, f32(3, 1, 1, 1), None, g)),
        ("conv2d", lambda: kernels["conv2d"](x, W, f32(2), g)),
        ("conv2d", lambda: kernels["conv2d"](x, W, None, g._replace(groups=2))),
        ("conv2d_grad_input", lambda: kernels["conv2d_grad_input"](f32(1, 3, 4, 3), W, g)),
        ("conv2d_grad_weight", lambda: kernels["conv2d_grad_weight"](GO, f32(1, 2, 4, 3), g)),
        ("max_pool2d", lambda: kernels["max_pool2d"](f32(1, 2, 3, 4), pool, True)),
        ("max_pool2d", lambda: kernels["max_pool2d"](x, pool._replace(ph=1, kh=1), True)),
        ("max_pool2d", lambda: kernels["max_pool2d"](x, pool._replace(Ho=3), True)),
        ("max_pool2d", lambda: kernels["max_pool2d"](x, pool._replace(Ho=5), True)),
        ("avg_pool2d", lambda: kernels["avg_pool2d"](x, pool._replace(pw=2, kw=2), True, 0)),
        ("avg_pool2d", lambda: kernels["avg_pool2d"](x, pool._replace(dh=2), True, 0)),
        ("avg_pool2d_backward", lambda: kernels["avg_pool2d_backward"](f32(1, 2, 3, 2), pool, True, 0)),
    ]
    for kernel, call in bad_calls:
        with pytest.raises(ValueError, match=f"^{kernel}: "):
            call()
    np.testing.assert_array_equal(kernels["max_pool2d"](x, pool, True)[0], f32(1, 2, 2, 2))


# --------------------------------------------------------------------------------------------
# LSTM gates saturated by infinite pre-activations: sigmoid(-inf) is exactly 0 and tanh(+-inf)
# exactly +-1 on every backend (so 0 * inf in the cell update is NaN, as in the reference).


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_cell_saturated_gates(backend, dtype):
    B, I, Hd = 2, 1, 3
    x = np.full((B, I), 0.5, dtype)
    h = np.full((B, Hd), 0.25, dtype)
    c = np.array([[1, 2, 3], [4, 5, np.inf]], dtype)
    w_ih = np.zeros((4 * Hd, I), dtype)
    w_hh = np.zeros((4 * Hd, Hd), dtype)
    w_hh[Hd:2 * Hd, 0] = -np.inf        # forget gate: sigmoid(-inf) = 0 for every unit
    w_ih[2 * Hd:3 * Hd, 0] = 40.0       # cell input: tanh(20) = 1 in both precisions
    w_ih[3 * Hd:, 0] = np.inf           # output gate: sigmoid(inf) = 1
    h_new, c_new = ops.lstm_cell(x, h, c, w_ih, w_hh, backend=backend)
    expected_c = np.full((B, Hd), 0.5, dtype)   # 0 * c + sigmoid(0) * 1
    expected_c[1, 2] = np.nan                   # 0 * inf
    np.testing.assert_array_equal(c_new, expected_c)
    assert_close(h_new, np.tanh(expected_c))   # tanh approximations differ in the last bits
