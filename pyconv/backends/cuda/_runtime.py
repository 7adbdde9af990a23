"""Where the cuda backend's kernels run: the array module, the stream, and the launch helper.

On a GPU the arrays are CuPy arrays and every Numba kernel is launched on CuPy's current
stream, so it is ordered with CuPy's own work (matmul, sum, allocation) without any
synchronisation. Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, no GPU) the arrays are
NumPy arrays and the same kernels run as Python threads.
"""
from __future__ import annotations

import math
import sys
import threading
import traceback
import warnings

import numpy as np
from numba import cuda

from .. import cuda_simulator

SIMULATOR = cuda_simulator()


def _serialise_simulator_shared_memory():
    """Works around a race in numba-cuda's simulator (0.30): ``FakeCUDAShared.array`` looks up
    the block's array for a source line and creates it when missing without a lock, so two
    threads of one block can each create their own "shared" array and never see each other's
    stores (seen as a few wrong outputs in some runs). Same logic, under a lock."""
    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None or not isinstance(dtype, (type, np.dtype)):
            return original(self, shape, dtype, alignment)  # the cases this backend never uses
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]  # the kernel's source line
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array


if SIMULATOR:
    xp = np
    _serialise_simulator_shared_memory()
else:
    # Numba warns about every launch of fewer than 128 blocks. Small grids are by design here
    # (the one-block NMS sweep, small problems), so that warning would only be noise.
    warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")
    try:  # the registry only loads this backend where CuPy sees a GPU; the PTX tools need
        import cupy as xp  # only the kernels, so they work without CuPy
    except ImportError:
        xp = None

# Threads per block of the one-thread-per-element kernels: 8 warps, a multiple of every SM's
# 4 warp schedulers; 8 such blocks fill an sm_90 SM (2048 threads) where registers allow it
# (<= 32 per thread; the occupancy each kernel reaches is in benchmarks/RESULTS.md).
THREADS = 256
# Grid-stride loops cap the grid at this many blocks: 132 SMs (H100 SXM) x 8 resident blocks
# x 2 waves; more blocks only add scheduling overhead for the memory-bound kernels.
MAX_BLOCKS = 132 * 8 * 2

_streams: dict = {}


def _stream():
    """Numba's handle on CuPy's current stream."""
    ptr = xp.cuda.get_current_stream().ptr
    if ptr not in _streams:
        _streams[ptr] = cuda.default_stream() if ptr == 0 else cuda.external_stream(ptr)
    return _streams[ptr]


def _device_view(a):
    # CuPy's __cuda_array_interface__ names its stream, and Numba would synchronise on it at
    # every launch; we launch on that very stream, so the synchronisation is not needed.
    if hasattr(a, "__cuda_array_interface__") and not SIMULATOR:
        return cuda.as_cuda_array(a, sync=False)
    return a


def launch(kernel, grid, block, *args):
    """kernel[grid, block](*args) on CuPy's current stream (or in the simulator)."""
    if SIMULATOR:
        kernel[grid, block](*args)
    else:
        kernel[grid, block, _stream()](*[_device_view(a) for a in args])


def blocks_for(n: int, threads: int = THREADS) -> int:
    """Blocks for a grid-stride loop over n items."""
    return max(1, min(math.ceil(n / threads), MAX_BLOCKS))


def flat(a):
    """The 1-D view of a C-contiguous array: every kernel takes flat arrays + sizes."""
    return a.reshape(-1)


def scalar(dtype, v):
    """v as a NumPy scalar of the kernel's dtype (so float32 kernels stay in float32)."""
    return np.dtype(dtype).type(v)


def dummy(dtype):
    """A 1-element array passed where an optional array is absent (kernels take a flag)."""
    return xp.zeros(1, dtype)
