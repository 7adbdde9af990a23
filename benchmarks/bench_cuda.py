"""GPU benchmarks of the 'cuda' backend: time, achieved GFLOP/s or GB/s, % of the GPU's FP32 FMA
rate or memory bandwidth, and the ratio against PyTorch's CUDA kernels (cuDNN) when PyTorch
with CUDA is installed. Needs a CUDA GPU and CuPy; skipped without them.

    python -m pytest benchmarks/bench_cuda.py -m gpu -s      # prints the table
    python benchmarks/bench_cuda.py                          # the same, as a script

Times are medians of CUDA-event timings after a warm-up; pyconv and PyTorch run interleaved.
After the table, the host time of one kernel launch (``launch_overhead``): pyconv's launcher
against Numba's dispatcher (what ``PYCONV_CUDA_LAUNCH=numba`` selects) and a CuPy elementwise
kernel.
The design figures these should be compared with are in benchmarks/RESULTS.md, section
"GPU backend (design figures)".
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"), reason="needs a real GPU"),
]

# Peak figures by device name, for GPUs whose clocks CuPy does not report (FP32 FLOP/s, B/s).
KNOWN_PEAKS = {
    "H100": (66.9e12, 3.35e12),  # SXM5: 132 SMs x 128 FP32 lanes x 2 x 1.98 GHz; HBM3
    "H200": (66.9e12, 4.8e12),
}


@dataclass
class Case:
    name: str
    unit: str  # "flop" or "byte": what `work` counts
    work: float
    make: Callable  # cupy module -> (pyconv fn, torch fn or None)


def _peaks(cp):
    dev = cp.cuda.Device()
    name = cp.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    for key, peaks in KNOWN_PEAKS.items():
        if key in name:
            return name, peaks
    a = dev.attributes
    lanes = 128 if dev.compute_capability >= "80" else 64
    flops = a["MultiProcessorCount"] * lanes * 2 * a["ClockRate"] * 1e3
    bandwidth = 2 * a["MemoryClockRate"] * 1e3 * a["GlobalMemoryBusWidth"] / 8
    return name, (flops, bandwidth)


def _torch_cuda():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def cases():
    from pyconv import _spec, ops

    def conv(name, N, C, H, W, K, R, stride=1, pad=1, groups=1, pass_="forward"):
        def make(cp):
            rng = cp.random.default_rng(0)
            x = rng.standard_normal((N, C, H, W), dtype=cp.float32)
            w = rng.standard_normal((K, C // groups, R, R), dtype=cp.float32)
            y = ops.conv2d(x, w, None, stride, pad, 1, groups)
            needs = {"forward": None, "grad_input": (True, False, False), "grad_weight": (False, True, False)}[pass_]
            fn = (lambda: ops.conv2d(x, w, None, stride, pad, 1, groups)) if needs is None else (
                lambda: ops.conv2d_backward(y, x, w, stride, pad, 1, groups, needs))
            torch = _torch_cuda()
            if torch is None:
                return fn, None
            xt, wt, yt = (torch.as_tensor(a, device="cuda") for a in (x, w, y))
            F = torch.nn.functional
            tfn = {
                "forward": lambda: F.conv2d(xt, wt, None, stride, pad, 1, groups),
                "grad_input": lambda: torch.nn.grad.conv2d_input(xt.shape, wt, yt, stride, pad, 1, groups),
                "grad_weight": lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, yt, stride, pad, 1, groups),
            }[pass_]
            return fn, tfn

        g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32),
                         _spec.ShapeDtype((K, C // groups, R, R), np.float32), None, stride, pad, 1, groups)
        if groups == C:  # depthwise: bandwidth-bound, count the bytes of input + output
            return Case(name, "byte", 4 * (N * C * H * W + N * K * g.Ho * g.Wo), make)
        return Case(name, "flop", g.flops, make)

    def pool(name, kind, N, C, H, W, k, s, p):
        def make(cp):
            x = cp.random.default_rng(0).standard_normal((N, C, H, W), dtype=cp.float32)
            fn = (lambda: ops.max_pool2d(x, k, s, p, return_indices=True)) if kind == "max" else (
                lambda: ops.avg_pool2d(x, k, s, p))
            torch = _torch_cuda()
            if torch is None:
                return fn, None
            xt = torch.as_tensor(x, device="cuda")
            F = torch.nn.functional
            return fn, ((lambda: F.max_pool2d(xt, k, s, p, return_indices=True)) if kind == "max"
                        else (lambda: F.avg_pool2d(xt, k, s, p)))

        Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        out_bytes = N * C * Ho * Wo * (4 + (8 if kind == "max" else 0))
        return Case(name, "byte", 4 * N * C * H * W + out_bytes, make)

    def lstm(name, T, B, I, Hd):
        def make(cp):
            rng = cp.random.default_rng(0)
            x = rng.standard_normal((T, B, I), dtype=cp.float32)
            h0 = c0 = cp.zeros((B, Hd), cp.float32)
            w_ih = rng.standard_normal((4 * Hd, I), dtype=cp.float32) * 0.1
            w_hh = rng.standard_normal((4 * Hd, Hd), dtype=cp.float32) * 0.1
            fn = lambda: ops.lstm(x, h0, c0, w_ih, w_hh)  # noqa: E731
            torch = _torch_cuda()
            if torch is None:
                return fn, None
            m = torch.nn.LSTM(I, Hd, bias=False).cuda()
            xt = torch.as_tensor(x, device="cuda")
            return fn, lambda: m(xt)

        return Case(name, "flop", 2 * T * B * 4 * Hd * (I + Hd), make)

    def nms(name, n):
        def make(cp):
            rng = cp.random.default_rng(0)
            corner = rng.uniform(0, 1000, (n, 2), dtype=cp.float32)
            boxes = cp.concatenate([corner, corner + rng.uniform(10, 100, (n, 2), dtype=cp.float32)], 1)
            scores = rng.uniform(size=n, dtype=cp.float32)
            return (lambda: ops.nms(boxes, scores, 0.5)), None

        return Case(name, "flop", 0, make)

    return [
        conv("conv2d 32x256x56x56 3x3 -> 256", 32, 256, 56, 56, 256, 3),
        conv("conv2d grad_input (same)", 32, 256, 56, 56, 256, 3, pass_="grad_input"),
        conv("conv2d grad_weight (same)", 32, 256, 56, 56, 256, 3, pass_="grad_weight"),
        conv("conv2d 64x64x112x112 3x3 -> 128", 64, 64, 112, 112, 128, 3),
        conv("depthwise 32x256x56x56 3x3", 32, 256, 56, 56, 256, 3, groups=256),
        pool("max_pool2d 2x2/2 32x256x112x112", "max", 32, 256, 112, 112, 2, 2, 0),
        pool("avg_pool2d 3x3/2 32x256x112x112", "avg", 32, 256, 112, 112, 3, 2, 1),
        lstm("lstm T=50 B=64 512->512", 50, 64, 512, 512),
        nms("nms 5000 boxes", 5000),
    ]


def _time(cp, fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    start, end = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3)
    return statistics.median(times)


def run(print_fn=print):
    import cupy as cp

    name, (peak_flops, peak_bw) = _peaks(cp)
    torch = _torch_cuda()
    if torch is not None:  # cuDNN would otherwise run float32 convolutions in TF32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print_fn(f"device: {name}; peaks used: {peak_flops / 1e12:.1f} TFLOP/s FP32, {peak_bw / 1e12:.2f} TB/s")
    print_fn("| case | pyconv ms | achieved | % of peak | PyTorch ms | pyconv / PyTorch time |")
    print_fn("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for case in cases():
        try:
            fn, torch_fn = case.make(cp)
            t = _time(cp, fn)
            tt = _time(cp, torch_fn) if torch_fn else None
        except Exception as e:  # one failing case must not hide the others' numbers
            print_fn(f"| {case.name} | FAILED: {type(e).__name__}: {str(e)[:160]} |||||")
            continue
        if case.unit == "flop" and case.work:
            achieved, pct = f"{case.work / t / 1e12:.1f} TFLOP/s", f"{case.work / t / peak_flops:.0%}"
        elif case.unit == "byte":
            achieved, pct = f"{case.work / t / 1e9:.0f} GB/s", f"{case.work / t / peak_bw:.0%}"
        else:
            achieved = pct = "-"
        ratio = f"{t / tt:.2f}" if tt else "-"
        print_fn(f"| {case.name} | {t * 1e3:.3f} | {achieved} | {pct} | "
                 f"{'-' if tt is None else f'{tt * 1e3:.3f}'} | {ratio} |")
        rows.append((case.name, t, tt))
    return rows


def launch_overhead(cp, print_fn=print, launches=1000, rounds=5):
    """Microseconds of host time per launch of two small pyconv kernels (on 1024 elements,
    so the GPU keeps up), through pyconv's launcher and through Numba's dispatcher, and of a
    CuPy elementwise kernel; best of `rounds`, the paths interleaved."""
    from pyconv.backends.cuda import _runtime, elementwise, optim

    x, g, buf = (cp.ones(1024, cp.float32) for _ in range(3))
    y = cp.empty_like(x)
    f = np.float32
    kernels = {
        "leaky_relu (2 arrays, 2 scalars)": (elementwise.kernels(f).leaky_relu_kernel,
                                             (x, f(0.1), y, x.size)),
        "sgd step (3 arrays, 10 scalars)": (optim.kernels(f).sgd_kernel,
                                            (x, g, buf, f(0.01), f(0.9), f(1), f(0), 0, 1, 0, 0, 0, x.size)),
    }
    saved = _runtime.FAST_LAUNCH

    def per_launch(fn):
        fn()
        cp.cuda.get_current_stream().synchronize()
        start = time.perf_counter()
        for _ in range(launches):
            fn()
        elapsed = time.perf_counter() - start
        cp.cuda.get_current_stream().synchronize()
        return elapsed / launches * 1e6

    def pyconv_launch(kernel, args, fast):
        def fn():
            _runtime.FAST_LAUNCH = fast
            _runtime.launch(kernel, 4, 256, *args)
        return fn

    rows = []
    try:
        for name, (kernel, args) in kernels.items():
            best = {"pyconv": float("inf"), "numba": float("inf")}
            for _ in range(rounds):
                best["pyconv"] = min(best["pyconv"], per_launch(pyconv_launch(kernel, args, True)))
                best["numba"] = min(best["numba"], per_launch(pyconv_launch(kernel, args, False)))
            rows.append((name, best["pyconv"], best["numba"]))
    finally:
        _runtime.FAST_LAUNCH = saved
    cupy_us = min(per_launch(lambda: cp.multiply(x, f(0.1), out=y)) for _ in range(rounds))
    print_fn("| kernel (host time per launch) | pyconv launcher us | Numba dispatcher us | speed-up |")
    print_fn("| --- | ---: | ---: | ---: |")
    for name, fast, slow in rows:
        print_fn(f"| {name} | {fast:.1f} | {slow:.1f} | {slow / fast:.1f}x |")
    print_fn(f"| CuPy elementwise multiply (reference) | {cupy_us:.1f} | - | - |")
    return rows


def test_cuda_benchmarks():
    cp = pytest.importorskip("cupy")
    if not cp.is_available():
        pytest.skip("no usable CUDA GPU")
    rows = run()
    launch_overhead(cp)
    assert len(rows) == len(cases()), "some cases failed (see the table)"


if __name__ == "__main__":
    import cupy

    run()
    launch_overhead(cupy)
