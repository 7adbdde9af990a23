"""Convolutions (forward, backward, transposed) on the cpu backend against PyTorch, and the
packed GEMM against NumPy and PyTorch, as a pytest-benchmark suite."""
import pytest

from pyconv import bench

CONV_OPS = ("conv2d", "conv2d_backward", "conv_transpose2d")
CASES = [c for c in bench.cases(quick=False) if c.op in CONV_OPS]
IMPLS = ("cpu", "torch")


def test_conv(time_case, case, impl):
    time_case(case, impl)


@pytest.mark.parametrize("impl", ["pyconv", "numpy", "torch"])
def test_gemm(benchmark, impl):
    impls = bench.gemm_impls()
    if impl not in impls:
        pytest.skip(f"{impl} is not available")
    benchmark.extra_info.update(work=2 * bench.GEMM_N**3, unit="flop")
    benchmark(impls[impl])
