"""Pooling, LSTM and NMS on the cpu backend against PyTorch, OpenCV and NumPy.

Two ways to run it:

    python -m pytest benchmarks/bench_pool_lstm_nms.py --benchmark-enable   # pytest-benchmark
    python benchmarks/bench_pool_lstm_nms.py [--threads 2] [--rounds 15]    # RESULTS.md table
    python benchmarks/bench_pool_lstm_nms.py --cpu-time      # 1 thread, CPU clock (shared machine)

The script mode times pyconv and its comparison *interleaved* in one process (one call of each
per round, medians over the rounds), so that load from other processes on a shared machine
hits both alike; it prints the Markdown rows kept in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pyconv

import pyconv  # noqa: E402
from pyconv import ops  # noqa: E402

import torch  # noqa: E402
F = torch.nn.functional
DRAM_COPY_GBPS = 25.0  # measured copy bandwidth of the project machine (TOOLCHAIN.md)


@dataclass
class Case:
    name: str
    ours: Callable
    theirs: dict[str, Callable]  # comparison name -> callable
    gbytes: float = 0.0  # bytes that must move, for GB/s
    gflop: float = 0.0  # work, for GFLOP/s
    note: str = ""
    rounds: int | None = None  # fewer rounds for slow comparisons


# ---------------------------------------------------------------------------------------------
# Cases


def pool_cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64, 56, 56)).astype(np.float32)
    tx = torch.from_numpy(x)
    n_in, n_out2, n_out3 = x.size, 32 * 64 * 28 * 28, 32 * 64 * 28 * 28
    return [
        Case("max_pool2d 2x2 s2 + indices, f32 32x64x56x56",
             lambda: ops.max_pool2d(x, 2, 2, return_indices=True),
             {"torch": lambda: F.max_pool2d(tx, 2, 2, return_indices=True)},
             gbytes=(4 * n_in + 12 * n_out2) / 1e9),
        Case("avg_pool2d 2x2 s2, f32 32x64x56x56",
             lambda: ops.avg_pool2d(x, 2, 2),
             {"torch": lambda: F.avg_pool2d(tx, 2, 2)},
             gbytes=(4 * n_in + 4 * n_out2) / 1e9),
        Case("max_pool2d 3x3 s2 p1, f32 32x64x56x56",
             lambda: ops.max_pool2d(x, 3, 2, 1),
             {"torch": lambda: F.max_pool2d(tx, 3, 2, 1)},
             gbytes=(4 * n_in + 4 * n_out3) / 1e9),
    ]


def lstm_cases():
    T, B, I, H = 100, 64, 128, 256
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    lstm = torch.nn.LSTM(I, H)
    w = [p.detach().numpy() for p in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0 = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
    go = rng.standard_normal((T, B, H)).astype(np.float32)
    tx, tgo = torch.from_numpy(x), torch.from_numpy(go)

    def torch_fwd():
        with torch.no_grad():
            return lstm(tx)

    def torch_fwd_bwd():
        xx = tx.clone().requires_grad_()
        out, _ = lstm(xx)
        out.backward(tgo)

    def ours_fwd_bwd():  # as the autograd does: the backward reads what the forward saved
        *_, saved = ops.lstm(x, h0, c0, *w, save_for_backward=True)
        return ops.lstm_backward(go, None, None, x, h0, c0, *w, saved=saved)

    cell = torch.nn.LSTMCell(I, H)
    wc = [p.detach().numpy() for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
    x1, th, tc = x[0], torch.zeros(B, H), torch.zeros(B, H)
    tx1 = torch.from_numpy(x1)

    def torch_cell():
        with torch.no_grad():
            return cell(tx1, (th, tc))

    step_flop = 2 * B * 4 * H * (I + H)
    return [
        Case(f"lstm forward T={T} B={B} {I}->{H}, f32", lambda: ops.lstm(x, h0, c0, *w),
             {"torch": torch_fwd}, gflop=T * step_flop / 1e9),
        Case(f"lstm forward+backward T={T} B={B} {I}->{H}, f32", ours_fwd_bwd,
             {"torch": torch_fwd_bwd}, gflop=3 * T * step_flop / 1e9),
        Case(f"lstm_cell B={B} {I}->{H}, f32", lambda: ops.lstm_cell(x1, h0, c0, *wc),
             {"torch": torch_cell}, gflop=step_flop / 1e9),
    ]


def clustered_boxes(n, seed=0):
    """Detector-like boxes: about 25 boxes per object, jittered around the object's box, on an
    image whose area grows with n (constant density); uniform scores."""
    rng = np.random.default_rng(seed)
    objects = max(1, n // 25)
    side = 1024 * np.sqrt(n / 1000)
    centre = rng.uniform(0, side, (objects, 2))
    size = rng.uniform(24, 96, (objects, 2))
    obj = rng.integers(0, objects, n)
    c = centre[obj] + rng.normal(0, 0.08, (n, 2)) * size[obj]
    wh = size[obj] * np.exp(rng.normal(0, 0.1, (n, 2)))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
    scores = rng.uniform(0.05, 1, n).astype(np.float32)
    return boxes, scores


def numpy_nms(boxes, scores, thr):
    """The usual vectorised NumPy greedy NMS (one IoU row per kept box)."""
    x1, y1, x2, y2 = boxes.T
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        union = area[i] + area[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        order = rest[iou <= thr]
    return np.array(keep, np.int64)


def nms_cases():
    import cv2

    out = []
    for n in (1000, 10000, 50000):
        boxes, scores = clustered_boxes(n)
        xywh = [(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])) for b in boxes]
        score_list = scores.tolist()
        kept = len(ops.nms(boxes, scores, 0.5))
        out.append(Case(
            f"nms {n:,} clustered boxes (IoU 0.5), f32",
            lambda b=boxes, s=scores: ops.nms(b, s, 0.5),
            {"cv2": lambda b=xywh, s=score_list: cv2.dnn.NMSBoxes(b, s, 0.0, 0.5),
             "numpy": lambda b=boxes, s=scores: numpy_nms(b, s, 0.5)},
            note=f"{kept:,} kept", rounds=7 if n >= 50000 else None))
    return out


def all_cases():
    return pool_cases() + lstm_cases() + nms_cases()


# ---------------------------------------------------------------------------------------------
# pytest-benchmark entry points (one benchmark per case and implementation)

GROUPS = {"pool": pool_cases, "lstm": lstm_cases, "nms": nms_cases}  # three cases each
_built: dict = {}


@pytest.mark.parametrize("group,i", [(g, i) for g in GROUPS for i in range(3)])
@pytest.mark.parametrize("impl", ["pyconv", "torch", "cv2", "numpy"])
def test_bench(benchmark, group, i, impl):
    pyconv.set_num_threads(2)
    torch.set_num_threads(2)
    if group not in _built:  # build a group's inputs once, on first use
        _built[group] = GROUPS[group]()
    case = _built[group][i]
    fn = case.ours if impl == "pyconv" else case.theirs.get(impl)
    if fn is None:
        pytest.skip(f"no {impl} comparison for this case")
    benchmark.group = case.name
    benchmark(fn)


# ---------------------------------------------------------------------------------------------
# Script mode: interleaved medians -> Markdown rows


def interleaved(fns, rounds, clock=time.perf_counter):
    for f in fns:  # warm up (first-call costs, page faults)
        f()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for f, ts in zip(fns, times):
            t0 = clock()
            f()
            ts.append(clock() - t0)
    return [float(np.median(ts)) for ts in times]


def fmt_time(s):
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", default="", help="run cases whose name contains this")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process's CPU clock instead of the wall clock (forces "
                         "--threads 1): on a shared machine this leaves out the time spent "
                         "waiting for a core")
    args = ap.parse_args(argv)
    if args.cpu_time:
        args.threads = 1
    clock = time.process_time if args.cpu_time else time.perf_counter
    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} isa={pyconv.info()['isa']} torch={torch.__version__} "
          f"clock={'process CPU time' if args.cpu_time else 'wall'}")
    print("| case | pyconv | rate | comparison | their time | speed-up | note |")
    print("|---|---|---|---|---|---|---|")
    for case in all_cases():
        if args.only not in case.name:
            continue
        names = list(case.theirs)
        ts = interleaved([case.ours] + [case.theirs[n] for n in names], case.rounds or args.rounds, clock)
        ours = ts[0]
        if case.gbytes:
            rate = f"{case.gbytes / ours:.1f} GB/s ({100 * case.gbytes / ours / DRAM_COPY_GBPS:.0f}% of copy)"
        elif case.gflop:
            rate = f"{case.gflop / ours:.0f} GFLOP/s"
        else:
            rate = ""
        for name, theirs in zip(names, ts[1:]):
            their_rate = ""
            if case.gbytes:
                their_rate = f" ({case.gbytes / theirs:.1f} GB/s)"
            elif case.gflop:
                their_rate = f" ({case.gflop / theirs:.0f} GFLOP/s)"
            print(f"| {case.name} | {fmt_time(ours)} | {rate} | {name} | {fmt_time(theirs)}{their_rate} "
                  f"| **{theirs / ours:.1f}x** | {case.note} |", flush=True)


if __name__ == "__main__":
    main()
