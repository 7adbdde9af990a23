"""The C++ kernels under tools that see what a plain test run cannot, each in a subprocess:

1. AddressSanitizer + UBSan: the extension is rebuilt with PYCONV_SANITIZE=1 in a copy of the
   tree and the C++ kernel tests (tests/test_cpu_*.py) run against that build (every ISA
   variant, via set_isa).
2. The ISA fallback: valgrind cannot execute AVX-512 instructions, so the AVX2 and generic
   variants running under ``valgrind --tool=none`` proves them free of AVX-512 code (module
   load included: the kernel tables must not run AVX-512 code at import).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a build and the kernel tests need; nothing built (build/, *.so) is copied.
TREE = ["setup.py", "pyproject.toml", "README.md", "csrc", "pyconv", "tests/conftest.py",
        "tests/oracles.py", "tests/test_cpu_conv.py", "tests/test_cpu_pool_lstm_nms.py",
        "tests/test_conformance.py", "tests/test_cpu_hardening.py"]


def copy_tree(dst: Path):
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info")
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        elif src.exists():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def gcc_runtime(name):
    """Absolute path of a GCC runtime library, or None (gcc echoes the bare name when it lacks it)."""
    try:
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the sanitizer build is set up for Linux/GCC")
def test_kernels_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    libasan, libstdcxx = gcc_runtime("libasan.so"), gcc_runtime("libstdc++.so")
    if libasan is None or shutil.which("g++") is None:
        pytest.skip("g++ with libasan is not installed")
    pytest.importorskip("pybind11", reason="the rebuild needs pybind11 (pip install '.[test]')")
    copy_tree(tmp_path)
    # -O0 (PYCONV_DEBUG) keeps the instrumented build to ~15 s of CPU instead of ~100 s at -O3.
    env = dict(os.environ, PYCONV_SANITIZE="1", PYCONV_DEBUG="1", PYCONV_BUILD_JOBS="2")
    rc, out = run([sys.executable, "setup.py", "build_ext", "--inplace"], tmp_path, env)
    assert rc == 0, out[-4000:]
    (built,) = (tmp_path / "pyconv").glob("_C*.so")
    assert b"__asan_init" in built.read_bytes(), "the extension was not built with AddressSanitizer"

    # Python itself is not instrumented: the ASan runtime must be loaded first, and libstdc++
    # with it, or ASan's interceptor of C++ exceptions finds no __cxa_throw to forward to.
    env = dict(os.environ, LD_PRELOAD=" ".join(p for p in (libasan, libstdcxx) if p),
               ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="print_stacktrace=1")
    env.pop("PYTHONPATH", None)
    check = "import pyconv._C as C; print(C.__file__)"
    rc, out = run([sys.executable, "-c", check], tmp_path, env)
    assert rc == 0 and str(tmp_path) in out, out[-4000:]
    # Every conformance row on the C++ kernels (the rows that reach each algorithm branch),
    # the backend's own checks, and the huge-geometry paths; not the address-space-limit test,
    # which AddressSanitizer's shadow memory cannot run under.
    rc, out = run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                   "tests/test_cpu_conv.py", "tests/test_cpu_pool_lstm_nms.py",
                   "tests/test_cpu_hardening.py", "tests/test_conformance.py",
                   "-k", "not test_conformance or cpu/avx512",
                   "--deselect", "tests/test_cpu_hardening.py::"
                   "test_allocation_failure_is_a_memory_error_naming_the_op"], tmp_path, env)
    assert rc == 0, out[-6000:]
    assert "passed" in out and "ERROR: AddressSanitizer" not in out and "runtime error" not in out


FALLBACK_CHECK = """
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pyconv import _C, ops
print("isa", _C.isa())
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
windows = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
expected = np.einsum("nchwrs,kcrs->nkhw", windows, w)
np.testing.assert_allclose(ops.conv2d(x, w, None, 1, 1, backend="cpu"), expected, rtol=1e-4, atol=1e-4)
gx, gw, gb = ops.conv2d_backward(np.ones_like(expected), x, w, 1, 1, backend="cpu")
np.testing.assert_allclose(gw, np.einsum("nchwrs->crs", windows)[None].repeat(5, 0), rtol=1e-4, atol=1e-4)
a, b = rng.standard_normal((37, 53)), rng.standard_normal((53, 29))
c = np.empty((37, 29))
_C.gemm(a, b, c)
np.testing.assert_allclose(c, a @ b, rtol=1e-10, atol=1e-10)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_isa_fallback_under_valgrind(isa):
    """valgrind (3.19) cannot execute AVX-512 instructions, so a lower ISA variant that ran
    under it is free of them. Whether valgrind's CPUID hides AVX-512 depends on the host (it
    does on the Intel machines, not on AMD EPYC), so the variant is chosen with PYCONV_ISA, and
    NumPy's own AVX-512 loops are switched off in that process."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    no_avx512 = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"
    env = dict(os.environ, PYCONV_ISA=isa, NPY_DISABLE_CPU_FEATURES=no_avx512)
    rc, out = run(["valgrind", "--tool=none", "--error-exitcode=1", sys.executable, "-c",
                   FALLBACK_CHECK], ROOT, env)
    assert rc == 0 and "ok" in out, out[-4000:]
    assert f"isa {isa}" in out
