"""The "numba" backend, kernel by kernel, against the C++ "cpu" backend and the NumPy "reference"
backend, as a pytest-benchmark suite (JIT compilation happens before the timing).

The cases are those of ``pyconv bench`` and one for each kernel it does not time on its own
(pyconv.bench.kernel_cases)."""
import pytest

from pyconv import bench

pytest.importorskip("numba")

CASES = bench.kernel_cases(quick=False)
IMPLS = ("numba", "cpu", "reference")


def test_case(time_case, case, impl):
    time_case(case, impl)
