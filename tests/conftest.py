"""Shared test helpers: a seeded RNG, tolerances, the backends that implement a kernel, and a
PyTorch fixture that skips cleanly where PyTorch is not installed."""
from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

import pyconv
from pyconv.testing import central_difference  # noqa: F401  (the tests import it from here)

# pyconv.backends is the function listing backends; the registry module is reached by name.
_registry = importlib.import_module("pyconv.backends")

# Relative / absolute tolerances per dtype: float32 kernels may sum in a different order.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-5),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
}


@pytest.fixture
def rng():
    """A NumPy Generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(20261122)


def assert_close(actual, expected, dtype=None):
    """Element-wise comparison with the tolerance of `dtype` (default: expected's dtype).
    NaNs must sit at the same places; shapes must match exactly."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    dtype = np.dtype(dtype if dtype is not None else expected.dtype)
    tol = TOLERANCES.get(dtype, TOLERANCES[np.dtype(np.float64)])
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    # Scale the absolute tolerance by the magnitude of the data (sums of many terms).
    finite = np.abs(expected[np.isfinite(expected)]) if expected.dtype.kind in "fc" else np.abs(expected)
    scale = max(1.0, float(np.max(finite, initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               equal_nan=True)


def backends_with(kernel_name: str) -> list[str]:
    """The backends usable here (pyconv.backends()) that register `kernel_name`."""
    return [name for name in pyconv.backends() if kernel_name in _registry.get(name).kernels]


def numpy_backends_with(kernel_name: str) -> list[str]:
    """As backends_with, restricted to backends that take NumPy arrays."""
    return [n for n in backends_with(kernel_name) if _registry.get(n).array_kind == "numpy"]


@pytest.fixture
def torch():
    """The torch module (double precision defaults untouched); skips the test without it."""
    return pytest.importorskip("torch")


def on_backend(name: str, *arrays):
    """The arrays moved to where backend `name` takes them (CuPy for 'cuda'); one array in,
    one out, else a list (None stays None)."""
    if _registry.get(name).array_kind == "cupy":
        import cupy

        moved = [None if a is None else cupy.asarray(a) for a in arrays]
    else:
        moved = list(arrays)
    return moved[0] if len(moved) == 1 else moved


def to_numpy(a):
    """A backend's result as a NumPy array (None stays None)."""
    if a is None or isinstance(a, np.ndarray):
        return a
    return a.get() if hasattr(a, "get") else np.asarray(a)


def pytest_collection_modifyitems(items):
    """Tests that use the `torch` fixture carry the `torch` marker (`-m "not torch"`)."""
    for item in items:
        if "torch" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)


# The CUDA-simulator files (cuda/test_cuda_sim_*.py) run in the NUMBA_ENABLE_CUDASIM=1 child
# process that cuda/test_cuda_simulator.py starts; other processes do not collect them at all.
if os.environ.get("NUMBA_ENABLE_CUDASIM", "") in ("", "0"):
    collect_ignore_glob = ["cuda/test_cuda_sim_*.py"]


def runnable_isas():
    """The ISA variants of the cpu backend this CPU runs, lowest first (none without it)."""
    try:
        from pyconv import _C
    except ImportError:
        return []
    isas = ("generic", "avx2", "avx512")
    return [isa for isa in isas[:isas.index(_C.best_isa()) + 1] if isa in _C.compiled_isas()]


@pytest.fixture(params=runnable_isas())
def isa(request):
    """Runs a test once per ISA variant of the cpu backend, restoring the one in use after."""
    from pyconv import _C

    in_use = _C.isa()
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa(in_use)
