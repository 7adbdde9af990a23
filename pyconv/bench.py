"""The benchmark cases and their timing: ``pyconv bench`` (every op on every available backend,
timed against the reference backend and, when installed, PyTorch's CPU kernels and OpenCV's
NMS, in one process) and the pytest-benchmark suites in benchmarks/ use what is defined here.

Method: count the work of each case (FLOPs, or the bytes that must move), measure the machine's
limits in the same run (GEMM GFLOP/s, copy GB/s), time every implementation of a case
interleaved (one call of each in turn, repeated) and report medians, so that load from other
processes hits all of them alike. Ratios are only compared within a run.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import pyconv
from pyconv import _spec, ops
from pyconv.backends import KERNELS
from pyconv.backends import get as _backend


@dataclass
class Case:
    op: str                      # family shown in the table
    name: str                    # what the shape is
    kernels: tuple               # backend kernels the case needs
    make: Callable               # rng -> dict of inputs (float32 NumPy arrays)
    run: Callable                # (inputs, backend name) -> result
    work: float = 0.0            # FLOPs (unit "flop") or bytes moved (unit "byte")
    unit: str | None = None
    # Other libraries' kernels for the same computation: name -> (inputs -> zero-argument
    # callable, or None when that library is not installed). The first is the one the
    # "x torch/cv2" column compares with.
    baselines: dict = field(default_factory=dict)
    quick: bool = False          # part of --quick


@dataclass
class Row:
    op: str
    case: str
    impl: str
    ms: float | None
    rate: float | None = None    # GFLOP/s or GB/s
    unit: str | None = None
    pct_limit: float | None = None
    vs_reference: float | None = None  # speed-up over the reference backend
    vs_torch: float | None = None      # speed-up over PyTorch (or OpenCV for NMS)
    note: str = ""


@dataclass
class Limits:
    gemm_gflops: float
    copy_gbs: float
    source: dict = field(default_factory=dict)
    gpu: tuple | None = None  # (GEMM GFLOP/s, copy GB/s) of the GPU, when one is timed


# ---------------------------------------------------------------------------------------------
# Machine limits, measured in the same process as the cases


_BLAS_SPIN_SECONDS = 0.25


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_medians(fns: dict, reps: int, clock=time.perf_counter) -> dict:
    """Median seconds of each zero-argument callable: one warm-up call of each (JIT compilation,
    first-touch allocation), then `reps` rounds timing one call of each in turn, so that load
    from other processes hits them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _median_time(fn, reps):
    return interleaved_medians({"fn": fn}, reps)["fn"]


GEMM_N = 2048


def gemm_impls(n=GEMM_N) -> dict:
    """name -> zero-argument callable: an n x n x n float32 matrix product by NumPy and, where
    available, PyTorch and pyconv's own packed GEMM (the cpu backend's)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    impls = {"numpy": lambda: a @ b}
    torch = _torch()
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        impls["torch"] = lambda: ta @ tb
    try:
        from pyconv import _C

        c = np.empty_like(a)
        impls["pyconv"] = lambda: _C.gemm(a, b, c)
    except ImportError:
        pass
    return impls


def measure_limits() -> Limits:
    n = GEMM_N
    gemm = {}
    for name, fn in gemm_impls(n).items():
        gemm[name] = 2 * n**3 / _median_time(fn, 3) / 1e9
        if name == "numpy":
            time.sleep(_BLAS_SPIN_SECONDS)  # OpenBLAS's threads spin a while after the call
    # Copy bandwidth from DRAM: 128 MiB read + 128 MiB written per copy.
    src = np.ones(32 * 2**20, np.float32)
    dst = np.empty_like(src)
    copy = 2 * src.nbytes / _median_time(lambda: np.copyto(dst, src), 5) / 1e9
    best = max(gemm, key=gemm.get)  # the best GEMM this process can reach is the FLOP limit
    return Limits(gemm[best], copy, {"gemm": f"{best} matmul {n}^3 f32", "gemm_all": gemm})


def measure_gpu_limits():
    """(cuBLAS SGEMM GFLOP/s at 4096^3, device-to-device copy GB/s) of the current GPU."""
    import cupy

    n = 4096
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    src = cupy.ones(64 * 2**20, cupy.float32)
    dst = cupy.empty_like(src)
    sync = cupy.cuda.get_current_stream().synchronize

    def timed(fn):
        return _median_time(lambda: (fn(), sync()), 5)
    return 2 * n**3 / timed(lambda: a @ a) / 1e9, 2 * src.nbytes / timed(lambda: dst.__setitem__(..., src)) / 1e9


# ---------------------------------------------------------------------------------------------
# The cases: layers of common networks (LeNet, VGG, DCGAN), LSTMs and detector-like NMS
# inputs; --quick takes a small subset.


def _f32(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _torch():
    try:
        import torch

        return torch
    except ImportError:
        return None


def _torch_baseline(make):
    return {"torch": lambda inputs: make(inputs) if _torch() is not None else None}


def _conv_case(name, N, C, H, W, K, R, stride=1, pad=0, groups=1, quick=False, weight_scale=0.1):
    def make(rng):
        return {"x": _f32(rng, N, C, H, W), "w": _f32(rng, K, C // groups, R, R) * weight_scale,
                "b": _f32(rng, K)}

    def run(a, be):
        return ops.conv2d(a["x"], a["w"], a["b"], stride, pad, 1, groups, backend=be)

    def torch_fn(a):
        torch = _torch()
        x, w, b = (torch.from_numpy(a[k]) for k in "xwb")
        return lambda: torch.nn.functional.conv2d(x, w, b, stride, pad, 1, groups)

    g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32),
                     _spec.ShapeDtype((K, C // groups, R, R), np.float32),
                     None, stride, pad, 1, groups)
    return Case("conv2d", name, ("conv2d",), make, run, g.flops, "flop", _torch_baseline(torch_fn), quick=quick)


def _conv_backward_case(name, N, C, H, W, K, R, pad, quick=False):
    def make(rng):
        g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32),
                         _spec.ShapeDtype((K, C, R, R), np.float32), None, 1, pad, 1, 1)
        return {"x": _f32(rng, N, C, H, W), "w": _f32(rng, K, C, R, R) * 0.1,
                "gy": _f32(rng, *g.output_shape)}

    def run(a, be):
        return ops.conv2d_backward(a["gy"], a["x"], a["w"], 1, pad, backend=be)

    def torch_fn(a):
        torch = _torch()
        x, w, gy = (torch.from_numpy(a[k]) for k in ("x", "w", "gy"))
        return lambda: torch.ops.aten.convolution_backward(
            gy, x, w, [K], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, True, True])

    g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32),
                     _spec.ShapeDtype((K, C, R, R), np.float32), None, 1, pad, 1, 1)
    kernels = ("conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias")
    return Case("conv2d_backward", name, kernels, make, run, 2 * g.flops, "flop", _torch_baseline(torch_fn), quick=quick)


def _conv_transpose_case(name, N, C, H, W, K, R, stride, pad, quick=False):
    def make(rng):
        return {"x": _f32(rng, N, C, H, W), "w": _f32(rng, C, K, R, R) * 0.1}

    def run(a, be):
        return ops.conv_transpose2d(a["x"], a["w"], None, stride, pad, backend=be)

    def torch_fn(a):
        torch = _torch()
        x, w = torch.from_numpy(a["x"]), torch.from_numpy(a["w"])
        return lambda: torch.nn.functional.conv_transpose2d(x, w, None, stride, pad)

    g = _spec.conv_transpose2d(_spec.ShapeDtype((N, C, H, W), np.float32),
                               _spec.ShapeDtype((C, K, R, R), np.float32),
                               None, stride, pad, 0, 1, 1)
    return Case("conv_transpose2d", name, ("conv2d_grad_input",), make, run, g.flops, "flop",
                _torch_baseline(torch_fn), quick=quick)


def _pool_case(name, kind, k, s, p, shape, quick=False):
    N, C, H, W = shape

    def make(rng):
        return {"x": _f32(rng, *shape)}

    if kind == "max":
        def run(a, be):
            return ops.max_pool2d(a["x"], k, s, p, return_indices=True, backend=be)

        def torch_fn(a):
            torch = _torch()
            x = torch.from_numpy(a["x"])
            return lambda: torch.nn.functional.max_pool2d(x, k, s, p, return_indices=True)
    else:
        def run(a, be):
            return ops.avg_pool2d(a["x"], k, s, p, backend=be)

        def torch_fn(a):
            torch = _torch()
            x = torch.from_numpy(a["x"])
            return lambda: torch.nn.functional.avg_pool2d(x, k, s, p)

    g = _spec.pool_geom("bench", shape, k, s, p, 1, False)
    out = N * C * g.Ho * g.Wo
    moved = 4 * (N * C * H * W + out) + (8 * out if kind == "max" else 0)
    return Case(f"{kind}_pool2d", name, (f"{kind}_pool2d",), make, run, moved, "byte",
                _torch_baseline(torch_fn), quick=quick)


def _leaky_relu_case(name, shape, backward, quick=False):
    """LeakyReLU forward (reads x, writes y) or backward (reads grad and x, writes grad_x)."""
    slope = 0.2

    def make(rng):
        return {"x": _f32(rng, *shape), "g": _f32(rng, *shape)}

    def run(a, be):
        if backward:
            return ops.leaky_relu_backward(a["g"], a["x"], slope, backend=be)
        return ops.leaky_relu(a["x"], slope, backend=be)

    def torch_fn(a):
        torch = _torch()
        x, g = torch.from_numpy(a["x"]), torch.from_numpy(a["g"])
        if backward:
            return lambda: torch.ops.aten.leaky_relu_backward(g, x, slope, False)
        return lambda: torch.nn.functional.leaky_relu(x, slope)

    op = "leaky_relu_backward" if backward else "leaky_relu"
    moved = 4 * math.prod(shape) * (3 if backward else 2)
    return Case(op, name, (op,), make, run, moved, "byte", _torch_baseline(torch_fn), quick=quick)


def _lstm_params(rng, I, Hd):
    bound = 1 / math.sqrt(Hd)
    return {k: rng.uniform(-bound, bound, shape).astype(np.float32) for k, shape in
            (("w_ih", (4 * Hd, I)), ("w_hh", (4 * Hd, Hd)), ("b_ih", (4 * Hd,)), ("b_hh", (4 * Hd,)))}


def _torch_lstm(a, cell):
    torch = _torch()
    I, Hd = a["w_ih"].shape[1], a["w_hh"].shape[1]
    m = torch.nn.LSTMCell(I, Hd) if cell else torch.nn.LSTM(I, Hd)
    sfx = "" if cell else "_l0"
    with torch.no_grad():
        for k in ("w_ih", "w_hh", "b_ih", "b_hh"):
            name = {"w": "weight", "b": "bias"}[k[0]] + "_" + k[2:] + sfx
            getattr(m, name).copy_(torch.from_numpy(a[k]))
    return m


def _lstm_case(name, T, B, I, Hd, backward, quick=False):
    def make(rng):
        return {"x": _f32(rng, T, B, I), "h0": _f32(rng, B, Hd), "c0": _f32(rng, B, Hd),
                "gout": _f32(rng, T, B, Hd), **_lstm_params(rng, I, Hd)}

    weights = ("w_ih", "w_hh", "b_ih", "b_hh")

    def run(a, be):
        args = (a["x"], a["h0"], a["c0"], *(a[k] for k in weights))
        if not backward:
            return ops.lstm(*args, backend=be)
        # As the autograd does: the forward keeps its gates and states for the backward.
        *_, saved = ops.lstm(*args, backend=be, save_for_backward=True)
        return ops.lstm_backward(a["gout"], None, None, *args, backend=be, saved=saved)

    def torch_fn(a):
        torch = _torch()
        m = _torch_lstm(a, cell=False)
        x, h0, c0, gout = (torch.from_numpy(a[k]) for k in ("x", "h0", "c0", "gout"))
        hc = (h0[None], c0[None])
        if not backward:
            def fwd():
                with torch.no_grad():
                    return m(x, hc)
            return fwd
        xg = x.clone().requires_grad_(True)

        def fwd_bwd():
            out, _ = m(xg, hc)
            out.backward(gout)
        return fwd_bwd

    flops = 2 * T * B * 4 * Hd * (I + Hd) * (3 if backward else 1)
    kernels = ("lstm", "lstm_backward") if backward else ("lstm",)
    op = "lstm fwd+bwd" if backward else "lstm"
    return Case(op, name, kernels, make, run, flops, "flop", _torch_baseline(torch_fn), quick=quick)


def _lstm_cell_case(name, B, I, Hd, quick=False):
    def make(rng):
        return {"x": _f32(rng, B, I), "h": _f32(rng, B, Hd), "c": _f32(rng, B, Hd),
                **_lstm_params(rng, I, Hd)}

    def run(a, be):
        return ops.lstm_cell(*(a[k] for k in ("x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh")), backend=be)

    def torch_fn(a):
        torch = _torch()
        m = _torch_lstm(a, cell=True)
        x, h, c = (torch.from_numpy(a[k]) for k in "xhc")

        def step():
            with torch.no_grad():
                return m(x, (h, c))
        return step

    return Case("lstm_cell", name, ("lstm_cell",), make, run, 2 * B * 4 * Hd * (I + Hd), "flop",
                _torch_baseline(torch_fn), quick=quick)


def clustered_boxes(rng, n, clusters=None):
    """n boxes (x1, y1, x2, y2) scattered around a few centres, as detector outputs are."""
    clusters = clusters or max(1, n // 20)
    centres = rng.uniform(0, 1000, (clusters, 2))
    c = centres[rng.integers(0, clusters, n)] + rng.normal(0, 8, (n, 2))
    wh = rng.uniform(20, 60, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    return boxes, rng.uniform(0, 1, n).astype(np.float32)


def numpy_greedy_nms(boxes, scores, thr):
    """The usual vectorised NumPy NMS (one IoU row per kept box), a common baseline."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter) <= thr]
    return np.array(keep, np.int64)


def _nms_case(n, quick=False):
    thr = 0.5

    def make(rng):
        boxes, scores = clustered_boxes(rng, n)
        return {"boxes": boxes, "scores": scores}

    def run(a, be):
        return ops.nms(a["boxes"], a["scores"], thr, backend=be)

    def opencv_fn(a):
        try:
            import cv2
        except ImportError:
            return None
        b = a["boxes"]
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()
        scores = a["scores"].tolist()
        return lambda: cv2.dnn.NMSBoxes(xywh, scores, 0.0, thr)  # all scores are > 0

    numpy_fn = lambda a: (lambda: numpy_greedy_nms(a["boxes"], a["scores"], thr))  # noqa: E731
    return Case("nms", f"{n} clustered boxes", ("nms",), make, run,
                baselines={"opencv": opencv_fn, "numpy greedy": numpy_fn}, quick=quick)


def cases(quick: bool) -> list[Case]:
    all_cases = [
        _conv_case("LeNet conv1 64x1x28x28 k6 5x5 p2", 64, 1, 28, 28, 6, 5, pad=2, quick=True),
        _conv_case("LeNet conv2 64x6x14x14 k16 5x5", 64, 6, 14, 14, 16, 5, quick=True),
        _conv_case("DCGAN D conv1 64x1x28x28 k64 4x4 s2 p1", 64, 1, 28, 28, 64, 4, stride=2, pad=1),
        _conv_case("RGB input 16x3x32x32 k64 3x3 p1", 16, 3, 32, 32, 64, 3, pad=1),
        _conv_case("PixelCNN 32x1x28x28 k64 7x7 p3", 32, 1, 28, 28, 64, 7, pad=3),
        _conv_case("VGG 8x64x56x56 k64 3x3 p1", 8, 64, 56, 56, 64, 3, pad=1),
        _conv_case("VGG-deep 8x256x14x14 k256 3x3 p1", 8, 256, 14, 14, 256, 3, pad=1),
        _conv_case("1x1 8x256x28x28 k64", 8, 256, 28, 28, 64, 1),
        _conv_case("strided 16x32x32x32 k64 3x3 s2 p1", 16, 32, 32, 32, 64, 3, stride=2, pad=1, quick=True),
        _conv_case("depthwise 8x64x56x56 g64 3x3 p1", 8, 64, 56, 56, 64, 3, pad=1, groups=64, quick=True),
        _conv_case("batch-1 1x64x56x56 k64 3x3 p1", 1, 64, 56, 56, 64, 3, pad=1, quick=True),
        # The same convolution twice: the speed of the second must not depend on its weights
        # being subnormal (x86 handles subnormal operands 10-100x slower unless flushed).
        _conv_case("8x64x28x28 k64 3x3 p1", 8, 64, 28, 28, 64, 3, pad=1),
        _conv_case("8x64x28x28 k64 3x3 p1, subnormal weights", 8, 64, 28, 28, 64, 3, pad=1,
                   weight_scale=1e-39),
        _conv_backward_case("VGG 8x64x56x56 k64 3x3 p1", 8, 64, 56, 56, 64, 3, 1),
        _conv_backward_case("LeNet conv2 64x6x14x14 k16 5x5", 64, 6, 14, 14, 16, 5, 0, quick=True),
        _conv_backward_case("RGB input 16x3x32x32 k64 3x3 p1", 16, 3, 32, 32, 64, 3, 1),
        _conv_transpose_case("DCGAN 64x100x1x1 -> 128 7x7", 64, 100, 1, 1, 128, 7, 1, 0),
        _conv_transpose_case("DCGAN 64x128x7x7 -> 64 4x4 s2 p1", 64, 128, 7, 7, 64, 4, 2, 1, quick=True),
        _conv_transpose_case("DCGAN 64x64x14x14 -> 1 4x4 s2 p1", 64, 64, 14, 14, 1, 4, 2, 1, quick=True),
        _conv_transpose_case("DCGAN 16x256x8x8 -> 128 4x4 s2 p1", 16, 256, 8, 8, 128, 4, 2, 1),
        _pool_case("2x2 s2 + indices 32x64x56x56", "max", 2, 2, 0, (32, 64, 56, 56)),
        _pool_case("2x2 s2 + indices 8x64x56x56", "max", 2, 2, 0, (8, 64, 56, 56), quick=True),
        _pool_case("3x3 s2 p1 + indices 32x64x56x56", "max", 3, 2, 1, (32, 64, 56, 56)),
        _pool_case("2x2 s2 32x64x56x56", "avg", 2, 2, 0, (32, 64, 56, 56)),
        _pool_case("2x2 s2 8x64x56x56", "avg", 2, 2, 0, (8, 64, 56, 56), quick=True),
        _leaky_relu_case("32x64x56x56", (32, 64, 56, 56), backward=False),
        _leaky_relu_case("8x64x56x56", (8, 64, 56, 56), backward=False, quick=True),
        _leaky_relu_case("32x64x56x56", (32, 64, 56, 56), backward=True),
        _lstm_case("T=100 B=64 128->256", 100, 64, 128, 256, backward=False),
        _lstm_case("T=20 B=32 64->128", 20, 32, 64, 128, backward=False, quick=True),
        _lstm_case("T=100 B=64 128->256", 100, 64, 128, 256, backward=True),
        _lstm_cell_case("B=64 128->256", 64, 128, 256, quick=True),
        _nms_case(1000, quick=True),
        _nms_case(10000),
        _nms_case(50000),
    ]
    return [c for c in all_cases if c.quick or not quick]


# One case for each kernel that the cases above do not time on its own.

_POOL_SHAPE = (32, 64, 56, 56)


def _pool_backward_case(kind):
    k, s, p = (3, 2, 1) if kind == "max" else (2, 2, 0)

    def make(rng):
        x = _f32(rng, *_POOL_SHAPE)
        y, idx = ops.max_pool2d(x, k, s, p, return_indices=True, backend="reference")
        return {"x": x, "idx": idx, "gy": _f32(rng, *y.shape)}

    if kind == "max":
        def run(a, be):
            return ops.max_pool2d_backward(a["gy"], a["idx"], _POOL_SHAPE, backend=be)
    else:
        def run(a, be):
            return ops.avg_pool2d_backward(a["gy"], _POOL_SHAPE, k, s, p, backend=be)

    name = f"{k}x{k} s{s} p{p} {'x'.join(map(str, _POOL_SHAPE))}"
    return Case(f"{kind}_pool2d_backward", name, (f"{kind}_pool2d_backward",), make, run)


def _unpool_case():
    def make(rng):
        x = _f32(rng, *_POOL_SHAPE)
        y, idx = ops.max_pool2d(x, 2, 2, return_indices=True, backend="reference")
        return {"y": y, "idx": idx}

    def run(a, be):
        return ops.max_unpool2d(a["y"], a["idx"], 2, 2, backend=be)

    return Case("max_unpool2d", "2x2 s2 -> 32x64x56x56", ("max_unpool2d",), make, run)


def _lstm_cell_backward_case(B, I, Hd):
    def make(rng):
        arrays = {k: _f32(rng, *s) for k, s in
                  (("gh", (B, Hd)), ("gc", (B, Hd)), ("x", (B, I)), ("h", (B, Hd)), ("c", (B, Hd)))}
        return {**arrays, **_lstm_params(rng, I, Hd)}

    def run(a, be):
        keys = ("gh", "gc", "x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh")
        return ops.lstm_cell_backward(*(a[k] for k in keys), backend=be)

    return Case("lstm_cell_backward", f"B={B} {I}->{Hd}", ("lstm_cell_backward",), make, run, quick=True)


def _box_iou_case(n):
    def make(rng):
        return {"boxes": clustered_boxes(rng, n)[0]}

    def run(a, be):
        return ops.box_iou(a["boxes"], a["boxes"], backend=be)

    return Case("box_iou", f"{n}x{n} clustered boxes", ("box_iou",), make, run, quick=True)


def _batched_nms_case(n, categories):
    def make(rng):
        boxes, scores = clustered_boxes(rng, n)
        return {"boxes": boxes, "scores": scores, "idxs": rng.integers(0, categories, n)}

    def run(a, be):
        return ops.batched_nms(a["boxes"], a["scores"], a["idxs"], 0.5, backend=be)

    return Case("batched_nms", f"{n} clustered boxes, {categories} categories", ("batched_nms",), make, run)


def kernel_cases(quick: bool) -> list[Case]:
    """cases() and one case for each kernel they leave out (the pooling backward passes,
    unpooling, the LSTM cell backward, box_iou and batched_nms)."""
    extra = [
        _pool_backward_case("max"),
        _pool_backward_case("avg"),
        _unpool_case(),
        _lstm_cell_backward_case(64, 128, 256),
        _box_iou_case(1000),
        _batched_nms_case(10000, 20),
    ]
    return cases(quick) + [c for c in extra if c.quick or not quick]


def untimed_kernels() -> list[str]:
    """Kernels of the op catalogue that no case times (a new kernel needs a case here)."""
    timed = {k for case in kernel_cases(quick=False) for k in case.kernels}
    return sorted(set(KERNELS) - timed)


# ---------------------------------------------------------------------------------------------
# Running


def _on_gpu(case, inputs, be):
    """A callable running the case on CuPy copies of the inputs, waiting for the GPU to finish
    (a kernel launch returns at once; the time that counts is until the result exists)."""
    import cupy

    device_inputs = {k: cupy.asarray(v) for k, v in inputs.items()}
    stream = cupy.cuda.get_current_stream()

    def run():
        out = case.run(device_inputs, be)
        stream.synchronize()
        return out
    return run


def implementation(case, inputs, impl):
    """A zero-argument callable running `case` on `impl` (a backend, or one of the case's
    baselines), or a string saying why it cannot run."""
    if impl in case.baselines:
        fn = case.baselines[impl](inputs)
        return fn if fn is not None else f"{impl} not installed"
    if impl not in pyconv.backends():
        return f"backend {impl!r} is not available here"
    missing = [k for k in case.kernels if k not in _backend(impl).kernels]
    if missing:
        return f"no {', '.join(missing)} kernel"
    if _backend(impl).array_kind == "cupy":
        return _on_gpu(case, inputs, impl)
    return lambda: case.run(inputs, impl)


def _impls(case, inputs, backends):
    """name -> zero-argument callable, or name -> reason it cannot run: the backends, then the
    case's baselines."""
    return {name: implementation(case, inputs, name) for name in (*backends, *case.baselines)}


def run(quick=False, backends=None, ops_filter=None, reps=None, progress=True, threads=None,
        models=False):
    """Times every case (with `models`, the training steps and layers of model_cases() instead,
    on the cpu backend unless `backends` says otherwise); returns (rows, limits, metadata)."""
    if threads is not None:
        pyconv.set_num_threads(threads)
    threads = pyconv.get_num_threads()
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    if backends is None and models:
        backends = [b for b in ("cpu",) if b in pyconv.backends()] or ["reference"]
    if backends is None:  # all, but not the CUDA simulator (it runs a kernel per thread in Python)
        backends = [b for b in pyconv.backends() if b != "cuda" or _backend(b).array_kind == "cupy"]
    candidates = model_cases(layers=not quick) if models else cases(quick)
    selected = [c for c in candidates if not ops_filter or any(f in c.op for f in ops_filter)]
    reps = reps or (3 if quick else 7)
    limits = measure_limits()
    if any(_backend(b).array_kind == "cupy" for b in backends):
        limits.gpu = measure_gpu_limits()
    rng = np.random.default_rng(0)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(selected), desc="pyconv bench", unit="case", leave=False)
    rows = []
    for case in selected:
        if bar is not None:
            bar.set_postfix_str(f"{case.op}: {case.name}")
        inputs = case.make(rng)
        impls = _impls(case, inputs, backends)
        runnable = {k: v for k, v in impls.items() if callable(v)}
        med = {}
        if "reference" in runnable:
            # After a NumPy BLAS call, OpenBLAS's worker threads spin for about 0.1 s and take a
            # core from whatever runs next (a 2-thread VGG conv measured 7 ms -> 15 ms): the
            # reference backend runs outside the others' timings (it can also be 100x slower:
            # two timed calls), followed by a pause.
            reference = runnable.pop("reference")
            med["reference"] = statistics.median([_seconds(reference) for _ in range(3)][1:])
            time.sleep(_BLAS_SPIN_SECONDS)
        med.update(interleaved_medians(runnable, reps))
        baseline = next((med[b] for b in case.baselines if b in med), None)
        for name, why in impls.items():
            if name not in med:
                rows.append(Row(case.op, case.name, name, None, note=why))
                continue
            t = med[name]
            row = Row(case.op, case.name, name, t * 1e3)
            if case.unit:
                row.unit = "GFLOP/s" if case.unit == "flop" else "GB/s"
                row.rate = case.work / t / 1e9
                gpu = name in backends and _backend(name).array_kind == "cupy"
                flop_limit, byte_limit = (limits.gpu if gpu else (limits.gemm_gflops, limits.copy_gbs))
                limit = flop_limit if case.unit == "flop" else byte_limit
                row.pct_limit = 100 * row.rate / limit
            if "reference" in med:
                row.vs_reference = med["reference"] / t
            if baseline is not None:
                row.vs_torch = baseline / t
            rows.append(row)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    meta = {"threads": threads, "reps": reps, "info": pyconv.info(), "limits": limits.__dict__}
    return rows, limits, meta


def format_table(rows, limits) -> str:
    head = ("op", "case", "impl", "ms", "rate", "% limit", "x ref", "x torch/cv2")
    gpu = "" if limits.gpu is None else (
        f"; GPU rows against the GPU's cuBLAS SGEMM {limits.gpu[0]:.0f} GFLOP/s and copy "
        f"{limits.gpu[1]:.0f} GB/s")
    lines = [
        f"machine limits (same run): GEMM {limits.gemm_gflops:.0f} GFLOP/s "
        f"({limits.source.get('gemm')}), copy {limits.copy_gbs:.1f} GB/s{gpu}; "
        "% limit = share of GEMM for FLOP-bound ops, of copy bandwidth for memory-bound ops",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in rows:
        rate = f"{r.rate:.1f} {r.unit}" if r.rate is not None else ""
        ms = f(r.ms, ".3f") if r.ms is not None else f"n/a ({r.note})"
        lines.append(
            f"| {r.op} | {r.case} | {r.impl} | {ms} | {rate} | {f(r.pct_limit, '.0f')} | "
            f"{f(r.vs_reference, '.2f')} | {f(r.vs_torch, '.2f')} |"
        )
    return "\n".join(lines)


def main(quick=False, json_path=None, backends=None, ops_filter=None, reps=None, threads=None,
         models=False):
    rows, limits, meta = run(quick, backends, ops_filter, reps, threads=threads, models=models)
    print(format_table(rows, limits))
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"meta": meta, "rows": [r.__dict__ for r in rows]}, fh, indent=1, default=str)
        print(f"wrote {json_path}")
    return rows


# ---------------------------------------------------------------------------------------------
# Whole networks: one training step (forward, loss, backward, optimiser step) of small models
# built from pyconv.nn, against a PyTorch twin holding identical weights; and the same models
# layer by layer (forward + backward of each layer on the input it sees in the network).


def _dcgan_generator(nn):
    return nn.Sequential(
        nn.ConvTranspose2d(100, 128, 7, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())


def _dcgan_discriminator(nn):
    return nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1))


def _vgg_block(nn):
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128 * 8 * 8, 10))


def _leaves(module):
    """The layers of a model whose forward runs its children in order, flattened."""
    children = list(module.children())
    if not children:
        return [module]
    return [leaf for child in children for leaf in _leaves(child)]


def _torch_layer(layer):
    """The PyTorch module computing what the pyconv leaf layer `layer` computes, with its
    parameters copied."""
    import torch

    from pyconv import nn

    tnn = torch.nn
    kind = type(layer).__name__
    if isinstance(layer, nn.ConvTranspose2d):
        t = tnn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                layer.padding, layer.output_padding, layer.groups, layer.bias is not None,
                                layer.dilation)
    elif isinstance(layer, nn.Conv2d):
        t = tnn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                       layer.padding, layer.dilation, layer.groups, layer.bias is not None)
    elif isinstance(layer, nn.Linear):
        t = tnn.Linear(layer.weight.shape[1], layer.weight.shape[0], layer.bias is not None)
    elif isinstance(layer, nn.BatchNorm2d):
        t = tnn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum)
    elif isinstance(layer, nn.LeakyReLU):
        t = tnn.LeakyReLU(layer.negative_slope)
    elif isinstance(layer, nn.MaxPool2d):
        t = tnn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    elif kind in ("ReLU", "Tanh", "Flatten"):
        t = getattr(tnn, kind)()
    else:
        raise TypeError(f"no PyTorch twin for {kind}")
    with torch.no_grad():
        for name, p in layer._parameters.items():
            if p is not None:
                getattr(t, name).copy_(torch.from_numpy(np.array(p.data)))
    return t


def _twin(model):
    """(the pyconv model's layers, a torch.nn.Sequential twin with the same weights)."""
    import torch

    layers = _leaves(model)
    return layers, torch.nn.Sequential(*(_torch_layer(layer) for layer in layers))


# name, model builder (takes pyconv.nn), input shape, loss ("ce": 10 classes, "bce": one logit,
# "mse": against an image batch of the output's shape).
_MODELS = (
    ("LeNet-5 64x1x32x32", lambda nn: __import__("pyconv.models", fromlist=["LeNet5"]).LeNet5(),
     (64, 1, 32, 32), "ce"),
    ("DCGAN generator 64x100 -> 1x28x28", _dcgan_generator, (64, 100, 1, 1), "mse"),
    ("DCGAN discriminator 64x1x28x28", _dcgan_discriminator, (64, 1, 28, 28), "bce"),
    ("VGG block 16x3x32x32", _vgg_block, (16, 3, 32, 32), "ce"),
)


def _model_inputs(rng, shape, loss, out_shape):
    x = _f32(rng, *shape)
    if loss == "ce":
        target = rng.integers(0, out_shape[1], shape[0])
    elif loss == "bce":
        target = rng.integers(0, 2, out_shape).astype(np.float32)
    else:
        target = np.tanh(_f32(rng, *out_shape))
    return x, target


def _pyconv_loss(F, loss, out, target):
    if loss == "ce":
        return F.cross_entropy(out, target)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, target)
    return F.mse_loss(out, target)


def _torch_loss(loss, out, target):
    torch = _torch()
    F = torch.nn.functional
    if loss == "ce":
        return F.cross_entropy(out, target)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, target)
    return F.mse_loss(out, target)


def _model_case(name, build, shape, loss, lr=1e-3):
    from pyconv import Tensor, nn
    import pyconv.nn.functional as F
    from pyconv.optim import Adam

    def make(rng):
        torch = _torch()
        pyconv.manual_seed(0)
        model = build(nn)
        _, tmodel = _twin(model)
        x, target = _model_inputs(rng, shape, loss, model.output_shape(shape))
        tx, ttarget = torch.from_numpy(x), torch.from_numpy(target)
        opt, topt = Adam(model.parameters(), lr=lr), torch.optim.Adam(tmodel.parameters(), lr=lr)

        def step():
            value = _pyconv_loss(F, loss, model(Tensor(x)), target)
            opt.zero_grad()
            value.backward()
            opt.step()
            return value.item()

        def torch_step():
            value = _torch_loss(loss, tmodel(tx), ttarget)
            topt.zero_grad()
            value.backward()
            topt.step()
            return value.item()

        # The twin computes the same thing: the first losses agree to float32 round-off.
        with pyconv.use_backend("cpu" if "cpu" in pyconv.backends() else "reference"):
            ours = _pyconv_loss(F, loss, model(Tensor(x)), target).item()
        theirs = _torch_loss(loss, tmodel(tx), ttarget).item()
        assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs)), (name, ours, theirs)
        return {"step": step, "torch_step": torch_step}

    def run(a, be):
        with pyconv.use_backend(be):
            return a["step"]()

    baselines = {"torch": lambda a: a["torch_step"] if _torch() is not None else None}
    return Case("model step", name, ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"), make, run,
                baselines=baselines, quick=True)


def _layer_case(model_name, index, layers, shape):
    """Forward + backward of layer `index` of a model on the input it sees there."""
    from pyconv import Tensor

    layer = layers[index]
    in_shape = tuple(shape)
    for previous in layers[:index]:
        in_shape = tuple(previous.output_shape(in_shape))

    def make(rng):
        torch = _torch()
        tlayer = _torch_layer(layer)
        x = _f32(rng, *in_shape)
        gy = _f32(rng, *layer.output_shape(in_shape))
        tx, tgy = torch.from_numpy(x), torch.from_numpy(gy)
        # A network's input needs no gradient: the first layer computes none for it.
        needs_grad = index > 0
        tx.requires_grad_(needs_grad)
        xt = Tensor(x, requires_grad=needs_grad)

        def step():
            layer(xt).backward(gy)

        def torch_step():
            tlayer(tx).backward(tgy)
        return {"step": step, "torch_step": torch_step}

    def run(a, be):
        with pyconv.use_backend(be):
            return a["step"]()

    baselines = {"torch": lambda a: a["torch_step"] if _torch() is not None else None}
    return Case("layer fwd+bwd", f"{model_name} #{index} {layer!r} on {'x'.join(map(str, in_shape))}",
                (), make, run, baselines=baselines)


def model_cases(layers=True) -> list[Case]:
    """A training step of each model of _MODELS; with `layers`, then each of their layers that
    has parameters or pools (forward + backward on the input it sees in the network)."""
    from pyconv import nn

    out = []
    for name, build, shape, loss in _MODELS:
        out.append(_model_case(name, build, shape, loss))
        if layers:
            pyconv.manual_seed(0)
            model_layers = _leaves(build(nn))
            out += [_layer_case(name, i, model_layers, shape) for i, layer in enumerate(model_layers)
                    if layer._parameters or isinstance(layer, nn.MaxPool2d)]
    return out
