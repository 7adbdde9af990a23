"""pyconv's float32 GEMM (ops.matmul, cpu backend) under several cache blockings against NumPy's
BLAS and torch.matmul, interleaved in one process.

Blockings: the compile-time constants (what ran before the blocking came from the caches), the
analytical model on this host's detected caches, the model on a simulated second machine
(--simulate, PYCONV_CACHE_SIZES syntax; its blocks run on *this* host), and the tuned file's
when there is one. Each round times one call of every implementation of a size; the table
gives, in GFLOP/s, the best round (the least disturbed by other load), the median round and the
spread (min-max); the ratios are of the best rounds.

    python benchmarks/gemm_blocking.py --threads 1
    python benchmarks/gemm_blocking.py --threads 2
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--main-build", metavar="SO",
                   help="also time this build of pyconv._C (e.g. a copy of main's, with the blocks "
                   "fixed at compile time), called directly")
    p.add_argument("--simulate", default="l1d=32K,l1d_ways=8,l2=2M,l3=32M,l3_shared_by=16",
                   help="caches of the simulated machine (default: a Xeon-like 32K L1d, 2M L2)")
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    # OpenBLAS picks its kernels from the CPU unless these pin them (to Haswell's AVX2 kernels
    # in some CI environments): the anchor is OpenBLAS at its best on this host.
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(var, None)

    import numpy as np
    import torch

    import pyconv
    from pyconv import _C, ops, tuning

    pyconv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    isa, dtype = _C.isa(), "float32"
    info = _C.gemm_blocking(isa, dtype)
    sim_caches = _C.cpu_caches(None, args.simulate)
    blockings = {
        "compile-time": tuple(info["compiled"]),
        "model (this host)": _C.model_gemm_blocking(isa, dtype, _C.cpu_caches()),
        "model (simulated)": _C.model_gemm_blocking(isa, dtype, sim_caches),
    }
    tuned = tuning.read_tuned_file(warn=False).get(tuning.machine_key(isa), {}).get(dtype)
    if tuned:
        blockings["tuned file"] = (tuned["kc"], tuned["mc"], tuned["nc"])
    print(f"isa {isa}, threads {args.threads}, host caches {_C.cpu_caches()}")
    print(f"simulated caches {sim_caches}")
    for name, b in blockings.items():
        print(f"  {name}: kc={b[0]} mc={b[1]} nc={b[2]}")

    def pyconv_with(blocks):
        def run(a, b):
            _C.set_gemm_blocking(isa, dtype, *blocks, "set")
            return ops.matmul(a, b, backend="cpu")
        return run

    impls = {f"pyconv {name}": pyconv_with(b) for name, b in blockings.items()}
    if args.main_build:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_C", args.main_build)
        main_C = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(main_C)
        main_C.set_num_threads(args.threads)

        def main_build(a, b):
            c = np.empty((a.shape[0], b.shape[1]), a.dtype)
            main_C.matmul(a, False, b, False, c, False)
            return c

        impls["main build (compile-time blocks)"] = main_build
    impls["numpy (OpenBLAS)"] = lambda a, b: a @ b
    impls["torch.matmul (MKL)"] = lambda a, b: torch.matmul(torch.from_numpy(a), torch.from_numpy(b))

    rng = np.random.default_rng(0)
    data = {n: (rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32))
            for n in args.sizes}
    gflops = {(n, name): [] for n in args.sizes for name in impls}
    for n, (a, b) in data.items():
        for f in impls.values():  # warm-up: buffers, thread pools
            f(a, b)
    # One call of each implementation per round, the order reversed every other round, so that
    # the host's drifting load falls on all of them alike.
    for n, (a, b) in data.items():
        for r in range(args.rounds):
            order = list(impls.items())
            for name, f in order[::-1] if r % 2 else order:
                t0 = time.perf_counter()
                f(a, b)
                gflops[(n, name)].append(2.0 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    _C.reset_gemm_blocking()
    tuning.apply_tuned_file(warn=False)

    print("\n| size | implementation | GFLOP/s best | median | spread (min-max) | x torch | x numpy |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        best = {name: max(gflops[(n, name)]) for name in impls}
        for name in impls:
            g = gflops[(n, name)]
            print(f"| {n} | {name} | {best[name]:.1f} | {statistics.median(g):.1f} | "
                  f"{min(g):.1f}-{max(g):.1f} | {best[name] / best['torch.matmul (MKL)']:.2f} | "
                  f"{best[name] / best['numpy (OpenBLAS)']:.2f} |")

if __name__ == "__main__":
    main()
