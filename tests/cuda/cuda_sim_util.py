"""Helpers for the CUDA-simulator tests (tests/cuda/test_cuda_sim_*.py).

Those files run only in a process started with NUMBA_ENABLE_CUDASIM=1 (the simulator must be
chosen before numba is imported, for the whole process); test_cuda_simulator.py starts that
process as part of the normal test run. Inside it, the 'cuda' backend takes NumPy arrays.
"""
import os

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


def tolerances(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if np.dtype(dtype) == np.float32 else {"rtol": 1e-10, "atol": 1e-10}


def assert_close(actual, expected, dtype=None):
    """actual (from the kernel) against expected (NumPy or torch): same shape, dtype, values."""
    expected = expected.detach().numpy() if hasattr(expected, "detach") else np.asarray(expected)
    dtype = dtype or expected.dtype
    assert isinstance(actual, np.ndarray), type(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    np.testing.assert_allclose(actual, expected, equal_nan=True, **tolerances(dtype))


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)
