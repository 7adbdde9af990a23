"""The 'cuda' backend on a real GPU with CuPy arrays (deselected by default: ``pytest -m gpu``).

Each op runs on CuPy arrays and is compared with the same op on NumPy copies through PyTorch's
CPU kernels; the dispatch rules for CuPy arrays are checked too.
"""
import os

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"),
                       reason="needs the real GPU, not the simulator"),
]

cp = pytest.importorskip("cupy")
torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark.append(pytest.mark.skipif(not cp.is_available(), reason="no usable CUDA GPU"))

from pyconv import ops  # noqa: E402


def _close(got, want, dtype=np.float32):
    assert isinstance(got, cp.ndarray)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}
    want = want.detach().numpy() if hasattr(want, "detach") else want
    np.testing.assert_allclose(cp.asnumpy(got), want, equal_nan=True, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,H,W,K,R,S,stride,padding,dilation,groups", [
    (4, 16, 20, 18, 24, 3, 3, 1, 1, 1, 1),
    (2, 130, 9, 9, 140, 3, 3, 2, 1, 1, 1),  # several tiles along every GEMM dimension
    (2, 8, 11, 11, 12, 5, 3, 1, 2, 2, 4),
    (2, 16, 12, 12, 32, 3, 3, 1, 1, 1, 16),  # depthwise, channel multiplier 2
])
def test_conv2d_all_passes(dtype, N, C, H, W, K, R, S, stride, padding, dilation, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    y = ops.conv2d(cp.asarray(x), cp.asarray(w), cp.asarray(b), stride, padding, dilation, groups)
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    yt = F.conv2d(xt, wt, bt, stride, padding, dilation, groups)
    _close(y, yt, dtype)
    gy = rng.standard_normal(yt.shape).astype(dtype)
    yt.backward(torch.from_numpy(gy))
    grads = ops.conv2d_backward(cp.asarray(gy), cp.asarray(x), cp.asarray(w), stride, padding, dilation, groups)
    for got, want in zip(grads, (xt.grad, wt.grad, bt.grad)):
        _close(got, want, dtype)


def test_conv_transpose2d():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 8, 7, 7)).astype(np.float32), rng.standard_normal((8, 6, 4, 4)).astype(np.float32)
    y = ops.conv_transpose2d(cp.asarray(x), cp.asarray(w), None, 2, 1)
    _close(y, F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), None, 2, 1))


def test_pooling_and_unpooling():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 8, 33, 31)).astype(np.float32)
    y, idx = ops.max_pool2d(cp.asarray(x), 3, 2, 1, return_indices=True)
    yt, it = F.max_pool2d(torch.from_numpy(x), 3, 2, 1, return_indices=True)
    _close(y, yt)
    np.testing.assert_array_equal(cp.asnumpy(idx), it.numpy())
    gy = rng.standard_normal(y.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    F.max_pool2d(xt, 3, 2, 1).backward(torch.from_numpy(gy))
    _close(ops.max_pool2d_backward(cp.asarray(gy), idx, x.shape), xt.grad)
    _close(ops.avg_pool2d(cp.asarray(x), 3, 2, 1, True, False), F.avg_pool2d(torch.from_numpy(x), 3, 2, 1, True, False))
    up = ops.max_unpool2d(y, idx, 3, 2, 1, output_size=x.shape[2:])
    _close(up, F.max_unpool2d(yt, it, 3, 2, 1, output_size=x.shape[2:]))


def test_lstm_and_boxes():
    rng = np.random.default_rng(3)
    T, B, I, H = 5, 3, 7, 16
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    w_ih, w_hh = rng.standard_normal((4 * H, I)) * 0.3, rng.standard_normal((4 * H, H)) * 0.3
    out, (hT, cT) = ops.lstm(*(cp.asarray(a) for a in (x, h0, c0, w_ih, w_hh)))
    m = torch.nn.LSTM(I, H, bias=False).double()
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(w_ih))
        m.weight_hh_l0.copy_(torch.from_numpy(w_hh))
    out_t, _ = m(torch.from_numpy(x), (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None]))
    _close(out, out_t, np.float64)
    boxes = rng.uniform(0, 50, (300, 2))
    boxes = np.concatenate([boxes, boxes + rng.uniform(1, 20, (300, 2))], 1).astype(np.float32)
    scores = rng.uniform(size=300).astype(np.float32)
    keep = ops.nms(cp.asarray(boxes), cp.asarray(scores), 0.4)
    keep_ref = ops.nms(boxes, scores, 0.4, backend="reference")
    assert keep.dtype == np.int64 and len(keep) > 0
    np.testing.assert_array_equal(cp.asnumpy(keep), keep_ref)


def test_dispatch_of_cupy_arrays():
    x = cp.zeros((1, 1, 4, 4), cp.float32)
    assert isinstance(ops.max_pool2d(x, 2), cp.ndarray)  # CuPy arrays go to 'cuda' by default
    with pytest.raises(TypeError, match="cuda"):
        ops.max_pool2d(x, 2, backend="reference")
    with pytest.raises(TypeError, match="cupy"):
        ops.max_pool2d(np.zeros((1, 1, 4, 4), np.float32), 2, backend="cuda")
    with pytest.raises(TypeError, match="mix"):
        ops.conv2d(x, np.zeros((1, 1, 2, 2), np.float32))


class _CudaExporter:
    """Another library's array in CUDA memory, as DLPack shows it (CuPy's export underneath)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def test_unbatched_and_dlpack_inputs_on_the_gpu():
    """An unbatched (C, H, W) input from a DLPack producer in CUDA memory: taken as a CuPy
    array on the same memory, run on the 'cuda' backend, returned as CuPy without a batch axis."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    x_gpu = cp.asarray(x)
    y = ops.conv2d(_CudaExporter(x_gpu), cp.asarray(w), padding=1)
    _close(y, F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1))
    pooled, idx = ops.max_pool2d(_CudaExporter(x_gpu), 2, return_indices=True)
    pooled_t, idx_t = F.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    _close(pooled, pooled_t)
    np.testing.assert_array_equal(cp.asnumpy(idx), idx_t.numpy())


def _launch_cases():
    """Ops covering every kernel family, as functions of an rng returning CuPy arrays."""
    def f32(rng, *s):
        return cp.asarray(rng.standard_normal(s).astype(np.float32))

    def boxes(rng, n):
        xy, wh = rng.uniform(0, 50, (n, 2)), rng.uniform(1, 20, (n, 2))
        return cp.asarray(np.concatenate([xy, xy + wh], 1).astype(np.float32))

    def rotated(rng, n):
        return cp.asarray(np.concatenate([rng.uniform(0, 50, (n, 2)), rng.uniform(1, 20, (n, 2)),
                                          rng.uniform(-90, 90, (n, 1))], 1).astype(np.float32))

    def sgd(rng):
        p, g, m = [f32(rng, 100)], [f32(rng, 100)], [f32(rng, 100)]
        ops.sgd_step(p, g, m, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
        return p + m

    def adam(rng):
        p = [cp.asarray(rng.standard_normal(50)), cp.asarray(rng.standard_normal((3, 4)))]
        g, m = [a * 0.5 for a in p], [a * 0.1 for a in p]
        v = [a * a for a in p]
        ops.adam_step(p, g, m, v, 3, lr=0.01, weight_decay=0.1)
        return p + m + v

    return {
        "conv2d": lambda rng: (ops.conv2d(f32(rng, 4, 8, 12, 12), f32(rng, 6, 8, 3, 3), None, 1, 1),
                               *ops.conv2d_backward(f32(rng, 4, 6, 12, 12), f32(rng, 4, 8, 12, 12),
                                                    f32(rng, 6, 8, 3, 3), 1, 1)),
        "depthwise_float64": lambda rng: ops.conv2d(cp.asarray(rng.standard_normal((2, 3, 9, 9))),
                                                    cp.asarray(rng.standard_normal((3, 1, 3, 3))),
                                                    None, 1, 1, 1, 3),
        "pool_unpool": lambda rng: (lambda y, i: (y, i, ops.max_unpool2d(y, i, 2)))(
            *ops.max_pool2d(f32(rng, 2, 4, 8, 8), 2, return_indices=True)),
        "avg_pool": lambda rng: ops.avg_pool2d(f32(rng, 2, 4, 9, 9), 3, 2, 1),
        "activations": lambda rng: (ops.leaky_relu(f32(rng, 300), 0.2), ops.elu(f32(rng, 300)),
                                    ops.prelu(f32(rng, 2, 8, 5, 5), f32(rng, 8))),
        "softmax_cross_entropy": lambda rng: (ops.softmax(f32(rng, 16, 10)),
                                              *ops.cross_entropy(f32(rng, 16, 10),
                                                                 cp.asarray(rng.integers(0, 10, 16)),
                                                                 label_smoothing=0.1)),
        "dropout": lambda rng: ops.dropout(f32(rng, 1000), 0.3, 1234),
        "lstm": lambda rng: ops.lstm(f32(rng, 5, 3, 7), f32(rng, 3, 6), f32(rng, 3, 6), f32(rng, 24, 7),
                                     f32(rng, 24, 6), f32(rng, 24), f32(rng, 24)),
        "nms_family": lambda rng: (lambda b, s: (ops.nms(b, s, 0.5), ops.soft_nms(b, s),
                                                 ops.diou_nms(b, s, 0.5)))(
            boxes(rng, 300), cp.asarray(rng.uniform(size=300).astype(np.float32))),
        "rotated": lambda rng: (lambda b: (ops.box_iou_rotated(b, b[:20]),
                                           ops.nms_rotated(b, cp.linspace(1, 0, 100, dtype=cp.float32), 0.3)))(
            rotated(rng, 100)),
        "sgd": sgd,
        "adam_float64": adam,
    }


def _arrays_of(out):
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _arrays_of(o)]
    return [cp.asnumpy(out)] if isinstance(out, cp.ndarray) else []


@pytest.mark.parametrize("case", list(_launch_cases()))
def test_fast_launch_equals_numba_launch(case, monkeypatch):
    """The same kernels launched by pyconv's launcher and by Numba's dispatcher give bitwise
    equal results; no kernel falls back to Numba's launch."""
    from pyconv.backends.cuda import _runtime

    fn = _launch_cases()[case]
    results = {}
    for fast in (True, False):
        monkeypatch.setattr(_runtime, "FAST_LAUNCH", fast)
        results[fast] = _arrays_of(fn(np.random.default_rng(7)))
    assert results[True] and len(results[True]) == len(results[False])
    for got, want in zip(results[True], results[False]):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    fallbacks = [k[0].__name__ for k, v in _runtime._launchers.items() if v is _runtime._NUMBA]
    assert not fallbacks, f"launched through Numba: {fallbacks}"


def test_fast_launch_on_a_stream_and_in_a_new_thread():
    """Kernels run on CuPy's current stream (a non-default one here), and launch from a thread
    that has made no CUDA call yet."""
    import threading

    x = cp.asarray(np.random.default_rng(8).standard_normal(100000).astype(np.float32))
    want = cp.asnumpy(ops.leaky_relu(x, 0.1))
    with cp.cuda.Stream(non_blocking=True) as stream:
        got = ops.leaky_relu(x, 0.1)
        stream.synchronize()
    np.testing.assert_array_equal(cp.asnumpy(got), want)
    out = []
    thread = threading.Thread(target=lambda: out.append(cp.asnumpy(ops.leaky_relu(x, 0.1))))
    thread.start()
    thread.join()
    np.testing.assert_array_equal(out[0], want)
