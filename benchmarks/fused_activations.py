"""The measurements behind benchmarks/RESULTS.md's "Fused activations and dropout":

    python benchmarks/fused_activations.py --threads 2 --reps 200

Each activation's forward and backward pass at two layer-sized float32 inputs, three ways,
interleaved in one process (one call of each per round, the order rotating): the fused kernel
(pyconv.ops on the cpu backend), PyTorch's CPU kernel for the same pass, and the NumPy array
code that pyconv.nn.functional ran before the kernels existed. Prints the fastest time of each
(a loaded machine only ever adds time) and the ratios.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import pyconv  # noqa: E402
from pyconv import ops  # noqa: E402


def numpy_passes(x, g, w, y_sigmoid, y_tanh, keep_scale):
    """The array code of the NumPy path, per op and pass."""
    slope = w.reshape(1, -1, 1, 1)
    positive = x > 0
    y_elu = np.where(positive, x, np.expm1(np.minimum(x, 0)))
    rng = np.random.default_rng(0)
    return {
        "relu": lambda: np.maximum(x, 0),
        "relu_backward": lambda: g * (np.maximum(x, 0) > 0),
        "elu": lambda: np.where(x > 0, x, 1.0 * np.expm1(np.minimum(x, 0))),
        "elu_backward": lambda: np.where(positive, g, g * (y_elu + 1.0)),
        "prelu": lambda: np.where(x > 0, x, x * slope),
        "prelu_backward": lambda: (np.where(positive, g, g * slope),
                                   np.where(positive, 0, g * x).sum(axis=(0, 2, 3))),
        "sigmoid": lambda: 0.5 * (1 + np.tanh(0.5 * x)),
        "sigmoid_backward": lambda: g * y_sigmoid * (1 - y_sigmoid),
        "tanh": lambda: np.tanh(x),
        "tanh_backward": lambda: g * (1 - y_tanh * y_tanh),
        "dropout": lambda: x * np.asarray((rng.random(x.shape) >= 0.5).astype(x.dtype) * 2.0, x.dtype),
        "dropout_backward": lambda: g * keep_scale,
    }


def pyconv_passes(x, g, w, y_relu, y_sigmoid, y_tanh, mask):
    return {
        "relu": lambda: ops.relu(x),
        "relu_backward": lambda: ops.relu_backward(g, y_relu),
        "elu": lambda: ops.elu(x),
        "elu_backward": lambda: ops.elu_backward(g, x),
        "prelu": lambda: ops.prelu(x, w),
        "prelu_backward": lambda: ops.prelu_backward(g, x, w),
        "sigmoid": lambda: ops.sigmoid(x),
        "sigmoid_backward": lambda: ops.sigmoid_backward(g, y_sigmoid),
        "tanh": lambda: ops.tanh(x),
        "tanh_backward": lambda: ops.tanh_backward(g, y_tanh),
        "dropout": lambda: ops.dropout(x, 0.5, 1),
        "dropout_backward": lambda: ops.dropout_backward(g, mask, 0.5),
    }


def torch_passes(x, g, w, y_relu, y_sigmoid, y_tanh, mask):
    x, g, w, yr = torch.from_numpy(x), torch.from_numpy(g), torch.from_numpy(w), torch.from_numpy(y_relu)
    ys, yt, m = torch.from_numpy(y_sigmoid), torch.from_numpy(y_tanh), torch.from_numpy(mask.astype(bool))
    aten = torch.ops.aten
    return {
        "relu": lambda: torch.relu(x),
        "relu_backward": lambda: aten.threshold_backward(g, yr, 0),
        "elu": lambda: torch.nn.functional.elu(x),
        "elu_backward": lambda: aten.elu_backward(g, 1.0, 1, 1, False, x),
        "prelu": lambda: torch.nn.functional.prelu(x, w),
        "prelu_backward": lambda: aten._prelu_kernel_backward(g, x, w.reshape(1, -1, 1, 1)),
        "sigmoid": lambda: torch.sigmoid(x),
        "sigmoid_backward": lambda: aten.sigmoid_backward(g, ys),
        "tanh": lambda: torch.tanh(x),
        "tanh_backward": lambda: aten.tanh_backward(g, yt),
        "dropout": lambda: torch.native_dropout(x, 0.5, True),
        "dropout_backward": lambda: aten.native_dropout_backward(g, m, 2.0),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--passes", nargs="+", help="only these passes (e.g. relu relu_backward)")
    args = parser.parse_args()
    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"| pass | shape | fused (ms) | torch (ms) | NumPy path (ms) | x torch | x NumPy |")
    print("|---|---|---|---|---|---|---|")
    for shape in ((64, 64, 14, 14), (64, 128, 7, 7)):
        x, g = rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32)
        w = np.full(shape[1], 0.25, np.float32)
        y_relu, y_sigmoid, y_tanh = ops.relu(x), ops.sigmoid(x), ops.tanh(x)
        _, mask = ops.dropout(x, 0.5, 1)
        keep_scale = mask.astype(np.float32) * np.float32(2)
        impls = {"fused": pyconv_passes(x, g, w, y_relu, y_sigmoid, y_tanh, mask),
                 "torch": torch_passes(x, g, w, y_relu, y_sigmoid, y_tanh, mask),
                 "numpy": numpy_passes(x, g, w, y_sigmoid, y_tanh, keep_scale)}
        for name in args.passes or impls["fused"]:
            best = {impl: float("inf") for impl in impls}
            order = list(impls)
            for rep in range(args.reps):
                for impl in order[rep % 3:] + order[:rep % 3]:
                    fn = impls[impl][name]
                    start = time.perf_counter()
                    fn()
                    best[impl] = min(best[impl], time.perf_counter() - start)
            ms = {k: v * 1e3 for k, v in best.items()}
            print(f"| {name} | {'x'.join(map(str, shape))} | {ms['fused']:.3f} | {ms['torch']:.3f} | "
                  f"{ms['numpy']:.3f} | {ms['torch'] / ms['fused']:.2f} | {ms['numpy'] / ms['fused']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
