"""The conv2d forward table (`pyconv bench --ops conv2d`'s cases) against PyTorch and ONNX
Runtime, interleaved call by call in one process.

--threads 1: process CPU time (time.process_time), best of --repeats calls per round, best over
--rounds. --threads 2: wall time (time.perf_counter), median of the per-round bests. Ratio =
other's time / pyconv's. --only picks cases whose name contains one of the given strings.

    PYTHONPATH=$PWD python benchmarks/conv_table.py --threads 1 [--rounds 5] [--only LeNet strided]
"""
import argparse
import math
import os
import statistics
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    import torch  # first: PyTorch's OpenMP runtime keeps its own settings

    import numpy as np

    import pyconv
    from pyconv.bench.kernels import cases
    from pyconv.bench.measure import best_time, warm

    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"{args.threads} thread(s), {'CPU' if args.threads == 1 else 'wall'} time, load average "
          f"{os.getloadavg()[0]:.1f}, rounds {args.rounds} x {args.repeats}")
    print("| case | algorithm | pyconv ms | torch ms | ORT ms | x torch | x ORT |")
    print("|---|---|---|---|---|---|---|")
    xt, xo = [], []
    for case in cases(False):
        if case.op != "conv2d" or "subnormal" in case.name:
            continue
        if args.only and not any(s in case.name for s in args.only):
            continue
        a = case.make(rng)
        fns = [lambda: case.run(a, "cpu"), case.baselines["torch"](a), case.baselines["onnxruntime"](a)]
        for f in fns:
            f()
        per_round = [[] for _ in fns]
        for _ in range(args.rounds):
            for i, f in enumerate(fns):
                warm(f)  # the implementation timed before has stopped spinning, f's workers are awake
                per_round[i].append(best_time(f, args.repeats, clock))
        agg = min if args.threads == 1 else statistics.median
        p, t, o = (agg(r) for r in per_round)
        xt.append(t / p)
        xo.append(o / p)
        print(f"| {case.name} | {case.algorithm('cpu')} | {p * 1e3:.3f} | {t * 1e3:.3f} | {o * 1e3:.3f} | "
              f"{t / p:.2f} | {o / p:.2f} |", flush=True)
    if not xt:
        raise SystemExit(f"no conv2d case of pyconv.bench.kernels matches {args.only}")
    gm = lambda v: math.exp(sum(map(math.log, v)) / len(v))  # noqa: E731
    print(f"| geometric mean (min) | | | | | {gm(xt):.2f} ({min(xt):.2f}) | {gm(xo):.2f} ({min(xo):.2f}) |")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
