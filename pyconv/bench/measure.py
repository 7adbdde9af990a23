"""Benchmark records (Case, Row, Limits), the interleaved timing and the machine's limits
(GEMM GFLOP/s, copy GB/s) measured in the same process."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


def _torch():
    try:
        import torch

        return torch
    except ImportError:
        return None


def _onnxruntime():
    try:
        import onnx  # noqa: F401  (the graphs are written with onnx.helper)
        import onnxruntime

        return onnxruntime
    except ImportError:
        return None


def ort_session(model, threads, profile_prefix=None):
    """An ONNX Runtime CPU session of `model` (a file path or an onnx.ModelProto) on `threads`
    intra-op threads, profiling into files starting with `profile_prefix` where given. Its idle
    threads are told not to spin: by default they busy-wait long after each run, taking the
    cores from the next implementation's run (the small ResNet graph then took pyconv 23-27 ms
    instead of 4.3-4.7), while ONNX Runtime's own run was no faster with them (4.4-7.4
    against 4.1-4.4 ms)."""
    onnxruntime = _onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    source = model if isinstance(model, str) else model.SerializeToString()
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


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
    # backend name -> the name of the algorithm it runs for this case, or None (shown next to
    # the backend in the table: the cpu backend's convolution picks one by shape)
    algorithm: Callable | None = None


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
    vs_onnxruntime: float | None = None  # speed-up over ONNX Runtime, where the case has it
    note: str = ""
    algorithm: str | None = None       # what the backend ran, when the case says (Case.algorithm)


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


# Idle worker threads spin for a while after a call before they sleep: pyconv's pool workers
# about a millisecond (yielding the core as they poll), PyTorch's OpenMP workers (libgomp's
# default spin count) about 7 ms on this project's development host. Timed after a PyTorch
# call, a 2-thread pyconv GEMM of 180 us took 340-365 us for the first 6 ms, 263 us in the
# 7th, 177 us from the 8th on; with 2 ms here the per-layer rows measured pyconv's layers up
# to 1.5x slower than in blocks of their own calls.
SETTLE_SECONDS = 0.010


def warm(fn):
    """Calls fn until SETTLE_SECONDS have passed (once at least): afterwards the workers of the
    implementation that ran before have stopped spinning and fn's own workers are awake."""
    end = time.perf_counter() + SETTLE_SECONDS
    fn()
    while time.perf_counter() < end:
        fn()


def interleaved_medians(fns: dict, reps: int, clock=time.perf_counter) -> dict:
    """Median seconds of each zero-argument callable: one warm-up call of each (JIT compilation,
    first-touch allocation), then `reps` rounds timing one call of each in turn, so that load
    from other processes hits them alike.

    Each timed call runs as in a loop of calls of the same implementation: it follows untimed
    calls of the same one (:func:`warm`). Timed right after another implementation, it shared
    the cores with that one's still spinning workers (LeNet-5's graph on ONNX Runtime: 0.81-0.83
    against 0.63-0.65 ms after pyconv); timed after a pause, it paid the wake-up of its own
    sleeping workers, which on this project's virtual machines cost up to a millisecond."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            warm(fn)
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def best_time(fn, repeats: int, clock=time.process_time) -> float:
    """The shortest of `repeats` timed calls of fn, by `clock`: for comparing variants of one
    kernel in one process, where the fastest call is the one least disturbed by other work
    (process time also leaves out time the process was not running)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


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


def _limit_numpy_blas(threads):
    """Limits NumPy's BLAS to `threads` threads at once, returning the limiter (a context that
    undoes it on exit), or None where threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def measure_limits() -> Limits:
    """The best float32 GEMM rate this process reaches on pyconv's thread count (the FLOP limit
    the tables' "% limit" refer to) and the DRAM copy bandwidth. PyTorch and NumPy's BLAS run on
    that many threads too; NumPy is left out of the limit where its count cannot be set (on its
    default of every core it would hold a one-thread table against an all-core GEMM)."""
    import pyconv

    n = GEMM_N
    threads = pyconv.get_num_threads()
    torch = _torch()
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    gemm, counted = {}, []
    try:
        for name, fn in gemm_impls(n).items():
            limiter = _limit_numpy_blas(threads) if name == "numpy" else contextlib.nullcontext()
            if limiter is None:  # NumPy's BLAS on its own thread count: timed, not counted
                limiter = contextlib.nullcontext()
            else:
                counted.append(name)
            with limiter:
                gemm[name] = 2 * n**3 / _median_time(fn, 3) / 1e9
            if name == "numpy":
                time.sleep(_BLAS_SPIN_SECONDS)  # OpenBLAS's threads spin a while after the call
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)
    # Copy bandwidth from DRAM: 128 MiB read + 128 MiB written per copy.
    src = np.ones(32 * 2**20, np.float32)
    dst = np.empty_like(src)
    copy = 2 * src.nbytes / _median_time(lambda: np.copyto(dst, src), 5) / 1e9
    best = max(counted or gemm, key=gemm.get)  # the best GEMM on these threads is the FLOP limit
    source = {"gemm": f"{best} matmul {n}^3 f32 on {threads} thread(s)", "gemm_all": gemm}
    return Limits(gemm[best], copy, source)


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
