"""A process forked after the CPU backends ran can run them again.

A forked child has none of its parent's threads: the cpu backend's thread pool must not wait
for workers that do not exist, and Numba's OpenMP threading layer kills a child forked after a
parallel loop at its next one. Each test runs a
parent in a fresh interpreter (a hang must not take pytest with it): the parent runs conv2d on
several threads, forks a child that runs conv2d too, and checks the child's answer.
"""
import os
import subprocess
import textwrap

import pytest
from child_python import run_python

import pyconv

# The end of every parent script: forks a child that calls compute() (defined by the script,
# which has already computed `expected` with it, so the parent's threads exist) and checks the
# child's answer.
FORK_AND_CHECK = """
def child(queue):
    queue.put(compute())

ctx = multiprocessing.get_context("fork")
queue = ctx.Queue()
proc = ctx.Process(target=child, args=(queue,))
proc.start()
got = queue.get(timeout=120)
proc.join(60)
assert proc.exitcode == 0, proc.exitcode
np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
print("child ok")
"""


def run_parent(script, timeout=300, env=None):
    """Runs `script` in a fresh interpreter (with the tests' pyconv); a hang fails the test
    instead of taking pytest with it."""
    try:
        return run_python("-c", textwrap.dedent(script), env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("the parent or its forked child hung")


def without_numba_threading_layer():
    """The environment without a threading layer forced, so that pyconv's choice counts."""
    return {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}


CONV_PARENT = """
import multiprocessing, numpy as np, pyconv
from pyconv import ops
pyconv.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 16, 24, 24)).astype(np.float32)
w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)

def compute():
    return ops.conv2d(x, w, padding=1, backend=BACKEND)

expected = compute()
""" + FORK_AND_CHECK


@pytest.mark.parametrize("backend", ["cpu", "numba"])
def test_forked_child_runs_the_kernels(backend):
    if backend not in pyconv.backends():
        pytest.skip(f"backend {backend!r} is not available")
    proc = run_parent(CONV_PARENT.replace("BACKEND", repr(backend)), timeout=240)
    assert proc.returncode == 0 and "child ok" in proc.stdout, proc.stdout + proc.stderr


def test_forked_child_runs_cpu_kernels_on_one_thread():
    """The documented price of fork safety: in a forked child every cpu kernel runs on the
    calling thread, whatever the thread setting."""
    proc = run_parent("""
        import os, pyconv
        from pyconv import _C
        pyconv.set_num_threads(3)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if _C.get_num_threads() == 1 else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert _C.get_num_threads() == 3
        print("ok")
    """, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


# A user's parallel Numba loop, run once: it loads Numba's threading layer.
USER_PARALLEL_LOOP = """
from numba import njit, prange

@njit(parallel=True)
def user_loop(a):
    s = 0.0
    for i in prange(a.size):
        s += a[i]
    return s

user_loop(np.ones(1000))
"""

NUMBA_FIRST = """
import multiprocessing, numba, numpy as np

import pyconv  # after numba, before any parallel loop
from pyconv import ops
""" + USER_PARALLEL_LOOP + """
# the threading layer is now loaded, before pyconv's backend loads
assert numba.threading_layer() != "omp", numba.threading_layer()
x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))

def compute():
    return ops.conv2d(x, w, backend="numba")

expected = compute()
""" + FORK_AND_CHECK


def test_numba_imported_before_pyconv_gets_the_fork_safe_layer():
    """Numba imported first and a user's parallel loop run before pyconv's numba backend loads:
    pyconv chose the fork-safe layer at import, so a forked child still runs numba kernels."""
    if "numba" not in pyconv.backends():
        pytest.skip("the numba backend is not available")
    proc = run_parent(NUMBA_FIRST, env=without_numba_threading_layer())
    assert proc.returncode == 0 and "child ok" in proc.stdout, proc.stdout + proc.stderr


LAYER_LOADED_FIRST = "import warnings, numba, numpy as np" + USER_PARALLEL_LOOP + """
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pyconv
layer = numba.threading_layer()
said = [str(w.message) for w in caught if "threading layer" in str(w.message)]
print(layer, len(said))
"""


def test_a_layer_loaded_before_pyconv_is_reported():
    """A parallel loop run before pyconv was imported has loaded Numba's OpenMP layer, which
    nothing can change any more: importing pyconv says so."""
    if "numba" not in pyconv.backends():
        pytest.skip("the numba backend is not available")
    proc = run_parent(LAYER_LOADED_FIRST, env=without_numba_threading_layer())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    layer, warnings_issued = proc.stdout.split()
    assert warnings_issued == ("1" if layer == "omp" else "0"), proc.stdout
