"""The benchmark cases and their timing: ``pyconv bench`` (every op on every available backend,
timed against the reference backend and, when installed, PyTorch's CPU kernels, OpenCV's NMS
and, for conv2d, ONNX Runtime on a one-node graph, in one process) and the pytest-benchmark
suites in benchmarks/ use what is defined here: the records and timing in ``measure``, the
kernel cases in ``kernels``, whole networks in ``models``, and the run and its table here.

Method: count the work of each case (FLOPs, or the bytes that must move), measure the machine's
limits in the same run (GEMM GFLOP/s, copy GB/s), time every implementation of a case
interleaved (one call of each in turn, repeated) and report medians, so that load from other
processes hits all of them alike. Ratios are only compared within a run.
"""
from __future__ import annotations

import json
import statistics
import time

import numpy as np

import pyconv
from pyconv.backends import get as _backend
from .kernels import cases, clustered_boxes, kernel_cases, numpy_greedy_nms, untimed_kernels
from .measure import (_BLAS_SPIN_SECONDS, GEMM_N, Case, Limits, Row, _seconds, _torch, gemm_impls,
                      interleaved_medians, measure_gpu_limits, measure_limits)
from .models import model_cases

__all__ = [
    "Case", "Row", "Limits", "GEMM_N", "gemm_impls", "interleaved_medians", "measure_limits",
    "measure_gpu_limits", "cases", "kernel_cases", "model_cases", "untimed_kernels",
    "clustered_boxes", "numpy_greedy_nms", "implementation", "run", "format_table", "main",
]


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
        baseline = next((med[b] for b in case.baselines if b in med and b != "onnxruntime"), None)
        for name, why in impls.items():
            if name not in med:
                rows.append(Row(case.op, case.name, name, None, note=why))
                continue
            t = med[name]
            row = Row(case.op, case.name, name, t * 1e3)
            if case.algorithm is not None and name in backends:
                row.algorithm = case.algorithm(name)
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
            if "onnxruntime" in med:
                row.vs_onnxruntime = med["onnxruntime"] / t
            rows.append(row)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    meta = {"threads": threads, "reps": reps, "info": pyconv.info(), "limits": limits.__dict__}
    return rows, limits, meta


def format_table(rows, limits) -> str:
    head = ("op", "case", "impl", "ms", "rate", "% limit", "x ref", "x torch/cv2", "x ort")
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
        impl = f"{r.impl} ({r.algorithm})" if r.algorithm else r.impl
        lines.append(
            f"| {r.op} | {r.case} | {impl} | {ms} | {rate} | {f(r.pct_limit, '.0f')} | "
            f"{f(r.vs_reference, '.2f')} | {f(r.vs_torch, '.2f')} | {f(r.vs_onnxruntime, '.2f')} |"
        )
    return "\n".join(lines)


def main(quick=False, json_path=None, backends=None, ops_filter=None, reps=None, threads=None,
         models=False):
    rows, limits, meta = run(quick, backends, ops_filter, reps, threads=threads, models=models)
    if "cpu" in pyconv.backends():
        from pyconv import tuning

        print(tuning.describe())
    print(format_table(rows, limits))
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"meta": meta, "rows": [r.__dict__ for r in rows]}, fh, indent=1, default=str)
        print(f"wrote {json_path}")
    return rows
