"""The pytest-benchmark suites' shared machinery: a bench_*.py module lists its cases (CASES,
from pyconv.bench) and the implementations to time (IMPLS: backend or baseline names; None for
every available backend and the case's baselines); every test taking `case` and `impl` is
parametrised over both. Cases outside ``pyconv bench --quick`` are marked slow (deselected by
default: ``-m slow`` runs them).

    pytest benchmarks --benchmark-enable                 # the quick cases
    pytest benchmarks --benchmark-enable -m "not gpu"    # every case
"""
import numpy as np
import pytest

import pyconv
from pyconv import bench


BASELINES = {name for case in bench.kernel_cases(quick=False) for name in case.baselines}


def _impls(module, case):
    """The module's IMPLS that apply to `case` (its baselines among them), else every available
    backend and the case's baselines."""
    impls = getattr(module, "IMPLS", None)
    if impls is None:  # the CUDA simulator runs a kernel per thread in Python: not worth timing
        return [b for b in pyconv.backends() if b != "cuda"] + list(case.baselines)
    return [i for i in impls if i not in BASELINES or i in case.baselines]


def pytest_generate_tests(metafunc):
    if {"case", "impl"} <= set(metafunc.fixturenames):
        metafunc.parametrize("case, impl", [
            pytest.param(case, impl, id=f"{case.op}[{case.name}]-{impl}",
                         marks=[] if case.quick else [pytest.mark.slow])
            for case in metafunc.module.CASES for impl in _impls(metafunc.module, case)
        ])


@pytest.fixture
def time_case(benchmark):
    """time_case(case, impl): pytest-benchmark's timing of `case` on `impl` (a backend or a
    baseline), after one untimed call (JIT compilation, first-touch allocation); skips where
    `impl` cannot run the case."""
    def run(case, impl):
        fn = bench.implementation(case, case.make(np.random.default_rng(0)), impl)
        if isinstance(fn, str):
            pytest.skip(fn)
        fn()
        benchmark.group = f"{case.op}[{case.name}]"
        benchmark.extra_info.update(work=case.work, unit=case.unit)
        benchmark(fn)
    return run
