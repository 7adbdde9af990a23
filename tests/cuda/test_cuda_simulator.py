"""Runs the CUDA-simulator tests (test_cuda_sim_*.py) in their own process.

The simulator is chosen by NUMBA_ENABLE_CUDASIM=1 before numba is imported and then holds for
the whole process, so it cannot share a process with the rest of the suite: these tests start
``python -m pytest ...`` with the variable set and assert that it passed, with enough tests
run that a child which skipped them cannot pass here.

All they need is numba with its CUDA simulator (numba's own ``numba.cuda``, or numba-cuda's)
and PyTorch; not CuPy, numba-cuda or a GPU. Where numba is installed the simulator is expected:
one that does not import fails here rather than skipping the GPU code unnoticed.
"""
import glob
import importlib.util
import os
import re

import pytest
from child_python import TESTS_DIR, run_python

HERE = os.path.dirname(os.path.abspath(__file__))
SIM_FILES = sorted(glob.glob(os.path.join(HERE, "test_cuda_sim_*.py")))
MIN_PASSED = 50  # the simulator files hold 50 default tests: a run that skips them must not pass here

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                       reason="numba is not installed: no 'numba' or 'cuda' backend to test"),
    pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                       reason="the simulator tests compare against PyTorch"),
    pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"),
                       reason="already inside a simulator process"),
]


def test_numba_has_a_cuda_simulator():
    code = "import numba.cuda.simulator; from numba import cuda; assert cuda.is_available()"
    r = run_python("-c", code, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    assert r.returncode == 0, f"numba is installed but its CUDA simulator is not usable:\n{r.stderr}"


def _pytest_under_simulator(*args):
    """Runs pytest with NUMBA_ENABLE_CUDASIM=1 in a new process; returns (passed, report)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = run_python("-m", "pytest", "-q", "-p", "no:cacheprovider", *args, env=env, timeout=3000)
    report = r.stdout[-8000:] + r.stderr[-2000:]
    print(report)
    assert r.returncode == 0, f"tests under the CUDA simulator failed:\n{report}"
    passed = re.search(r"(\d+) passed", r.stdout)
    return (int(passed.group(1)) if passed else 0), report


def test_cuda_kernels_under_the_simulator():
    passed, report = _pytest_under_simulator(*SIM_FILES)
    assert passed >= MIN_PASSED, f"too few simulator tests ran:\n{report}"


@pytest.mark.slow
def test_cuda_kernels_under_the_simulator_slow_cases():
    """The simulator files' float64 twins of float32 cases (same kernel source, wider elements)."""
    passed, report = _pytest_under_simulator(*SIM_FILES, "-m", "slow")
    assert passed >= 3, f"too few slow simulator tests ran:\n{report}"


# The simulator runs each CUDA thread as a Python thread, so the conformance table costs minutes
# per dtype. The default run takes the float32 cases (and the dtype-free ones); the float64 cases
# run the same kernel code on wider elements and go with the slow runs. The rows that pick a CPU
# convolution algorithm ("algorithm_*") rerun the one CUDA convolution kernel that the other rows
# check, at up to a quarter of a minute each here: they too run only in the slow float64 pass.


def test_conformance_suite_on_cuda_under_the_simulator():
    """The conformance suite's float32 'cuda' cases against the reference (~330)."""
    passed, report = _pytest_under_simulator(os.path.join(TESTS_DIR, "test_conformance.py"),
                                             "-k", "cuda and not float64 and not algorithm_")
    assert passed >= 320, f"too few conformance cases ran on 'cuda':\n{report}"


@pytest.mark.slow
def test_conformance_suite_on_cuda_under_the_simulator_float64():
    """The conformance suite's float64 'cuda' cases against the reference (~325)."""
    passed, report = _pytest_under_simulator(os.path.join(TESTS_DIR, "test_conformance.py"),
                                             "-k", "cuda and float64")
    assert passed >= 320, f"too few float64 conformance cases ran on 'cuda':\n{report}"
