"""Depthwise convolutions (forward, input gradient, weight gradient) against PyTorch and ONNX
Runtime: CPU time of one call (process CPU time, so other processes on a shared host do not
count), best of several rounds, the implementations interleaved in one process; or wall time
with --wall (for 2 threads on a quiet host).

    PYTHONPATH=$PWD python benchmarks/depthwise.py --threads 1 --rounds 5
"""
import argparse
import time

import torch  # first: PyTorch's OpenMP runtime keeps its own settings
import numpy as np

import pyconv
from pyconv import _C, _spec, ops
from pyconv.bench.measure import ort_session

# (name, N, C, H, W, multiplier, kernel, stride, padding)
SHAPES = [
    ("8x64x56x56 3x3 p1", 8, 64, 56, 56, 1, 3, 1, 1),
    ("8x64x56x56 3x3 s2 p1", 8, 64, 56, 56, 1, 3, 2, 1),
    ("1x32x112x112 3x3 p1", 1, 32, 112, 112, 1, 3, 1, 1),
    ("1x144x56x56 3x3 s2 p1", 1, 144, 56, 56, 1, 3, 2, 1),
    ("8x128x28x28 5x5 p2", 8, 128, 28, 28, 1, 5, 1, 2),
    ("1x64x56x56 3x3 p1", 1, 64, 56, 56, 1, 3, 1, 1),
    ("8x32x28x28 x2 3x3 p1", 8, 32, 28, 28, 2, 3, 1, 1),
]


def timer(wall):
    return time.perf_counter if wall else time.process_time


def best(fn, reps, clock):
    fn()
    t0 = clock()
    for _ in range(reps):
        fn()
    return (clock() - t0) / reps


def ort_fn(x, w, b, stride, pad, groups, threads):
    from onnx import TensorProto, helper, numpy_helper
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=[pad] * 4, group=groups)
    graph = helper.make_graph([node], "conv2d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_empty_tensor_value_info("y")],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort_session(model, threads)
    return lambda: session.run(None, {"x": x})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--wall", action="store_true")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    clock = timer(args.wall)
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}, {'wall' if args.wall else 'CPU'} time, best of {args.rounds}, ms")
    print(f"{'shape':26s} {'pass':6s} {'algorithm':22s} {'pyconv':>8s} {'torch':>8s} {'ort':>8s} {'xtorch':>7s} {'xort':>6s}")
    for name, N, C, H, W, M, R, s, p in SHAPES:
        if args.only and args.only not in name:
            continue
        K = C * M
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        w = rng.standard_normal((K, 1, R, R), dtype=np.float32) * 0.1
        b = rng.standard_normal(K, dtype=np.float32)
        g = _spec.conv2d(_spec.ShapeDtype(x.shape, np.float32), _spec.ShapeDtype(w.shape, np.float32), None, s, p, 1, C)
        gy = rng.standard_normal(g.output_shape, dtype=np.float32)
        tx, tw, tb, tgy = (torch.from_numpy(a) for a in (x, w, b, gy))
        work = N * K * g.output_shape[2] * g.output_shape[3]
        reps = max(2, int(2e7 / (work * R * R)))
        passes = {
            "fwd": (lambda: ops.conv2d(x, w, b, s, p, 1, C, backend="cpu"),
                    lambda: torch.nn.functional.conv2d(tx, tw, tb, s, p, 1, C),
                    ort_fn(x, w, b, s, p, C, args.threads)),
            "dx": (lambda: ops.conv2d_backward(gy, x, w, s, p, 1, C, needs=(True, False, False), backend="cpu"),
                   lambda: torch.ops.aten.convolution_backward(tgy, tx, tw, None, [s, s], [p, p], [1, 1], False,
                                                               [0, 0], C, [True, False, False]),
                   None),
            "dw": (lambda: ops.conv2d_backward(gy, x, w, s, p, 1, C, needs=(False, True, False), backend="cpu"),
                   lambda: torch.ops.aten.convolution_backward(tgy, tx, tw, None, [s, s], [p, p], [1, 1], False,
                                                               [0, 0], C, [False, True, False]),
                   None),
        }
        for pname, fns in passes.items():
            times = [[] for _ in fns]
            for _ in range(args.rounds):
                for i, f in enumerate(fns):
                    if f is not None:
                        times[i].append(best(f, reps, clock))
            t = [min(ts) * 1e3 if ts else float("nan") for ts in times]
            alg = _C.conv2d_algorithm(g, np.dtype(np.float32)) if pname == "fwd" else ""
            print(f"{name:26s} {pname:6s} {alg:22s} {t[0]:8.3f} {t[1]:8.3f} {t[2]:8.3f} {t[1] / t[0]:6.2f}x "
                  f"{t[2] / t[0]:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
