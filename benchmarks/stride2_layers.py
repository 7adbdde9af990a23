"""Per pass, 4x4 stride-2 padding-1 convolutions (the DCGAN layers) against PyTorch.

pyconv and PyTorch interleaved in one process, best of --repeats calls per round, best over
--rounds, each round's calls after 10 ms of untimed ones (pyconv.bench.measure.warm: the other
library's idle workers have stopped spinning by then). One thread: process CPU time; more:
wall time (the CPU time of several threads counts their idle spinning). The forward is conv2d;
the input gradient is also ConvTranspose2d's forward, the weight gradient also its weight
gradient.

    PYTHONPATH=$PWD python benchmarks/stride2_layers.py [--rounds 5]
"""
import argparse
import os
import sys
import time

# (N, C, H, K): the 64 -> 128 layer on 14x14 of the 28x28 DCGAN (its discriminator's second
# convolution, its generator's ConvTranspose2d(128, 64) on 7x7), and the 32x32 conditional
# DCGAN's 32 -> 64 on 16x16 and 64 -> 128 on 8x8.
SHAPES = [(64, 64, 14, 128), (64, 32, 16, 64), (64, 64, 8, 128)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import numpy as np
    import torch

    import pyconv
    from pyconv import _C, _spec, ops
    from pyconv.bench.measure import best_time, warm

    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}, best of {args.rounds} rounds x "
          f"{args.repeats}")
    print("| layer (N, C, H -> K, 4x4 s2 p1) | pass | pyconv algorithm | pyconv ms | torch ms | x torch |")
    print("|---|---|---|---|---|---|")
    for N, C, H, K in SHAPES:
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((K, C, 4, 4)) * 0.05).astype(np.float32)
        Ho = H // 2
        gy = rng.standard_normal((N, K, Ho, Ho)).astype(np.float32)
        tx, tw, tgy = map(torch.from_numpy, (x, w, gy))

        def torch_backward(mask):
            return lambda: torch.ops.aten.convolution_backward(tgy, tx, tw, None, [2, 2], [1, 1], [1, 1], False,
                                                               [0, 0], 1, mask)
        passes = {
            "forward": (lambda: ops.conv2d(x, w, None, 2, 1, backend="cpu"),
                        lambda: torch.nn.functional.conv2d(tx, tw, None, 2, 1)),
            "grad input": (lambda: ops.conv2d_backward(gy, x, w, 2, 1, needs=(True, False, False), backend="cpu"),
                           torch_backward([True, False, False])),
            "grad weight": (lambda: ops.conv2d_backward(gy, x, w, 2, 1, needs=(False, True, False), backend="cpu"),
                            torch_backward([False, True, False])),
        }
        algo = _C.conv2d_algorithm(_spec.conv2d(x, w, None, 2, 1, 1, 1), np.dtype(np.float32))
        for name, (ours, theirs) in passes.items():
            p = t = float("inf")
            for _ in range(args.rounds):
                warm(ours)
                p = min(p, best_time(ours, args.repeats, clock))
                warm(theirs)
                t = min(t, best_time(theirs, args.repeats, clock))
            print(f"| {N}x{C}x{H}x{H} -> {K} | {name} | {algo if name == 'forward' else ''} | {p * 1e3:.2f} | "
                  f"{t * 1e3:.2f} | {t / p:.2f} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
