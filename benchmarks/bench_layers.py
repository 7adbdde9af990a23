"""Per-pass timings of the layers of the seed models (LeNet-5, DCGAN, VGG block, a PixelCNN
first layer, an LSTM) on the cpu backend against PyTorch, interleaved in one process:
forward, input gradient, weight gradient and bias gradient separately. Prints the median
times, PyTorch time / pyconv time of the medians and of the fastest repetitions (above 1:
pyconv faster; on a loaded machine the fastest repetitions are the ones no other job
interrupted, so their ratio is the steadier of the two).

    python benchmarks/bench_layers.py [--threads 2] [--reps 15] [FILTER...]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import pyconv
from pyconv import ops

F = torch.nn.functional
aten = torch.ops.aten


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _conv_cases(rng, name, N, C, H, W, K, R, stride=1, padding=0, transpose=False):
    x = _f32(rng, N, C, H, W)
    if transpose:
        w = _f32(rng, C, K, R, R) * 0.1
        y = ops.conv_transpose2d(x, w, None, stride, padding)
    else:
        w = _f32(rng, K, C, R, R) * 0.1
        y = ops.conv2d(x, w, None, stride, padding)
    gy = _f32(rng, *y.shape)
    tx, tw, tgy = map(torch.from_numpy, (x, w, gy))
    tb = torch.zeros(w.shape[1] if transpose else K)
    cases = []
    if transpose:
        cases.append((f"{name} fwd", lambda: ops.conv_transpose2d(x, w, None, stride, padding),
                      lambda: F.conv_transpose2d(tx, tw, None, stride, padding)))
        for i, part in enumerate(("dx", "dw", "db")):
            needs = tuple(j == i for j in range(3))
            cases.append((f"{name} {part}",
                          lambda needs=needs: ops.conv_transpose2d_backward(gy, x, w, stride, padding, needs=needs),
                          lambda needs=needs: aten.convolution_backward(
                              tgy, tx, tw, [tw.shape[1]], [stride] * 2, [padding] * 2, [1, 1], True, [0, 0], 1, list(needs))))
    else:
        cases.append((f"{name} fwd", lambda: ops.conv2d(x, w, None, stride, padding),
                      lambda: F.conv2d(tx, tw, None, stride, padding)))
        for i, part in enumerate(("dx", "dw", "db")):
            needs = tuple(j == i for j in range(3))
            cases.append((f"{name} {part}",
                          lambda needs=needs: ops.conv2d_backward(gy, x, w, stride, padding, needs=needs),
                          lambda needs=needs: aten.convolution_backward(
                              tgy, tx, tw, [K], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1, list(needs))))
    return cases


def _pool_cases(rng, name, N, C, H, W, k):
    x = _f32(rng, N, C, H, W)
    y, idx = ops.max_pool2d(x, k, return_indices=True)
    gy = _f32(rng, *y.shape)
    tx, tgy = torch.from_numpy(x), torch.from_numpy(gy)
    _, tidx = F.max_pool2d(tx, k, return_indices=True)
    return [
        (f"{name} max dx", lambda: ops.max_pool2d_backward(gy, idx, x.shape),
         lambda: aten.max_pool2d_with_indices_backward(tgy, tx, [k, k], [k, k], [0, 0], [1, 1], False, tidx)),
        (f"{name} avg dx", lambda: ops.avg_pool2d_backward(gy, x.shape, k),
         lambda: aten.avg_pool2d_backward(tgy, tx, [k, k], [k, k], [0, 0], False, True, None)),
    ]


def _linear_cases(rng, name, N, I, O):
    x, w, g = _f32(rng, N, I), _f32(rng, O, I), _f32(rng, N, O)
    tx, tw, tg = map(torch.from_numpy, (x, w, g))
    return [
        (f"{name} fwd", lambda: ops.matmul(x, w, trans_b=True), lambda: tx @ tw.T),
        (f"{name} dx", lambda: ops.matmul(g, w), lambda: tg @ tw),
        (f"{name} dw", lambda: ops.matmul(g, x, trans_a=True), lambda: tg.T @ tx),
    ]


def _lstm_cases(rng, name, T, B, I, Hd):
    x = _f32(rng, T, B, I)
    h0, c0 = _f32(rng, B, Hd), _f32(rng, B, Hd)
    s = float(1 / np.sqrt(Hd))
    w_ih, w_hh = _f32(rng, 4 * Hd, I) * s, _f32(rng, 4 * Hd, Hd) * s
    b_ih, b_hh = _f32(rng, 4 * Hd) * s, _f32(rng, 4 * Hd) * s
    g = _f32(rng, T, B, Hd)
    lstm = torch.nn.LSTM(I, Hd)
    with torch.no_grad():
        for p, a in zip((lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0),
                        (w_ih, w_hh, b_ih, b_hh)):
            p.copy_(torch.from_numpy(a))
    tx, th, tc, tg = map(torch.from_numpy, (x, h0, c0, g))

    def ours_fwd():
        return ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh)

    def theirs_fwd():
        with torch.no_grad():
            return lstm(tx, (th[None], tc[None]))

    def ours_both():
        out, _, saved = ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save_for_backward=True)
        return ops.lstm_backward(g, None, None, x, h0, c0, w_ih, w_hh, b_ih, b_hh, saved=saved)

    txg = tx.clone().requires_grad_(True)

    def theirs_both():
        out, _ = lstm(txg, (th[None], tc[None]))
        out.backward(tg)

    return [(f"{name} fwd", ours_fwd, theirs_fwd), (f"{name} fwd+bwd", ours_both, theirs_both)]


def cases(rng):
    c = []
    c += _pool_cases(rng, "LeNet pool1 64x6x28x28", 64, 6, 28, 28, 2)
    c += _pool_cases(rng, "LeNet pool2 64x16x10x10", 64, 16, 10, 10, 2)
    c += _pool_cases(rng, "VGG pool1 16x64x32x32", 16, 64, 32, 32, 2)
    c += _pool_cases(rng, "VGG pool2 16x128x16x16", 16, 128, 16, 16, 2)
    c += _linear_cases(rng, "DCGAN D Linear 64x6272->1", 64, 6272, 1)
    c += _conv_cases(rng, "DCGAN D conv1 64x1x28x28 k64 4x4 s2p1", 64, 1, 28, 28, 64, 4, 2, 1)
    c += _conv_cases(rng, "VGG conv1 16x3x32x32 k64 3x3 p1", 16, 3, 32, 32, 64, 3, 1, 1)
    c += _conv_cases(rng, "LeNet conv1 64x1x32x32 k6 5x5", 64, 1, 32, 32, 6, 5)
    c += _conv_cases(rng, "LeNet conv2 64x6x14x14 k16 5x5", 64, 6, 14, 14, 16, 5)
    c += _conv_cases(rng, "PixelCNN 32x1x28x28 k64 7x7 p3", 32, 1, 28, 28, 64, 7, 1, 3)
    c += _conv_cases(rng, "DCGAN G ct1 64x100x1x1 k128 7x7", 64, 100, 1, 1, 128, 7, transpose=True)
    c += _conv_cases(rng, "DCGAN G ct2 64x128x7x7 k64 4x4 s2p1", 64, 128, 7, 7, 64, 4, 2, 1, transpose=True)
    c += _conv_cases(rng, "DCGAN G ct3 64x64x14x14 k1 4x4 s2p1", 64, 64, 14, 14, 1, 4, 2, 1, transpose=True)
    c += _lstm_cases(rng, "LSTM T100 B64 128->256", 100, 64, 128, 256)
    return c


def _time(fn, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("filters", nargs="*")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pyconv.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    with pyconv.use_backend("cpu"):
        todo = [c for c in cases(rng) if not a.filters or any(f in c[0] for f in a.filters)]
        for name, ours, theirs in todo:
            ours(), theirs(), ours(), theirs()  # warm up
            to, tt = [], []
            for _ in range(a.reps):  # interleaved
                to += _time(ours, 1)
                tt += _time(theirs, 1)
            mo, mt = np.median(to) * 1e3, np.median(tt) * 1e3
            print(f"{name:48s} pyconv {mo:8.3f} ms  torch {mt:8.3f} ms  x{mt / mo:5.2f}  "
                  f"fastest x{min(tt) / min(to):5.2f}", flush=True)


if __name__ == "__main__":
    main()
