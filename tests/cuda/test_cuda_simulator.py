"""Runs the CUDA-simulator tests (test_cuda_sim_*.py) in their own process.

The simulator is chosen by NUMBA_ENABLE_CUDASIM=1 before numba is imported and then holds for
the whole process, so it cannot share a process with the rest of the suite: these tests start
``python -m pytest ...`` with the variable set and assert that it passed.
"""
import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SIM_FILES = sorted(glob.glob(os.path.join(HERE, "test_cuda_sim_*.py")))
MIN_PASSED = 38  # the simulator files hold 38 tests: a run that skips them must not pass here

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                       reason="numba-cuda is not installed (pip install 'pyconv[cuda]')"),
    pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                       reason="the simulator tests compare against PyTorch"),
    pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"),
                       reason="already inside a simulator process"),
]


def _pytest_under_simulator(*args):
    """Runs pytest with NUMBA_ENABLE_CUDASIM=1 in a new process; returns (passed, report)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    report = r.stdout[-8000:] + r.stderr[-2000:]
    print(report)
    assert r.returncode == 0, f"tests under the CUDA simulator failed:\n{report}"
    passed = re.search(r"(\d+) passed", r.stdout)
    return (int(passed.group(1)) if passed else 0), report


def test_cuda_kernels_under_the_simulator():
    passed, report = _pytest_under_simulator(*SIM_FILES)
    assert passed >= MIN_PASSED, f"too few simulator tests ran:\n{report}"


def test_conformance_suite_on_cuda_under_the_simulator():
    """The conformance suite's 'cuda' cases against the reference (~210; a few minutes)."""
    passed, report = _pytest_under_simulator(os.path.join(ROOT, "tests", "test_conformance.py"), "-k", "cuda")
    assert passed >= 200, f"too few conformance cases ran on 'cuda':\n{report}"
