"""The "numba" backend: every kernel compiled by Numba's JIT, tuned for the CPU.

Kernels are loop nests written for Numba: ``prange`` spreads independent planes, images or
blocks of rows over the threads (``pyconv.set_num_threads``), the inner loops are shaped so
that LLVM vectorises them (unsigned indices, selects instead of branches, window geometries
compiled as constants for the common cases), and the matrix products of convolution and LSTM
go to BLAS through ``np.dot``. Kernels compile on first use for float32 or float64 and are
cached on disk (``cache=True``).

One family of ops per module: convolution (``conv.py``), pooling and max-unpooling
(``pool.py``), the LSTM (``lstm.py``), box IoU / NMS (``boxes.py``), their rotated-box
versions (``boxes_rotated.py``), elementwise activations (``elementwise.py``), matrix products
(``dense.py``) and batch normalisation (``norm.py``); ``_jit.py`` holds the JIT options and the
thread glue they share. In each, the registered functions allocate outputs
and reshape arrays; the ``@njit`` functions do the work.

Needs SciPy for ``np.dot`` inside ``@njit`` (convolution and LSTM kernels) and, for speed,
threadpoolctl (``pip install 'pyconv[numba]'``).
"""
import functools
import os
import threading

from .. import Backend

backend = Backend("numba", "numpy", "Numba JIT kernels (parallel loops; GEMMs through BLAS)")

from . import boxes, boxes_rotated, conv, dense, elementwise, lstm, norm, pool  # noqa: E402,F401  (each registers its kernels)
from . import loss, optim  # noqa: E402,F401

# One kernel at a time, process-wide: the fork-safe threading layer chosen in _jit.py may be
# "workqueue", which aborts the process when two threads launch parallel loops at once. A
# kernel already runs on every thread, so callers on other threads lose no parallelism. The
# lock is re-created in a forked child, which must not inherit it held by a parent's thread.
_one_kernel_at_a_time = threading.RLock()


def _new_lock_in_child():
    global _one_kernel_at_a_time
    _one_kernel_at_a_time = threading.RLock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def _serialised(kernel):
    @functools.wraps(kernel)
    def run(*args, **kwargs):
        with _one_kernel_at_a_time:
            return kernel(*args, **kwargs)

    return run


backend.kernels = {name: _serialised(kernel) for name, kernel in backend.kernels.items()}
