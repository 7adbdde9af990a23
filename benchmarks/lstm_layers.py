"""One LSTM layer's forward (keeping what the backward needs, as in training) and backward on
the cpu backend against torch.nn.LSTM, interleaved in one process, with the rate of each
against the best float32 GEMM the process reaches (pyconv.bench.measure.measure_limits):
how close the sequence kernels run to the machine's ceiling.

    PYTHONPATH=. python benchmarks/lstm_layers.py --threads 2
    ... --shapes 100,64,128,256    (T,B,I,H: the `pyconv bench` LSTM case)
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import pyconv
from pyconv.backends import get
from pyconv.bench.measure import measure_limits, warm

CHAR_LSTM = ["100,32,32,128", "100,32,128,128"]  # the char-LSTM's two layers


def rounds(shape, rounds_n, rng):
    import torch

    T, B, I, H = shape
    lstm_forward, lstm_backward = get("cpu").kernel("lstm"), get("cpu").kernel("lstm_backward")
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    h0 = np.zeros((B, H), np.float32)
    c0 = np.zeros_like(h0)
    w_ih = (rng.standard_normal((4 * H, I)) * 0.1).astype(np.float32)
    w_hh = (rng.standard_normal((4 * H, H)) * 0.1).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    grad_out = rng.standard_normal((T, B, H), dtype=np.float32)
    lstm = torch.nn.LSTM(I, H)
    tx, tgrad = torch.from_numpy(x).requires_grad_(), torch.from_numpy(grad_out)

    times = {"pyconv forward": [], "pyconv backward": [], "torch forward": [], "torch backward": []}

    def pyconv_pass():
        t0 = time.perf_counter()
        _, _, saved = lstm_forward(x, h0, c0, w_ih, w_hh, b, b, True)
        t1 = time.perf_counter()
        lstm_backward(grad_out, None, None, x, h0, c0, w_ih, w_hh, b, b, saved)
        return t1 - t0, time.perf_counter() - t1

    def torch_pass():
        t0 = time.perf_counter()
        out, _ = lstm(tx)
        t1 = time.perf_counter()
        out.backward(tgrad)
        return t1 - t0, time.perf_counter() - t1

    for _ in range(rounds_n):
        for name, one_pass in (("pyconv", pyconv_pass), ("torch", torch_pass)):
            warm(one_pass)  # timed as in a loop of its own calls (measure.interleaved_medians)
            forward, backward = one_pass()
            times[f"{name} forward"].append(forward)
            times[f"{name} backward"].append(backward)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=CHAR_LSTM, help="T,B,I,H")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    import torch

    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    ceiling = measure_limits()
    print(f"{args.threads} thread(s); ceiling {ceiling.gemm_gflops:.0f} GFLOP/s ({ceiling.source['gemm']}); "
          f"medians of {args.rounds} interleaved rounds")
    print("| T,B,I,H | pass | pyconv ms | GFLOP/s | % ceiling | torch ms | GFLOP/s | % ceiling | x torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for text in args.shapes:
        T, B, I, H = (int(v) for v in text.split(","))
        med = rounds((T, B, I, H), args.rounds, rng)
        forward_flop = 2 * T * B * 4 * H * (I + H)
        # The backward: the recurrence with grad_x (dG . [W_hh | W_ih]) and the weight gradients.
        for name, flop in (("forward", forward_flop), ("backward", 2 * forward_flop)):
            ours, theirs = med[f"pyconv {name}"], med[f"torch {name}"]
            rate = [flop / t / 1e9 for t in (ours, theirs)]
            print(f"| {text} | {name} | {ours * 1e3:.2f} | {rate[0]:.0f} | {100 * rate[0] / ceiling.gemm_gflops:.0f} | "
                  f"{theirs * 1e3:.2f} | {rate[1]:.0f} | {100 * rate[1] / ceiling.gemm_gflops:.0f} | {theirs / ours:.2f} |")


if __name__ == "__main__":
    main()
