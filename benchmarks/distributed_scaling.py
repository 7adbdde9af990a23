"""Data-parallel training measurements behind benchmarks/RESULTS.md's "Data-parallel training":

    mpiexec -n 2 python benchmarks/distributed_scaling.py allreduce      # bandwidth and latency
    mpiexec -n 2 python benchmarks/distributed_scaling.py overlap        # communication share of a step
    python benchmarks/distributed_scaling.py project --bytes B --compute-ms T --bandwidth BW --latency L
    python benchmarks/distributed_scaling.py epoch --threads 2               # 1 rank x 2 threads
    mpiexec -n 2 python benchmarks/distributed_scaling.py epoch --threads 1  # 2 ranks x 1 thread

`epoch` trains one epoch of the 1437 training digits at 32x32 with a global batch of 64 (32 per
rank on 2 ranks), for LeNet-5 and for a wider CNN of 1.15M parameters, and prints seconds per
epoch (rank 0). `overlap` runs, interleaved in one job, training steps of the 1.15M-parameter
CNN (32 images per rank) four ways: no communication at all (the compute alone), gradients
averaged after the backward pass (allreduce_gradients, blocking) and averaged during it
(DistributedDataParallel) with and without its progress thread; it prints median and fastest
step times and the time each step waits for communication. `project` applies the ring
allreduce's cost model to the measured numbers and to published network speeds. Run on an otherwise idle machine for numbers worth comparing.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import pyconv  # noqa: E402
import pyconv.nn.functional as F  # noqa: E402
from pyconv import Tensor, data, distributed as dist, nn  # noqa: E402
from pyconv.optim import Adam  # noqa: E402


def wide_cnn():
    """A CNN for 32x32 digits with 1.15M parameters (most of them in the first linear layer)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, 10))


def build(name):
    pyconv.manual_seed(0)
    if name == "lenet":
        from pyconv.models import LeNet5

        return LeNet5()
    return wide_cnn()


def digits():
    x, y = data.load_digits()
    x = data.resize_images(x, 32)
    x_train, _, y_train, _ = data.train_test_split(x, y, test_size=0.2, seed=0)
    return np.ascontiguousarray(x_train), y_train


def median_of(samples):
    return float(np.median(samples))


def allreduce_benchmark(reps):
    from mpi4py import MPI

    comm, p = MPI.COMM_WORLD, dist.world_size()
    rows = []
    for size in [2 ** k for k in range(2, 27, 2)]:  # bytes: 4 B .. 64 MiB
        buf = np.ones(size // 4, np.float32)
        times = []
        for _ in range(reps if size < 2 ** 22 else max(3, reps // 4)):
            comm.Barrier()
            start = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
            times.append(time.perf_counter() - start)
        t = median_of(times)
        rows.append((size, t, 2 * (p - 1) / p * size / t / 1e9))
    if dist.is_main():
        print(f"allreduce on {p} ranks ({MPI.Get_library_version().splitlines()[0].strip()}):")
        print(f"{'bytes':>10} {'median us':>10} {'bus GB/s':>9}")
        for size, t, bw in rows:
            print(f"{size:>10} {t * 1e6:>10.1f} {bw:>9.3f}")


def epoch_benchmark(models, global_batch, repeats):
    x, y = digits()
    r, p = dist.rank(), dist.world_size()
    for name in models:
        model = dist.DistributedDataParallel(build(name)) if p > 1 else build(name)
        opt = Adam(model.parameters(), lr=1e-3)
        loader = data.DataLoader((x, y), global_batch // p, shuffle=True, seed=0, rank=r, world_size=p)
        seconds = []
        for _ in range(repeats + 1):  # the first epoch warms up
            dist.barrier()
            start = time.perf_counter()
            for xb, yb in loader:
                opt.zero_grad()
                F.cross_entropy(model(Tensor(xb)), yb).backward()
                opt.step()
            dist.barrier()
            seconds.append(time.perf_counter() - start)
        params = sum(q.size for q in model.parameters())
        if dist.is_main():
            print(f"epoch {name} ({params:,} parameters), {p} rank(s) x {pyconv.get_num_threads()} "
                  f"thread(s), global batch {global_batch}: median {median_of(seconds[1:]):.3f} s, "
                  f"fastest {min(seconds[1:]):.3f} s, of {[round(s, 3) for s in seconds[1:]]}")


def overlap_benchmark(rounds, per_rank):
    x, y = digits()
    r, p = dist.rank(), dist.world_size()
    xb, yb = x[r * per_rank:(r + 1) * per_rank], y[r * per_rank:(r + 1) * per_rank]
    plain = build("wide")
    ddp = dist.DistributedDataParallel(build("wide"))
    reducer = ddp.reducer
    threaded = dist.DistributedDataParallel(build("wide"))
    threaded.reducer.progress_thread = True
    opt_plain, opt_ddp = Adam(plain.parameters(), lr=1e-4), Adam(ddp.parameters(), lr=1e-4)
    opt_threaded = Adam(threaded.parameters(), lr=1e-4)
    nbytes = sum(q.data.nbytes for q in plain.parameters())

    def step(model, opt, after_backward=None):
        opt.zero_grad()
        F.cross_entropy(model(Tensor(xb)), yb).backward()
        if after_backward:
            after_backward()
        opt.step()

    blocking_wait = []

    def blocking_allreduce():
        start = time.perf_counter()
        dist.allreduce_gradients(plain)
        blocking_wait.append(time.perf_counter() - start)

    variants = {
        "compute only (no communication)": lambda: step(plain, opt_plain),
        "allreduce after backward (blocking)": lambda: step(plain, opt_plain, blocking_allreduce),
        "overlapped (DistributedDataParallel)": lambda: step(ddp, opt_ddp),
        "overlapped, with a progress thread": lambda: step(threaded, opt_threaded),
    }
    times = {k: [] for k in variants}
    overlapped_wait, threaded_wait = [], []
    names = list(variants)
    for k in range(rounds + 1):
        for name in names[k % len(names):] + names[:k % len(names)]:  # rotated: none always first
            run = variants[name]
            before = reducer.communication_seconds
            before_threaded = threaded.reducer.communication_seconds
            dist.barrier()
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if k:  # round 0 warms up
                times[name].append(elapsed)
                if name.startswith("overlapped ("):
                    overlapped_wait.append(reducer.communication_seconds - before)
                elif name.startswith("overlapped,"):
                    threaded_wait.append(threaded.reducer.communication_seconds - before_threaded)
    if dist.is_main():
        base = median_of(times["compute only (no communication)"])
        print(f"overlap: wide CNN, {nbytes / 2 ** 20:.2f} MiB of float32 gradients in "
              f"{len(reducer.buckets)} buckets, {per_rank} images per rank, {p} ranks x "
              f"{pyconv.get_num_threads()} thread(s), {rounds} interleaved rounds (medians)")
        best = min(times["compute only (no communication)"])
        for name, samples in times.items():
            t = median_of(samples)
            print(f"  {name:<40} {t * 1e3:8.1f} ms  ({(t / base - 1) * 100:+.1f}% over compute only); "
                  f"fastest {min(samples) * 1e3:.1f} ms ({(min(samples) / best - 1) * 100:+.1f}%)")
        print(f"  blocking allreduce of all gradients:     {median_of(blocking_wait) * 1e3:8.1f} ms "
              f"(fastest {min(blocking_wait) * 1e3:.1f})")
        print(f"  overlapped: wait at the end of backward: {median_of(overlapped_wait) * 1e3:8.1f} ms "
              f"(fastest {min(overlapped_wait) * 1e3:.1f}; {reducer.buckets_started_early} of "
              f"{len(reducer.buckets)} buckets started during backward)")
        print(f"  with a progress thread: wait at the end: {median_of(threaded_wait) * 1e3:8.1f} ms "
              f"(fastest {min(threaded_wait) * 1e3:.1f})")


# Published link rates: InfiniBand HDR 200 Gb/s (25 GB/s per direction) with ~1 us MPI latency
# per message plus software, taken as 2 us per ring step; 100 Gb/s Ethernet (12.5 GB/s) with
# RoCE, taken as 5 us per step.
NETWORKS = {"InfiniBand HDR 200 Gb/s": (25e9, 2e-6), "100 Gb/s Ethernet (RoCE)": (12.5e9, 5e-6)}


def ring_allreduce_seconds(nbytes, ranks, bandwidth, latency):
    """The ring allreduce's cost model: 2(p-1)/p of the bytes cross every link, in 2(p-1) steps."""
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def project(nbytes, compute_ms, measured_bandwidth, measured_latency):
    """Projected communication per step for 8, 64 and 512 ranks (weak scaling: the per-rank
    batch and so the compute per step stay fixed), on the published networks and on a network
    as fast as this machine's loopback."""
    networks = dict(NETWORKS)
    networks["this machine's loopback (measured)"] = (measured_bandwidth, measured_latency)
    print(f"ring allreduce of {nbytes / 1e6:.2f} MB per step, compute {compute_ms:.1f} ms per step")
    for name, (bw, lat) in networks.items():
        for p in (2, 8, 64, 512):
            t = ring_allreduce_seconds(nbytes, p, bw, lat)
            bandwidth_part = 2 * (p - 1) / p * nbytes / bw
            share = t * 1e3 / compute_ms * 100
            print(f"  {name:<36} p={p:<4} {t * 1e3:8.3f} ms (bandwidth {bandwidth_part * 1e3:.3f}, "
                  f"latency {(t - bandwidth_part) * 1e3:.3f}) = {share:6.1f}% of compute")
        print(f"  {name:<36} latency term = bandwidth term at p ~ {nbytes / (bw * lat):.0f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("allreduce", "epoch", "overlap", "project"))
    parser.add_argument("--bytes", type=float, help="project: gradient bytes per step")
    parser.add_argument("--compute-ms", type=float, help="project: compute per step")
    parser.add_argument("--bandwidth", type=float, help="project: measured loopback bus bandwidth, bytes/s")
    parser.add_argument("--latency", type=float, help="project: measured per-step latency, s")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["lenet", "wide"])
    args = parser.parse_args()
    dist.init(threads=args.threads)
    if args.threads:
        pyconv.set_num_threads(args.threads)
    if args.what == "allreduce":
        allreduce_benchmark(args.reps)
    elif args.what == "epoch":
        epoch_benchmark(args.models, 64, repeats=max(1, args.reps // 5))
    elif args.what == "overlap":
        overlap_benchmark(args.reps, 32)
    else:
        project(args.bytes, args.compute_ms, args.bandwidth, args.latency)


if __name__ == "__main__":
    main()
