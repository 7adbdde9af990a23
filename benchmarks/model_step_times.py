"""Training steps of pyconv's benchmark models against their PyTorch twins, timed by wall clock
and by the process's CPU time, in one process, interleaved round by round.

On a shared host the wall clock of a step swings with other jobs; the CPU time the process
spends on it (both threads, user and system) moves much less, so both are printed. Each round
times pyconv's step with NumPy's transparent-huge-page advice for large arrays on (NumPy's
default on Linux) and off, then the twin's, each the best of a few steps.

PyTorch is imported first, so its OpenMP runtime (libgomp) keeps its defaults; pyconv's kernels
run on their own thread pool. Do not set OMP_WAIT_POLICY=passive for a comparison: it slows
PyTorch's small steps up to 2x (LeNet-5: 8.9 against 4.3 ms).

    python benchmarks/model_step_times.py "PixelCNN,VAE" --rounds 3
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _best(step, repeats):
    """(the best wall time of `repeats` steps, their mean CPU time)."""
    walls, cpu0 = [], _cpu_seconds()
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    return min(walls), (_cpu_seconds() - cpu0) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", help="comma-separated parts of model names (pyconv.bench.models)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    import pyconv
    from pyconv.bench import models

    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    set_hugepage = np._core.multiarray._set_madvise_hugepage
    hugepage_default = set_hugepage(True)
    set_hugepage(hugepage_default)
    wanted = args.models.split(",")
    cases = {name: models._model_case(name, build, shape, loss) for name, build, shape, loss in models._MODELS}
    cases.update({entry[0]: models._zoo_case(*entry) for entry in models._ZOO})
    rng = np.random.default_rng(0)
    print(f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}; medians over {args.rounds} "
          "rounds; x torch = torch time / pyconv time (wall: per round, then the median)")
    print("| model step | pyconv wall ms | pyconv wall ms, no huge pages | torch wall ms | x torch wall "
          "[range] | pyconv CPU ms | no huge pages CPU ms | torch CPU ms | x torch CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    with pyconv.use_backend("cpu"):
        for name, case in cases.items():
            if not any(w in name for w in wanted):
                continue
            fns = case.make(rng)
            repeats = 5 if _best(fns["step"], 1)[0] < 0.5 else 1
            runs = {"pyconv": [], "no huge pages": [], "torch": []}
            for _ in range(args.rounds):
                for key in runs:
                    set_hugepage(hugepage_default if key == "pyconv" else False)
                    runs[key].append(_best(fns["torch_step" if key == "torch" else "step"], repeats))
            set_hugepage(hugepage_default)
            wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
            cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
            ratios = [t[0] / p[0] for p, t in zip(runs["pyconv"], runs["torch"])]
            print(f"| {name} | {wall['pyconv'] * 1e3:.1f} | {wall['no huge pages'] * 1e3:.1f} | "
                  f"{wall['torch'] * 1e3:.1f} | {statistics.median(ratios):.2f} [{min(ratios):.2f}-"
                  f"{max(ratios):.2f}] | {cpu['pyconv'] * 1e3:.0f} | {cpu['no huge pages'] * 1e3:.0f} | "
                  f"{cpu['torch'] * 1e3:.0f} | {cpu['torch'] / cpu['pyconv']:.2f} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
