"""Every C++ header under csrc/ compiles on its own: it includes what it uses.

Each header is compiled alone (``g++ -fsyntax-only``), so a header that leans on one included
before it fails here even when the extension, which includes them in one order, still builds.
Headers are found by glob, so a new one is covered without touching this file. A header that
branches on PYCONV_ISA_LEVEL is compiled at every level, as kernels_<isa>.cpp compile it.
"""
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
HEADERS = sorted(p.relative_to(CSRC).as_posix() for p in CSRC.rglob("*.h"))

# PYCONV_ISA, PYCONV_ISA_LEVEL and the instruction sets of each kernels_<isa>.cpp.
ISA_FLAGS = {
    0: [],
    1: ["-DPYCONV_ISA=avx2", "-DPYCONV_ISA_LEVEL=1", "-mavx2", "-mfma"],
    2: ["-DPYCONV_ISA=avx512", "-DPYCONV_ISA_LEVEL=2", "-mavx512f", "-mavx512bw", "-mavx512vl",
        "-mavx512dq", "-mavx2", "-mfma"],
}


def cases():
    for header in HEADERS:
        levels = ISA_FLAGS if "PYCONV_ISA_LEVEL" in (CSRC / header).read_text() else [0]
        for level in levels:
            yield pytest.param(header, level, id=f"{header}-level{level}")


def test_headers_are_found():
    assert "conv/dispatch.h" in HEADERS and "kernels.h" in HEADERS


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("header, level", cases())
def test_header_compiles_on_its_own(header, level):
    cmd = ["g++", "-std=c++17", "-fopenmp", "-fsyntax-only", f"-I{CSRC}", *ISA_FLAGS[level]]
    if "pybind11" in (CSRC / header).read_text():
        pybind11 = pytest.importorskip("pybind11")
        cmd += [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    cmd += ["-x", "c++", str(CSRC / header)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{header} does not compile on its own:\n{proc.stderr}"
