"""Helpers for the CUDA-simulator tests (tests/cuda/test_cuda_sim_*.py).

Those files run only in a process started with NUMBA_ENABLE_CUDASIM=1 (the simulator must be
chosen before numba is imported, for the whole process); test_cuda_simulator.py starts that
process as part of the normal test run. Inside it, the 'cuda' backend takes NumPy arrays.
"""
import os

import conftest
import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")

requires_simulator = pytest.mark.skipif(
    not SIMULATOR,
    reason="CUDA simulator test: runs in the NUMBA_ENABLE_CUDASIM=1 process that "
    "tests/cuda/test_cuda_simulator.py starts",
)



_real_empty = np.empty


def _poisoned_empty(shape, dtype=float, order="C", **kwargs):
    """np.empty whose memory is filled with values no kernel writes (NaN, the largest int), so
    an output element a kernel forgets to write, or a read of shared/local memory that was never
    stored (the simulator allocates those with np.empty too), shows up in the results."""
    a = _real_empty(shape, dtype, order, **kwargs)
    kind = a.dtype.kind
    if kind in "fc":
        a.fill(np.nan)
    elif kind in "iu":
        a.fill(np.iinfo(a.dtype).max)
    elif kind == "b":
        a.fill(True)
    return a


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every array the backend allocates with empty() starts poisoned."""
    monkeypatch.setattr(np, "empty", _poisoned_empty)


def assert_close(actual, expected, dtype=None):
    """conftest.assert_close for a kernel's NumPy output against NumPy or torch values, also
    checking that the output is an ndarray of the expected dtype."""
    expected = expected.detach().numpy() if hasattr(expected, "detach") else np.asarray(expected)
    dtype = np.dtype(dtype or expected.dtype)
    assert isinstance(actual, np.ndarray), type(actual)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    conftest.assert_close(actual, expected, dtype)


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)
