"""Backend selection, the NotImplementedError contract, threads, info() and the C++ ISA switch."""
import importlib
import os

import numpy as np
import pytest
from child_python import run_python

import pyconv
from pyconv import ops

registry = importlib.import_module("pyconv.backends")
ISA_ORDER = ["generic", "avx2", "avx512"]


@pytest.fixture(autouse=True)
def restore_selection():
    """Every test leaves the selected backend and the thread count as it found them."""
    saved_backend, saved_threads = registry._global_selected, pyconv.get_num_threads()
    yield
    pyconv.set_backend(saved_backend)
    pyconv.set_num_threads(saved_threads)


@pytest.fixture
def spy(monkeypatch):
    """spy(name) replaces backend `name`'s max_pool2d with a recorder; returns the call log."""
    calls = []

    def install(name):
        kernels = registry.get(name).kernels
        original = kernels["max_pool2d"]

        def recorder(*args):
            calls.append(name)
            return original(*args)

        monkeypatch.setitem(kernels, "max_pool2d", recorder)
        return calls

    return install


def pool(**kwargs):
    return ops.max_pool2d(np.ones((1, 1, 4, 4), np.float32), 2, **kwargs)


def has_cpu():
    return "cpu" in pyconv.backends()


needs_cpu = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="C++ extension not built")


# --------------------------------------------------------------------------------------------
# Listing and selecting backends


def test_backends_lists_usable_names():
    names = pyconv.backends()
    assert isinstance(names, list) and names[0] == "reference"
    assert set(names) <= set(registry._MODULES)
    for name in names:
        assert registry.get(name).name == name


def test_backends_stays_the_function_after_importing_submodules():
    importlib.import_module("pyconv.backends.reference")
    if has_cpu():
        importlib.import_module("pyconv.backends.cpu")
    assert callable(pyconv.backends) and "reference" in pyconv.backends()


def test_backends_is_the_function_in_a_fresh_process():
    code = ("import pyconv.backends.reference, pyconv.backends as b, pyconv; "
            "assert callable(pyconv.backends), pyconv.backends; print(pyconv.backends())")
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert "reference" in result.stdout


@needs_cpu
def test_default_is_cpu_for_numpy(spy):
    pyconv.set_backend(None)
    assert pyconv.get_backend() == "cpu"
    calls = spy("cpu")
    pool()
    assert calls == ["cpu"]


def test_set_backend_routes_calls(spy):
    calls = spy("reference")
    pyconv.set_backend("reference")
    assert pyconv.get_backend() == "reference"
    pool()
    assert calls == ["reference"]
    pyconv.set_backend(None)
    assert pyconv.get_backend() == ("cpu" if has_cpu() else "reference")


def test_use_backend_is_scoped_and_nests(spy):
    calls = spy("reference")
    before = pyconv.get_backend()
    with pyconv.use_backend("reference") as backend:
        assert backend.name == "reference" and pyconv.get_backend() == "reference"
        pool()
        if has_cpu():
            with pyconv.use_backend("cpu"):
                assert pyconv.get_backend() == "cpu"
            assert pyconv.get_backend() == "reference"
    assert pyconv.get_backend() == before
    assert calls == ["reference"]


def test_use_backend_restores_after_an_exception():
    before = pyconv.get_backend()
    with pytest.raises(RuntimeError, match="boom"):
        with pyconv.use_backend("reference"):
            raise RuntimeError("boom")
    assert pyconv.get_backend() == before


@needs_cpu
def test_backend_keyword_overrides_the_selection(spy):
    calls = spy("reference")
    spy("cpu")  # the same log records both backends
    with pyconv.use_backend("cpu"):
        pool(backend="reference")
    pyconv.set_backend("reference")
    pool(backend="cpu")
    assert calls == ["reference", "cpu"]


@pytest.mark.parametrize("select", [
    lambda: pyconv.set_backend("nope"),
    lambda: pyconv.use_backend("nope").__enter__(),
    lambda: registry.get("nope"),
    lambda: pool(backend="nope"),
], ids=["set_backend", "use_backend", "get", "backend_keyword"])
def test_unknown_backend_raises_value_error(select):
    with pytest.raises(ValueError, match="nope"):
        select()
    assert pyconv.get_backend() in pyconv.backends()


@pytest.mark.parametrize("name", [n for n in registry._MODULES if n not in pyconv.backends()] or
                         [pytest.param("none", marks=pytest.mark.skip(reason="every backend is usable"))])
def test_unavailable_backend_explains_why(name):
    with pytest.raises(RuntimeError, match="not available"):
        pyconv.set_backend(name)
    assert registry.why_unavailable(name)


def test_a_usable_backend_is_probed_once(monkeypatch):
    """get_backend() runs on every call of the ONNX executor's nodes: a probe each time (it
    searches the import path) cost ~40 us per node."""
    probed = []
    monkeypatch.setattr(registry, "_probe", lambda name: probed.append(name))  # None: usable
    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.setattr(registry, "_usable", set())
    monkeypatch.setattr(registry, "_unavailable", {})
    for _ in range(3):
        assert registry.available("cpu")
        registry.get_backend()
    assert probed == ["cpu"]


# --------------------------------------------------------------------------------------------
# A backend without a kernel raises NotImplementedError naming the op and the backend.

# kernel -> a valid call of the public op that runs it
CALLS = {
    "conv2d": lambda b: ops.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), backend=b),
    "avg_pool2d": lambda b: ops.avg_pool2d(np.ones((1, 1, 4, 4)), 2, backend=b),
    "max_unpool2d": lambda b: ops.max_unpool2d(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int64), 2, backend=b),
    "lstm_cell": lambda b: ops.lstm_cell(np.ones((1, 2)), np.ones((1, 1)), np.ones((1, 1)),
                                         np.ones((4, 2)), np.ones((4, 1)), backend=b),
    "box_iou": lambda b: ops.box_iou(np.ones((1, 4)), np.ones((2, 4)), backend=b),
    "nms": lambda b: ops.nms(np.ones((1, 4)), np.ones(1), 0.5, backend=b),
    "max_pool2d": lambda b: pool(backend=b),
}


@pytest.fixture
def partial_backend(monkeypatch):
    """A backend registered under the name 'partial' that has only max_pool2d (every real
    backend now implements the whole contract)."""
    reference = registry.get("reference")
    partial = registry.Backend("partial", "numpy", "test backend with one kernel")
    partial.register(reference.kernels["max_pool2d"])
    monkeypatch.setitem(registry._loaded, "partial", partial)
    return partial


@pytest.mark.parametrize("kernel", sorted(k for k in CALLS if k != "max_pool2d"))
def test_missing_kernel_raises_not_implemented(partial_backend, kernel):
    with pytest.raises(NotImplementedError) as info:
        CALLS[kernel]("partial")
    assert f"'{kernel}'" in str(info.value) and "'partial'" in str(info.value)
    assert "reference" in str(info.value)  # says where the op can run instead
    CALLS["max_pool2d"]("partial")  # the kernel it has still runs


def test_register_checks_kernels_against_the_catalogue():
    backend = registry.Backend("checked", "numpy", "test backend")

    def conv2d(x, w, b, g):
        pass

    assert backend.register(conv2d) is conv2d and backend.kernels == {"conv2d": conv2d}
    assert backend.coverage()["conv2d"] and not backend.coverage()["conv2d_backward"]

    def conv2d_fused(x, w, b, g):
        pass

    with pytest.raises(TypeError, match="not in the op catalogue"):
        backend.register(conv2d_fused)

    def nms(boxes, scores):  # a parameter short
        pass

    with pytest.raises(TypeError, match=r"does not match the catalogue's nms\('boxes', 'scores', 'iou_threshold'\)"):
        backend.register(nms)


def test_reference_runs_every_call():
    for call in CALLS.values():
        call("reference")


# --------------------------------------------------------------------------------------------
# Threads and info()


def test_set_and_get_num_threads():
    pyconv.set_num_threads(1)
    assert pyconv.get_num_threads() == 1
    if has_cpu():
        assert pyconv._C.get_num_threads() == 1
    pyconv.set_num_threads(2)
    assert pyconv.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_set_num_threads_rejects_bad_values(bad):
    before = pyconv.get_num_threads()
    with pytest.raises(ValueError, match="n must be a positive int"):
        pyconv.set_num_threads(bad)
    assert pyconv.get_num_threads() == before


def test_info_keys():
    info = pyconv.info()
    for key in ("version", "python", "platform", "numpy", "backends", "default_backend", "threads", "isa"):
        assert key in info, key
    assert info["version"] == pyconv.__version__
    assert info["backends"] == pyconv.backends()
    assert info["default_backend"] == pyconv.get_backend()
    assert info["threads"] == pyconv.get_num_threads()
    if has_cpu():
        assert info["isa"] in info["compiled_isas"] and info["best_isa"] in ISA_ORDER
        assert ISA_ORDER.index(info["isa"]) <= ISA_ORDER.index(info["best_isa"])
        assert info["compiler"]
    else:
        assert info["isa"] is None and "cpu_backend_error" in info


# --------------------------------------------------------------------------------------------
# The C++ ISA switch


def runnable_isas():
    if not has_cpu():
        return []
    best = ISA_ORDER.index(pyconv._C.best_isa())
    return [isa for isa in pyconv._C.compiled_isas() if ISA_ORDER.index(isa) <= best]


@pytest.fixture
def restore_isa():
    saved = pyconv._C.isa()
    yield
    pyconv._C.set_isa(saved)


@needs_cpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_isa_runs_max_pool2d_identically(restore_isa, rng, dtype):
    x = rng.integers(0, 4, (2, 3, 11, 13)).astype(dtype)  # ties
    x.flat[[5, 40, 41, 100]] = [np.nan, -np.inf, np.inf, np.nan]
    params = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, return_indices=True)
    expected = ops.max_pool2d(x, **params, backend="reference")
    assert set(runnable_isas()) >= {"generic"}
    for isa in runnable_isas():
        pyconv._C.set_isa(isa)
        assert pyconv._C.isa() == pyconv.info()["isa"] == isa
        y, idx = ops.max_pool2d(x, **params, backend="cpu")
        np.testing.assert_array_equal(y, expected[0], err_msg=isa)
        np.testing.assert_array_equal(idx, expected[1], err_msg=isa)


@needs_cpu
def test_set_isa_rejects_unknown_and_unsupported(restore_isa):
    with pytest.raises(ValueError):
        pyconv._C.set_isa("sse9")
    for isa in ISA_ORDER[ISA_ORDER.index(pyconv._C.best_isa()) + 1:]:
        with pytest.raises(ValueError, match=isa):
            pyconv._C.set_isa(isa)
    assert pyconv._C.isa() in runnable_isas()


@needs_cpu
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_pyconv_isa_environment_variable(isa):
    if isa not in runnable_isas():
        pytest.skip(f"this CPU cannot run {isa}")
    env = dict(os.environ, PYCONV_ISA=isa)
    code = "import pyconv; print(pyconv.info()['isa'])"
    result = run_python("-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == isa
