"""Cache blocking of the C++ backend's packed GEMM: what it runs with, and an opt-in tuner.

The C++ side picks KC, MC and NC at run time from the CPU's caches (an analytical model; see
csrc/gemm/blocking.h), or takes them from the environment:

  PYCONV_CACHE_SIZES="l1d=48K,l2=2M,l3=32M"   the caches to model for (simulates another CPU)
  PYCONV_GEMM_BLOCKING="kc,mc,nc"             these blocks, for every ISA and dtype

``pyconv tune`` (:func:`tune`) times a few blockings around the model's for float32 and
float64 and writes the fastest, per CPU model and ISA, to ``gemm_blocking.json`` in the user's
cache directory ($XDG_CACHE_HOME/pyconv, else ~/.cache/pyconv). The C++ backend applies that
file when it loads (:func:`apply_at_import`) unless PYCONV_GEMM_BLOCKING is set; with
PYCONV_TUNE=1 it tunes first when the file has no entry for this machine.

A blocking changes how the reduction of each output element is cut into blocks of KC, so two
blockings may round differently; with a fixed blocking the results are the same bytes on any
number of threads.
"""
from __future__ import annotations

import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

DTYPES = ("float32", "float64")
FILE_NAME = "gemm_blocking.json"
FORMAT_VERSION = 1
# Square GEMM sizes the tuner times: one that fits the caches' blocks a few times, one larger.
TUNE_SIZES = (512, 1024)


def cache_dir() -> Path:
    """The user's cache directory for pyconv: $XDG_CACHE_HOME/pyconv, else ~/.cache/pyconv."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyconv"


def tuned_file() -> Path:
    return cache_dir() / FILE_NAME


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module reports."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_key(isa: str) -> str:
    """The tuned file's key for this CPU and an ISA variant."""
    return f"{cpu_model()} / {isa}"


def _C():
    """pyconv._C, after the C++ backend's import-time setup (the tuned file) has run."""
    import importlib

    importlib.import_module("pyconv.backends.cpu")
    from . import _C

    return _C


def caches() -> dict:
    """The caches the GEMM blocks for (bytes), and where they were found."""
    return _C().cpu_caches()


def blocking(dtype: str = "float32", isa: str | None = None) -> dict:
    """The GEMM blocking the C++ backend runs with now for `dtype` on `isa` (default: the active
    ISA): kc, mc, nc, source ("model", "tuned", "PYCONV_GEMM_BLOCKING", "compile-time
    default" or "set"), the register tile mr x nr and the compile-time blocks."""
    C = _C()
    return C.gemm_blocking(isa or C.isa(), dtype)


def describe() -> str:
    """One line: the active ISA's blocking per dtype and where it comes from."""
    parts = []
    for dtype in DTYPES:
        b = blocking(dtype)
        parts.append(f"{dtype} kc={b['kc']} mc={b['mc']} nc={b['nc']} ({b['source']})")
    c = caches()
    kib = lambda n: f"{n // 1024}K" if n < 1 << 20 else f"{n // (1 << 20)}M"  # noqa: E731
    return (f"GEMM blocking [{_C().isa()}]: " + "; ".join(parts) +
            f"; caches l1d={kib(c['l1d'])} l2={kib(c['l2'])} l3={kib(c['l3'])} ({c['source']})")


class use_blocking:
    """Context manager: run the GEMM of `dtype` with (kc, mc, nc) (rounded to whole register
    tiles) on the active ISA, then restore what every ISA and dtype ran before."""

    def __init__(self, kc: int, mc: int, nc: int, dtype: str = "float32"):
        self.blocks, self.dtype = (kc, mc, nc), dtype

    def __enter__(self):
        C = _C()
        # Blockings that were set (a tuned file, another use_blocking) must be set again after
        # the reset below; the others are what the table finds again on its own.
        self.set_before = [(isa, dtype, C.gemm_blocking(isa, dtype)) for isa in C.compiled_isas()
                           for dtype in DTYPES]
        self.set_before = [(isa, dtype, b) for isa, dtype, b in self.set_before
                           if b["source"] in ("tuned", "set")]
        return C.set_gemm_blocking(C.isa(), self.dtype, *self.blocks, "set")

    def __exit__(self, *exc):
        C = _C()
        C.reset_gemm_blocking()
        for isa, dtype, b in self.set_before:
            C.set_gemm_blocking(isa, dtype, b["kc"], b["mc"], b["nc"], b["source"])
        return False


def read_tuned_file(path: Path | None = None, warn: bool = True) -> dict:
    """The tuned file's machines ({key: {dtype: {"kc", "mc", "nc"}}}); {} when absent, and when
    unreadable or malformed (then with a warning)."""
    path = Path(path) if path is not None else tuned_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"expected a version {FORMAT_VERSION} object")
        machines = data["machines"]
        for entry in machines.values():
            for dtype, b in entry.items():
                if dtype in DTYPES and not all(isinstance(b[k], int) and b[k] > 0 for k in ("kc", "mc", "nc")):
                    raise ValueError(f"bad blocks {b!r}")
        return machines
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if warn:
            warnings.warn(f"pyconv: ignoring the GEMM tuning file {path}: {e}", RuntimeWarning, stacklevel=2)
        return {}


def apply_tuned_file(path: Path | None = None, warn: bool = True) -> bool:
    """Runs the GEMM with the tuned file's blocks for this CPU (every ISA it has an entry for).
    Returns whether any applied. PYCONV_GEMM_BLOCKING takes precedence over the file."""
    if os.environ.get("PYCONV_GEMM_BLOCKING"):
        return False
    machines = read_tuned_file(path, warn=warn)
    applied = False
    C = _C()
    for isa in C.compiled_isas():
        entry = machines.get(machine_key(isa), {})
        for dtype in DTYPES:
            if dtype in entry:
                b = entry[dtype]
                C.set_gemm_blocking(isa, dtype, b["kc"], b["mc"], b["nc"], "tuned")
                applied = True
    return applied


def write_tuned_entry(isa: str, winners: dict, path: Path | None = None) -> Path:
    """Adds (replaces) this CPU's entry for `isa` in the tuned file, keeping other machines'."""
    path = Path(path) if path is not None else tuned_file()
    machines = read_tuned_file(path, warn=False)
    machines[machine_key(isa)] = winners
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": FORMAT_VERSION, "machines": machines}, indent=1))
    tmp.replace(path)
    return path


def candidates(model: tuple, mr: int, nr: int) -> list:
    """A few (kc, mc, nc) around the model's: KC from 1/2 to 3/2 of it, MC from 1/4 to 2x, NC
    from 1/2 to 2x, one factor at a time (the tuner keeps the best KC before it varies MC)."""
    kc, mc, nc = model
    return {
        "kc": sorted({max(16, int(kc * f) // 8 * 8) for f in (0.5, 0.75, 1.0, 1.25, 1.5)}),
        "mc": sorted({max(mr, int(mc * f) // mr * mr) for f in (0.25, 0.5, 1.0, 2.0)}),
        "nc": sorted({max(nr, int(nc * f) // nr * nr) for f in (0.5, 1.0, 2.0)}),
    }


def _fastest(C, isa, dtype, blockings, sizes, reps):
    """{blocking: seconds}: the least over `reps` rounds of one call per size, summed over the
    sizes. The rounds visit every blocking in turn (the order reversed every other round), so
    that a host's drifting load falls on all of them alike, and the least of them is the run
    least disturbed."""
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype),
             np.empty((n, n), dtype)) for n in sizes]
    best = {b: float("inf") for b in blockings}
    for r in range(reps + 1):  # round 0 warms up
        for b in blockings[::-1] if r % 2 else blockings:
            C.set_gemm_blocking(isa, dtype, *b, "set")
            total = 0.0
            for a, bm, c in data:
                t0 = time.perf_counter()
                C.gemm(a, bm, c, False)
                total += time.perf_counter() - t0
            if r:
                best[b] = min(best[b], total)
    return best


def tune(sizes=TUNE_SIZES, dtypes=DTYPES, reps: int = 5, write: bool = True, path=None,
         log=print) -> dict:
    """Times candidate blockings of the active ISA's GEMM and keeps the fastest per dtype (set
    now, and written to the tuned file when `write`): KC first, then MC, then NC, each among
    the candidates with the others at the best so far; the model's blocking stays unless the
    winner is more than 3% faster timed against it once more. Returns {dtype: {"kc", "mc", "nc",
    "gflops", "model_gflops"}}."""
    C = _C()
    isa = C.isa()
    winners = {}
    for dtype in dtypes:
        info = C.gemm_blocking(isa, dtype)
        model = tuple(C.model_gemm_blocking(isa, dtype, C.cpu_caches()))
        cand = candidates(model, info["mr"], info["nr"])
        flop = sum(2.0 * n ** 3 for n in sizes)
        best = model
        for index, axis in enumerate(("kc", "mc", "nc")):
            trials = sorted({best[:index] + (v,) + best[index + 1:] for v in cand[axis]} | {best})
            times = _fastest(C, isa, dtype, trials, sizes, reps)
            if index == 0:
                model_time = times[model]
            best = min(times, key=times.get)
            best_time = times[best]
        # The winner against the model once more, side by side: it must beat it by a margin
        # larger than the rounds' jitter, or the model stays.
        if best != model:
            times = _fastest(C, isa, dtype, [model, best], sizes, reps)
            model_time, best_time = times[model], times[best]
            if best_time > 0.97 * model_time:
                best, best_time = model, model_time
        kc, mc, nc = C.set_gemm_blocking(isa, dtype, *best, "tuned")
        winners[dtype] = {"kc": kc, "mc": mc, "nc": nc, "gflops": round(flop / best_time / 1e9, 1),
                          "model_gflops": round(flop / model_time / 1e9, 1)}
        if log:
            log(f"{dtype}: model kc={model[0]} mc={model[1]} nc={model[2]} "
                f"{flop / model_time / 1e9:.1f} GFLOP/s -> tuned kc={kc} mc={mc} nc={nc} "
                f"{flop / best_time / 1e9:.1f} GFLOP/s")
    if write:
        entry = {dtype: {k: w[k] for k in ("kc", "mc", "nc")} for dtype, w in winners.items()}
        written = write_tuned_entry(isa, entry, path)
        if log:
            log(f"wrote {written} [{machine_key(isa)}]")
    return winners


def apply_at_import():
    """What the C++ backend does when it loads: warn about a malformed override, apply the
    tuned file, and with PYCONV_TUNE=1 tune first if the file has nothing for this machine."""
    for name in ("PYCONV_CACHE_SIZES", "PYCONV_GEMM_BLOCKING"):
        if os.environ.get(name):
            source = caches()["source"] if name == "PYCONV_CACHE_SIZES" else blocking()["source"]
            if "malformed" in source or (name == "PYCONV_CACHE_SIZES" and name not in source):
                warnings.warn(f"pyconv: {name}={os.environ[name]!r} is malformed and ignored",
                              RuntimeWarning, stacklevel=2)
    if apply_tuned_file():
        return
    if os.environ.get("PYCONV_TUNE", "") not in ("", "0") and not os.environ.get("PYCONV_GEMM_BLOCKING"):
        tune(log=None)
