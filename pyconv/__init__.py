"""pyconv: hand-written neural-network kernels with a small autograd and layer API.

    import numpy as np, pyconv
    from pyconv import ops
    y = ops.conv2d(x, w, padding=1)              # C++ kernels on the "cpu" backend
    y = ops.conv2d(x, w, padding=1, backend="reference")   # the NumPy definition
    pyconv.info()                                # ISA, threads, backends, versions
"""
from __future__ import annotations

import os as _os


def _shorten_openmp_spins():
    """Loads GNU OpenMP (libgomp) with idle workers that spin about a millisecond, not
    libgomp's default of about 15, unless it is loaded already or the user set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT.

    pyconv's kernels do not use OpenMP (they run on their own thread pool), but PyTorch and
    Numba's OpenMP layer do, and a process that alternates their ops with pyconv's (a model
    converted with pyconv.torch, a benchmark against PyTorch) would otherwise have their idle
    workers spinning on the cores for ~15 ms after each of their calls, halving what two pyconv
    threads get (measured: the conv2d, activation and pooling rows of `pyconv bench` 1.5-2.5x
    slower on 2 threads). libgomp reads the variable once, when it loads, and one process has
    one libgomp (PyTorch's wheel ships one under the same name), so the variable is set only
    for that moment."""
    if "OMP_WAIT_POLICY" in _os.environ or "GOMP_SPINCOUNT" in _os.environ:
        return
    import ctypes

    _os.environ["GOMP_SPINCOUNT"] = "20000"
    try:
        ctypes.CDLL("libgomp.so.1")
    except OSError:
        pass  # no GNU OpenMP on this system: nothing of it to configure
    finally:
        del _os.environ["GOMP_SPINCOUNT"]


_shorten_openmp_spins()


def _keep_freed_memory():
    """Tells glibc's malloc to keep freed blocks for reuse instead of returning them to the
    system: blocks up to 32 MiB come from the heap (not a fresh mapping each) and the heap's
    free top is kept up to 1 GiB.

    Every kernel call takes scratch memory (packed panels, transformed tiles, padded copies)
    and every op a NumPy output, of a few hundred KiB to a few MiB. With glibc's defaults a
    freed block of that size often goes back to the system, and the next call's first touch of
    each page faults it in again, zeroed, on whichever thread touches it; two threads faulting
    at once contend on the process's memory map. Measured (2 threads, a 4x4 stride-2 forward of
    64x64x8x8 -> 128 channels, 1.7 ms on one thread): 1.5-2.9 ms per call in some processes,
    0.91-0.96 ms in every process with the blocks kept; whole training steps swung with it. The
    process's resident memory then stays near its peak. Skipped where the user tuned malloc
    (GLIBC_TUNABLES or MALLOC_* variables), off with PYCONV_KEEP_FREED_MEMORY=0, and a no-op
    without glibc."""
    if (_os.environ.get("PYCONV_KEEP_FREED_MEMORY") == "0" or "GLIBC_TUNABLES" in _os.environ
            or any(name.startswith("MALLOC_") for name in _os.environ)):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


_keep_freed_memory()


def _numba_threading_layer_now():
    """With Numba already imported, its threading layer is chosen now, before user code can run
    a parallel loop that would load the default one (see pyconv/_numba_threading.py). Numba
    is not imported here otherwise: pyconv's numba backend makes the choice when it loads."""
    import sys

    if "numba" in sys.modules:
        from ._numba_threading import choose_fork_safe_threading_layer

        choose_fork_safe_threading_layer()


_numba_threading_layer_now()

from . import backends as _registry
from . import ops
from .backends import get_backend, set_backend, use_backend
from .autograd import Tensor, enable_grad, no_grad
from .random import manual_seed
from .serialization import CheckpointError, load, save

__version__ = "0.1.0"
__all__ = [
    "ops", "backends", "get_backend", "set_backend", "use_backend",
    "set_num_threads", "get_num_threads", "info",
    "Tensor", "no_grad", "enable_grad", "manual_seed", "save", "load", "CheckpointError",
]


def backends() -> list[str]:
    """Names of the backends usable on this machine, e.g. ['reference', 'cpu', 'numba'].
    (This function shadows the subpackage pyconv.backends, which holds the implementations.)"""
    return _registry.names()


_num_threads: int | None = None


def set_num_threads(n: int) -> None:
    """Threads used by the CPU backends (the C++ kernels' thread pool and Numba's parallel loops).

    The cpu backend's results have the same bits whatever `n` (README, "Thread-count
    determinism"); the numba backend's may differ in the last bits."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _num_threads = n
    try:
        from . import _C

        _C.set_num_threads(n)
    except ImportError:
        pass
    import sys

    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def get_num_threads() -> int:
    if _num_threads is not None:
        return _num_threads
    try:
        from . import _C

        return _C.get_num_threads()
    except ImportError:
        return _os.cpu_count() or 1


def info() -> dict:
    """What pyconv runs on: version, backends, the C++ ISA variant, threads, library versions."""
    import platform
    import sys

    import numpy

    _b = _registry
    out = {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "backends": backends(),
        "default_backend": get_backend(),
        "threads": get_num_threads(),
    }
    try:
        from . import _C

        out.update(isa=_C.isa(), best_isa=_C.best_isa(), compiled_isas=_C.compiled_isas(),
                   compiler=_C.compiler())
        from . import tuning

        out.update(cpu_caches=tuning.caches(),
                   gemm_blocking={dtype: tuning.blocking(dtype) for dtype in tuning.DTYPES})
    except ImportError as e:
        out.update(isa=None, cpu_backend_error=str(e))
    for name in ("numba", "cupy", "torch"):
        mod = sys.modules.get(name)
        if mod is None:
            import importlib.util

            if importlib.util.find_spec(name) is None:
                continue
            out[name] = "installed"
        else:
            out[name] = getattr(mod, "__version__", "?")
    # Ops each usable backend lacks, computed from the op catalogue (empty: it runs them all).
    out["missing_ops"] = {n: [op for op, ok in _b.get(n).coverage().items() if not ok]
                          for n in backends()}
    unavailable = {n: _b.why_unavailable(n) for n in _b._MODULES if not _b.available(n)}
    if unavailable:
        out["unavailable_backends"] = unavailable
    return out


_LAZY_SUBMODULES = ("nn", "optim", "data", "train", "models", "filters", "onnx", "distributed")


def __getattr__(name):
    """``pyconv.nn``, ``pyconv.optim``, ... without importing them at ``import pyconv``."""
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pyconv' has no attribute {name!r}")
