"""``pyconv bench --onnx``: one ONNX graph run by pyconv (:func:`pyconv.onnx.load`) and by ONNX
Runtime (CPU provider), interleaved in one process with the same thread count, with the
outputs compared and the time split per op type for both.

The graphs are files, or built in (written with :func:`pyconv.onnx.export` from pyconv's
models, so no download and no PyTorch is needed): ``lenet`` (LeNet-5, 64 images 32x32),
``dcgan`` (the DCGAN generator, 64 samples of 32x32 from 100-d noise, width 64) and
``resnet`` (a CIFAR-sized ResNet: a 3x3 stem and six basic blocks 16-32-64, 16 images); their
batch size is symbolic in the graph and set to those sizes unless ``--batch`` says otherwise.
"""
from __future__ import annotations

import collections
import json
import os
import statistics
import tempfile

import numpy as np

import pyconv
from .measure import interleaved_medians, ort_session, warm

__all__ = ["BUILT_IN", "built_in_graph", "compare", "main"]


def _lenet(rng):
    from pyconv.models import LeNet5

    return LeNet5(), rng.standard_normal((64, 1, 32, 32)).astype(np.float32)


def _dcgan(rng):
    from pyconv.models import DCGAN

    gan = DCGAN(z_dim=100, image_size=32, width=64)
    _randomise_batch_norms(gan, rng)
    return gan.generator, rng.standard_normal((64, 100)).astype(np.float32)


def _resnet(rng):
    from pyconv import nn

    blocks = [nn.ResidualBlock(16, 16), nn.ResidualBlock(16, 16), nn.ResidualBlock(16, 32, 2),
              nn.ResidualBlock(32, 32), nn.ResidualBlock(32, 64, 2), nn.ResidualBlock(64, 64)]
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          *blocks, nn.AvgPool2d(8), nn.Flatten(), nn.Linear(64, 10))
    _randomise_batch_norms(model, rng)
    return model, rng.standard_normal((16, 3, 32, 32)).astype(np.float32)


def _randomise_batch_norms(model, rng):
    """Running statistics away from (0, 1), so that batch norm does real work in the graph."""
    from pyconv import nn

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.standard_normal(m.running_mean.shape) * 0.1
            m.running_var[...] = rng.random(m.running_var.shape) + 0.5


BUILT_IN = {"lenet": _lenet, "dcgan": _dcgan, "resnet": _resnet}


def built_in_graph(name, path):
    """Writes the built-in graph `name` to `path` -> the example input it was traced with."""
    pyconv.manual_seed(0)
    model, x = BUILT_IN[name](np.random.default_rng(0))
    pyconv.onnx.export(model, x, path)
    return x


def _feeds(session, batch, rng):
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        if "int" in i.type:
            feeds[i.name] = rng.integers(0, 2, shape).astype(np.int64)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _per_op(graph, path, threads, feeds, reps):
    """Median seconds per op type and run for pyconv (timed around each node) and ONNX Runtime
    (its profiler's node kernel times), the two runs interleaved as in the main timing."""
    session = ort_session(path, threads, os.path.join(tempfile.mkdtemp(), "ort"))
    session.run(None, feeds)  # warm-up, left out below
    mine = collections.defaultdict(lambda: [0.0] * reps)
    for k in range(reps):
        timings = []
        warm(lambda: graph.run(None, feeds))
        graph.run(None, feeds, timings=timings)
        for _, op_type, seconds in timings:
            mine[op_type][k] += seconds
        session.run(None, feeds)  # wakes its workers; left out below, as in interleaved_medians
        session.run(None, feeds)
    with open(session.end_profiling()) as fh:
        events = json.load(fh)
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    runs = runs[1:][1::2]  # after the warm-up, the second run of each pair
    theirs = collections.defaultdict(lambda: [0.0] * len(runs))
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        for k, run in enumerate(runs):
            if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]:
                theirs[e["args"]["op_name"]][k] += e["dur"] * 1e-6
    return ({op: statistics.median(t) for op, t in mine.items()},
            {op: statistics.median(t) for op, t in theirs.items()})


def compare(path, batch=1, reps=20, threads=2):
    """Times `path` on pyconv and ONNX Runtime -> dict with the medians (s), the largest output
    difference and the per-op-type split of both."""
    pyconv.set_num_threads(threads)
    graph = pyconv.onnx.load(path)
    session = ort_session(path, threads)
    feeds = _feeds(session, batch, np.random.default_rng(1))
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
               for a, b in zip(graph.run(None, feeds), session.run(None, feeds)))
    med = interleaved_medians({"pyconv": lambda: graph.run(None, feeds),
                               "onnxruntime": lambda: session.run(None, feeds)}, reps)
    mine, theirs = _per_op(graph, path, threads, feeds, max(3, reps // 2))
    return {"graph": os.path.basename(path), "threads": threads, "reps": reps,
            "pyconv_s": med["pyconv"], "onnxruntime_s": med["onnxruntime"],
            "speedup": med["onnxruntime"] / med["pyconv"], "max_abs_diff": diff,
            "pyconv_per_op": mine, "onnxruntime_per_op": theirs}


def format_result(r) -> str:
    lines = [f"{r['graph']}: pyconv {r['pyconv_s'] * 1e3:.3f} ms, ONNX Runtime {r['onnxruntime_s'] * 1e3:.3f} ms "
             f"-> pyconv {r['speedup']:.2f}x ONNX Runtime ({r['threads']} threads, median of {r['reps']} "
             f"interleaved runs; outputs differ by at most {r['max_abs_diff']:.1e})",
             "per op type (medians over separate runs with per-node timing, interleaved the same way; "
             "ONNX Runtime fuses some nodes into others, e.g. Relu and Add into Conv):",
             "| op type | pyconv ms | ONNX Runtime ms |", "|---|---|---|"]
    ops = sorted(set(r["pyconv_per_op"]) | set(r["onnxruntime_per_op"]),
                 key=lambda op: -r["pyconv_per_op"].get(op, 0.0))
    for op in ops:
        p, o = r["pyconv_per_op"].get(op), r["onnxruntime_per_op"].get(op)
        lines.append(f"| {op} | {'' if p is None else f'{p * 1e3:.3f}'} | {'' if o is None else f'{o * 1e3:.3f}'} |")
    return "\n".join(lines)


def main(graphs, batch=None, reps=20, threads=2, json_path=None):
    """`graphs`: ONNX files or built-in names (lenet, dcgan, resnet). Prints one table each.
    `batch`: the size of the graphs' symbolic dimensions (None: a built-in graph's own batch
    size, 1 for files)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for g in graphs:
            path, size = g, batch or 1
            if g in BUILT_IN:
                path = os.path.join(tmp, f"{g}.onnx")
                example = built_in_graph(g, path)
                size = batch or example.shape[0]
            elif not os.path.exists(g):
                raise SystemExit(f"pyconv bench --onnx: {g!r} is neither a file nor one of "
                                 f"{', '.join(BUILT_IN)}")
            r = compare(path, size, reps, threads)
            results.append(r)
            print(format_result(r), flush=True)
            print()
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"wrote {json_path}")
    return results
