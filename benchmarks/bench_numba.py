"""The "numba" backend, op by op, against the C++ "cpu" backend (where it has the kernel) and
the NumPy "reference" backend; JIT compilation is done before timing (warm JIT).

    pytest benchmarks/bench_numba.py --benchmark-enable               # pytest-benchmark stats
    pytest benchmarks/bench_numba.py --benchmark-enable -m slow       # the large cases too
    python benchmarks/bench_numba.py [--quick] [--no-reference]       # interleaved table

(from a checkout that is not the installed pyconv, prefix the script with PYTHONPATH=.)

The script form times every implementation of a case interleaved (one call of each in turn,
repeated; medians), so that load from other processes hits them alike, and prints the
markdown table kept in benchmarks/RESULTS.md ("numba backend").

The cases are those of ``pyconv bench`` (the issues' benchmark shapes) plus one case for each
kernel that ``pyconv bench`` does not time on its own (the pooling backward passes, unpooling,
the LSTM cell backward, box_iou and batched_nms).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pytest

import pyconv
from pyconv import bench, ops
from pyconv.backends import get as backend

IMPLS = ("numba", "cpu", "reference")
POOL_SHAPE = (32, 64, 56, 56)


def _pool_backward_case(kind, quick=False):
    k, s, p = (3, 2, 1) if kind == "max" else (2, 2, 0)

    def make(rng):
        x = rng.standard_normal(POOL_SHAPE, dtype=np.float32)
        y, idx = ops.max_pool2d(x, k, s, p, return_indices=True, backend="reference")
        return {"x": x, "idx": idx, "gy": rng.standard_normal(y.shape, dtype=np.float32)}

    if kind == "max":
        def run(a, be):
            return ops.max_pool2d_backward(a["gy"], a["idx"], POOL_SHAPE, backend=be)
    else:
        def run(a, be):
            return ops.avg_pool2d_backward(a["gy"], POOL_SHAPE, k, s, p, backend=be)

    name = f"{k}x{k} s{s} p{p} {'x'.join(map(str, POOL_SHAPE))}"
    return bench.Case(f"{kind}_pool2d_backward", name, (f"{kind}_pool2d_backward",), make, run,
                      quick=quick)


def _unpool_case():
    def make(rng):
        x = rng.standard_normal(POOL_SHAPE, dtype=np.float32)
        y, idx = ops.max_pool2d(x, 2, 2, return_indices=True, backend="reference")
        return {"y": y, "idx": idx}

    def run(a, be):
        return ops.max_unpool2d(a["y"], a["idx"], 2, 2, backend=be)

    return bench.Case("max_unpool2d", "2x2 s2 -> 32x64x56x56", ("max_unpool2d",), make, run)


def _lstm_cell_backward_case(B, I, H):
    def make(rng):
        arrays = {k: rng.standard_normal(s, dtype=np.float32) for k, s in
                  (("gh", (B, H)), ("gc", (B, H)), ("x", (B, I)), ("h", (B, H)), ("c", (B, H)))}
        return {**arrays, **bench._lstm_params(rng, I, H)}

    def run(a, be):
        keys = ("gh", "gc", "x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh")
        return ops.lstm_cell_backward(*(a[k] for k in keys), backend=be)

    return bench.Case("lstm_cell_backward", f"B={B} {I}->{H}", ("lstm_cell_backward",), make, run,
                      quick=True)


def _box_iou_case(n):
    def make(rng):
        return {"boxes": bench.clustered_boxes(rng, n)[0]}

    def run(a, be):
        return ops.box_iou(a["boxes"], a["boxes"], backend=be)

    return bench.Case("box_iou", f"{n}x{n} clustered boxes", ("box_iou",), make, run, quick=True)


def _batched_nms_case(n, categories):
    def make(rng):
        boxes, scores = bench.clustered_boxes(rng, n)
        return {"boxes": boxes, "scores": scores, "idxs": rng.integers(0, categories, n)}

    def run(a, be):
        return ops.batched_nms(a["boxes"], a["scores"], a["idxs"], 0.5, backend=be)

    return bench.Case("batched_nms", f"{n} clustered boxes, {categories} categories",
                      ("batched_nms",), make, run)


def cases(quick=False):
    extra = [
        _pool_backward_case("max"),
        _pool_backward_case("avg"),
        _unpool_case(),
        _lstm_cell_backward_case(64, 128, 256),
        _box_iou_case(1000),
        _batched_nms_case(10000, 20),
    ]
    return [c for c in bench.cases(quick=False) + extra if c.quick or not quick]


def _impls(case, inputs, names):
    """name -> zero-argument callable, for the backends that have the case's kernels."""
    out = {}
    for name in names:
        if name in pyconv.backends() and all(k in backend(name).kernels for k in case.kernels):
            out[name] = lambda name=name: case.run(inputs, name)
    return out


# ---------------------------------------------------------------------------------------------
# pytest-benchmark


def _params():
    for case in cases():
        for impl in IMPLS:
            marks = [] if case.quick else [pytest.mark.slow]
            yield pytest.param(case, impl, id=f"{case.op}[{case.name}]-{impl}", marks=marks)


@pytest.mark.parametrize("case,impl", list(_params()))
def test_case(benchmark, case, impl):
    pytest.importorskip("numba")
    fn = _impls(case, case.make(np.random.default_rng(0)), [impl]).get(impl)
    if fn is None:
        pytest.skip(f"backend {impl!r} is unavailable or lacks {', '.join(case.kernels)}")
    fn()  # JIT compilation outside the timing
    benchmark(fn)


# ---------------------------------------------------------------------------------------------
# Interleaved table


def interleaved(case, names, reps):
    """Median seconds per implementation, timed one call of each in turn."""
    impls = _impls(case, case.make(np.random.default_rng(0)), names)
    for fn in impls.values():  # warm-up: JIT, first-touch allocation
        fn()
    times = {name: [] for name in impls}
    for rep in range(reps):
        for name, fn in impls.items():
            if name == "reference" and rep >= 2:  # it can be 100x slower
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def table(selected, names, reps):
    """Prints (as it goes) and returns the markdown table."""
    lines = ["| op | case | numba ms | cpu ms | numba / cpu | reference ms | reference / numba |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for case in selected:
        t = interleaved(case, names, reps)
        ms = {k: f"{v * 1e3:.2f}" for k, v in t.items()}
        vs_cpu = f"{t['numba'] / t['cpu']:.2f}" if "cpu" in t else ""
        vs_ref = f"{t['reference'] / t['numba']:.1f}" if "reference" in t else ""
        lines.append(f"| {case.op} | {case.name} | {ms['numba']} | {ms.get('cpu', '')} | "
                     f"{vs_cpu} | {ms.get('reference', '')} | {vs_ref} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# LSTM: the elementwise work apart from the GEMMs


def lstm_elementwise_split(T, B, I, H, reps):
    """Milliseconds of an LSTM forward (float32) per backend: total, the same GEMMs alone
    (the input projection of all steps, then one h @ w_hh^T per step) and the difference,
    i.e. the elementwise work plus the per-step overheads; for numba also its fused elementwise
    pass alone (_lstm_pointwise on every step's rows). The C++ GEMMs are timed through
    pyconv._C.gemm, which packs w_hh on every call where the LSTM packs it once: the C++
    difference is therefore an underestimate."""
    import numba

    from pyconv import _C
    from pyconv.backends.numba import _jit as nb
    from pyconv.backends.numba.lstm import _lstm_pointwise

    rng = np.random.default_rng(0)
    x, h0, c0 = (rng.standard_normal(s, dtype=np.float32) for s in ((T, B, I), (B, H), (B, H)))
    w_ih, w_hh, b_ih, b_hh = (bench._lstm_params(rng, I, H)[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh"))
    w_ih_t, w_hh_t = np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T)
    x2 = x.reshape(T * B, I)
    x_proj, gh = np.empty((T * B, 4 * H), np.float32), np.empty((B, 4 * H), np.float32)
    acts, gates = np.empty((B, 4 * H), np.float32), np.random.default_rng(1).random((B, 4 * H), np.float32)
    c_new, h_new = np.empty((B, H), np.float32), np.empty((B, H), np.float32)
    bias = b_ih + b_hh
    threads = nb._threads()
    nb._one_blas_thread()

    @numba.njit(parallel=True)
    def numba_step_gemms(h, w_hh, gh, T, threads):  # the GEMMs of _lstm_step, T times
        blocks = min(h.shape[0], threads)
        for _ in range(T):
            for k in numba.prange(blocks):
                lo, hi = nb._block(k, blocks, h.shape[0])
                np.dot(h[lo:hi], w_hh.T, gh[lo:hi])

    @numba.njit(parallel=True)
    def numba_pointwise(gates, bias, c, acts, c_new, h_new, T, threads):  # as in _lstm_step
        blocks = min(c.shape[0], threads)
        for _ in range(T):
            for k in numba.prange(blocks):
                lo, hi = nb._block(k, blocks, c.shape[0])
                _lstm_pointwise(gates[lo:hi], gates[lo:hi], bias, c[lo:hi], acts[lo:hi],
                                c_new[lo:hi], h_new[lo:hi])

    def numba_gemms():
        nb._matmul(x2, w_ih.T, x_proj, threads)
        numba_step_gemms(h0, w_hh, gh, T, threads)

    def cpu_gemms():
        _C.gemm(x2, w_ih_t, x_proj)
        for _ in range(T):
            _C.gemm(h0, w_hh_t, gh)

    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    fns = {
        "numba total": lambda: ops.lstm(*args, backend="numba"),
        "numba GEMMs": numba_gemms,
        "numba elementwise pass": lambda: numba_pointwise(gates, bias, c0, acts, c_new, h_new, T, threads),
        "cpu total": lambda: ops.lstm(*args, backend="cpu"),
        "cpu GEMMs": cpu_gemms,
    }
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    ms["numba total - GEMMs"] = ms["numba total"] - ms["numba GEMMs"]
    ms["cpu total - GEMMs"] = ms["cpu total"] - ms["cpu GEMMs"]
    units = T * B * H
    print(f"LSTM T={T} B={B} {I}->{H}, float32, {threads} threads, median of {reps} (ms): "
          + ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
          + f"; per hidden unit and step (ns): numba elementwise pass "
          f"{ms['numba elementwise pass'] / units * 1e6:.2f}, numba total - GEMMs "
          f"{ms['numba total - GEMMs'] / units * 1e6:.2f}, cpu total - GEMMs "
          f"{ms['cpu total - GEMMs'] / units * 1e6:.2f}")
    return ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small cases only")
    parser.add_argument("--no-reference", action="store_true", help="skip the NumPy reference")
    parser.add_argument("--ops", nargs="*", help="only ops whose name contains one of these")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, help="pyconv.set_num_threads(N) first (for one "
                        "thread also set NUMBA_NUM_THREADS=1: a masked Numba pool is slower)")
    parser.add_argument("--lstm-split", action="store_true", help="only the LSTM forward split "
                        "into GEMMs and elementwise work (lstm_elementwise_split)")
    args = parser.parse_args()
    if args.threads:
        pyconv.set_num_threads(args.threads)
    if args.lstm_split:
        # The benchmark shapes, and one where the GEMMs are small (K = 16) next to the
        # elementwise work, so that the C++ difference is not lost in the GEMM timing.
        for shape in ((100, 64, 128, 256), (20, 32, 64, 128), (20, 1024, 16, 16)):
            lstm_elementwise_split(*shape, args.reps)
        return
    names = [n for n in IMPLS if not (args.no_reference and n == "reference")]
    selected = [c for c in cases(args.quick) if not args.ops or any(o in c.op for o in args.ops)]
    print(f"threads: {pyconv.get_num_threads()}; numba / cpu < 1 means numba is faster")
    table(selected, names, args.reps)


if __name__ == "__main__":
    main()
