"""The cuda backend's fast kernel launch (pyconv/backends/cuda/_runtime.py), without a GPU.

The parameter layout is checked against the PTX parameter list Numba compiles for the same
signature (what the driver reads), and the packed bytes against Numba's own argument packing
(``_Kernel._prepare_args``) for the same arrays and scalars, read back through the parameter
pointers the launcher hands to cuLaunchKernel. The GPU tests (test_cuda_gpu.py) run every
kernel through this launcher on a device.
"""
import ctypes
import importlib.util
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                       reason="numba-cuda is not installed (pip install 'pyconv[cuda]')"),
    pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"),
                       reason="needs a process without the CUDA simulator"),
]


class FakeCupyArray:
    """The attributes of a CuPy array the launcher reads, over a NumPy array whose address
    stands in for the device pointer (nothing dereferences it)."""

    def __init__(self, a):
        self._a = a
        self.dtype, self.ndim, self.size, self.itemsize = a.dtype, a.ndim, a.size, a.itemsize
        self.shape, self.strides = a.shape, a.strides
        self.data = SimpleNamespace(ptr=a.ctypes.data)
        self._c_contiguous = a.flags.c_contiguous
        self._f_contiguous = a.flags.f_contiguous


def _arrays():
    rng = np.random.default_rng(0)
    yield rng.standard_normal(7).astype(np.float32)
    yield rng.standard_normal((3, 5))  # float64
    yield rng.integers(0, 9, (2, 3, 4, 5))  # int64, 4-D
    yield rng.standard_normal((4, 6)).astype(np.float32)[:, ::2]  # strided: layout 'A'
    yield np.asfortranarray(rng.standard_normal((3, 4)))  # layout 'F'
    yield rng.standard_normal(12)[::3]  # 1-D strided


ARRAYS = list(_arrays())

# Argument lists mixing arrays and scalars so that 1-, 4- and 8-byte parameters need padding.
ARG_LISTS = [
    [ARRAYS[0], ARRAYS[1], 5, 2.5],
    [np.float32(0.25), ARRAYS[2], True, np.int32(-3), ARRAYS[0], 7],
    [True, ARRAYS[3], np.float32(1.5), False, 2 ** 40, ARRAYS[4], np.float64(-2.0)],
    [np.uint8(200), np.int16(-5), ARRAYS[5], np.bool_(True), np.uint32(4000000000), ARRAYS[1]],
    [3, 1.25, False],
    [],
]


@pytest.fixture
def runtime(monkeypatch):
    from pyconv.backends.cuda import _runtime

    monkeypatch.setattr(_runtime, "_ndarray", FakeCupyArray)
    return _runtime


def _wrap(args):
    return [FakeCupyArray(a) if isinstance(a, np.ndarray) else a for a in args]


def _ptx_params(argtypes):
    """(offset, size) of each parameter of the PTX entry Numba compiles for argtypes, laid
    out as the driver does: each at a multiple of its size."""
    from numba import cuda

    names = ", ".join(f"a{i}" for i in range(len(argtypes)))
    ns = {}
    exec(f"def kernel({names}):\n    pass\n", ns)  # noqa: S102
    ptx, _ = cuda.compile_ptx(ns["kernel"], tuple(argtypes), cc=(9, 0))
    entry = ptx[ptx.index(".entry"):]
    entry = entry[:entry.index(")")]
    sizes = {"8": 1, "16": 2, "32": 4, "64": 8}
    params, offset = [], 0
    for bits in re.findall(r"\.param\s+\.[a-z]+?(8|16|32|64)\s", entry):
        size = sizes[bits]
        offset += -offset % size
        params.append((offset, size))
        offset += size
    assert entry.count(".param") == len(params), entry
    return params


def _numba_param_bytes(argtypes, args, monkeypatch):
    """The bytes of each kernel parameter as Numba's own launch passes them: its
    _prepare_args on the device-array view Numba makes of a CuPy array, then each value
    converted as cuda.core's launch does (a Python int as an intptr_t, a bool as one byte,
    NumPy and ctypes scalars as they are)."""
    from numba.cuda import dispatcher
    from numba.cuda.cudadrv.devicearray import _StridedLayoutShim, _StridedMemoryViewShim

    def view(a):
        layout = _StridedLayoutShim(strides_in_bytes=a.strides, is_contiguous_c=a._c_contiguous,
                                    is_contiguous_f=a._f_contiguous,
                                    is_contiguous_any=a._c_contiguous or a._f_contiguous)
        return _StridedMemoryViewShim(ptr=a.data.ptr, shape=a.shape, dtype=a.dtype,
                                      size=a.size, _layout=layout)

    monkeypatch.setattr(dispatcher, "wrap_arg",
                        lambda v: SimpleNamespace(to_device=lambda retr, stream: view(v)))
    kernelargs = []
    for ty, v in zip(argtypes, args):
        dispatcher._Kernel._prepare_args(SimpleNamespace(extensions=[]), ty, v, 0, [], kernelargs)
    out = []
    for v in kernelargs:
        if isinstance(v, bool):
            out.append(bytes([v]))
        elif isinstance(v, np.generic):
            out.append(v.tobytes())
        elif isinstance(v, int):
            out.append(v.to_bytes(8, "little", signed=v < 0))
        else:
            out.append(bytes(v))
    return out


class FakeKernel:
    """A (hashable) stand-in for a Numba dispatcher."""
    __name__ = "fake"

    def __init__(self, compile=None):
        self.compile = compile


class FakeDriver:
    """Stands in for CuPy's launchKernel: reads each parameter back through the pointer
    array, as the driver does."""

    def __init__(self, sizes):
        self.sizes, self.calls = sizes, []

    def __call__(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        ptrs = (ctypes.c_void_p * max(1, len(self.sizes))).from_address(params)
        data = [ctypes.string_at(ptrs[i], size) for i, size in enumerate(self.sizes)]
        self.calls.append(((f, gx, gy, gz, bx, by, bz, shared, stream, extra), data))


@pytest.mark.parametrize("args", ARG_LISTS, ids=range(len(ARG_LISTS)))
def test_param_layout_matches_numba_ptx(args, runtime):
    argtypes = [runtime._numba_type(a) for a in _wrap(args)]
    _, params = runtime._param_layout(argtypes)
    assert params == _ptx_params(argtypes)


def test_numba_types_of_arguments(runtime):
    from numba.cuda import types

    t = [runtime._numba_type(a) for a in _wrap(ARRAYS)]
    assert t == [types.float32[::1], types.float64[:, ::1], types.int64[:, :, :, ::1],
                 types.Array(types.float32, 2, "A"), types.float64[::1, :],
                 types.Array(types.float64, 1, "A")]
    assert [runtime._numba_type(v) for v in (1, 1.0, True, np.float32(1), np.int32(1), np.bool_(0))] \
        == [types.int64, types.float64, types.boolean, types.float32, types.int32, types.boolean]
    for bad in (None, (1, 2), np.zeros(2), 1j, np.complex64(1)):
        with pytest.raises(TypeError):
            runtime._numba_type(bad)


@pytest.mark.parametrize("args", ARG_LISTS, ids=range(len(ARG_LISTS)))
def test_launch_packs_what_numba_packs(args, runtime, monkeypatch):
    """launch() end to end with a fake compiled kernel and driver: the parameters, grid,
    block and stream reach cuLaunchKernel as Numba would pass them."""
    wrapped = _wrap(args)
    argtypes = [runtime._numba_type(a) for a in wrapped]
    _, params = runtime._param_layout(argtypes)
    driver = FakeDriver([size for _, size in params])
    compiled = SimpleNamespace(debug=False, cooperative=False, extensions=[], bind=lambda: None,
                               library=SimpleNamespace(get_cufunc=lambda: SimpleNamespace(handle=1234)))
    kernel = FakeKernel(lambda sig: compiled if list(sig) == argtypes else None)
    stream = SimpleNamespace(ptr=77)
    monkeypatch.setattr(runtime, "xp", SimpleNamespace(cuda=SimpleNamespace(
        get_current_stream=lambda: stream, driver=SimpleNamespace(launchKernel=driver))))
    monkeypatch.setattr(runtime, "SIMULATOR", False)
    monkeypatch.setattr(runtime, "FAST_LAUNCH", True)
    monkeypatch.setattr(runtime, "_launchers", {})

    runtime.launch(kernel, 3, 128, *wrapped)
    runtime.launch(kernel, (2, 5), (32, 4), *wrapped)  # the cached launcher
    expected = _numba_param_bytes(argtypes, wrapped, monkeypatch)
    assert [c[0] for c in driver.calls] == [(1234, 3, 1, 1, 128, 1, 1, 0, 77, 0),
                                            (1234, 2, 5, 1, 32, 4, 1, 0, 77, 0)]
    for _, data in driver.calls:
        assert data == expected
    assert len(runtime._launchers) == 1


def test_unhandled_arguments_fall_back_to_numba_once(runtime, monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "SIMULATOR", False)
    monkeypatch.setattr(runtime, "FAST_LAUNCH", True)
    monkeypatch.setattr(runtime, "_launchers", {})
    monkeypatch.setattr(runtime, "_warned", set())
    monkeypatch.setattr(runtime, "numba_launch", lambda k, g, b, *a: calls.append(a))
    kernel = FakeKernel()
    with pytest.warns(RuntimeWarning, match="fake is launched through Numba"):
        runtime.launch(kernel, 1, 32, 1j)
    runtime.launch(kernel, 1, 32, 2j)  # no second warning, no second build
    assert calls == [(1j,), (2j,)] and list(runtime._launchers.values()) == [runtime._NUMBA]


def test_dim3(runtime):
    assert runtime._dim3(5) == (5, 1, 1)
    assert runtime._dim3((2, 3)) == (2, 3, 1)
    assert runtime._dim3([2, 3, 4]) == (2, 3, 4)
    assert runtime._dim3(np.int64(7)) == (7, 1, 1)


def test_backend_gives_numba_cuda_the_row_stack_numpy_2_5_removed():
    """numba-cuda 0.30 overloads np.row_stack when it first compiles; NumPy 2.5 has none."""
    import subprocess
    import sys

    code = ("import numpy as np; del np.row_stack\n"
            "import pyconv.backends.cuda\n"
            "from numba import cuda\n"
            "cuda.compile_ptx(lambda a: None, 'void(float32[:])', cc=(9, 0)); print('compiled')\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300)
    assert run.stdout.strip() == "compiled", run.stderr[-2000:]


def test_launch_makes_a_context_current_when_the_thread_has_none(runtime, monkeypatch):
    argtypes = [runtime._numba_type(3)]
    calls, contexts = [], []

    def driver(*a):
        calls.append(a)
        if len(calls) == 1:
            raise RuntimeError("CUDA_ERROR_INVALID_CONTEXT: invalid device context")

    compiled = SimpleNamespace(debug=False, cooperative=False, extensions=[], bind=lambda: None,
                               library=SimpleNamespace(get_cufunc=lambda: SimpleNamespace(handle=9)))
    monkeypatch.setattr(runtime, "xp", SimpleNamespace(cuda=SimpleNamespace(
        get_current_stream=lambda: SimpleNamespace(ptr=0), driver=SimpleNamespace(launchKernel=driver))))
    monkeypatch.setattr(runtime.cuda, "current_context", lambda: contexts.append(1))
    launcher = runtime.FastLauncher(FakeKernel(lambda sig: compiled), argtypes)
    launcher(1, 1, (3,))
    assert len(calls) == 2 and contexts == [1]
    monkeypatch.setattr(runtime.xp.cuda.driver, "launchKernel", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other errors propagate
        runtime.FastLauncher(FakeKernel(lambda sig: compiled), argtypes)(1, 1, (3,))


@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="needs CuPy")
@pytest.mark.parametrize("value,fast", [("", True), ("numba", False)])
def test_environment_switch(value, fast):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYCONV_CUDA_LAUNCH=value,
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "from pyconv.backends.cuda import _runtime; print(_runtime.FAST_LAUNCH)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300)
    assert run.stdout.strip() == str(fast), run.stderr[-2000:]
