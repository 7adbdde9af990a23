"""What pyconv's autograd costs beside the kernels, against PyTorch's, on the cpu backend:

- overhead: microseconds per recorded op, from a chain of N cheap elementwise ops (``x * c``,
  ``x + c`` alternately) on a 4-element float32 tensor, forward with the graph recorded plus
  the backward pass, divided by N; beside it the same forward without a graph (no_grad), whose
  difference is the recording. pyconv and PyTorch timed interleaved, medians, in wall-clock
  and in CPU time of the process (less disturbed by other processes on a loaded machine).
- memory: the memory a training step of each model of ``pyconv bench --models`` (same
  shapes, same weights) needs beyond what is allocated before it, each library in a fresh
  child process: the rise of the peak resident set size (``ru_maxrss``) over the current RSS
  just before the first step (the model, its twin, the batch and both libraries exist, no
  forward pass has run yet); and for
  pyconv also the peak of NumPy's allocations traced by ``tracemalloc`` during a second step,
  above what was allocated when it began (tracemalloc sees NumPy's array buffers, not the C++
  kernels' scratch).

    python benchmarks/autograd_costs.py overhead
    python benchmarks/autograd_costs.py memory [model name substring ...]
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

THREADS = 2


def _chain_fns(n):
    import torch

    import pyconv

    x0 = np.random.default_rng(0).standard_normal(4).astype(np.float32)
    c = np.float32(1.0001)

    def chain(x):
        for i in range(n // 2):
            x = x * c
            x = x + c
        return x

    px, tx = pyconv.Tensor(x0, requires_grad=True), torch.from_numpy(x0.copy()).requires_grad_(True)

    def pyconv_grad():
        chain(px).sum().backward()

    def torch_grad():
        chain(tx).sum().backward()

    def pyconv_forward():
        with pyconv.no_grad():
            chain(px)

    def torch_forward():
        with torch.no_grad():
            chain(tx)
    return {"pyconv record+backward": pyconv_grad, "torch record+backward": torch_grad,
            "pyconv forward, no graph": pyconv_forward, "torch forward, no graph": torch_forward}


def overhead(n=2000, reps=15):
    import torch

    import pyconv
    from pyconv.bench import interleaved_medians

    pyconv.set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    fns = _chain_fns(n)
    wall = interleaved_medians(fns, reps)
    cpu = interleaved_medians(fns, reps, clock=time.process_time)
    print(f"chain of {n} elementwise ops on a 4-element float32 tensor, median of {reps}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| what | us per op (wall) | us per op (CPU time) |")
    print("|---|---|---|")
    for name in fns:
        print(f"| {name} | {wall[name] / n * 1e6:.2f} | {cpu[name] / n * 1e6:.2f} |")
    for lib in ("pyconv", "torch"):
        print(f"| {lib} recording + backward alone | "
              + " | ".join(f"{(m[lib + ' record+backward'] - m[lib + ' forward, no graph']) / n * 1e6:.2f}"
                           for m in (wall, cpu)) + " |")


def _rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(name, lib):
    """One zoo model's training step on `lib`: prints a JSON record of its memory."""
    import torch

    import pyconv
    from pyconv.bench import models

    pyconv.set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    from pyconv import Tensor
    import pyconv.nn.functional as F
    from pyconv.optim import Adam

    # no forward has run yet when a step is made: the peak RSS so far is the setup's, below
    # what a step adds
    table = next((e for e in models._MODELS if e[0] == name), None)
    if table is not None:  # the networks assembled from pyconv.nn (LeNet-5, DCGAN halves, VGG)
        _, build, shape, loss = table
        steps = models.training_steps(build, shape, loss, np.random.default_rng(0))
        step = steps["step"] if lib == "pyconv" else steps["torch_step"]
    else:
        name, build, batch, loss, torch_loss, steps = next(e for e in models._ZOO if e[0] == name)
        make_step, make_torch_step = steps if isinstance(steps, tuple) else models._single_loss_steps(loss, torch_loss, steps)
        model, twin, b, tb = models._zoo_setup(build, batch, np.random.default_rng(0))
        step = make_step(model, b, F, Adam, Tensor) if lib == "pyconv" else make_torch_step(twin, tb, torch)
    with pyconv.use_backend("cpu"):
        before = _rss_bytes()
        step()
        rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        record = {"model": name, "lib": lib, "peak_rss_rise_mb": rise / 2**20}
        if lib == "pyconv":
            tracemalloc.start()
            start = tracemalloc.get_traced_memory()[0]
            step()
            record["traced_peak_mb"] = (tracemalloc.get_traced_memory()[1] - start) / 2**20
            tracemalloc.stop()
    print(json.dumps(record))


def memory(filters=()):
    from pyconv.bench import models

    names = [e[0] for e in models._MODELS + models._ZOO if not filters or any(f in e[0] for f in filters)]
    print("| model | pyconv peak RSS rise MB | torch peak RSS rise MB | pyconv / torch | "
          "pyconv traced NumPy peak MB |")
    print("|---|---|---|---|---|")
    for name in names:
        rec = {}
        for lib in ("pyconv", "torch"):
            out = subprocess.run([sys.executable, __file__, "child", name, lib], check=True,
                                 capture_output=True, text=True).stdout
            rec[lib] = json.loads(out.strip().splitlines()[-1])
        p, t = rec["pyconv"]["peak_rss_rise_mb"], rec["torch"]["peak_rss_rise_mb"]
        print(f"| {name} | {p:.1f} | {t:.1f} | {p / t:.2f} | {rec['pyconv']['traced_peak_mb']:.1f} |",
              flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    what = sys.argv[1] if len(sys.argv) > 1 else "overhead"
    if what == "overhead":
        overhead()
    elif what == "memory":
        memory(sys.argv[2:])
    elif what == "child":
        _child(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown measurement {what!r}: overhead, memory")
