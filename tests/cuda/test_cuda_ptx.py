"""Every Numba CUDA kernel of the 'cuda' backend compiled to PTX for sm_75 and sm_90 without a
device, then assembled with ``ptxas -v``: lowering errors, register spills and local-memory
stack frames (an accumulator array that did not land in registers) fail here."""
import importlib.util
import os

import pytest

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                       reason="numba-cuda is not installed (pip install 'pyconv[cuda]')"),
    pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"),
                       reason="PTX compilation needs a process without the CUDA simulator"),
]

FAMILIES = ["conv", "pool", "lstm", "boxes", "boxes_rotated", "nms_family", "elementwise", "loss", "optim",
            "dense"]


@pytest.fixture(scope="module")
def ptxas():
    from pyconv.backends.cuda.ptx import find_ptxas

    path = find_ptxas()
    if path is None:
        pytest.skip("ptxas not found (CUDA toolkit)")
    return path


@pytest.mark.parametrize("cc", [(7, 5), (9, 0)], ids=["sm_75", "sm_90"])
@pytest.mark.parametrize("family", FAMILIES)
def test_kernels_compile_to_ptx_and_assemble_without_spills(family, cc, ptxas):
    from pyconv.backends.cuda import ptx

    problems, seen = [], 0
    for fam, ks, name in ptx.all_kernels():
        if fam != family:
            continue
        seen += 1
        code = ptx.compile_kernel(ks, name, cc)
        # NVVM 13.0 emits PTX ISA 9.0, which the CUDA 13.0 drivers load; a newer NVVM would not.
        assert ".version 9.0" in code, f"{name}: unexpected PTX version"
        assert f".target sm_{cc[0]}{cc[1]}" in code
        r = ptx.parse(ptx.assemble(code, cc, ptxas))
        print(f"{family}.{name} {ks.dtype} sm_{cc[0]}{cc[1]}: {r}")
        if r["spill_stores"] or r["spill_loads"] or r["stack"]:
            problems.append(f"{name} ({ks.dtype}): {r}")
        assert 0 < r["registers"] <= 255
    assert seen >= 4, f"no kernels found for {family}"
    assert not problems, "kernels that spill or use a stack frame:\n" + "\n".join(problems)
