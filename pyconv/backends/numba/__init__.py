"""The "numba" backend: every kernel compiled by Numba's JIT, tuned for the CPU.

Kernels are loop nests written for Numba: ``prange`` spreads independent planes, images or
blocks of rows over the threads (``pyconv.set_num_threads``), the inner loops are shaped so
that LLVM vectorises them (unsigned indices, selects instead of branches, window geometries
compiled as constants for the common cases), and the matrix products of convolution and LSTM
go to BLAS through ``np.dot``. Kernels compile on first use for float32 or float64 and are
cached on disk (``cache=True``).

One family of ops per module: convolution (``conv.py``), pooling and max-unpooling
(``pool.py``), the LSTM (``lstm.py``), box IoU / NMS (``boxes.py``) and elementwise
activations (``elementwise.py``); ``_jit.py`` holds the
JIT options and the thread glue they share. In each, the registered functions allocate outputs
and reshape arrays; the ``@njit`` functions do the work.

Needs SciPy for ``np.dot`` inside ``@njit`` (convolution and LSTM kernels) and, for speed,
threadpoolctl (``pip install 'pyconv[numba]'``).
"""
from .. import Backend

backend = Backend("numba", "numpy", "Numba JIT kernels (parallel loops; GEMMs through BLAS)")

from . import boxes, conv, elementwise, lstm, pool  # noqa: E402  (each module registers its kernels)
