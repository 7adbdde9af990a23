"""One LeNet-5 training epoch on the digits, pyconv against PyTorch CPU, and the autograd's
per-op overhead on tiny tensors. Run from the repository root:

    python benchmarks/bench_train.py [--backend NAME] [--repeats 3] [--batch-size 32]

The 8x8 digits are upsampled (nearest neighbour, 4x4 blocks) to the 32x32 inputs LeNet-5 was
designed for. Both frameworks train the same model (ReLU + max pooling variant, float32) from
the same initial weights, on the same batches in the same order, with the same optimiser
(SGD, lr 0.05, momentum 0.9); their first losses are printed as a check that they compute
the same thing. Timings alternate pyconv and PyTorch epochs in one process; medians and
ratios are reported (the machine is shared: absolute times are noisy, ratios less so).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyconv  # noqa: E402
import pyconv.nn.functional as F  # noqa: E402
from pyconv import Tensor, data  # noqa: E402
from pyconv.models import LeNet5  # noqa: E402
from pyconv.optim import SGD  # noqa: E402

LR, MOMENTUM = 0.05, 0.9


def digits_32x32():
    x, y = data.load_digits()
    x = np.kron(x, np.ones((1, 1, 4, 4), np.float32))  # (N, 1, 32, 32)
    x_train, _, y_train, _ = data.train_test_split(x, y, test_size=0.2, seed=0)
    return np.ascontiguousarray(x_train), y_train


def torch_lenet():
    import torch.nn as tnn

    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
        tnn.Linear(84, 10),
    )


def pyconv_epoch(model, opt, batches):
    losses = []
    for xb, yb in batches:
        loss = F.cross_entropy(model(Tensor(xb)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def torch_epoch(model, opt, batches):
    import torch

    losses = []
    for xb, yb in batches:
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@contextlib.contextmanager
def timed_kernels(backend):
    """Wraps every kernel of `backend` with a timer: yields {kernel name: seconds}."""
    be = sys.modules["pyconv.backends"].get(backend)
    original, totals = dict(be.kernels), {}

    def timed(name, fn):
        def run(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0
            return out
        return run

    be.kernels.update({name: timed(name, fn) for name, fn in original.items()})
    try:
        yield totals
    finally:
        be.kernels.update(original)


@contextlib.contextmanager
def free_kernels(backend):
    """Replaces every kernel of `backend` by a lookup of its first result for the same shapes,
    so kernels cost (almost) nothing: what remains is the Python layer's own cost."""
    be = sys.modules["pyconv.backends"].get(backend)
    original, cache = dict(be.kernels), {}

    def cached(name, fn):
        def run(*args):
            key = (name,) + tuple(getattr(a, "shape", None) for a in args)
            if key not in cache:
                cache[key] = fn(*args)
            return cache[key]
        return run

    be.kernels.update({name: cached(name, fn) for name, fn in original.items()})
    try:
        yield
    finally:
        be.kernels.update(original)


def bench_lenet(backend, repeats, batch_size):
    import torch

    x, y = digits_32x32()
    order = np.random.default_rng(0).permutation(len(x))
    batches = [(x[order[i:i + batch_size]], y[order[i:i + batch_size]]) for i in range(0, len(x), batch_size)]
    torch_batches = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in batches]

    pyconv.manual_seed(0)
    model = LeNet5()
    tmodel = torch_lenet()
    state = model.state_dict()
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in zip(tmodel.state_dict(), state.values())})
    opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    topt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM)

    times, ttimes = [], []
    with pyconv.use_backend(backend):
        for r in range(repeats):
            t0 = time.perf_counter()
            losses = pyconv_epoch(model, opt, batches)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tlosses = torch_epoch(tmodel, topt, torch_batches)
            ttimes.append(time.perf_counter() - t0)
            if r == 0:
                print(f"  epoch 1 first-batch loss: pyconv {losses[0]:.6f}  torch {tlosses[0]:.6f}; "
                      f"last-batch: pyconv {losses[-1]:.4f}  torch {tlosses[-1]:.4f}")
        # One more pyconv epoch with every kernel timed: what is left is the Python layer
        # (autograd bookkeeping, NumPy elementwise work, the optimiser).
        with timed_kernels(backend) as kernel_s:
            t0 = time.perf_counter()
            pyconv_epoch(model, opt, batches)
            profiled = time.perf_counter() - t0
        # Epochs whose kernels are free (results looked up): the layer + autograd + optimiser
        # cost alone, against full PyTorch epochs timed alongside.
        free, tfree = [], []
        with free_kernels(backend):
            pyconv_epoch(model, opt, batches[:2])  # fill the lookup
            for _ in range(repeats):
                t0 = time.perf_counter()
                pyconv_epoch(model, opt, batches)
                free.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                torch_epoch(tmodel, topt, torch_batches)
                tfree.append(time.perf_counter() - t0)
    return dict(batches=len(batches), samples=len(x), pyconv_s=statistics.median(times),
                torch_s=statistics.median(ttimes), pyconv_all=times, torch_all=ttimes,
                profiled_s=profiled, kernel_s=kernel_s, free_s=statistics.median(free),
                free_torch_s=statistics.median(tfree))


def bench_overhead(n=2000):
    """Forward + backward of y = ((a * b + c).relu()).sum() on (4, 4) tensors: 4 ops, where
    the arithmetic itself costs well under a microsecond, so the time is framework overhead."""
    import torch

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((4, 4)).astype(np.float32) for _ in range(3)]
    a, b, c = (Tensor(v.copy(), requires_grad=True) for v in arrays)
    ta, tb, tc = (torch.tensor(v, requires_grad=True) for v in arrays)

    def mine():
        ((a * b + c).sum()).backward()

    def theirs():
        ((ta * tb + tc).sum()).backward()

    def mine_fwd():
        with pyconv.no_grad():
            a * b + c

    def theirs_fwd():
        with torch.no_grad():
            ta * tb + tc

    results = {}
    for name, fn, tfn, ops in (("fwd+bwd (3 ops)", mine, theirs, 3), ("fwd no_grad (2 ops)", mine_fwd, theirs_fwd, 2)):
        ts, tts = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            ts.append((time.perf_counter() - t0) / n / ops)
            t0 = time.perf_counter()
            for _ in range(n):
                tfn()
            tts.append((time.perf_counter() - t0) / n / ops)
        results[name] = (statistics.median(ts), statistics.median(tts))
    return results


def main(argv=None):
    import torch

    default = "cpu" if "cpu" in pyconv.backends() and all(
        k in sys.modules["pyconv.backends"].get("cpu").kernels
        for k in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d_backward")) else "reference"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default=default)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="threads for pyconv and PyTorch (default: pyconv's)")
    args = p.parse_args(argv)
    if args.threads:
        pyconv.set_num_threads(args.threads)
    threads = pyconv.get_num_threads()
    torch.set_num_threads(threads)
    print(f"pyconv backend {args.backend!r}, {threads} threads (PyTorch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    r = bench_lenet(args.backend, args.repeats, args.batch_size)
    print(f"LeNet-5 epoch on digits upsampled to 32x32: {r['samples']} samples, {r['batches']} batches of "
          f"{args.batch_size}")
    print(f"  pyconv {r['pyconv_s'] * 1e3:9.1f} ms   torch {r['torch_s'] * 1e3:9.1f} ms   "
          f"speed vs torch {r['torch_s'] / r['pyconv_s']:.3f}x  (medians of {args.repeats}; all pyconv "
          f"{[round(t, 3) for t in r['pyconv_all']]}, torch {[round(t, 3) for t in r['torch_all']]})")
    kernels = sum(r["kernel_s"].values())
    print(f"  profiled pyconv epoch {r['profiled_s'] * 1e3:.1f} ms: kernels {kernels * 1e3:.1f} ms, the rest "
          f"(autograd, NumPy elementwise, optimiser) {(r['profiled_s'] - kernels) * 1e3:.1f} ms")
    for name, sec in sorted(r["kernel_s"].items(), key=lambda kv: -kv[1]):
        print(f"    {name:22s} {sec * 1e3:9.1f} ms")
    print(f"  pyconv epoch with free kernels (layer + autograd + optimiser only): {r['free_s'] * 1e3:.1f} ms, "
          f"= {r['free_s'] / r['free_torch_s']:.2f} of a whole PyTorch epoch ({r['free_torch_s'] * 1e3:.1f} ms) "
          f"timed alongside")
    print("Autograd overhead per op on (4, 4) float32 tensors:")
    for name, (mine, theirs) in bench_overhead().items():
        print(f"  {name:22s} pyconv {mine * 1e6:6.2f} us/op   torch {theirs * 1e6:6.2f} us/op   "
              f"ratio pyconv/torch {mine / theirs:.2f}")


if __name__ == "__main__":
    main()
