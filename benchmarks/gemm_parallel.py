"""Thread scaling of pyconv's float32 GEMM against NumPy's BLAS and torch.matmul, with and without
a competing busy loop on one core, interleaved in one process.

Every implementation writes into a preallocated output (pyconv._C.gemm, numpy.matmul(out=),
torch.matmul(out=)), so the figures are the GEMMs' own. Each round times every (size,
implementation, threads[, busy]) combination once, in an order that is reversed every other
round; a sample is the mean of enough calls to take ~20 ms, taken 0.2 s after the previous one
(idle BLAS workers still spinning would take the second core from the next sample). The thread counts are switched
in-process (pyconv.set_num_threads, torch.set_num_threads, threadpoolctl for NumPy's OpenBLAS).

--busy adds a `python -c "while 1: pass"` pinned to the last CPU (taskset), stopped (SIGSTOP)
and resumed (SIGCONT) between samples, so the samples with and without it interleave; it is
killed on exit. It shows how each implementation tolerates a core that is taken away.

NumPy's OpenBLAS picks its kernels from the CPU unless OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE say
otherwise (a CI environment may pin them to Haswell's AVX2 kernels); both are removed before
NumPy loads, unless --keep-openblas-env. The BLAS behind each anchor is printed. The last
column is pyconv's speed over the best of NumPy and torch, per round (median, min-max).

--simulate SPEC adds "pyconv-sim": pyconv with the blocks the cache model gives for other caches
(PYCONV_CACHE_SIZES syntax), set in-process around its samples. Only the blocks change; the
hardware is this host's.

--against DIR times pyconv alone at 2 threads in child processes, this build's and another
checkout's (its own build), the children interleaved round by round.

    python benchmarks/gemm_parallel.py --rounds 9
    python benchmarks/gemm_parallel.py --small --busy --rounds 9
    python benchmarks/gemm_parallel.py --against /tmp/other-checkout --rounds 7
    python benchmarks/gemm_parallel.py --model-shapes --simulate l1d=32K,l1d_ways=8,l2=2M,l3=32M,l3_shared_by=16
"""
import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LARGE = [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048)]
# M x N x K of the GEMMs inside the models' layers (a 64-channel 3x3 convolution on a 16x16
# map is 64 x 256 x 576; an LSTM step 128 x 512 x 128).
SMALL = [(64, 256, 256), (128, 128, 128), (64, 256, 576), (128, 512, 128), (256, 256, 256)]
# Larger GEMMs of the models' convolutions and linear layers (M x N x K: output channels x
# output pixels x input channels * taps; batch x features x inputs): ResNet-style 3x3 layers at
# 56x56 and 28x28, a 1x1 expansion, a classifier and an LSTM's input projection.
MODEL = [(64, 3136, 576), (128, 784, 1152), (256, 3136, 64), (256, 1000, 2048), (512, 1024, 256)]
OPENBLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def sample(fn, min_time=0.02, clock=time.perf_counter):
    """Seconds per call: the mean over enough calls to take min_time."""
    fn()
    calls, start = 1, clock()
    fn()
    once = max(clock() - start, 1e-7)
    calls = max(1, int(min_time / once))
    start = clock()
    for _ in range(calls):
        fn()
    return (clock() - start) / calls


class BusyLoop:
    """A busy Python loop on the last CPU that can be paused and resumed."""

    def __init__(self):
        cpu = str(os.cpu_count() - 1)
        self.proc = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-c", "while 1: pass"])
        self.running = True

    def set(self, running):
        if running != self.running:
            self.proc.send_signal(signal.SIGCONT if running else signal.SIGSTOP)
            self.running = running
            time.sleep(0.01)

    def close(self):
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait()


def implementations(shape, np, torch, _C):
    M, N, K = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    c = np.empty((M, N), np.float32)
    ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.empty(M, N)
    def pyconv_gemm():
        _C.gemm(a, b, c)
    pyconv_gemm.arrays = (a, b, c)
    return {
        "pyconv": pyconv_gemm,
        "numpy": lambda: np.matmul(a, b, out=c),
        "torch": lambda: torch.matmul(ta, tb, out=tc),
    }


def run_rounds(shapes, impl_names, threads_list, busy_states, rounds, simulated=None,
               main_build=None, cpu_time=False):
    # pyconv first: torch bundles its own libgomp.so.1, and whichever copy loads first serves
    # both (torch's, with its spin-waiting defaults, would change pyconv's figures).
    import pyconv
    from pyconv import _C
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    def set_threads(n):
        if main_build:
            main_C.set_num_threads(n)
        pyconv.set_num_threads(n)
        torch.set_num_threads(n)
        threadpool_limits(n, user_api="blas")

    from pyconv import tuning

    impls = {s: implementations(s, np, torch, _C) for s in shapes}
    if main_build:  # another build of the extension (e.g. main's), called directly
        import importlib.util

        spec = importlib.util.spec_from_file_location("_C", main_build)
        main_C = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(main_C)
        for s in shapes:
            a, b, c = (np.ascontiguousarray(x) for x in impls[s]["pyconv"].arrays)
            impls[s]["main"] = lambda a=a, b=b, c=c: main_C.gemm(a, b, c)
    if simulated:  # the same call, timed with the simulated blocks set (below)
        for s in shapes:
            impls[s]["pyconv-sim"] = impls[s]["pyconv"]
    keys = [(s, name, t, busy) for s in shapes for name in impl_names for t in threads_list
            for busy in busy_states]
    times = {k: [] for k in keys}
    loop = BusyLoop() if True in busy_states else None
    try:
        for r in range(rounds):
            for key in (keys if r % 2 == 0 else keys[::-1]):
                shape, name, t, busy = key
                set_threads(t)
                if loop:
                    loop.set(busy)
                # OpenBLAS's idle workers spin for ~0.1 s after a call (and any library's may):
                # let them go to sleep before timing the next implementation.
                time.sleep(0.2)
                with tuning.use_blocking(*simulated) if name == "pyconv-sim" else contextlib.nullcontext():
                    # One thread's samples in process CPU time when asked: on a loaded host it
                    # leaves out the time the process waited for a core.
                    clock = time.process_time if cpu_time and t == 1 else time.perf_counter
                    times[key].append(sample(impls[shape][name], clock=clock))
    finally:
        if loop:
            loop.close()
    return times


def gflops(shape, seconds):
    M, N, K = shape
    return 2 * M * N * K / seconds / 1e9


def spread(values, fmt="{:.2f}"):
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def report(times, shapes, impl_names, threads_list, busy_states):
    vendors = [n for n in ("numpy", "torch") if n in impl_names]
    print("| M x N x K | busy loop | implementation | " +
          " | ".join(f"{t} thr GFLOP/s median (min-max)" for t in threads_list) +
          " | 2-thread scaling median (min-max of round ratios) | " +
          " | ".join(f"x best vendor, {t} thr" for t in threads_list) + " |")
    print("|---|---|---|" + "---|" * (2 * len(threads_list) + 1))
    for s in shapes:
        for busy in busy_states:
            for name in impl_names:
                cells = []
                for t in threads_list:
                    g = [gflops(s, x) for x in times[(s, name, t, busy)]]
                    cells.append(f"{statistics.median(g):.1f} ({min(g):.1f}-{max(g):.1f})")
                scale = ""
                if 1 in threads_list and 2 in threads_list:
                    ratios = [a / b for a, b in zip(times[(s, name, 1, busy)], times[(s, name, 2, busy)])]
                    scale = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                versus = []
                for t in threads_list:
                    if not vendors or name in vendors:
                        versus.append("")
                        continue
                    # Per round: the faster vendor's time over this implementation's.
                    rounds = zip(times[(s, name, t, busy)], *[times[(s, v, t, busy)] for v in vendors])
                    versus.append(spread([min(vs) / mine for mine, *vs in rounds]))
                print(f"| {'x'.join(map(str, s))} | {'yes' if busy else 'no'} | {name} | " +
                      " | ".join(cells) + f" | {scale} | " + " | ".join(versus) + " |")


def child(shapes, busy):
    """One child's figure per shape: pyconv at 2 threads, the median of 3 rounds after a round of
    warm-up (the pool's threads start on the first call); JSON on stdout."""
    times = run_rounds(shapes, ["pyconv"], [2], [busy], 4)
    print(json.dumps({"x".join(map(str, k[0])): statistics.median(v[1:]) for k, v in times.items()}))


def compare_children(variants, shapes, rounds, busy):
    """pyconv at 2 threads in child processes, one per variant (name -> (script, env changes)),
    interleaved round by round; a table of GFLOP/s and of time relative to the first variant."""
    env_base = dict(os.environ)
    names = list(variants)
    results = {name: {"x".join(map(str, s)): [] for s in shapes} for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            script, env = variants[name]
            cmd = [sys.executable, script, "--child",
                   "--shapes", *["x".join(map(str, s)) for s in shapes]] + (["--busy"] if busy else [])
            out = subprocess.run(cmd, env={**env_base, **env}, capture_output=True, text=True,
                                 check=True).stdout
            for shape, t in json.loads(out.strip().splitlines()[-1]).items():
                results[name][shape].append(t)
    print(f"pyconv at 2 threads, busy loop {'on' if busy else 'off'}: GFLOP/s median (min-max), "
          f"and the median time relative to {names[0]}")
    print("| M x N x K | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for s in shapes:
        key = "x".join(map(str, s))
        base = statistics.median(results[names[0]][key])
        cells = []
        for name in names:
            g = [gflops(s, t) for t in results[name][key]]
            rel = statistics.median(results[name][key]) / base
            cells.append(f"{statistics.median(g):.1f} ({min(g):.1f}-{max(g):.1f}), x{rel:.2f} time")
        print(f"| {key} | " + " | ".join(cells) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--small", action="store_true", help="the models' small GEMMs instead of 512-2048")
    p.add_argument("--model-shapes", action="store_true",
                   help="512-2048 and the models' larger GEMMs")
    p.add_argument("--simulate", metavar="CACHES",
                   help="also pyconv under the blocks modelled for these caches (l1d=32K,l2=2M,...)")
    p.add_argument("--main-build", metavar="SO", help="also time this build of pyconv._C ('main')")
    p.add_argument("--cpu-time", action="store_true",
                   help="1-thread samples in process CPU time (2-thread ones stay wall-clock)")
    p.add_argument("--keep-openblas-env", action="store_true",
                   help="leave OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as they are")
    p.add_argument("--shapes", nargs="+", help="MxNxK shapes instead of the default lists")
    p.add_argument("--busy", action="store_true", help="also with a busy loop on the last CPU")
    p.add_argument("--impls", nargs="+", default=["pyconv", "numpy", "torch"])
    p.add_argument("--against", metavar="DIR",
                   help="compare with the pyconv checkout in DIR (its own build), pyconv at 2 threads")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    shapes = ([tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes
              else SMALL if args.small else LARGE + MODEL if args.model_shapes else LARGE)
    if not args.keep_openblas_env:  # before NumPy loads OpenBLAS (children inherit it too)
        for var in OPENBLAS_PINS:
            os.environ.pop(var, None)
    if args.child:
        return child(shapes, args.busy)
    here = os.path.abspath(__file__)
    if args.against:
        other = os.path.join(args.against, "benchmarks", os.path.basename(here))
        variants = {"this build": (here, {}), f"build in {args.against}": (other, {})}
        return compare_children(variants, shapes, args.rounds, args.busy)
    import pyconv
    from pyconv import _C

    import torch
    from threadpoolctl import threadpool_info

    busy_states = [False, True] if args.busy else [False]
    print(f"pyconv isa {_C.isa()}, caches {_C.cpu_caches()['source']}, "
          f"blocking {_C.gemm_blocking(_C.isa(), 'float32')}; load average {os.getloadavg()}")
    blas = [f"{i['internal_api']} {i['version']} ({i.get('architecture')} kernels)"
            for i in threadpool_info() if i["user_api"] == "blas"]
    torch_blas = [w for w in torch.__config__.show().replace(",", " ").split() if w.startswith("BLAS_INFO")]
    print(f"numpy BLAS: {', '.join(blas)}; torch {torch.__version__} {' '.join(torch_blas)}; "
          + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in OPENBLAS_PINS))
    impls = list(args.impls)
    simulated = None
    if args.simulate:
        caches = _C.cpu_caches(None, args.simulate)
        simulated = _C.model_gemm_blocking(_C.isa(), "float32", caches)
        print(f"pyconv-sim: caches {args.simulate} -> blocks kc={simulated[0]} mc={simulated[1]} "
              f"nc={simulated[2]} (on this host's hardware)")
        impls.insert(impls.index("pyconv") + 1 if "pyconv" in impls else 0, "pyconv-sim")
    if args.main_build:
        impls.insert(impls.index("pyconv") + 1 if "pyconv" in impls else 0, "main")
    times = run_rounds(shapes, impls, [1, 2], busy_states, args.rounds, simulated,
                       args.main_build, args.cpu_time)
    if args.cpu_time:
        print("1-thread columns: process CPU time; 2-thread columns: wall-clock")
    report(times, shapes, impls, [1, 2], busy_states)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
