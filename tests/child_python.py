"""Runs Python in a new process that imports the same pyconv as the tests.

The child neither relies on the current directory nor on the repository layout: it starts in
this tests directory with the directory holding the imported pyconv package first on its path,
so it works alike for a source checkout (editable install or in-place build) and for an
installed wheel.
"""
import os
import subprocess
import sys

import pyconv

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PYCONV_HOME = os.path.dirname(os.path.dirname(os.path.abspath(pyconv.__file__)))


def run_python(*args, env=None, **kwargs):
    """subprocess.run([sys.executable, *args]) capturing text output, with the tests' pyconv."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYCONV_HOME, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, *args], cwd=TESTS_DIR, env=env, capture_output=True,
                          text=True, **kwargs)
