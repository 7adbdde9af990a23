"""The gated PixelCNN's training step (batch 64 of 32x32, as `pyconv bench --models` runs it)
with its masked convolutions computing every tap (the weight multiplied by the mask, and the
gate as slices, tanh, sigmoid and a product) against the layers as they are (only the kept
taps, the gate as one step), and against the PyTorch twin; interleaved in one process.

    python benchmarks/pixelcnn_masked_conv.py [--runs 8] [--reps 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's pyconv
import pyconv  # noqa: E402
import pyconv.models.pixelcnn as pixelcnn  # noqa: E402
from pyconv import Tensor, nn  # noqa: E402
from pyconv.bench.models import _images, _single_loss_steps, _zoo_setup  # noqa: E402
from pyconv.nn import functional as F  # noqa: E402
from pyconv.optim import Adam  # noqa: E402


def every_tap_forward(layer, x):
    weight = layer.weight * Tensor(layer.mask.astype(layer.weight.dtype))
    return F.conv2d(x, weight, layer.bias, *layer._conv_args())


def gate_as_slices(t):
    c = t.shape[1] // 2
    return F.tanh(t[:, :c]) * F.sigmoid(t[:, c:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3, help="steps per timing")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    masked = (nn.MaskedConv2d, pixelcnn.VerticalMaskedConv2d)
    kept_taps = {cls: cls.forward for cls in masked}
    one_step_gate = pixelcnn._gate

    def every_tap(on):
        for cls in masked:
            cls.forward = every_tap_forward if on else kept_taps[cls]
        pixelcnn._gate = gate_as_slices if on else one_step_gate

    model, twin, batch, torch_batch = _zoo_setup(
        lambda models: models.PixelCNN(image_size=32),
        lambda rng: {"x": (_images(rng) > 0.5).astype(np.float32)}, np.random.default_rng(0))
    make, make_torch = _single_loss_steps(lambda m, b, F: m.loss(b["x"]),
                                          lambda t, b, torch: t.loss(b["x"]), 2e-3)
    step, torch_step = make(model, batch, F, Adam, Tensor), make_torch(twin, torch_batch, torch)

    def before():
        every_tap(True)
        try:
            return step()
        finally:
            every_tap(False)

    variants = {"every tap (before)": before, "kept taps (after)": step, "torch": torch_step}
    times = {name: [] for name in variants}
    with pyconv.use_backend("cpu"):
        for run in variants.values():
            run()
        for _ in range(args.runs):
            for name, run in variants.items():
                start = time.perf_counter()
                for _ in range(args.reps):
                    run()
                times[name].append((time.perf_counter() - start) / args.reps * 1e3)
    for name, t in times.items():
        print(f"{name:20s} ms per step: median {np.median(t):7.1f}  min {min(t):7.1f}  max {max(t):7.1f}")
    torch_ms = np.array(times["torch"])
    for name in list(variants)[:2]:
        ratio = np.array(times[name]) / torch_ms
        print(f"pyconv / torch, {name:20s}: median {np.median(ratio):.3f}  "
              f"runs {', '.join(f'{r:.2f}' for r in ratio)}")
    speedup = np.array(times["every tap (before)"]) / np.array(times["kept taps (after)"])
    print(f"before / after: median {np.median(speedup):.3f}  runs {', '.join(f'{r:.2f}' for r in speedup)}")


if __name__ == "__main__":
    main()
