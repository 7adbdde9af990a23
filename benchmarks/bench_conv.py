"""Convolution and GEMM of the cpu backend against PyTorch, on the shapes of issue 3.

    pytest benchmarks/bench_conv.py --benchmark-enable      # pytest-benchmark statistics
    python benchmarks/bench_conv.py [--threads 2] [--reps 15]   # the RESULTS.md table
    python benchmarks/bench_conv.py --threads 1 --clock cpu      # per-core efficiency

The table times pyconv and PyTorch interleaved in one process (the machine is shared, so only
ratios within one run mean much) and reports medians. With --clock cpu (one thread only) it
measures the process's CPU time instead of wall time: time the scheduler gives to other
processes is not counted, so the numbers hold up on a busy machine. The conv cases are pyconv.bench's; the
% columns are shares of the AVX-512 FMA limit (FMA_PEAK, measured on this machine's kind)
and of the GEMM limit (the best 2048^3 float32 matmul of pyconv, PyTorch and NumPy, measured
in the same run).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's pyconv

import pyconv  # noqa: E402
from pyconv import _C, bench  # noqa: E402

FMA_PEAK_GFLOPS = {1: 212.0, 2: 423.0}  # AVX-512 FMA loop, per thread count (TOOLCHAIN.md)
CONV_OPS = ("conv2d", "conv2d_backward", "conv_transpose2d")
GEMM_N = 2048


def conv_cases():
    return [c for c in bench.cases(quick=False) if c.op in CONV_OPS]


def gemm_impls(n=GEMM_N, dtype=np.float32):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    impls = {"pyconv": lambda: _C.gemm(a, b, c), "numpy": lambda: a @ b}
    torch = bench._torch()
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        impls["torch"] = lambda: ta @ tb
    return impls


# ---------------------------------------------------------------------------------------------
# pytest-benchmark


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("case", conv_cases(), ids=lambda c: f"{c.op}[{c.name}]")
def test_conv(benchmark, case, impl):
    inputs = case.make(np.random.default_rng(0))
    fn = case.baselines["torch"](inputs) if impl == "torch" else (lambda: case.run(inputs, "cpu"))
    if fn is None:
        pytest.skip("torch is not installed")
    benchmark.extra_info.update(flop=case.work)
    benchmark(fn)


@pytest.mark.parametrize("impl", ["pyconv", "numpy", "torch"])
def test_gemm_2048(benchmark, impl):
    impls = gemm_impls()
    if impl not in impls:
        pytest.skip(f"{impl} is not installed")
    benchmark.extra_info.update(flop=2 * GEMM_N**3)
    benchmark(impls[impl])


# ---------------------------------------------------------------------------------------------
# The RESULTS.md table


def interleaved_medians(fns: dict, reps: int, clock=time.perf_counter) -> dict:
    """Median seconds of each callable, timed in turn within every repetition."""
    for fn in fns.values():
        fn()  # warm-up: first-touch allocation, thread pool start
    times = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def geomean(values):
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def results_table(threads: int, reps: int, clock_name: str = "wall") -> str:
    if clock_name == "cpu" and threads != 1:
        raise ValueError("--clock cpu measures one thread only (CPU time sums every thread)")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    torch = bench._torch()
    pyconv.set_num_threads(threads)
    torch.set_num_threads(threads)
    peak = FMA_PEAK_GFLOPS.get(threads, FMA_PEAK_GFLOPS[1] * threads)
    gemm = {k: 2 * GEMM_N**3 / t / 1e9 for k, t in interleaved_medians(gemm_impls(), 5, clock).items()}
    gemm_limit = max(gemm.values())  # the best GEMM this process reached
    lines = [
        f"{threads} thread(s), {clock_name} clock, medians of {reps} interleaved runs; "
        f"FMA peak {peak:.0f} GFLOP/s; "
        f"GEMM {GEMM_N}^3 f32 in this run: pyconv {gemm['pyconv']:.0f}, torch {gemm['torch']:.0f}, "
        f"numpy {gemm['numpy']:.0f} GFLOP/s (% GEMM below = share of the best of them).",
        "",
        "| op | shape | pyconv ms | torch ms | pyconv GFLOP/s | % FMA peak | % GEMM | x torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {op: [] for op in CONV_OPS}
    rng = np.random.default_rng(0)
    for case in conv_cases():
        inputs = case.make(rng)
        med = interleaved_medians({"cpu": lambda: case.run(inputs, "cpu"),
                                   "torch": case.baselines["torch"](inputs)}, reps, clock)
        rate = case.work / med["cpu"] / 1e9
        ratio = med["torch"] / med["cpu"]
        ratios[case.op].append(ratio)
        lines.append(f"| {case.op} | {case.name} | {med['cpu'] * 1e3:.3f} | {med['torch'] * 1e3:.3f} | "
                     f"{rate:.1f} | {100 * rate / peak:.0f} | {100 * rate / gemm_limit:.0f} | {ratio:.2f} |")
    lines.append("")
    lines.append("Geometric mean of x torch: " + ", ".join(
        f"{op} {geomean(r):.2f} (min {min(r):.2f})" for op, r in ratios.items() if r))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = p.parse_args(argv)
    print(results_table(args.threads, args.reps, args.clock))


if __name__ == "__main__":
    main()
