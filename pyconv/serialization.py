"""``pyconv.save`` / ``pyconv.load``: checkpoints as ``.npz`` files, written atomically.

A checkpoint is a dict whose values are arrays, numbers, strings or nested dicts of those
(a model's ``state_dict()``, an optimiser's, a training loop's counters). Nested keys are
stored flat as ``"outer/inner"``; :func:`load` rebuilds the nesting. The file is written to
a temporary file in the target folder, flushed to disk and renamed over the target, so a
crash mid-write leaves the previous checkpoint intact, never half a file.
"""
from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

__all__ = ["save", "load", "CheckpointError"]

_SEP = "/"


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt, or does not fit what it is loaded into."""


def _to_host(value):
    if hasattr(value, "__cuda_array_interface__"):
        return value.get()
    if hasattr(value, "data") and hasattr(value, "requires_grad"):  # a Tensor
        return _to_host(value.data)
    return np.asarray(value)


def _flatten(state, prefix, out):
    for key, value in state.items():
        if not isinstance(key, str) or _SEP in key:
            raise ValueError(f"save: keys must be strings without {_SEP!r}, got {key!r}")
        name = prefix + key
        if isinstance(value, dict):
            if not value:
                out[name + _SEP] = np.zeros(0)  # remember the empty dict
            _flatten(value, name + _SEP, out)
        else:
            array = _to_host(value)
            if array.dtype == object:
                raise TypeError(f"save: {name!r} holds a {type(value).__name__}, which cannot be stored")
            out[name] = array


def save(state: dict, path) -> None:
    """Writes `state` (a dict of arrays, numbers, strings and nested dicts) to `path` as .npz,
    atomically (temporary file + ``os.replace``)."""
    if not isinstance(state, dict):
        raise TypeError(f"save: state must be a dict, got {type(state).__name__}")
    arrays = {}
    _flatten(state, "", arrays)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temporary_prefix(path)
    _remove_stale_temporaries(folder, prefix)
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _temporary_prefix(path) -> str:
    return f".tmp-{os.path.basename(path)}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def _remove_stale_temporaries(folder, prefix) -> None:
    """Removes the temporaries of earlier saves of the same target whose writing process is
    gone (killed mid-write). A temporary of a live process may still be renamed into place,
    so it stays."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".npz")):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass  # another save removed it first


def _unflatten(flat):
    root = {}
    for name, value in flat.items():
        *outer, last = name.split(_SEP)
        node = root
        for key in outer:
            node = node.setdefault(key, {})
        if last:  # "a/" marks an empty dict
            node[last] = value
    return root


def load(path) -> dict:
    """Reads a checkpoint written by :func:`save`. 0-d arrays come back as 0-d arrays
    (``.item()`` gives the number or string). Raises FileNotFoundError for a missing file and
    :class:`CheckpointError` (a ValueError) for a truncated or corrupt one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            flat = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        # NumPy's own message for a file that is not a zip archive advises loading it with
        # pickles enabled; a checkpoint never holds pickles, so that advice is not passed on.
        raise CheckpointError(
            f"load: {path!r} is not a readable pyconv checkpoint: the file is truncated or "
            f"corrupt, or was not written by pyconv.save ({type(e).__name__})"
        ) from e
    return _unflatten(flat)
