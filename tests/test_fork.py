"""A process forked after the CPU backends ran can run them again.

GNU OpenMP (the cpu backend's threads) and Numba's OpenMP threading layer are not fork-safe: a
child forked after a parallel region hangs, or is killed, at its next one. Each test runs a
parent in a fresh interpreter (a hang must not take pytest with it): the parent runs conv2d on
several threads, forks a child that runs conv2d too, and checks the child's answer.
"""
import subprocess
import sys
import textwrap

import pytest

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
