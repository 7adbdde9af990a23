"""Fused losses and single-pass optimiser steps against PyTorch and against the NumPy path
(the reference backend's kernels: the same array formulas nn.functional and pyconv.optim ran
before the fused kernels; its Adam step is bit for bit the previous one).

    python benchmarks/bench_fused_loss_optim.py [--rounds 30]

Each case runs its variants interleaved, `rounds` times, in one process; the table gives the
median time per call (forward + backward for the losses, one step for the optimisers) and
the ratios. Threads: 2 for pyconv and PyTorch.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as TF

import pyconv
import pyconv.nn.functional as F
from pyconv import Tensor
from pyconv.models import DCGAN, LeNet5
from pyconv.optim import Adam


def timed(fn, repeat):
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def on_backend(backend, fn):
    def run():
        with pyconv.use_backend(backend):
            fn()
    return run


def loss_case(kind, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "cross_entropy":
        t = rng.integers(0, shape[1], shape[0])
        tt = torch.from_numpy(t)

        def mine():
            xv = Tensor(x, requires_grad=True)
            F.cross_entropy(xv, t).backward()

        def theirs():
            xv = torch.from_numpy(x).requires_grad_()
            TF.cross_entropy(xv, tt).backward()
    else:
        t = (rng.random(shape) < 0.5).astype(np.float32)
        tt = torch.from_numpy(t)

        def mine():
            xv = Tensor(x, requires_grad=True)
            F.binary_cross_entropy_with_logits(xv, t).backward()

        def theirs():
            xv = torch.from_numpy(x).requires_grad_()
            TF.binary_cross_entropy_with_logits(xv, tt).backward()
    return {"pyconv cpu": on_backend("cpu", mine), "NumPy path": on_backend("reference", mine),
            "torch": theirs}


def adam_case(model, rng):
    params = [p for p in model.parameters()]
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    ours, numpy_path = Adam(params, lr=1e-4), Adam(params, lr=1e-4)
    t_params = [torch.zeros(p.shape, requires_grad=True) for p in params]
    for tp, p in zip(t_params, params):
        tp.grad = torch.from_numpy(p.grad.copy())
    t_default = torch.optim.Adam(t_params, lr=1e-4)
    t_fused = torch.optim.Adam(t_params, lr=1e-4, fused=True)
    n = sum(p.data.size for p in params)
    return n, len(params), {"pyconv cpu": on_backend("cpu", ours.step),
                            "NumPy path": on_backend("reference", numpy_path.step),
                            "torch": t_default.step, "torch fused": t_fused.step}


def run(cases, rounds):
    rows = []
    for name, variants, repeat in cases:
        times = {v: [] for v in variants}
        for fn in variants.values():
            fn()  # warm up (JIT, allocations)
        for _ in range(rounds):
            for v, fn in variants.items():
                times[v].append(timed(fn, repeat))
        rows.append((name, {v: statistics.median(ts) for v, ts in times.items()}))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    pyconv.set_num_threads(2)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    cases = [
        ("cross_entropy 64x10", loss_case("cross_entropy", (64, 10), rng), 50),
        ("bce_with_logits 64x1", loss_case("bce", (64, 1), rng), 50),
        ("cross_entropy 3200x65 (char-LSTM)", loss_case("cross_entropy", (3200, 65), rng), 10),
    ]
    for label, model in (("LeNet-5", LeNet5()), ("DCGAN G+D", DCGAN())):
        n, count, variants = adam_case(model, rng)
        cases.append((f"Adam step, {label} ({count} tensors, {n} values)", variants, 20))
    print(f"pyconv {pyconv.__version__}, isa {pyconv._C.isa()}, torch {torch.__version__}, "
          f"2 threads, {args.rounds} interleaved rounds, float32")
    print("| case | pyconv cpu ms | NumPy path ms | torch ms | torch fused ms | x NumPy path | x torch |")
    print("|---|---|---|---|---|---|---|")
    for name, med in run(cases, args.rounds):
        ms = {v: t * 1e3 for v, t in med.items()}
        fused = f"{ms['torch fused']:.3f}" if "torch fused" in ms else "-"
        print(f"| {name} | {ms['pyconv cpu']:.3f} | {ms['NumPy path']:.3f} | {ms['torch']:.3f} | "
              f"{fused} | {med['NumPy path'] / med['pyconv cpu']:.2f} | "
              f"{med['torch'] / med['pyconv cpu']:.2f} |")


if __name__ == "__main__":
    main()
