"""Where the cuda backend's kernels run: the array module, the stream, and the launch helper.

On a GPU the arrays are CuPy arrays and every Numba kernel is launched on CuPy's current
stream, so it is ordered with CuPy's own work (matmul, sum, allocation) without any
synchronisation. Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, no GPU) the arrays are
NumPy arrays and the same kernels run as Python threads.

Launching: Numba compiles the kernels, but ``launch`` does not go through Numba's dispatcher,
whose per-launch argument handling (typing every argument, wrapping each CuPy array in a Numba
device array, checking the context) costs 30-100 us of host time per launch. Instead, for each
kernel and each *argument key* (per array: dtype, ndim, contiguity; per scalar: its type) it
compiles the kernel once through Numba for the matching Numba types, keeps the driver handle,
and on every launch packs the parameters into a buffer exactly as Numba's calling convention
lays them out (``_param_layout``) and calls ``cuLaunchKernel`` on CuPy's current stream.
``PYCONV_CUDA_LAUNCH=numba`` (read at import) launches through Numba's dispatcher instead; a
kernel whose fast launcher cannot be built (an argument kind or kernel feature it does not
handle) falls back to it too, with a one-time warning.
"""
from __future__ import annotations

import ctypes
import math
import os
import struct
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
_ndarray = getattr(xp, "ndarray", None) if not SIMULATOR else None  # what the fast launch packs

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


def numba_launch(kernel, grid, block, *args):
    """kernel[grid, block](*args) through Numba's dispatcher, on CuPy's current stream."""
    kernel[grid, block, _stream()](*[_device_view(a) for a in args])


# Whether launch() uses the fast launchers (tools may flip it to compare the two paths).
FAST_LAUNCH = (not SIMULATOR and os.environ.get("PYCONV_CUDA_LAUNCH", "") != "numba"
               and hasattr(_ndarray, "_c_contiguous"))

_NUMBA = "numba"  # the launcher cache's entry for keys that launch through Numba
_launchers: dict = {}
_launcher_lock = threading.Lock()
_warned: set = set()


def launch(kernel, grid, block, *args):
    """kernel[grid, block](*args) on CuPy's current stream (or in the simulator)."""
    if SIMULATOR:
        kernel[grid, block](*args)
        return
    if FAST_LAUNCH:
        # What selects a compiled kernel: arrays by dtype, ndim and layout, scalars by type
        # (inline: this runs for every argument of every launch).
        nd = _ndarray
        key = (kernel, *[(a.dtype.num, a.ndim, a._c_contiguous, a._f_contiguous)
                         if type(a) is nd else type(a) for a in args])
        launcher = _launchers.get(key)
        if launcher is None:
            launcher = _build_launcher(kernel, key, args)
        if launcher is not _NUMBA:
            launcher(grid, block, args)
            return
    numba_launch(kernel, grid, block, *args)


def _build_launcher(kernel, key, args):
    """Compiles `kernel` for the types of `args` and caches its FastLauncher under `key`; on
    anything it does not handle, caches (and warns once per kernel) that Numba launches it."""
    with _launcher_lock:
        launcher = _launchers.get(key)
        if launcher is None:
            try:
                launcher = FastLauncher(kernel, [_numba_type(a) for a in args])
            except Exception as e:  # noqa: BLE001  (any failure: Numba's own launch still works)
                name = getattr(kernel, "__name__", repr(kernel))
                if name not in _warned:
                    _warned.add(name)
                    warnings.warn(f"pyconv cuda: kernel {name} is launched through Numba's "
                                  f"slower dispatcher ({type(e).__name__}: {e})", RuntimeWarning,
                                  stacklevel=4)
                launcher = _NUMBA
            _launchers[key] = launcher
    return launcher


def _numba_type(a):
    """The Numba type a kernel parameter gets for argument `a` (a CuPy array or a scalar); a
    TypeError for anything else."""
    from numba.cuda import types
    from numba.cuda.np import numpy_support

    if type(a) is _ndarray:
        if a.dtype.kind not in "biuf":
            raise TypeError(f"arrays of dtype {a.dtype} are not handled")
        # The layout Numba itself gives a contiguous array; 'A' (strided) is right for any.
        layout = "C" if a._c_contiguous else "F" if a._f_contiguous else "A"
        return types.Array(numpy_support.from_dtype(a.dtype), a.ndim, layout)
    if type(a) is bool or type(a) is np.bool_:
        return types.boolean
    if type(a) is int:
        return types.int64  # as Numba types a Python int (one of 2**63 or more fails to pack)
    if type(a) is float:
        return types.float64
    if isinstance(a, np.generic) and a.dtype.kind in "iuf":
        return numpy_support.from_dtype(a.dtype)
    raise TypeError(f"arguments of type {type(a).__name__} are not handled")


# struct codes of the scalar parameters (Numba passes a boolean as one byte).
_SCALAR_CODES = {"bool": "?", "int8": "b", "uint8": "B", "int16": "h", "uint16": "H",
                 "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q", "float16": "e",
                 "float32": "f", "float64": "d"}


def _param_layout(argtypes):
    """The kernel parameters Numba's calling convention makes of `argtypes`, as
    (struct format, [(offset, size) of each parameter]): an array is meminfo, parent, nitems,
    itemsize, data, shape[ndim], strides[ndim] (each 8 bytes), a scalar is one parameter of
    its own size; each parameter is aligned to its size, as the driver lays them out."""
    from numba.cuda import types

    codes = []
    for ty in argtypes:
        if isinstance(ty, types.Array):
            codes += ["Q", "Q", "q", "q", "Q"] + ["q"] * (2 * ty.ndim)
        elif str(ty) in _SCALAR_CODES:
            codes.append(_SCALAR_CODES[str(ty)])
        else:
            raise TypeError(f"parameters of type {ty} are not handled")
    fmt, params, offset = "<", [], 0
    for code in codes:
        size = struct.calcsize("<" + code)
        pad = -offset % size
        fmt += f"{pad}x{code}" if pad else code
        offset += pad
        params.append((offset, size))
        offset += size
    return fmt, params


def _make_packer(argtypes):
    """pack(buffer, args): writes the parameters of `args` (CuPy arrays and scalars of
    `argtypes`) into `buffer` in _param_layout's format. Generated per signature so that a
    launch costs one struct.pack_into call."""
    from numba.cuda import types

    fmt, _ = _param_layout(argtypes)
    values = []
    for i, ty in enumerate(argtypes):
        if isinstance(ty, types.Array):  # meminfo and parent are null: CuPy owns the memory
            values.append(f"0, 0, a{i}.size, a{i}.itemsize, a{i}.data.ptr, *a{i}.shape, *a{i}.strides")
        else:
            values.append(f"a{i}")
    names = "".join(f"a{i}, " for i in range(len(argtypes)))
    src = (f"def pack(buffer, args):\n"
           f"    {names} = args\n"
           f"    pack_into(buffer, 0, {', '.join(values)})\n")
    if not argtypes:
        src = "def pack(buffer, args):\n    pass\n"
    namespace = {"pack_into": struct.Struct(fmt).pack_into}
    exec(src, namespace)  # noqa: S102  (source built above from the signature only)
    return namespace["pack"]


def _dim3(d):
    """A grid or block size (an int or a tuple of 1-3 ints) as x, y, z."""
    if type(d) is int:
        return d, 1, 1
    d = tuple(int(v) for v in d) if isinstance(d, (tuple, list)) else (int(d),)
    return (d + (1, 1))[:3]


class FastLauncher:
    """One kernel compiled for one list of Numba argument types, launched with
    cuLaunchKernel: the parameters are packed into one buffer whose per-parameter pointers
    are fixed, so a launch is a pack_into and a driver call."""

    def __init__(self, kernel, argtypes):
        compiled = kernel.compile(tuple(argtypes))
        # What Numba's own launch does beyond passing the parameters, which this one does not.
        if compiled.debug or compiled.cooperative or compiled.extensions or \
                getattr(compiled, "launch_config_sensitive", False):
            raise NotImplementedError("a debug, cooperative, extended or launch-configuration-"
                                      "sensitive kernel")
        compiled.bind()  # loads the module into the context and runs its setup
        self.function = int(compiled.library.get_cufunc().handle)
        self.argtypes = tuple(argtypes)
        _, params = _param_layout(self.argtypes)
        self.buffer = ctypes.create_string_buffer(max([1] + [off + size for off, size in params]))
        base = ctypes.addressof(self.buffer)
        self.pointers = (ctypes.c_void_p * max(1, len(params)))(*[base + off for off, _ in params])
        self.params = ctypes.addressof(self.pointers)
        self.pack = _make_packer(self.argtypes)
        self.lock = threading.Lock()  # the buffer is shared by the launches of this kernel
        self.driver_launch = _driver_launch()

    def __call__(self, grid, block, args):
        gx, gy, gz = _dim3(grid)
        bx, by, bz = _dim3(block)
        stream = xp.cuda.get_current_stream().ptr
        with self.lock:  # the driver copies the parameters before cuLaunchKernel returns
            self.pack(self.buffer, args)
            try:
                self.driver_launch(self.function, gx, gy, gz, bx, by, bz, 0, stream, self.params, 0)
            except Exception as e:
                if "INVALID_CONTEXT" not in str(e):
                    raise
                # A thread that never made a CUDA call has no current context: make Numba's
                # (the device's primary context, CuPy's too) current, as Numba's launch does.
                cuda.current_context()
                self.driver_launch(self.function, gx, gy, gz, bx, by, bz, 0, stream, self.params, 0)


def _driver_launch():
    """CuPy's binding of cuLaunchKernel(f, grid xyz, block xyz, shared bytes, stream,
    kernelParams, extra)."""
    try:
        return xp.cuda.driver.launchKernel
    except AttributeError:
        from cupy_backends.cuda.api import driver
        return driver.launchKernel


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
