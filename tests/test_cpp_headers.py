"""Every C++ header under csrc/ compiles on its own: it includes what it uses.

Each header is compiled alone (``g++ -fsyntax-only``), so a header that leans on one included
before it fails here even when the extension, which includes them in one order, still builds.
Headers are found by glob, so a new one is covered without touching this file.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
HEADERS = sorted(p.relative_to(CSRC).as_posix() for p in CSRC.rglob("*.h"))


def test_headers_are_found():
    assert "conv/dispatch.h" in HEADERS and "kernels.h" in HEADERS


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("header", HEADERS)
def test_header_compiles_on_its_own(header):
    cmd = ["g++", "-std=c++17", "-fopenmp", "-fsyntax-only", f"-I{CSRC}"]
    if "pybind11" in (CSRC / header).read_text():
        pybind11 = pytest.importorskip("pybind11")
        cmd += [f"-I{pybind11.get_include()}", f"-I{sysconfig_include()}"]
    cmd += ["-x", "c++", str(CSRC / header)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{header} does not compile on its own:\n{proc.stderr}"


def sysconfig_include():
    import sysconfig

    return sysconfig.get_paths()["include"]
