"""Helpers for the CUDA-simulator tests (tests/cuda/test_cuda_sim_*.py).

Those files run only in a process started with NUMBA_ENABLE_CUDASIM=1 (the simulator must be
chosen before numba is imported, for the whole process); test_cuda_simulator.py starts that
process as part of the normal test run. Inside it, the 'cuda' backend takes NumPy arrays.
"""
import os
import sys
import threading
import traceback

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")

requires_simulator = pytest.mark.skipif(
    not SIMULATOR,
    reason="CUDA simulator test: runs in the NUMBA_ENABLE_CUDASIM=1 process that "
    "tests/cuda/test_cuda_simulator.py starts",
)



def _serialise_shared_allocation():
    """Works around a race in numba-cuda's simulator (0.30): ``FakeCUDAShared.array`` looks up
    the block's array for a source line and creates it if missing without a lock, so two
    threads of one block can each create their own "shared" array and never see each other's
    stores (found here by the poisoned outputs: a few NaN outputs, in some runs only). Same
    logic, under a lock."""
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory / errors: unchanged
            return original(self, shape, dtype, alignment)
        if not isinstance(dtype, np.dtype) and hasattr(dtype, "bitwidth"):  # a numba type
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]  # the kernel's source line
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array


if SIMULATOR:
    _serialise_shared_allocation()

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
