"""A training step's time outside the convolution kernels: the model zoo's step (pyconv's side,
cpu backend, one thread, process CPU time, best of 20) as it is, then with the three
convolution kernels of pyconv._C (forward, input and weight gradient) replaced by stubs that
only zero their outputs. What remains is the autograd, the argument checks, the small kernels
(activations, bias gradients, dense layers, loss, optimiser) and NumPy work between them, plus
the zeroing (under a tenth of a millisecond per MiB of convolution outputs).

    python benchmarks/step_outside_convs.py "VAE" --rounds 3

Numbers from one process only compare with another process's on a quiet host: alternate the
processes of the two versions compared, several times.
"""
from __future__ import annotations

import argparse
import os
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="part of a model name of pyconv.bench.models._ZOO")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import numpy as np

    import pyconv
    from pyconv import _C
    from pyconv.bench import models
    from pyconv.bench.measure import best_time

    pyconv.set_num_threads(1)
    try:
        import torch  # the zoo's cases build the PyTorch twin too

        torch.set_num_threads(1)
    except ImportError:
        sys.exit("step_outside_convs.py needs PyTorch (the model zoo's cases build the twin)")

    def zeroing(name, output):
        def stub(*arguments):
            arguments[output].fill(0)
        stub.__name__ = name
        return stub

    outputs = {"conv2d": 3, "conv2d_grad_input": 2, "conv2d_grad_weight": 2}  # y, grad_x, grad_w
    real = {name: getattr(_C, name) for name in outputs}
    stubs = {name: zeroing(name, at) for name, at in outputs.items()}
    matches = [e for e in models._ZOO if args.model in e[0]]
    if not matches:
        sys.exit(f"no model of pyconv.bench.models._ZOO matches {args.model!r}")
    name, *entry = matches[0]
    case = models._zoo_case(name, *entry)
    with pyconv.use_backend("cpu"):
        step = case.make(np.random.default_rng(0))["step"]
        for _ in range(3):
            step()
        print(f"{name}: one thread, process CPU ms, best of 20 steps")
        for _ in range(args.rounds):
            whole = best_time(step, 20)
            try:
                for k, v in stubs.items():
                    setattr(_C, k, v)
                outside = best_time(step, 20)
            finally:
                for k, v in real.items():
                    setattr(_C, k, v)
            print(f"step {whole * 1e3:.2f}, outside the convolution kernels {outside * 1e3:.2f}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
