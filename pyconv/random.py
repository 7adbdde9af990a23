"""The one random-number generator behind pyconv's layers (initialisation, dropout).

A single seeded ``numpy.random.Generator`` makes runs reproducible: ``pyconv.manual_seed(0)``
before building a model gives the same weights every time, and the training loop saves and
restores the generator's state so that a resumed run draws the same dropout masks as an
uninterrupted one. Dropout draws one seed per call from it and its kernels derive the mask from
that seed alone (Philox4x32-10, the same on every backend), so CPU and GPU runs with one seed
see the same masks.
"""
from __future__ import annotations

import json

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseeds pyconv's generator (PCG64) and returns it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator() -> np.random.Generator:
    """pyconv's current generator."""
    return _generator


def get_rng_state() -> str:
    """The generator's state as a JSON string (storable in a .npz checkpoint)."""
    return json.dumps(_generator.bit_generator.state)


def set_rng_state(state: str) -> None:
    """Restores a state returned by :func:`get_rng_state`."""
    _generator.bit_generator.state = json.loads(state)
