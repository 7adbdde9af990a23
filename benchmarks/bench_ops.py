"""pytest-benchmark suite over the cases of ``pyconv bench``: every op on every available
backend, and PyTorch / OpenCV where installed.

    pytest benchmarks/bench_ops.py --benchmark-enable            # the --quick cases
    pytest benchmarks/bench_ops.py --benchmark-enable -m "not gpu"  # every case

``pyconv bench`` runs the same cases interleaved in one loop and prints GFLOP/s, GB/s and
ratios; this suite gives pytest-benchmark's statistics and its compare/histogram tooling.
"""
import numpy as np
import pytest

import pyconv
from pyconv import bench
from pyconv.backends import get as backend


def _params():
    for case in bench.cases(quick=False):
        impls = [b for b in pyconv.backends() if b != "cuda"] + list(case.baselines)
        for impl in impls:
            marks = [] if case.quick else [pytest.mark.slow]
            yield pytest.param(case, impl, id=f"{case.op}[{case.name}]-{impl}", marks=marks)


@pytest.mark.parametrize("case,impl", list(_params()))
def test_case(benchmark, case, impl):
    inputs = case.make(np.random.default_rng(0))
    if impl in case.baselines:
        fn = case.baselines[impl](inputs)
        if fn is None:
            pytest.skip(f"{impl} is not installed")
    else:
        missing = [k for k in case.kernels if k not in backend(impl).kernels]
        if missing:
            pytest.skip(f"backend {impl!r} has no {', '.join(missing)} kernel yet")
        fn = lambda: case.run(inputs, impl)  # noqa: E731
    benchmark.extra_info.update(work=case.work, unit=case.unit)
    benchmark(fn)
