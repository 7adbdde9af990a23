"""The VGG-style 3x3 layers (64@56x56 to 512@7x7, batch 8, padding 1, float32) per pass on the
cpu backend against PyTorch (forward, input gradient, weight gradient, both gradients) and ONNX Runtime
(forward), interleaved in one process: rounds of `calls` calls each, the median of the round
medians and the range of the per-round ratios.

    PYTHONPATH=. python benchmarks/vgg_layers.py --threads 2
    ... --threads 1 --layers 256 512 --passes weight
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import pyconv
from pyconv import ops
from pyconv.bench.measure import ort_session

LAYERS = {64: 56, 128: 28, 256: 14, 512: 7}  # channels -> image side


def _ort_conv(x, w, b, threads):
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1] * 4)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_empty_tensor_value_info("y")],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort_session(model, threads)
    return lambda: session.run(None, {"x": x})


def implementations(c, side, batch, threads, passes):
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c, side, side), dtype=np.float32)
    w = rng.standard_normal((c, c, 3, 3), dtype=np.float32) * np.float32(0.05)
    b = rng.standard_normal(c, dtype=np.float32)
    gy = rng.standard_normal((batch, c, side, side), dtype=np.float32)
    tx, tw, tb, tgy = (torch.from_numpy(a) for a in (x, w, b, gy))
    backward = torch.ops.aten.convolution_backward
    out = {}
    if "forward" in passes:
        out["forward"] = {
            "pyconv": lambda: ops.conv2d(x, w, b, 1, 1, backend="cpu"),
            "torch": lambda: torch.nn.functional.conv2d(tx, tw, tb, 1, 1),
            "onnxruntime": _ort_conv(x, w, b, threads),
        }
    if "input" in passes:
        out["input"] = {
            "pyconv": lambda: ops.conv2d_backward(gy, x, w, 1, 1, needs=(True, False, False), backend="cpu"),
            "torch": lambda: backward(tgy, tx, tw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                      [True, False, False]),
        }
    if "weight" in passes:
        out["weight"] = {
            "pyconv": lambda: ops.conv2d_backward(gy, x, w, 1, 1, needs=(False, True, False), backend="cpu"),
            "torch": lambda: backward(tgy, tx, tw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                      [False, True, False]),
        }
    if "backward" in passes:
        out["backward"] = {
            "pyconv": lambda: ops.conv2d_backward(gy, x, w, 1, 1, needs=(True, True, False), backend="cpu"),
            "torch": lambda: backward(tgy, tx, tw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                      [True, True, False]),
        }
    return out


def measure(fns, rounds, calls):
    """name -> (median ms, per-round medians)."""
    for f in fns.values():
        f()
    per_round = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            per_round[name].append(statistics.median(times) * 1e3)
    return per_round


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--layers", type=int, nargs="+", default=list(LAYERS))
    p.add_argument("--passes", nargs="+", default=["forward", "input", "weight", "backward"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=5)
    a = p.parse_args()
    import torch

    pyconv.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    from pyconv import _C
    from pyconv import _spec

    import os
    print(f"threads {a.threads}, batch {a.batch}, load average {os.getloadavg()[0]:.2f}")
    print("| layer | pass | pyconv ran | pyconv ms | torch ms | ORT ms | torch / pyconv [range] | ORT / pyconv |")
    print("|---|---|---|---|---|---|---|---|")
    for c in a.layers:
        side = LAYERS[c]
        g = _spec.conv2d(_spec.ShapeDtype((a.batch, c, side, side), np.float32),
                         _spec.ShapeDtype((c, c, 3, 3), np.float32), None, 1, 1, 1, 1)
        ran = _C.conv2d_algorithm(g, np.dtype(np.float32))
        for pas, fns in implementations(c, side, a.batch, a.threads, a.passes).items():
            r = measure(fns, a.rounds, a.calls)
            med = {k: statistics.median(v) for k, v in r.items()}
            ratios = [t / m for t, m in zip(r["torch"], r["pyconv"])]
            ort = f"{med['onnxruntime']:.2f}" if "onnxruntime" in med else ""
            ort_ratio = f"{med['onnxruntime'] / med['pyconv']:.2f}" if "onnxruntime" in med else ""
            print(f"| {a.batch}x{c}x{side}x{side} k{c} | {pas} | {ran if pas != 'weight' else ''} | "
                  f"{med['pyconv']:.2f} | {med['torch']:.2f} | {ort} | "
                  f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}] | {ort_ratio} |",
                  flush=True)


if __name__ == "__main__":
    main()
