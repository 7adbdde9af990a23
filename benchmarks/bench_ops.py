"""Every case of ``pyconv bench`` on every available backend, and PyTorch / OpenCV where
installed, as a pytest-benchmark suite (``pyconv bench`` times the same cases interleaved in
one loop and prints GFLOP/s, GB/s and ratios; this gives pytest-benchmark's statistics and its
compare/histogram tooling)."""
from pyconv import bench

CASES = bench.cases(quick=False)


def test_case(time_case, case, impl):
    time_case(case, impl)
