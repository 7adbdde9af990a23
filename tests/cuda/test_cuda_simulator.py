"""Runs the CUDA-simulator tests (test_cuda_sim_*.py) in their own process.

The simulator is chosen by NUMBA_ENABLE_CUDASIM=1 before numba is imported and then holds for
the whole process, so it cannot share a process with the rest of the suite: this test starts
``python -m pytest tests/cuda/test_cuda_sim_*.py`` with the variable set and asserts it passed.
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


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                    reason="numba-cuda is not installed (pip install 'pyconv[cuda]')")
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the simulator tests compare against PyTorch")
@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"),
                    reason="already inside a simulator process")
def test_cuda_kernels_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SIM_FILES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    report = r.stdout[-8000:] + r.stderr[-2000:]
    print(report)
    assert r.returncode == 0, f"simulator tests failed:\n{report}"
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) >= MIN_PASSED, f"too few simulator tests ran:\n{report}"
