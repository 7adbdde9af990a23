"""What is specific to the cpu backend's pooling, LSTM and NMS kernels, on every ISA variant of
the C++ extension: the streaming average pool, repeated indices, saturated gates, NMS on ties,
NaN scores and degenerate boxes against the oracle and OpenCV, and the bindings' own checks.
(Every kernel's results are checked against the reference, under every ISA, in
test_conformance.py.)"""
import math

import numpy as np
import oracles
import pytest

import pyconv
from pyconv import ops
from pyconv._spec import PoolGeom

_C = pytest.importorskip("pyconv._C")
torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def close(a, b, dtype):
    np.testing.assert_allclose(a, b.detach().numpy() if torch.is_tensor(b) else b, **TOL[dtype])


# ---------------------------------------------------------------------------------------------
# Pooling. Widths of 40+ columns put whole vectors (16 floats with AVX-512) inside the rows, so
# the vector path, its overlapping last vector and the scalar border columns all run.


def test_avg_pool2d_of_an_input_larger_than_the_cache_matches_torch(isa):
    """Above 24 MiB of input + output the kernel streams its output from a buffer, block of
    rows by block of rows: odd widths put the blocks at unaligned addresses."""
    x = np.random.default_rng(9).standard_normal((3, 5, 647, 661)).astype(np.float32)  # 25.7 MB
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        close(ops.avg_pool2d(x, k, s, p), F.avg_pool2d(t(x), k, s, p), np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_over_the_whole_plane_matches_torch(isa, dtype):
    """A window that covers the whole unpadded plane (a global average) sums each plane as one
    contiguous run: planes of one element, shorter than a vector, of whole blocks of four vectors
    and of a block plus vectors plus a tail; with a divisor override; 1-4 threads alike."""
    rng, threads_before = np.random.default_rng(5), pyconv.get_num_threads()
    try:
        for H, W in [(1, 1), (3, 2), (8, 8), (7, 7), (9, 15), (33, 17)]:
            x = rng.standard_normal((5, 7, H, W)).astype(dtype)
            first = None
            for threads in (1, 2, 4):
                pyconv.set_num_threads(threads)
                y = ops.avg_pool2d(x, (H, W), (H, W), 0, backend="cpu")
                first = y if first is None else first
                np.testing.assert_array_equal(y, first)
            close(y, F.avg_pool2d(t(x), (H, W)), dtype)
            close(ops.avg_pool2d(x, (H, W), 1, 0, divisor_override=5, backend="cpu"),
                  F.avg_pool2d(t(x), (H, W), 1, 0, divisor_override=5), dtype)
    finally:
        pyconv.set_num_threads(threads_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_2x2_stride_2_rows_of_every_length(isa, dtype):
    """2x2 windows at stride 2 without padding take a path of their own (two rows per output row,
    `lanes` outputs per step, a partial step at the end): rows shorter than a vector, of whole
    vectors plus a tail, odd sizes (the last row and column dropped, or kept by ceil mode, which
    the general path then runs), NaN, infinities and tied signed zeros, on one and two threads:
    against PyTorch, and bit for bit (signed zeros too) against the general path, which runs
    when indices are asked for."""
    rng, threads_before = np.random.default_rng(3), pyconv.get_num_threads()
    for H, W in [(2, 2), (4, 6), (10, 10), (28, 28), (5, 33), (6, 34), (3, 66), (8, 129)]:
        x = rng.standard_normal((3, 4, H, W)).astype(dtype)
        x.flat[rng.integers(0, x.size, 6)] = np.nan
        x.flat[rng.integers(0, x.size, 4)] = np.inf
        x.flat[rng.integers(0, x.size, 4)] = -np.inf
        x[0, 0] = -0.0
        x[0, 0, 0, 1::4] = 0.0
        for threads in (1, 2):
            pyconv.set_num_threads(threads)
            for ceil in (False, True):
                y = ops.max_pool2d(x, 2, 2, 0, 1, ceil)
                close(y, F.max_pool2d(t(x), 2, 2, 0, 1, ceil), dtype)
                # the general path, with indices, gives the same bits (signed zeros included)
                y_general, _ = ops.max_pool2d(x, 2, 2, 0, 1, ceil, return_indices=True)
                np.testing.assert_array_equal(np.signbit(y), np.signbit(y_general))
                np.testing.assert_array_equal(y, y_general)
    pyconv.set_num_threads(threads_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_with_relu_is_relu_of_the_pool_bit_for_bit(isa, dtype):
    """relu=True (the ONNX graph's MaxPool+Relu step) clamps each output as it is stored: the
    same bits as the pool followed by relu (NaN and -0 kept), on the 2x2 stride-2 path (rows
    shorter than a vector, whole vectors plus a tail) and on the general path."""
    from pyconv import _spec

    rng = np.random.default_rng(4)
    for H, W, k, s, p in [(10, 10, 2, 2, 0), (28, 28, 2, 2, 0), (6, 70, 2, 2, 0), (9, 11, 3, 2, 1),
                          (7, 40, 3, 1, 1)]:
        x = rng.standard_normal((2, 3, H, W)).astype(dtype)
        x[1].flat[rng.integers(0, x[1].size, 5)] = np.nan
        x[0, 0] = -0.0
        x[0, 1] = -np.abs(x[0, 1])  # a plane of negative maxima
        g = _spec.max_pool2d(x, (k, k), (s, s), (p, p), (1, 1), False)
        y = np.empty(g.output_shape, dtype)
        _C.max_pool2d(x, y, None, g, relu=True)
        pooled = ops.max_pool2d(x, k, s, p, backend="cpu")
        expected = np.where(pooled < 0, dtype(0), pooled)
        assert (expected[0, 1] == 0).all() and np.signbit(expected[0, 0]).all()
        np.testing.assert_array_equal(y, expected)
        np.testing.assert_array_equal(np.signbit(y), np.signbit(expected))


def test_max_unpool2d_repeated_indices_last_wins(isa):
    x = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    idx = np.array([[[[5, 5], [0, 5]]]], np.int64)
    y = ops.max_unpool2d(x, idx, 2)
    want = np.zeros((1, 1, 4, 4), np.float32)
    want.flat[0], want.flat[5] = 3, 4
    np.testing.assert_array_equal(y, want)


def test_max_pool2d_backward_sums_repeated_indices(isa):
    g = np.ones((1, 1, 2, 2))
    idx = np.array([[[[0, 0], [3, 0]]]], np.int64)
    gx = ops.max_pool2d_backward(g, idx, (1, 1, 2, 2))
    np.testing.assert_array_equal(gx.ravel(), [3, 0, 0, 1])


# ---------------------------------------------------------------------------------------------
# LSTM: shapes with H not a multiple of the gate block (a full vector pair) and B not a multiple
# of the GEMM tile, so the padding paths run.


def torch_lstm(I, H, bias, dtype, seed):
    torch.manual_seed(seed)
    m = torch.nn.LSTM(I, H, bias=bias).to(torch.float64 if dtype == np.float64 else torch.float32)
    params = [m.weight_ih_l0, m.weight_hh_l0] + ([m.bias_ih_l0, m.bias_hh_l0] if bias else [None, None])
    return m, params


def arrays(params):
    return [None if p is None else p.detach().numpy() for p in params]


def sequence_inputs(T, B, I, H, dtype, seed):
    """x (T, B, I), h0 and c0 (B, H) and a grad_out (T, B, H), standard normal."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, c0 = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    return x, h0, c0, rng.standard_normal((T, B, H)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_backward_with_missing_gradients(isa, dtype):
    T, B, I, H = 3, 4, 6, 9
    m, params = torch_lstm(I, H, True, dtype, seed=7)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, c0, ghT = (rng.standard_normal((B, H)).astype(dtype) for _ in range(3))
    tx = t(x).requires_grad_()
    _, (hT, _) = m(tx, (t(h0)[None], t(c0)[None]))
    (hT[0] * t(ghT)).sum().backward()
    gx, *_ = ops.lstm_backward(None, ghT, None, x, h0, c0, *arrays(params))
    close(gx, tx.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_reduction_across_inputs_and_states(isa, dtype):
    # I + H = 536 spans two of the GEMM's reduction blocks (268 each), so the step's product over
    # [x_t | h_{t-1}] has a block that starts in x and ends in h, and one that starts inside h;
    # I = 203 is not a multiple of the 8-row panel of the weight gradient over [x | h]^T, so a
    # panel there holds the last rows of x and the first of h.
    T, B, I, H = 3, 5, 203, 333
    m, params = torch_lstm(I, H, True, dtype, seed=11)
    x, h0, c0, gout = sequence_inputs(T, B, I, H, dtype, seed=11)
    tx = t(x).requires_grad_()
    tout, _ = m(tx, (t(h0)[None], t(c0)[None]))
    tout.backward(t(gout))
    out, _, saved = ops.lstm(x, h0, c0, *arrays(params), save_for_backward=True)
    close(out, tout, dtype)
    gx, _, _, gw_ih, gw_hh, gb_ih, _ = ops.lstm_backward(gout, None, None, x, h0, c0, *arrays(params),
                                                        saved=saved)
    close(gx, tx.grad, dtype)
    close(gw_ih, params[0].grad, dtype)
    close(gw_hh, params[1].grad, dtype)
    close(gb_ih, params[2].grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_backward_on_the_last_use_writes_over_the_saved_gates_only(isa, dtype):
    """A record marked last_use lends its gates to the backward as the gate gradients' buffer:
    the same gradients, bit for bit, and a record not so marked comes back untouched. Two
    threads' batch rows (B = 20) and the padding units of H = 9 both run."""
    import dataclasses

    T, B, I, H = 5, 20, 6, 9
    _, params = torch_lstm(I, H, True, dtype, seed=3)
    x, h0, c0, gout = sequence_inputs(T, B, I, H, dtype, seed=3)

    def forward():
        return ops.lstm(x, h0, c0, *arrays(params), save_for_backward=True)[2]

    def backward(saved, last_use):
        return ops.lstm_backward(gout, None, None, x, h0, c0, *arrays(params),
                                 saved=dataclasses.replace(saved, last_use=last_use))

    saved = forward()
    gates = saved.gates.copy()
    kept = backward(saved, last_use=False)
    np.testing.assert_array_equal(saved.gates, gates)
    lent = backward(saved, last_use=True)
    assert not np.array_equal(saved.gates, gates)  # the gate gradients are there now
    saved = forward()
    saved.gates.flags.writeable = False  # may, not must: read-only gates stay as they are
    read_only = backward(saved, last_use=True)
    np.testing.assert_array_equal(saved.gates, gates)
    for a, b, c in zip(kept, lent, read_only):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_lstm_graph_kept_for_a_second_backward_keeps_its_saved_gates(isa):
    """retain_graph=True: the LSTM's saved gates must survive the first pass, so a second pass
    adds the same gradients again; without it the pass may use them as scratch and gives the
    same gradients."""
    from pyconv import nn

    rng = np.random.default_rng(5)
    layer = nn.LSTM(6, 9)
    x = pyconv.Tensor(rng.standard_normal((5, 20, 6)).astype(np.float32))
    grads = []
    for retain in (True, False):
        layer.zero_grad()
        loss = (layer(x)[0] ** 2).sum()
        loss.backward(retain_graph=retain)
        grads.append([p.grad.copy() for p in layer.parameters()])
        if retain:
            loss.backward()
            for first, twice in zip(grads[0], layer.parameters()):
                np.testing.assert_allclose(twice.grad, 2 * first, rtol=1e-6, atol=1e-6)
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_lstm_saturated_gates_stay_finite(isa):
    # Huge pre-activations must saturate the sigmoid/tanh, not overflow to NaN.
    B, I, H = 2, 3, 20
    x = np.full((1, B, I), 1e4, np.float32)
    w_ih = np.ones((4 * H, I), np.float32)
    w_ih[H : 2 * H] = -1
    h0 = c0 = np.zeros((B, H), np.float32)
    out, (h, c) = ops.lstm(x, h0, c0, w_ih, np.zeros((4 * H, H), np.float32))
    np.testing.assert_allclose(c, 1.0, rtol=1e-6)
    np.testing.assert_allclose(h, math.tanh(1.0), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Boxes


def random_boxes(rng, n, dtype, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 3, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_ties_nan_scores_and_degenerate_boxes(isa, dtype):
    rng = np.random.default_rng(10)
    n = 200
    boxes = random_boxes(rng, n, dtype)
    boxes[10:20] = boxes[0]  # exact duplicates: IoU 1, suppressed by the first kept copy
    boxes[20:30, 2] = boxes[20:30, 0] - 5  # x2 < x1: empty, never suppress or get suppressed
    boxes[30:35, 3] = boxes[30:35, 1]  # zero height
    scores = rng.integers(0, 5, n).astype(dtype)  # many equal scores
    scores[rng.choice(n, 15, replace=False)] = np.nan
    scores[40] = -np.inf
    scores[41] = -0.0
    for thr in (0.2, 0.5, -0.5):
        np.testing.assert_array_equal(ops.nms(boxes, scores, thr), oracles.nms(boxes, scores, thr))
    keep = ops.nms(boxes, scores, 0.5)
    assert set(range(20, 35)) <= set(keep.tolist())  # empty boxes are never suppressed
    assert len(ops.nms(boxes, scores, -0.5)) == 1  # every IoU (>= 0) beats a negative threshold


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_matches_oracle(isa, dtype):
    rng = np.random.default_rng(11)
    n = 400
    boxes = random_boxes(rng, n, dtype, size=60.0)
    scores = rng.integers(0, 50, n).astype(dtype)
    for idxs in (rng.integers(0, 5, n), rng.integers(-3, 1000, n).astype(np.int32), np.zeros(n, np.int64)):
        keep = ops.batched_nms(boxes, scores, idxs, 0.4)
        np.testing.assert_array_equal(keep, oracles.nms(boxes, scores, 0.4, idxs.astype(np.int64)))
    assert ops.batched_nms(boxes[:0], scores[:0], np.zeros(0, np.int64), 0.5).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_ranks_subnormal_scores_above_zero(isa, dtype):
    # The kernels run with denormals-are-zero; the ranking must still see the smallest scores.
    tiny = np.finfo(dtype).smallest_subnormal
    scores = np.array([0, tiny, -0.0, tiny, -tiny], dtype)
    boxes = np.array([[4 * k, 0, 4 * k + 1, 1] for k in range(5)], dtype)  # apart: all kept
    assert ops.nms(boxes, scores, 0.5).tolist() == [1, 3, 0, 2, 4]


def test_nms_threshold_is_compared_exactly(isa):
    # IoU is exactly 0.5 in float32; the threshold 0.5 keeps both, anything just below drops one.
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], np.float32)  # IoU 1/2
    scores = np.array([1, 0.5], np.float32)
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert ops.nms(boxes, scores, np.nextafter(0.5, 0)).tolist() == [0]
    assert ops.nms(boxes, scores, 0.49999999999).tolist() == [0]


def test_nms_agrees_with_opencv_on_5000_boxes(isa):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(12)
    n = 5000
    centers = rng.uniform(0, 1000, (100, 2))
    xy = centers[rng.integers(0, 100, n)] + rng.normal(0, 10, (n, 2))
    wh = rng.uniform(20, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0.01, 1, n).astype(np.float32)  # all above cv2's score threshold 0
    for thr in (0.3, 0.5, 0.7):
        # cv2 takes (x, y, w, h); it visits boxes by decreasing score, ties by index as well.
        xywh = [(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])) for b in boxes]
        want = np.asarray(cv2.dnn.NMSBoxes(xywh, scores.tolist(), 0.0, thr)).ravel()
        np.testing.assert_array_equal(ops.nms(boxes, scores, thr), want)


# ---------------------------------------------------------------------------------------------
# Bad input reaches the user as ValueError / TypeError, from the spec or from the bindings.


def test_bad_inputs_raise_clear_errors():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="indices"):
        ops.max_pool2d_backward(np.ones((1, 1, 2, 2), np.float32), np.full((1, 1, 2, 2), 16), x.shape)
    with pytest.raises(ValueError, match="indices"):
        ops.max_unpool2d(np.ones((1, 1, 2, 2), np.float32), np.full((1, 1, 2, 2), -1), 2)
    with pytest.raises(ValueError, match="padding"):
        ops.avg_pool2d(x, 2, padding=2)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.max_pool2d(x.astype(np.int32), 2)
    w = np.zeros((8, 3), np.float32)
    with pytest.raises(ValueError, match="w_hh"):
        ops.lstm_cell(np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32),
                      np.zeros((1, 2), np.float32), w, np.zeros((8, 3), np.float32))
    with pytest.raises(TypeError, match="dtypes differ"):
        ops.lstm(np.zeros((1, 1, 3)), np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32),
                 w, np.zeros((8, 2), np.float32))
    boxes = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        ops.nms(np.zeros((3, 5), np.float32), np.zeros(3, np.float32), 0.5)
    with pytest.raises(ValueError, match="one entry per box"):
        ops.nms(boxes, np.zeros(2, np.float32), 0.5)
    with pytest.raises(TypeError, match="idxs"):
        ops.batched_nms(boxes, np.zeros(3, np.float32), np.zeros(3, np.float32), 0.5)
    with pytest.raises(TypeError, match="iou_threshold"):
        ops.nms(boxes, np.zeros(3, np.float32), float("nan"))


def test_bindings_check_buffers():
    """A direct call into _C with wrong buffers raises instead of touching memory."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="grad_out"):
        _C.max_pool2d_backward(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.int64), x)
    with pytest.raises(ValueError, match="outside"):
        _C.max_unpool2d(np.ones((1, 1, 2, 2), np.float32), np.full((1, 1, 2, 2), 99, np.int64), x)
    with pytest.raises(TypeError, match="float32"):
        _C.avg_pool2d(x, np.zeros((1, 1, 2, 2)), True, 0,
                      PoolGeom(N=1, C=1, H=4, W=4, Ho=2, Wo=2, kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, dh=1, dw=1))
    with pytest.raises(ValueError, match="keep"):
        _C.nms(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), None, 0.5, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="c_T"):
        _C.lstm(np.zeros((1, 1, 3), np.float32), np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32),
                np.zeros((8, 3), np.float32), np.zeros((8, 2), np.float32), None, None,
                np.zeros((1, 1, 2), np.float32), None, np.zeros((2, 2), np.float32))


def test_threads_setting_is_honoured():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 8, 20, 40)).astype(np.float32)
    before = pyconv.get_num_threads()
    try:
        pyconv.set_num_threads(1)
        one = ops.avg_pool2d(x, 3, 2, 1)
        pyconv.set_num_threads(2)
        two = ops.avg_pool2d(x, 3, 2, 1)
    finally:
        pyconv.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
