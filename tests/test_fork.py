"""A process forked after the CPU backends ran can run them again.

GNU OpenMP (the cpu backend's threads) and Numba's OpenMP threading layer are not fork-safe: a
child forked after a parallel region hangs, or is killed, at its next one. Each test runs a
parent in a fresh interpreter (a hang must not take pytest with it): the parent runs conv2d on
several threads, forks a child that runs conv2d too, and checks the child's answer.
"""
import os
import subprocess
import sys
import textwrap

import pytest
from child_python import run_python

import pyconv

PARENT = """
import multiprocessing, numpy as np, pyconv
from pyconv import ops
pyconv.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 16, 24, 24)).astype(np.float32)
w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
expected = ops.conv2d(x, w, padding=1, backend=BACKEND)  # the parent's threads now exist

def child(queue):
    queue.put(ops.conv2d(x, w, padding=1, backend=BACKEND))

ctx = multiprocessing.get_context("fork")
queue = ctx.Queue()
proc = ctx.Process(target=child, args=(queue,))
proc.start()
got = queue.get(timeout=60)
proc.join(60)
assert proc.exitcode == 0, proc.exitcode
np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
print("child ok")
"""


@pytest.mark.parametrize("backend", ["cpu", "numba"])
def test_forked_child_runs_the_kernels(backend):
    if backend not in pyconv.backends():
        pytest.skip(f"backend {backend!r} is not available")
    script = textwrap.dedent(PARENT).replace("BACKEND", repr(backend))
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{backend}: the forked child hung")
    assert proc.returncode == 0 and "child ok" in proc.stdout, proc.stdout + proc.stderr


def test_forked_child_runs_cpu_kernels_on_one_thread():
    """The documented price of fork safety: in a forked child every cpu kernel runs on the
    calling thread, whatever the thread setting."""
    script = textwrap.dedent("""
        import os, pyconv
        from pyconv import _C
        pyconv.set_num_threads(3)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if _C.get_num_threads() == 1 else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert _C.get_num_threads() == 3
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


NUMBA_FIRST = """
import multiprocessing, numba, numpy as np
from numba import njit, prange

import pyconv  # after numba, before any parallel loop
from pyconv import ops

@njit(parallel=True)
def user_loop(a):
    s = 0.0
    for i in prange(a.size):
        s += a[i]
    return s

user_loop(np.ones(1000))  # loads Numba's threading layer before pyconv's backend does
assert numba.threading_layer() != "omp", numba.threading_layer()
x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))
expected = ops.conv2d(x, w, backend="numba")

def child(queue):
    queue.put(ops.conv2d(x, w, backend="numba"))

ctx = multiprocessing.get_context("fork")
queue = ctx.Queue()
proc = ctx.Process(target=child, args=(queue,))
proc.start()
got = queue.get(timeout=120)
proc.join(60)
assert proc.exitcode == 0, proc.exitcode
np.testing.assert_allclose(got, expected)
print("child ok")
"""


def test_numba_imported_before_pyconv_gets_the_fork_safe_layer():
    """Numba imported first and a user's parallel loop run before pyconv's numba backend loads:
    pyconv chose the fork-safe layer at import, so a forked child still runs numba kernels."""
    if "numba" not in pyconv.backends():
        pytest.skip("the numba backend is not available")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    try:
        proc = run_python("-c", NUMBA_FIRST, env=env, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child hung")
    assert proc.returncode == 0 and "child ok" in proc.stdout, proc.stdout + proc.stderr


def test_a_layer_loaded_before_pyconv_is_reported():
    """A parallel loop run before pyconv was imported has loaded Numba's OpenMP layer, which
    nothing can change any more: importing pyconv says so."""
    if "numba" not in pyconv.backends():
        pytest.skip("the numba backend is not available")
    script = textwrap.dedent("""
        import warnings, numba, numpy as np
        from numba import njit, prange

        @njit(parallel=True)
        def user_loop(a):
            s = 0.0
            for i in prange(a.size):
                s += a[i]
            return s

        user_loop(np.ones(1000))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import pyconv
        layer = numba.threading_layer()
        said = [str(w.message) for w in caught if "threading layer" in str(w.message)]
        print(layer, len(said))
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    proc = run_python("-c", script, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    layer, warnings_issued = proc.stdout.split()
    assert warnings_issued == ("1" if layer == "omp" else "0"), proc.stdout
