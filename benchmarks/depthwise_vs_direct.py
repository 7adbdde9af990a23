"""The depthwise kernel (csrc/conv/depthwise.h, algorithm "auto") against the direct kernels
that depthwise layers took before (algorithm "direct": the phase-grid forward, direct.h's
gradients), C++ calls alone, one process, interleaved, CPU time, best of rounds, ms.

    PYTHONPATH=$PWD python benchmarks/depthwise_vs_direct.py --threads 1
"""
import argparse
import time

import numpy as np

import pyconv
from pyconv import _C, _spec

SHAPES = [  # N, C, H, W, multiplier, kernel, stride, padding
    (8, 64, 56, 56, 1, 3, 1, 1), (8, 64, 56, 56, 1, 3, 2, 1), (1, 32, 112, 112, 1, 3, 1, 1),
    (1, 144, 56, 56, 1, 3, 2, 1), (8, 128, 28, 28, 1, 5, 1, 2), (1, 64, 56, 56, 1, 3, 1, 1),
    (1, 512, 14, 14, 1, 3, 1, 1), (1, 1024, 7, 7, 1, 3, 1, 1), (8, 32, 28, 28, 2, 3, 1, 1),
    (8, 16, 28, 28, 4, 3, 1, 1), (8, 8, 28, 28, 8, 3, 1, 1), (8, 4, 28, 28, 16, 3, 1, 1),
    (4, 32, 32, 32, 1, 7, 1, 3),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    pyconv.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"{'shape':34s} {'pass':4s} {'depthwise':>9s} {'direct':>9s} {'speed-up':>8s}")
    for N, C, H, W, M, R, s, p in SHAPES:
        K = C * M
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        w = rng.standard_normal((K, 1, R, R), dtype=np.float32)
        b = rng.standard_normal(K, dtype=np.float32)
        gs = {a: _spec.conv2d(_spec.ShapeDtype(x.shape, np.float32), _spec.ShapeDtype(w.shape, np.float32), None,
                              s, p, 1, C, algorithm=a) for a in ("auto", "direct")}
        y = np.empty(gs["auto"].output_shape, np.float32)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        dx, dw = np.empty_like(x), np.empty_like(w)
        reps = max(3, int(3e7 / (y.size * R * R)))
        passes = {"fwd": lambda g: _C.conv2d(x, w, b, y, g), "dx": lambda g: _C.conv2d_grad_input(gy, w, dx, g),
                  "dw": lambda g: _C.conv2d_grad_weight(gy, x, dw, g)}
        for name, f in passes.items():
            best = {}
            for _ in range(args.rounds):
                for a, g in gs.items():
                    f(g)
                    t0 = time.process_time()
                    for _ in range(reps):
                        f(g)
                    best[a] = min(best.get(a, 1e9), (time.process_time() - t0) / reps * 1e3)
            shape = f"{N}x{C}x{H}x{W} x{M} {R}x{R} s{s} p{p}"
            print(f"{shape:34s} {name:4s} {best['auto']:9.3f} {best['direct']:9.3f} "
                  f"{best['direct'] / best['auto']:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
