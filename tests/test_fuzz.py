"""Property-based fuzzing (Hypothesis) of every public op on every CPU backend.

Each example is one call: shapes (zero-size ones too, and unbatched ones without the batch
axis), dtypes (float32, float64 and wrong ones), memory layouts (Fortran order, negative
strides, gaps, read-only), values (NaN, infinities, denormals, -0.0) and integer arguments
from small to 2**70, negative, or of a wrong type. The call runs on every backend in a child
process (a long-lived worker fed through a pipe and restarted after a crash), so a crash or a
hang fails the test instead of ending the run.
(One file: the worker protocol, the strategies and the verdict are one mechanism.)

The verdict: where pyconv._spec rejects the call, every backend raises its error (same type,
same message); where it accepts, every backend returns what the reference backend returns
(floats within the dtype's tolerance, NaNs at the same places, integers equal) and leaves its
inputs alone. A spec-accepted call that a backend refuses, or any other exception, fails, but
for a MemoryError naming the op: the worker has 4 GiB, and a valid call may need more (then
the backends' results are not compared).

Every backend gets every call, huge strides and NaN boxes included; the failures the fuzzer
found are kept as fixed regression calls (FOUND_BY_FUZZING). The examples are derandomised; CI
runs a small budget, ``-m slow`` a long one.
"""
from __future__ import annotations

import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SENTINEL_BACKEND = "fuzz-spec-only"    # a backend name that does not exist: see spec_verdict
WORKER_MEMORY = 4 * 2**30               # bytes of address space for the worker process
TOLERANCES = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


# --------------------------------------------------------------------------------------------
# Calls. An array argument travels as ("array", C-ordered data, layout); the receiving side
# builds the layout, since pickling would make every array contiguous and writeable again.

LAYOUTS = ("C", "C", "C", "F", "negative", "gaps", "readonly")


def as_layout(data, layout):
    """The C-ordered array `data` in `layout`, with the same content. `data` arrives unpickled,
    so its dtype is an object equal to, but not the same as, NumPy's own instance of it."""
    if layout == "F":
        return np.asfortranarray(data)
    if layout == "negative" and data.ndim:
        return np.ascontiguousarray(data[..., ::-1])[..., ::-1]
    if layout == "gaps" and data.ndim:
        spread = np.zeros(data.shape[:-1] + (2 * data.shape[-1],), data.dtype)
        spread[..., ::2] = data
        return spread[..., ::2]
    if layout == "readonly":
        data = data.copy()
        data.flags.writeable = False
    return data


def build(value):
    """A call argument as the op sees it: arrays in their layout, containers recursively."""
    if isinstance(value, tuple) and len(value) == 3 and value[0] == "array":
        return as_layout(value[1], value[2])
    if isinstance(value, tuple):
        return tuple(build(v) for v in value)
    if isinstance(value, list):
        return [build(v) for v in value]
    return value


class Call:
    """One op call; its repr is Python that reproduces it."""

    def __init__(self, op, args, kwargs):
        self.op, self.args, self.kwargs = op, tuple(args), dict(kwargs)

    def integers(self):
        """Every int among the arguments (sizes of arrays aside)."""
        found = []

        def walk(v):
            if isinstance(v, tuple) and len(v) == 3 and v[0] == "array":
                return
            if isinstance(v, (tuple, list)):
                for item in v:
                    walk(item)
            elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                found.append(int(v))

        walk((self.args, tuple(self.kwargs.values())))
        return found

    def __repr__(self):
        def show(v):
            if isinstance(v, tuple) and len(v) == 3 and v[0] == "array":
                _, data, layout = v
                with np.printoptions(threshold=10**6, floatmode="unique"):
                    text = f"np.array({data.tolist()!r}, np.{data.dtype}).reshape({data.shape})"
                return text if layout == "C" else f"as_layout({text}, {layout!r})"
            if isinstance(v, tuple):
                return "(" + ", ".join(show(i) for i in v) + ("," if len(v) == 1 else "") + ")"
            if isinstance(v, list):
                return "[" + ", ".join(show(i) for i in v) + "]"
            if isinstance(v, (np.generic,)):
                return f"np.{type(v).__name__}({v.item()!r})"
            return repr(v)

        parts = [show(a) for a in self.args] + [f"{k}={show(v)}" for k, v in self.kwargs.items()]
        return f"ops.{self.op}({', '.join(parts)})"


# --------------------------------------------------------------------------------------------
# The worker: the child side reads (call, backend) requests from stdin and answers on stdout.


def _frame(obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack("<Q", len(data)) + data


def _plain(result):
    if isinstance(result, np.ndarray):
        return np.array(result)
    if isinstance(result, (tuple, list)):
        return tuple(_plain(r) for r in result)
    return result


def _same_content(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a, b, equal_nan=a.dtype.kind in "fc")


def run_request(request):
    """(op, args, kwargs, backend) -> ("ok", result, names of modified inputs) or
    ("raised", exception type name, message)."""
    from pyconv import ops

    op, args, kwargs, backend = request
    built_args, built_kwargs = build(tuple(args)), {k: build(v) for k, v in kwargs.items()}
    arrays = [(f"argument {i}", a) for i, a in enumerate(built_args) if isinstance(a, np.ndarray)]
    arrays += [(k, a) for k, a in built_kwargs.items() if isinstance(a, np.ndarray)]
    before = [(name, a.copy()) for name, a in arrays]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = getattr(ops, op)(*built_args, **built_kwargs, backend=backend)
    except Exception as e:  # noqa: BLE001  (every exception is an answer)
        return ("raised", type(e).__name__, str(e))
    modified = [name for (name, old), (_, a) in zip(before, arrays) if not _same_content(old, a)]
    return ("ok", _plain(result), modified)


def serve():
    """The child's loop. Requests come on stdin; answers go to the original stdout, and
    anything else the process prints goes to stderr. Its address space is capped, so that a
    valid call whose output is too large for the machine fails at once with a MemoryError
    instead of filling the memory."""
    import faulthandler
    import resource

    faulthandler.enable()
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while True:
        header = requests.read(8)
        if len(header) < 8:
            return
        request = pickle.loads(requests.read(struct.unpack("<Q", header)[0]))
        answers.write(_frame(run_request(request)))
        answers.flush()


class Worker:
    """The parent side: runs requests in a child process, restarting it after a crash or a
    hang. Answers ("crashed", description) or ("hung", description) for those."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.proc = None
        self.stderr = None

    def _start(self):
        self.stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr)

    def _read(self, n, deadline):
        fd, data = self.proc.stdout.fileno(), b""
        while len(data) < n:
            remaining = deadline - _now()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _stderr_tail(self):
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-1500:]

    def run(self, request):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        deadline = _now() + self.timeout
        try:
            self.proc.stdin.write(_frame(request))
            self.proc.stdin.flush()
            size = struct.unpack("<Q", self._read(8, deadline))[0]
            return pickle.loads(self._read(size, deadline))
        except TimeoutError:
            self.close()
            return ("hung", f"no answer within {self.timeout} s")
        except (EOFError, BrokenPipeError):
            code = self.proc.wait()
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            tail = self._stderr_tail()
            self.proc = None
            return ("crashed", f"{how}; stderr: {tail}")

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _now():
    import time

    return time.monotonic()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
    sys.exit(0)


# --------------------------------------------------------------------------------------------
# Everything below runs in the pytest process only.

import pytest  # noqa: E402

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pyconv  # noqa: E402
from pyconv import _spec, ops  # noqa: E402

BACKENDS = [b for b in ("reference", "cpu", "numba") if b in pyconv.backends()]
CALL_TIMEOUT = 300          # seconds: a cold Numba cache compiles on the first calls
CI = settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
CI_BACKWARD = settings(CI, max_examples=15)
LONG = settings(CI, max_examples=1500)


@pytest.fixture(scope="module")
def worker():
    w = Worker(CALL_TIMEOUT)
    yield w
    w.close()


def spec_verdict(call):
    """None when pyconv._spec accepts the call, else (exception type name, message). Runs the
    op with a backend name that does not exist: the spec runs first, then the lookup fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(ops, call.op)(*build(call.args), **{k: build(v) for k, v in call.kwargs.items()},
                                  backend=SENTINEL_BACKEND)
    except Exception as e:  # noqa: BLE001
        if SENTINEL_BACKEND in str(e):
            return None
        return (type(e).__name__, str(e))
    raise AssertionError(f"{call!r} ran without a backend")


def _compare(expected, got, where):
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected), where
        for i, (e, g) in enumerate(zip(expected, got)):
            _compare(e, g, f"{where}[{i}]")
        return
    if expected is None or not isinstance(expected, np.ndarray):
        assert got is None if expected is None else got == expected, where
        return
    assert isinstance(got, np.ndarray), f"{where}: {type(got).__name__}, not an array"
    assert got.shape == expected.shape and got.dtype == expected.dtype, (
        f"{where}: {got.shape} {got.dtype} != reference {expected.shape} {expected.dtype}")
    if expected.dtype.kind != "f":
        np.testing.assert_array_equal(got, expected, err_msg=where)
        return
    tol = TOLERANCES[expected.dtype.name]
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(1.0, float(np.max(finite, initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               equal_nan=True, err_msg=where)


def _is_memory_error(answer, op):
    """A MemoryError that names the op (see the module docstring)."""
    return answer[0] == "raised" and answer[1] == "MemoryError" and answer[2].startswith(f"{op}: ")


def flush_subnormals(value):
    """`value` (a call's arguments) with subnormal floats read as signed zeros: what the cpu
    backend's kernels compute with, since they run with FTZ/DAZ (see README, "Building")."""
    if isinstance(value, tuple) and len(value) == 3 and value[0] == "array":
        data = value[1]
        if data.dtype.kind == "f":
            tiny = np.finfo(data.dtype).tiny
            data = np.where((np.abs(data) < tiny) & (data != 0), np.copysign(0, data), data)
            data = data.astype(value[1].dtype)
        return ("array", data, value[2])
    if isinstance(value, (tuple, list)):
        return type(value)(flush_subnormals(v) for v in value)
    if isinstance(value, dict):
        return {k: flush_subnormals(v) for k, v in value.items()}
    return value


# Arguments the C++ kernels read exactly, subnormals included: NMS ranks scores by their bits.
READ_EXACTLY_ON_CPU = {"nms": (1,), "batched_nms": (1,), "diou_nms": (1,), "nms_rotated": (1,)}


def as_the_cpu_reads(call):
    """(args, kwargs) of `call` as the cpu backend's kernels see them (see flush_subnormals)."""
    exact = READ_EXACTLY_ON_CPU.get(call.op, ())
    args = tuple(a if i in exact else flush_subnormals(a) for i, a in enumerate(call.args))
    return args, flush_subnormals(call.kwargs)


def check(worker, call, backends=None, memory_errors=True):
    """Runs `call` on `backends` (default: every backend) and
    checks the verdict described in the module docstring against the reference backend.
    memory_errors=False: a backend's MemoryError on a valid call fails too."""
    verdict = spec_verdict(call)
    expected = worker.run((call.op, call.args, call.kwargs, "reference"))
    assert expected[0] in ("ok", "raised"), f"reference {expected[0]} on {call!r}: {expected[1]}"
    out_of_memory = verdict is None and _is_memory_error(expected, call.op)
    if verdict is not None:
        assert expected[1:] == verdict, f"reference raised {expected[1:]}, not the spec's {verdict}"
        assert verdict[0] in ("ValueError", "TypeError"), f"unclear error {verdict} on {call!r}"
    elif not out_of_memory:
        assert expected[0] == "ok", f"the spec accepts {call!r} but the reference raised {expected[1:]}"
        assert not expected[2], f"reference modified {expected[2]} in {call!r}"
    if backends is None:
        backends = BACKENDS
    for backend in backends:
        if backend == "reference":
            continue
        got = worker.run((call.op, call.args, call.kwargs, backend))
        where = f"{backend} on {call!r}"
        assert got[0] in ("ok", "raised"), f"{backend} {got[0]} on {call!r}: {got[1]}"
        if verdict is not None:
            assert got[1:] == expected[1:], f"{where}: raised {got[1:]}, reference {expected[1:]}"
            continue
        if out_of_memory or (memory_errors and _is_memory_error(got, call.op)):
            continue
        assert got[0] == "ok", f"{where}: raised {got[1:]} on a call the spec accepts"
        assert not got[2], f"{where}: modified its inputs {got[2]}"
        want = expected
        if backend == "cpu":  # the C++ kernels read subnormal inputs as zero
            want = worker.run((call.op, *as_the_cpu_reads(call), "reference"))
        _compare(want[1], got[1], where)


# --------------------------------------------------------------------------------------------
# Strategies

FLOATS = ("float32", "float64")
WRONG_DTYPES = ("float16", "int32", "int64", "bool", "complex64")
# Positive values that a consistent geometry can hold (strides with one output position) or
# that must be rejected (beyond 2**62), and negative ones.
HUGE = (2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**61, 2**62 - 1, 2**62, 2**63 - 1, 2**63, 2**64,
        2**70, -2**62, -2**63, -2**70)
NOT_INTS = (True, np.True_, 2.0, np.float64(1), "2", None, Fraction(1), 1 + 0j)
NUMPY_INTS = (np.int64(1), np.int32(2), np.uint8(1), np.int16(3))
SPECIAL_VALUES = (math.nan, math.inf, -math.inf, -0.0, "denormal")


@st.composite
def arrays(draw, shape, dtype, values=None):
    """("array", data, layout): standard normal values (or values(rng, shape)) and, in one
    example out of three, a few NaNs, infinities, -0.0 or denormals."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = values(rng, shape) if values is not None else rng.standard_normal(shape)
    if data.size and data.dtype.kind == "f" and draw(st.integers(0, 2)) == 0:
        flat = data.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            special = draw(st.sampled_from(SPECIAL_VALUES))
            if special == "denormal":
                kind = np.dtype(dtype)
                special = float(np.finfo(kind).smallest_subnormal * 3) if kind.kind == "f" else 0.0
            flat[rng.integers(flat.size)] = special
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        data = np.ascontiguousarray(data.astype(dtype))
    return ("array", data, draw(st.sampled_from(LAYOUTS)))


def dtypes(draw):
    """The dtype of the call and, usually the same, that of one other array argument."""
    dtype = draw(st.sampled_from(FLOATS))
    if draw(st.integers(0, 7)) == 0:
        return dtype, draw(st.sampled_from(WRONG_DTYPES + FLOATS))
    return dtype, dtype


def sizes(draw, *ranges):
    """One size per (lo, hi) range; in one example out of ten, one of them 0."""
    out = [draw(st.integers(lo, hi)) for lo, hi in ranges]
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.integers(0, len(out) - 1))] = 0
    return out


def perturb(draw, kwargs, keys):
    """Most examples keep their valid integer arguments; others get one of `keys` huge (as an
    int or in one place of a pair), or an edge value, a NumPy integer or not an int."""
    mode = draw(st.sampled_from(("valid", "valid", "valid", "huge", "huge", "odd")))
    if mode == "valid":
        return kwargs
    key = draw(st.sampled_from(keys))
    if mode == "huge":
        value = draw(st.one_of(st.sampled_from(HUGE[:6]), st.sampled_from(HUGE)))
    else:
        value = draw(st.one_of(st.integers(-2, 0), st.sampled_from(NOT_INTS), st.sampled_from(NUMPY_INTS)))
    old = kwargs[key]
    if draw(st.booleans()) and isinstance(old, int) and not isinstance(old, bool):
        value = (value, old) if draw(st.booleans()) else (old, value)
    return {**kwargs, key: value}


def batch_axis(draw, n):
    """The leading batch axis (n,), or, one time in four, none: an unbatched call."""
    return () if draw(st.integers(0, 3)) == 0 else (n,)


def small_pair(draw, lo, hi):
    a, b = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
    return a if a == b and draw(st.booleans()) else (a, b)


@st.composite
def conv_calls(draw, nd):
    dtype, other = dtypes(draw)
    N, cg, kg, *spatial = sizes(draw, (1, 2), (1, 2), (1, 2), *[(3, 7)] * nd)
    groups = draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(nd)]
    x = draw(arrays((*batch_axis(draw, N), groups * cg, *spatial), dtype))
    w = draw(arrays((groups * kg, cg, *kernel), other))
    b = draw(st.one_of(st.none(), arrays((groups * kg,), dtype)))
    pick = (lambda lo, hi: small_pair(draw, lo, hi)) if nd == 2 else (lambda lo, hi: draw(st.integers(lo, hi)))
    kwargs = perturb(draw, dict(stride=pick(1, 3), padding=pick(0, 2), dilation=pick(1, 2),
                                groups=groups), ["stride", "padding", "dilation", "groups"])
    if draw(st.integers(0, 5)) == 0:
        kwargs["padding"] = draw(st.sampled_from(("same", "valid", "full")))
    return Call(f"conv{nd}d", (x, w, b), kwargs)


@st.composite
def conv_transpose_calls(draw):
    dtype, other = dtypes(draw)
    N, cg, kg, H, W = sizes(draw, (1, 2), (1, 2), (1, 2), (1, 5), (1, 5))
    groups, R, S = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    x = draw(arrays((*batch_axis(draw, N), groups * cg, H, W), dtype))
    w = draw(arrays((groups * cg, kg, R, S), other))
    b = draw(st.one_of(st.none(), arrays((groups * kg,), dtype)))
    stride = small_pair(draw, 1, 3)
    output_padding = draw(st.integers(0, 1)) if min(np.atleast_1d(stride)) > 1 else 0
    kwargs = dict(stride=stride, padding=small_pair(draw, 0, 1), output_padding=output_padding,
                  groups=groups, dilation=small_pair(draw, 1, 2))
    keys = ["stride", "padding", "output_padding", "groups", "dilation"]
    return Call("conv_transpose2d", (x, w, b), perturb(draw, kwargs, keys))


@st.composite
def pool_calls(draw, op):
    dtype, _ = dtypes(draw)
    if draw(st.integers(0, 7)) == 0:
        dtype = draw(st.sampled_from(WRONG_DTYPES))
    N, C, H, W = sizes(draw, (1, 2), (1, 3), (2, 7), (2, 7))
    x = draw(arrays((*batch_axis(draw, N), C, H, W), dtype))
    if draw(st.integers(0, 5)) == 0:
        # A window far larger than the input, centred on it, is valid.
        kernel = draw(st.sampled_from((2**31, 2**40, 2**61)))
        kwargs = dict(stride=None, padding=kernel // 2)
    else:
        kernel = small_pair(draw, 1, 3)
        smallest = min(np.atleast_1d(kernel))
        kwargs = dict(stride=draw(st.one_of(st.none(), st.integers(1, 3))),
                      padding=draw(st.integers(0, smallest // 2)))
    kwargs["ceil_mode"] = draw(st.booleans())
    if op == "max_pool2d":
        kwargs.update(dilation=small_pair(draw, 1, 2), return_indices=True)
        keys = ["stride", "padding", "dilation"]
    else:
        kwargs.update(count_include_pad=draw(st.booleans()),
                      divisor_override=draw(st.one_of(st.none(), st.integers(-3, 5))))
        keys = ["stride", "padding", "divisor_override"]
    kwargs = perturb(draw, dict(kernel_size=kernel, **kwargs), keys + ["kernel_size"])
    return Call(op, (x,), kwargs)


@st.composite
def unpool_calls(draw):
    dtype, _ = dtypes(draw)
    N, C, H, W = sizes(draw, (1, 2), (1, 2), (1, 3), (1, 3))
    lead = batch_axis(draw, N)
    x = draw(arrays((*lead, C, H, W), dtype))
    k, s, p = draw(st.integers(2, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 1))
    out_h, out_w = ((n - 1) * s - 2 * p + k for n in (H, W))
    plane = max(1, out_h * out_w)
    low, high = (-1, plane + 1) if draw(st.integers(0, 5)) == 0 else (0, plane)
    index_dtype = draw(st.sampled_from(("int64",) * 6 + ("int32", "float32")))
    indices = draw(arrays((*lead, C, H, W), index_dtype,
                          values=lambda rng, shape: rng.integers(low, high, shape)))
    output_size = draw(st.one_of(st.none(), st.tuples(st.integers(out_h - 1, out_h + 1),
                                                      st.integers(out_w - 1, out_w + 1))))
    kwargs = perturb(draw, dict(kernel_size=k, stride=s, padding=p),
                     ["kernel_size", "stride", "padding"])
    return Call("max_unpool2d", (x, indices), dict(kwargs, output_size=output_size))


@st.composite
def lstm_cell_calls(draw):
    dtype, other = dtypes(draw)
    B, I, Hd = sizes(draw, (1, 3), (1, 4), (1, 4))
    Hc = Hd if draw(st.integers(0, 7)) else draw(st.integers(1, 5))
    lead = batch_axis(draw, B)
    x = draw(arrays((*lead, I), dtype))
    h, c = draw(arrays((*lead, Hd), dtype)), draw(arrays((*lead, Hc), other))
    w_ih, w_hh = draw(arrays((4 * Hd, I), dtype)), draw(arrays((4 * Hd, Hd), dtype))
    b_ih = draw(st.one_of(st.none(), arrays((4 * Hd,), dtype)))
    b_hh = draw(st.one_of(st.none(), arrays((4 * Hd,), dtype)))
    return Call("lstm_cell", (x, h, c, w_ih, w_hh, b_ih, b_hh), {})


@st.composite
def rnn_cell_calls(draw):
    dtype, other = dtypes(draw)
    B, I, Hd = sizes(draw, (1, 3), (1, 4), (1, 4))
    Hh = Hd if draw(st.integers(0, 7)) else draw(st.integers(1, 5))
    lead = batch_axis(draw, B)
    x = draw(arrays((*lead, I), dtype))
    h = None if draw(st.integers(0, 4)) == 0 else draw(arrays((*lead, Hh), other))
    w_ih, w_hh = draw(arrays((Hd, I), dtype)), draw(arrays((Hd, Hd), dtype))
    b_ih = draw(st.one_of(st.none(), arrays((Hd,), dtype)))
    b_hh = draw(st.one_of(st.none(), arrays((Hd,), dtype)))
    nonlinearity = draw(st.sampled_from(("tanh", "relu", "tanh", "relu", "sigmoid")))
    return Call("rnn_cell", (x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity), {})


def _boxes(rng, shape):
    """(x1, y1, x2, y2) on a coarse grid, so that boxes overlap, touch, coincide or are
    inverted; a last dimension other than 4 keeps the first columns."""
    full = shape[:-1] + (4,)
    corners = rng.integers(0, 5, full).astype(np.float64)
    extents = rng.integers(-1, 4, full).astype(np.float64)
    boxes = corners.copy()
    boxes[..., 2:] = corners[..., :2] + extents[..., 2:]
    return boxes[..., :shape[-1]]


@st.composite
def box_iou_calls(draw):
    dtype, other = dtypes(draw)
    n, m = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    columns = 4 if draw(st.integers(0, 9)) else 3
    return Call("box_iou", (draw(arrays((n, columns), dtype, values=_boxes)),
                            draw(arrays((m, 4), other, values=_boxes))), {})


@st.composite
def nms_calls(draw):
    dtype, other = dtypes(draw)
    n = draw(st.integers(0, 10))
    boxes = draw(arrays((n, 4), dtype, values=_boxes))
    # Scores on a coarse grid, so that ties are common.
    scores = draw(arrays((n,), other, values=lambda rng, shape: rng.integers(0, 4, shape) / 4))
    threshold = draw(st.one_of(st.sampled_from((0.5, 0.0, 0.3, 1.0, -0.5, math.inf)), st.floats(-1, 2),
                               st.floats(-1, 2), st.sampled_from((math.nan, "0.5", None, True, 10**400))))
    return Call("nms", (boxes, scores, threshold), {})


# The backward ops: each draws the forward call above and adds the gradient arguments, shaped
# as the forward's output (the spec's shape rule, on shapes only) or, in one example out of
# eight, one size off.


def forward_shape(rule):
    """The shape `rule()` (a pyconv._spec rule on ShapeDtype values) gives, or None where the
    spec rejects the forward call."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tuple(rule())
    except Exception:  # noqa: BLE001  (a rejected forward: the backward is rejected too)
        return None


def abstract(value, dtype=None):
    """A call's array as a pyconv._spec.ShapeDtype (in `dtype`, default its own)."""
    return _spec.ShapeDtype(value[1].shape, dtype or value[1].dtype)


def gradient(draw, shape, fallback, dtype):
    """An array for a gradient of `shape` (`fallback` where the forward is invalid or its output
    too large to draw), in one example out of eight with one size off by one."""
    if shape is None or math.prod(shape) > 2**20:
        shape = fallback
    shape = list(shape)
    if shape and draw(st.integers(0, 7)) == 0:
        axis = draw(st.integers(0, len(shape) - 1))
        shape[axis] = max(0, shape[axis] + draw(st.sampled_from((-1, 1))))
    return draw(arrays(tuple(shape), dtype))


NEEDS = ((True, True, True),) * 3 + ((True, False, False), (False, True, False), (False, False, True),
                                     (False, True, True), (False, False, False))


@st.composite
def conv_backward_calls(draw, nd):
    forward = draw(conv_calls(nd))
    x, w, _ = forward.args
    k = forward.kwargs
    dtype = x[1].dtype
    if nd == 2:
        shape = forward_shape(lambda: _spec.conv2d(abstract(x), abstract(w, dtype), None, k["stride"],
                                                   k["padding"], k["dilation"], k["groups"]).output_shape)
    else:
        shape = forward_shape(lambda: (lambda g: (g.N, g.K, g.Wo))(_spec.conv1d(
            abstract(x), abstract(w, dtype), None, k["stride"], k["padding"], k["dilation"], k["groups"])))
    grad_out = gradient(draw, shape, (x[1].shape[0], w[1].shape[0]) + (2,) * nd, dtype)
    return Call(f"conv{nd}d_backward", (grad_out, x, w), dict(k, needs=draw(st.sampled_from(NEEDS))))


@st.composite
def conv_transpose_backward_calls(draw):
    forward = draw(conv_transpose_calls())
    x, w, _ = forward.args
    k = forward.kwargs
    dtype = x[1].dtype
    shape = forward_shape(lambda: _spec.conv_transpose2d(
        abstract(x), abstract(w, dtype), None, k["stride"], k["padding"], k["output_padding"],
        k["groups"], k["dilation"]).input_shape)
    grad_out = gradient(draw, shape, (x[1].shape[0], w[1].shape[1], 3, 3), dtype)
    return Call("conv_transpose2d_backward", (grad_out, x, w), dict(k, needs=draw(st.sampled_from(NEEDS))))


def input_shape(draw, shape):
    """The pooled input's shape (batched or not) as the backward takes it; now and then wrong (a
    size off, a size missing, a list, a negative size)."""
    mode = draw(st.integers(0, 11))
    if mode == 0:
        return shape[:-1]
    if mode == 1:
        return [*shape[:-3], shape[-3] + 1, *shape[-2:]]
    if mode == 2:
        return (*shape[:-2], -shape[-2], shape[-1])
    return list(shape) if mode == 3 else tuple(shape)


@st.composite
def max_pool_backward_calls(draw):
    forward = draw(pool_calls("max_pool2d"))
    (x,), k = forward.args, forward.kwargs
    dtype = x[1].dtype if x[1].dtype.kind == "f" else np.dtype("float32")
    shape = forward_shape(lambda: _spec.max_pool2d(abstract(x, dtype), k["kernel_size"], k["stride"],
                                                   k["padding"], k["dilation"], k["ceil_mode"]).output_shape)
    grad_out = gradient(draw, shape, x[1].shape[:-2] + (1, 1), x[1].dtype)
    plane = max(1, x[1].shape[-2] * x[1].shape[-1])
    low, high = (-1, plane + 1) if draw(st.integers(0, 5)) == 0 else (0, plane)
    index_dtype = draw(st.sampled_from(("int64",) * 6 + ("int32", "float32")))
    indices = draw(arrays(grad_out[1].shape, index_dtype,
                          values=lambda rng, s: rng.integers(low, high, s)))
    return Call("max_pool2d_backward", (grad_out, indices, input_shape(draw, x[1].shape)), {})


@st.composite
def avg_pool_backward_calls(draw):
    forward = draw(pool_calls("avg_pool2d"))
    (x,), k = forward.args, forward.kwargs
    dtype = x[1].dtype if x[1].dtype.kind == "f" else np.dtype("float32")
    shape = forward_shape(lambda: _spec.avg_pool2d(abstract(x, dtype), k["kernel_size"], k["stride"],
                                                   k["padding"], k["ceil_mode"], k["divisor_override"])[0].output_shape)
    grad_out = gradient(draw, shape, x[1].shape[:-2] + (1, 1), x[1].dtype)
    return Call("avg_pool2d_backward", (grad_out, input_shape(draw, x[1].shape)), k)


def optional_gradient(draw, shape, dtype):
    return None if draw(st.integers(0, 3)) == 0 else gradient(draw, shape, shape, dtype)


@st.composite
def lstm_cell_backward_calls(draw):
    forward = draw(lstm_cell_calls())
    x, h = forward.args[:2]
    dtype = x[1].dtype
    grads = (optional_gradient(draw, h[1].shape, dtype), optional_gradient(draw, h[1].shape, dtype))
    return Call("lstm_cell_backward", grads + forward.args, {})


@st.composite
def rnn_cell_backward_calls(draw):
    forward = draw(rnn_cell_calls())
    x, h, w_ih = forward.args[:3]
    dtype = x[1].dtype
    state = x[1].shape[:-1] + w_ih[1].shape[:1]
    h_new = draw(arrays(state, dtype, values=lambda rng, s: rng.uniform(-1, 1, s)))
    return Call("rnn_cell_backward", (gradient(draw, state, state, dtype), x, h, h_new) + forward.args[2:], {})


@st.composite
def lstm_calls(draw):
    dtype, other = dtypes(draw)
    T, B, I, Hd = sizes(draw, (1, 3), (1, 3), (1, 4), (1, 4))
    Hc = Hd if draw(st.integers(0, 7)) else draw(st.integers(1, 5))
    x = draw(arrays((T, B, I), dtype))
    h0, c0 = draw(arrays((B, Hd), dtype)), draw(arrays((B, Hc), other))
    w_ih, w_hh = draw(arrays((4 * Hd, I), dtype)), draw(arrays((4 * Hd, Hd), dtype))
    b_ih = draw(st.one_of(st.none(), arrays((4 * Hd,), dtype)))
    b_hh = draw(st.one_of(st.none(), arrays((4 * Hd,), dtype)))
    return Call("lstm", (x, h0, c0, w_ih, w_hh, b_ih, b_hh), {})


@st.composite
def lstm_backward_calls(draw):
    forward = draw(lstm_calls())
    x, h0 = forward.args[:2]
    (T, B, _), Hd = x[1].shape, h0[1].shape[1]
    dtype = x[1].dtype
    grads = (optional_gradient(draw, (T, B, Hd), dtype), optional_gradient(draw, (B, Hd), dtype),
             optional_gradient(draw, (B, Hd), dtype))
    return Call("lstm_backward", grads + forward.args, {})


@st.composite
def batched_nms_calls(draw):
    forward = draw(nms_calls())
    boxes, scores, threshold = forward.args
    n = boxes[1].shape[0] + (draw(st.sampled_from((-1, 1))) if draw(st.integers(0, 9)) == 0 else 0)
    index_dtype = draw(st.sampled_from(("int64",) * 6 + ("int32", "float32")))
    idxs = draw(arrays((max(n, 0),), index_dtype, values=lambda rng, s: rng.integers(0, 3, s)))
    return Call("batched_nms", (boxes, scores, idxs, threshold), {})


def _rotated_boxes(rng, shape):
    """(cx, cy, w, h, angle) on a coarse grid: boxes that overlap, coincide, are empty (w or
    h <= 0) or turned by multiples of 45 degrees; a last dimension other than 5 keeps the first
    columns."""
    full = shape[:-1] + (5,)
    boxes = rng.integers(-1, 5, full).astype(np.float64)
    boxes[..., 4] = rng.integers(-4, 5, full[:-1]) * 45.0
    return boxes[..., :shape[-1]]


def thresholds(draw):
    return draw(st.one_of(st.sampled_from((0.5, 0.0, 0.3, 1.0, -0.5, math.inf)), st.floats(-1, 2),
                          st.sampled_from((math.nan, "0.5", None, True, 10**400))))


def coarse_scores(draw, n, dtype):
    """Scores on a coarse grid, so that ties are common."""
    return draw(arrays((n,), dtype, values=lambda rng, shape: rng.integers(0, 4, shape) / 4))


@st.composite
def soft_nms_calls(draw):
    forward = draw(nms_calls())
    boxes, scores, threshold = forward.args
    sigma = draw(st.sampled_from((0.5, 0.1, 2.0, 0.0, -1.0, math.inf, math.nan, "0.5")))
    score_threshold = draw(st.sampled_from((0.001, 0.0, 0.3, -1.0, math.inf, math.nan)))
    method = draw(st.sampled_from(("gaussian", "linear", "linear", "hard", None)))
    return Call("soft_nms", (boxes, scores), dict(sigma=sigma, iou_threshold=threshold,
                                                   score_threshold=score_threshold, method=method))


@st.composite
def diou_nms_calls(draw):
    forward = draw(nms_calls())
    return Call("diou_nms", forward.args, {})


@st.composite
def matrix_nms_calls(draw):
    forward = draw(batched_nms_calls())
    boxes, scores, labels, _ = forward.args
    kernel = draw(st.sampled_from(("gaussian", "linear", "linear", "box", 3)))
    sigma = draw(st.sampled_from((2.0, 0.5, 0.0, -1.0, math.inf, math.nan)))
    return Call("matrix_nms", (boxes, scores, labels), dict(kernel=kernel, sigma=sigma))


@st.composite
def box_iou_rotated_calls(draw):
    dtype, other = dtypes(draw)
    n, m = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    columns = 5 if draw(st.integers(0, 9)) else 4
    return Call("box_iou_rotated", (draw(arrays((n, columns), dtype, values=_rotated_boxes)),
                                    draw(arrays((m, 5), other, values=_rotated_boxes))), {})


@st.composite
def nms_rotated_calls(draw):
    dtype, other = dtypes(draw)
    n = draw(st.integers(0, 10))
    boxes = draw(arrays((n, 5), dtype, values=_rotated_boxes))
    return Call("nms_rotated", (boxes, coarse_scores(draw, n, other), thresholds(draw)), {})


@st.composite
def matmul_calls(draw):
    dtype, other = dtypes(draw)
    m, k, n = sizes(draw, (0, 9), (0, 9), (0, 9))
    trans_a, trans_b = draw(st.sampled_from((False, True, 0, None))), draw(st.booleans())
    inner = k if draw(st.integers(0, 9)) else k + 1
    a = draw(arrays((k, m) if trans_a else (m, k), dtype))
    b = draw(arrays((n, inner) if trans_b else (inner, n), other))
    return Call("matmul", (a, b), dict(trans_a=trans_a, trans_b=trans_b))


@st.composite
def batch_norm_train_calls(draw):
    dtype, other = dtypes(draw)
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    C = shape[1] if len(shape) > 1 else 1
    weight = draw(st.one_of(st.none(), arrays((C,), other)))
    bias = draw(st.one_of(st.none(), arrays((C + (draw(st.integers(0, 9)) == 0),), dtype)))
    eps = draw(st.sampled_from((1e-5, 0.0, 1e-3, -1e-5, math.inf, math.nan, "1e-5")))
    return Call("batch_norm_train", (draw(arrays(shape, dtype)), weight, bias), dict(eps=eps))


@st.composite
def batch_norm_train_backward_calls(draw):
    forward = draw(batch_norm_train_calls())
    x, weight, _ = forward.args
    dtype = x[1].dtype
    shape = x[1].shape
    C = shape[1] if len(shape) > 1 else 1
    grad_out = gradient(draw, shape, shape, dtype)
    mean = draw(arrays((C,), dtype))
    invstd = draw(arrays((C,), dtype, values=lambda rng, s: rng.uniform(0.1, 3, s)))
    return Call("batch_norm_train_backward", (grad_out, x, mean, invstd, weight), {})


def any_shape(draw):
    return tuple(draw(st.lists(st.integers(0, 5), max_size=4)))


# Real-number arguments: valid ones, and ones the spec must refuse.
REALS = (1.0, 0.3, -0.7, 0.0, 2, math.inf, math.nan, "1", None)
PROBABILITIES = (0.5, 0.0, 1.0, 0.1, 0.999, -0.1, 1.5, math.nan, "0.5")
SEEDS = (0, 1, 12345, 2**63, 2**64 - 1, np.uint64(7), -1, 2**64, 1.0, None, True)


@st.composite
def elu_calls(draw):
    dtype, _ = dtypes(draw)
    return Call("elu", (draw(arrays(any_shape(draw), dtype)),), dict(alpha=draw(st.sampled_from(REALS))))


@st.composite
def elu_backward_calls(draw):
    forward = draw(elu_calls())
    x = forward.args[0]
    _, other = dtypes(draw)
    return Call("elu_backward", (gradient(draw, x[1].shape, x[1].shape, other), x), forward.kwargs)


@st.composite
def prelu_calls(draw):
    dtype, other = dtypes(draw)
    shape = any_shape(draw)
    channels = shape[1] if len(shape) >= 2 else 1
    slopes = draw(st.sampled_from((channels, 1, 1, channels + 1, 0)))
    weight_shape = (slopes,) if draw(st.integers(0, 9)) else (slopes, 1)
    return Call("prelu", (draw(arrays(shape, dtype)), draw(arrays(weight_shape, other))), {})


@st.composite
def prelu_backward_calls(draw):
    forward = draw(prelu_calls())
    x, weight = forward.args
    return Call("prelu_backward", (gradient(draw, x[1].shape, x[1].shape, x[1].dtype), x, weight), {})


def unary_calls(op):
    @st.composite
    def calls(draw):
        dtype, _ = dtypes(draw)
        return Call(op, (draw(arrays(any_shape(draw), dtype)),), {})
    return calls()


def from_output_calls(op):
    """grad_out and a forward's output y (values in [-1, 1]: as tanh's and sigmoid's, and on
    both sides of relu's threshold)."""
    @st.composite
    def calls(draw):
        dtype, other = dtypes(draw)
        shape = any_shape(draw)
        y = draw(arrays(shape, dtype, values=lambda rng, s: rng.uniform(-1, 1, s)))
        return Call(op, (gradient(draw, shape, shape, other), y), {})
    return calls()


@st.composite
def dropout_calls(draw):
    dtype, _ = dtypes(draw)
    return Call("dropout", (draw(arrays(any_shape(draw), dtype)), draw(st.sampled_from(PROBABILITIES)),
                            draw(st.sampled_from(SEEDS))), {})


@st.composite
def dropout_backward_calls(draw):
    dtype, _ = dtypes(draw)
    shape = any_shape(draw)
    mask_dtype = "uint8" if draw(st.integers(0, 7)) else draw(st.sampled_from(("bool", "int64", "float32")))
    mask = draw(arrays(shape, mask_dtype, values=lambda rng, s: rng.integers(0, 2, s)))
    return Call("dropout_backward", (gradient(draw, shape, shape, dtype), mask,
                                     draw(st.sampled_from(PROBABILITIES))), {})


STRATEGIES = {
    "conv1d": conv_calls(1),
    "conv2d": conv_calls(2),
    "conv_transpose2d": conv_transpose_calls(),
    "max_pool2d": pool_calls("max_pool2d"),
    "avg_pool2d": pool_calls("avg_pool2d"),
    "max_unpool2d": unpool_calls(),
    "lstm_cell": lstm_cell_calls(),
    "rnn_cell": rnn_cell_calls(),
    "box_iou": box_iou_calls(),
    "nms": nms_calls(),
}
# The backward ops get half the forward ops' examples in CI: their calls include a forward's
# (already fuzzed above), so most of what they add is the gradient arguments.
BACKWARD_STRATEGIES = {
    "conv1d_backward": conv_backward_calls(1),
    "conv2d_backward": conv_backward_calls(2),
    "conv_transpose2d_backward": conv_transpose_backward_calls(),
    "max_pool2d_backward": max_pool_backward_calls(),
    "avg_pool2d_backward": avg_pool_backward_calls(),
    "lstm": lstm_calls(),
    "lstm_cell_backward": lstm_cell_backward_calls(),
    "rnn_cell_backward": rnn_cell_backward_calls(),
    "lstm_backward": lstm_backward_calls(),
    "batched_nms": batched_nms_calls(),
    # Ops whose calls are drawn like another's (nms, batched_nms) or are cheap: half the budget.
    "soft_nms": soft_nms_calls(),
    "diou_nms": diou_nms_calls(),
    "matrix_nms": matrix_nms_calls(),
    "box_iou_rotated": box_iou_rotated_calls(),
    "nms_rotated": nms_rotated_calls(),
    "matmul": matmul_calls(),
    "batch_norm_train": batch_norm_train_calls(),
    "batch_norm_train_backward": batch_norm_train_backward_calls(),
    "elu": elu_calls(),
    "elu_backward": elu_backward_calls(),
    "prelu": prelu_calls(),
    "prelu_backward": prelu_backward_calls(),
    "relu": unary_calls("relu"),
    "relu_backward": from_output_calls("relu_backward"),
    "sigmoid": unary_calls("sigmoid"),
    "sigmoid_backward": from_output_calls("sigmoid_backward"),
    "tanh": unary_calls("tanh"),
    "tanh_backward": from_output_calls("tanh_backward"),
    "dropout": dropout_calls(),
    "dropout_backward": dropout_backward_calls(),
}
ALL_STRATEGIES = {**STRATEGIES, **BACKWARD_STRATEGIES}


@pytest.mark.parametrize("op", list(ALL_STRATEGIES))
def test_fuzz(op, worker):
    @(CI if op in STRATEGIES else CI_BACKWARD)
    @given(call=ALL_STRATEGIES[op])
    def fuzz(call):
        check(worker, call)

    fuzz()


@pytest.mark.slow
@pytest.mark.parametrize("op", list(ALL_STRATEGIES))
def test_fuzz_long(op, worker):
    @LONG
    @given(call=ALL_STRATEGIES[op])
    def fuzz(call):
        check(worker, call)

    fuzz()


# --------------------------------------------------------------------------------------------
# Known failures of the cpu backend, found by this fuzzer: each a minimal reproducer, expected
# to fail (strict: once fixed, the test fails until its entry is removed).


def _array(a, layout="C"):
    return ("array", np.ascontiguousarray(a), layout)


_X = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4) / 8
_W = np.ones((3, 2, 1, 1), np.float32)
_W3 = np.ones((3, 2, 3, 3), np.float32)
_NAN_BOXES = np.array([[0, 0, 2, 2], [np.nan, 0, 2, 2]], np.float32)

# What the fuzzer found, kept as fixed calls on every backend: the cpu backend crashed, ran out
# of memory or hung on huge strides, turned NaN IoUs into 0, and refused arrays whose dtype is
# an unpickled copy (as every array of these calls is); the numba backend dropped NaN weights
# over the padding; the cpu backend's weight gradient turned an x's NaN into NaNs in weights
# that never read it.
FOUND_BY_FUZZING = [
    ("conv2d-stride_2**31", Call("conv2d", (_array(_X), _array(_W)), dict(stride=2**31))),
    ("conv2d-stride_2**16", Call("conv2d", (_array(_X), _array(_W)), dict(stride=2**16))),
    ("conv2d_backward-stride_2**31",
     Call("conv2d_backward", (_array(np.ones((1, 3, 1, 1), np.float32)), _array(_X), _array(_W3)),
          dict(stride=2**31))),
    ("conv1d-stride_2**31",
     Call("conv1d", (_array(_X[:, :, 0]), _array(_W[:, :, 0])), dict(stride=2**31))),
    ("box_iou-nan", Call("box_iou", (_array(_NAN_BOXES), _array(_NAN_BOXES)), {})),
    ("nms-nan_iou_below_0",
     Call("nms", (_array(_NAN_BOXES), _array(np.array([2, 1], np.float32)), -0.5), {})),
    ("conv2d_backward-nan_in_a_dropped_grid_column",
     Call("conv2d_backward",
          (_array(np.ones((1, 1, 3, 2), np.float32)),
           _array(np.array([[[[0.1, -0.1, 0.6], [0.1, -0.5, np.nan], [1.3, 0.9, -0.7]]]], np.float32)),
           _array(np.array([[[[0.1, -0.1]]]], np.float32))), {})),
    ("conv1d-nan_weight_over_padding",
     Call("conv1d", (_array(np.array([[[0.1, -0.1, 0.6]]], np.float32)),
                     _array(np.array([[[np.nan]]], np.float32))), dict(padding=1))),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=name) for name, c in FOUND_BY_FUZZING])
def test_found_by_fuzzing(call, worker):
    check(worker, call, memory_errors=False)
