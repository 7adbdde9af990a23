"""Backend registry: which kernel implementations exist, and which one runs a call.

A backend is a module (or package) in this package that creates one :class:`Backend` and
registers its kernels with ``@backend.register``. Kernel names and signatures are the same on
every backend; the arguments arrive already checked by ``pyconv._spec`` and C-contiguous. A
backend that lacks a kernel raises NotImplementedError naming the op and the backend: pyconv
never falls back silently to another backend.

The kernels and their signatures are declared once, in the op catalogue
(``pyconv/backends/_contract.py``); ``register`` checks every kernel against it.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import importlib.util
import os
import warnings

import numpy as np

from .._spec import array_kind
from ._contract import KERNELS, OPS, check_kernel, op_coverage  # noqa: F401 (re-exported)


class Backend:
    def __init__(self, name: str, array_kind: str, description: str):
        self.name = name
        self.array_kind = array_kind  # "numpy" or "cupy": the arrays its kernels take
        self.description = description
        self.kernels: dict = {}

    def register(self, fn):
        """Decorator: registers `fn` as this backend's kernel of the same name, after checking
        its name and parameters against the op catalogue."""
        self.kernels[check_kernel(self.name, fn).name] = fn
        return fn

    def coverage(self) -> dict[str, bool]:
        """Public op -> whether this backend runs it (computed from the catalogue)."""
        return op_coverage(self.kernels)

    def kernel(self, name: str):
        try:
            return self.kernels[name]
        except KeyError:
            raise NotImplementedError(
                f"op '{name}' is not implemented by the '{self.name}' backend yet "
                f"(it has: {', '.join(sorted(self.kernels)) or 'nothing'}); "
                f"pass backend='reference' to use the NumPy reference"
            ) from None

    def __repr__(self):
        return f"<pyconv backend {self.name!r}: {len(self.kernels)} kernels>"


@dataclasses.dataclass(frozen=True, eq=False)
class LstmSaved:
    """What an LSTM forward keeps so that its backward need not run the recurrence again
    (cuDNN's "reserve space"): made by a backend's ``lstm`` kernel when asked to save, handed
    back to the same backend's ``lstm_backward``. Its arrays belong to that backend and are
    read, never written, by the backward (so one record serves several backward calls), unless
    ``last_use`` is set: the backward may then use them as scratch (the cpu backend writes its
    gate gradients over ``gates``), and the record must not serve another call. The autograd
    sets it on the backward after which it frees the graph.

        gates  (T, B, G)      the activated gates i, f, g, o of every step; G = 4H, or wider
                              in a backend's own (padded, interleaved) gate layout
        hs, cs (T + 1, B, H)  the hidden and cell states h_0..h_T and c_0..c_T
    """

    backend: str
    gates: object
    hs: object
    cs: object
    last_use: bool = False

    def check(self, op: str, backend: "Backend", x, h0) -> None:
        """ValueError unless this record can serve a backward of `backend` on x (T, B, I), h0."""
        if self.backend != backend.name:
            raise ValueError(f"{op}: saved comes from the {self.backend!r} backend but this call "
                             f"runs on {backend.name!r}")
        T, B, H = x.shape[0], x.shape[1], h0.shape[1]
        for name, a, lead in (("gates", self.gates, (T, B)), ("hs", self.hs, (T + 1, B, H)),
                              ("cs", self.cs, (T + 1, B, H))):
            if array_kind(a) != backend.array_kind:
                raise ValueError(f"{op}: saved.{name} is a {array_kind(a)} array, the "
                                 f"{backend.name!r} backend takes {backend.array_kind} arrays")
            if a.dtype != x.dtype:
                raise ValueError(f"{op}: saved.{name} is {a.dtype} but x is {x.dtype}")
            if a.ndim != 3 or tuple(a.shape[:len(lead)]) != lead:
                raise ValueError(f"{op}: saved.{name} has shape {tuple(a.shape)}, which does not "
                                 f"match x {tuple(x.shape)} and h0 {tuple(h0.shape)}")


# name -> module that defines it, in order of preference for listing.
_MODULES = {
    "reference": "pyconv.backends.reference",
    "cpu": "pyconv.backends.cpu",
    "numba": "pyconv.backends.numba",
    "cuda": "pyconv.backends.cuda",
}

_loaded: dict[str, Backend] = {}
_unavailable: dict[str, str] = {}  # name -> why it cannot be used here
_usable: set[str] = set()  # probed and usable: the probe runs once per process, not per call


def cuda_simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")


def _probe(name: str) -> str | None:
    """Why backend `name` is unusable on this machine, or None if it is usable.
    Cheap: it does not import numba or compile anything."""
    if importlib.util.find_spec(_MODULES[name]) is None:
        return "not part of this build"
    if name == "cpu":
        try:
            importlib.import_module("pyconv._C")
        except ImportError as e:
            return f"the C++ extension pyconv._C did not import: {e}"
    elif name == "numba":
        if importlib.util.find_spec("numba") is None:
            return "numba is not installed (pip install numba)"
    elif name == "cuda":
        if importlib.util.find_spec("numba") is None:
            return "numba-cuda is not installed (pip install 'pyconv[cuda]')"
        if not cuda_simulator():
            if importlib.util.find_spec("cupy") is None:
                return "cupy is not installed (pip install 'pyconv[cuda]')"
            try:
                import cupy

                if not cupy.is_available():
                    return "no usable CUDA GPU (cupy.is_available() is False)"
            except Exception as e:  # a broken CUDA install must not break import pyconv
                return f"cupy failed: {e}"
    return None


def available(name: str) -> bool:
    if name in _loaded or name in _usable:
        return True
    if name not in _unavailable:
        why = _probe(name)
        if why is None:
            _usable.add(name)
        else:
            _unavailable[name] = why
    return name not in _unavailable


def names() -> list[str]:
    """Names of the backends usable on this machine."""
    return [n for n in _MODULES if available(n)]


def why_unavailable(name: str) -> str | None:
    return None if available(name) else _unavailable[name]


def get(name: str) -> Backend:
    """The Backend object called `name`, importing it on first use."""
    if name in _loaded:
        return _loaded[name]
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; pyconv has {', '.join(_MODULES)}")
    if not available(name):
        raise RuntimeError(f"backend {name!r} is not available here: {_unavailable[name]}")
    backend = importlib.import_module(_MODULES[name]).backend
    _loaded[name] = backend
    return backend


# ---------------------------------------------------------------------------------------------
# Which backend runs a call: the call's backend= keyword, else the one selected with
# set_backend/use_backend, else "cuda" for CuPy arrays and "cpu" for NumPy arrays.

_selected: contextvars.ContextVar[str | None] = contextvars.ContextVar("pyconv_backend", default=None)
_global_selected: str | None = None


def _default_for_numpy() -> str:
    if available("cpu"):
        return "cpu"
    warnings.warn(
        f"pyconv: the 'cpu' backend is unavailable ({_unavailable['cpu']}); using 'reference'",
        RuntimeWarning,
        stacklevel=4,
    )
    return "reference"


def selected() -> str | None:
    return _selected.get() or _global_selected


def get_backend() -> str:
    """Name of the backend that runs calls on NumPy arrays (CuPy arrays go to 'cuda' unless a
    backend was selected explicitly)."""
    # (inlined: every kernel call asks, and through the helpers it took 0.14 us, a tenth of a
    # one-image convolution node's Python)
    return _selected.get() or _global_selected or ("cpu" if "cpu" in _usable else _default_for_numpy())


def set_backend(name: str | None) -> None:
    """Selects the backend for every later call (None restores the automatic choice)."""
    global _global_selected
    if name is not None:
        get(name)  # fail now, not at the first call
    _global_selected = name


@contextlib.contextmanager
def use_backend(name: str):
    """``with pyconv.use_backend("reference"): ...`` selects a backend inside the block."""
    get(name)
    token = _selected.set(name)
    try:
        yield get(name)
    finally:
        _selected.reset(token)


def resolve(name: str | None, arrays, op: str) -> Backend:
    """The backend that runs `op` on `arrays`, after checking they are arrays it can take."""
    # The common case first, in few steps: every kernel call passes here, and a small layer's
    # kernel runs in about a microsecond.
    for a in arrays:
        if type(a) is not np.ndarray and a is not None:
            break
    else:
        backend = _loaded.get(name or selected() or ("cpu" if "cpu" in _usable else ""))
        if backend is not None and backend.array_kind == "numpy":
            return backend
    kinds = {array_kind(a) for a in arrays if a is not None}
    if len(kinds) > 1:
        raise TypeError(f"{op}: arguments mix NumPy and CuPy arrays; move them to one device")
    if name is None:
        name = selected()
        if name is None:
            name = "cuda" if kinds == {"cupy"} else _default_for_numpy()
    backend = get(name)
    if kinds and kinds != {backend.array_kind}:
        (kind,) = kinds
        raise TypeError(
            f"{op}: the {name!r} backend takes {backend.array_kind} arrays but got {kind} arrays "
            f"(use backend='cuda' for CuPy arrays, a CPU backend for NumPy arrays)"
        )
    return backend
