"""Training steps of the benchmark models on a CUDA GPU: pyconv's 'cuda' backend (CuPy arrays)
against the PyTorch twin with the same weights on the same GPU (cuDNN), interleaved.

Each model's first loss is checked against the twin's (float32 round-off) before timing; a model
whose check or step fails is reported with its error and the others still run. Times are medians
of wall-clock steps with the device synchronised after each (the steps end in `loss.item()`,
which synchronises anyway).

    python benchmarks/gpu_model_steps.py --steps 20
"""
from __future__ import annotations

import argparse
import statistics
import time
import traceback

import numpy as np


def _median_step(step, sync, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_model(name, build, shape, loss, steps, lr=1e-3):
    import cupy as cp
    import torch

    import pyconv
    from pyconv.bench.models import training_steps

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 vs float32
    s = training_steps(build, shape, loss, np.random.default_rng(0), lr, device="cuda")
    step, torch_step = s["step"], s["torch_step"]

    with pyconv.use_backend("cuda"):
        ours = step()
    theirs = torch_step()
    agree = abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs))
    losses = []
    with pyconv.use_backend("cuda"):
        for _ in range(3):  # warm-up: kernel compilation and the memory pools
            losses.append(step())
            torch_step()
        mine, twin = [], []
        for _ in range(3):  # rounds, interleaved
            mine.append(_median_step(step, cp.cuda.Device().synchronize, steps))
            twin.append(_median_step(torch_step, torch.cuda.synchronize, steps))
        losses.append(step())
    t, tt = statistics.median(mine), statistics.median(twin)
    return (f"| {name} | {ours:.6f} | {theirs:.6f} | {'yes' if agree else 'NO'} | "
            f"{losses[0]:.4f} -> {losses[-1]:.4f} | {t * 1e3:.2f} | {tt * 1e3:.2f} | {tt / t:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    args = parser.parse_args()
    from pyconv.bench.models import _MODELS

    print("| model | first loss, pyconv cuda | first loss, torch cuda | agree (1e-4) | "
          "loss while timing | pyconv ms/step | torch ms/step | x torch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, build, shape, loss in _MODELS:
        try:
            print(run_model(name, build, shape, loss, args.steps), flush=True)
        except Exception as e:  # report and go on: one broken model must not hide the others
            traceback.print_exc()
            print(f"| {name} | FAILED: {type(e).__name__}: {str(e)[:200]} |||||||", flush=True)


if __name__ == "__main__":
    main()
