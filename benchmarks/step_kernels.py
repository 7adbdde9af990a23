"""The kernels inside one training step, both libraries: each pyconv._C call of the model's step
(wall time per call, summed per kernel and argument shape) and each PyTorch operator of its
twin's step (self CPU time from torch.profiler, grouped by input shapes), 2 threads.

Layer benchmarks time each layer alone, on inputs in cache; here every kernel runs where the
model puts it, after the kernels that wrote its inputs, so a kernel that is slow only in the
step shows. What is left of pyconv's step outside the kernels (autograd, argument checks, NumPy
work between the kernels) is the step time minus the kernels' sum. PyTorch's profiler adds its
own overhead to the twin's step; compare its operators with each other and with pyconv's
kernels of the same layer, not its step time with pyconv's.

    python benchmarks/step_kernels.py SegNet --steps 10 --top 20
"""
from __future__ import annotations

import argparse
import collections
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="part of a model name of pyconv.bench.models")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25, help="rows per library")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    import pyconv
    from pyconv import _C
    from pyconv.bench import models

    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    case = next(c for c in models.model_cases(layers=False) if args.model in c.name)
    name, steps = case.name, case.make(np.random.default_rng(0))

    calls = collections.defaultdict(lambda: [0, 0.0])  # (kernel, shapes) -> [calls, seconds]

    def timed(kernel, fn):
        def call(*arguments):
            t0 = time.perf_counter()
            out = fn(*arguments)
            seconds = time.perf_counter() - t0
            shapes = " ".join("x".join(map(str, a.shape)) for a in arguments[:2] if hasattr(a, "shape"))
            entry = calls[(kernel, shapes)]
            entry[0] += 1
            entry[1] += seconds
            return out
        return call

    # The backends look the _C functions up at each call, except the elementwise kernels bound
    # at import (pyconv/backends/cpu.py): those count as time outside the kernels here.
    kernels = {n: getattr(_C, n) for n in dir(_C)
               if not n.startswith("_") and callable(getattr(_C, n)) and not isinstance(getattr(_C, n), type)}
    with pyconv.use_backend("cpu"):
        for _ in range(3):
            steps["step"]()
            steps["torch_step"]()
        for n, fn in kernels.items():
            setattr(_C, n, timed(n, fn))
        try:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps["step"]()
            ours = (time.perf_counter() - t0) / args.steps
        finally:
            for n, fn in kernels.items():
                setattr(_C, n, fn)
        with torch.profiler.profile(record_shapes=True) as profile:
            for _ in range(args.steps):
                steps["torch_step"]()

    in_kernels = sum(seconds for _, seconds in calls.values()) / args.steps
    print(f"{name}, {args.threads} threads, {args.steps} steps")
    print(f"pyconv: {ours * 1e3:.2f} ms per step, {in_kernels * 1e3:.2f} in the _C kernels timed below\n")
    print("| pyconv kernel | arguments | calls per step | ms per step |\n|---|---|---|---|")
    for (kernel, shapes), (n, seconds) in sorted(calls.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"| {kernel} | {shapes} | {n / args.steps:g} | {seconds / args.steps * 1e3:.3f} |")
    events = [e for e in profile.key_averages(group_by_input_shape=True) if e.self_cpu_time_total > 0]
    print("\n| PyTorch operator | input shapes | calls per step | self CPU ms per step |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        shapes = " ".join("x".join(map(str, s)) for s in e.input_shapes if s)
        print(f"| {e.key} | {shapes} | {e.count / args.steps:g} | {e.self_cpu_time_total / args.steps / 1e3:.3f} |")


if __name__ == "__main__":
    main()
