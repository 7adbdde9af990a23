"""The choice of Numba's threading layer for the "numba" backend, in a module that does not
import Numba itself: ``import pyconv`` makes the choice at once when Numba is already loaded,
and the backend makes it when it loads (see ``pyconv/backends/numba/_jit.py``).

Numba's parallel loops run on a threading layer that Numba loads when the first one runs,
and keeps. Its default on Linux without TBB is GNU OpenMP, which is not fork-safe: a child
forked after a parallel loop ran is killed by Numba ("fork() called from a process already
using GNU OpenMP") when it runs one. Unless the user chose a layer (NUMBA_THREADING_LAYER, or
numba.config.THREADING_LAYER), pyconv asks for Numba's "forksafe" selection: TBB if
installed, else "workqueue". The choice must come before the first parallel loop of the
process, pyconv's or not; if that loop already ran on OpenMP, nothing can change the layer and
pyconv warns instead.
"""
from __future__ import annotations

import sys
import warnings

_warned = False


def choose_fork_safe_threading_layer() -> None:
    """Selects Numba's "forksafe" threading layer unless the user named one; warns (once per
    process) when a parallel loop already loaded the OpenMP layer. Needs numba imported."""
    global _warned
    numba = sys.modules["numba"]
    if str(numba.config.THREADING_LAYER).lower() == "default":
        numba.config.THREADING_LAYER = "forksafe"
    try:
        loaded = numba.threading_layer()
    except ValueError:  # no parallel loop has run yet: the choice above will be used
        return
    if loaded == "omp" and not _warned:
        _warned = True
        warnings.warn(
            "Numba's parallel loops already run on its OpenMP threading layer, chosen before "
            "pyconv could select the fork-safe one: a process forked from this one may be "
            "killed when it runs a numba-backend kernel. Import pyconv before running parallel "
            "Numba code, or set NUMBA_THREADING_LAYER=forksafe.", RuntimeWarning, stacklevel=3)
