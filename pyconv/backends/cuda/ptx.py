"""Compile every kernel of the cuda backend to PTX and assemble it with ptxas, without a GPU.

``python -m pyconv.backends.cuda.ptx [--arch 90]`` prints, per kernel and dtype, the registers,
shared memory, stack and spills that ``ptxas -v`` reports and the resulting occupancy; the
tests (tests/cuda/test_cuda_ptx.py) assert that no kernel spills. Needs numba-cuda with the
NVRTC/NVVM wheels and a ``ptxas`` (CUDA toolkit), not a device. Run it in a process without
``NUMBA_ENABLE_CUDASIM``.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

# Per-SM limits of the target GPUs (sm_75 Turing: 1024 threads/SM, 64K registers, 64 KB
# shared; sm_90 Hopper H100/H200: 2048 threads, 64K registers, 228 KB shared, 227 KB per block).
SM_LIMITS = {
    (7, 5): {"threads": 1024, "regs": 65536, "smem": 64 * 1024, "blocks": 16},
    (9, 0): {"threads": 2048, "regs": 65536, "smem": 228 * 1024, "blocks": 32},
}


@dataclass
class PtxasReport:
    kernel: str
    dtype: str
    cc: tuple
    registers: int
    smem: int  # static shared memory per block, bytes
    stack: int
    spill_stores: int
    spill_loads: int
    threads: int  # threads per block the backend launches it with

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    @property
    def blocks_per_sm(self) -> int:
        lim = SM_LIMITS[self.cc]
        # Registers are allocated per warp in units of 256.
        regs_per_warp = -(-self.registers * 32 // 256) * 256
        by_regs = lim["regs"] // (regs_per_warp * -(-self.threads // 32))
        by_smem = lim["smem"] // (self.smem + 1024) if self.smem else lim["blocks"]  # 1 KB reserved per block
        return min(by_regs, by_smem, lim["threads"] // self.threads, lim["blocks"])

    @property
    def occupancy(self) -> float:
        return self.blocks_per_sm * self.threads / SM_LIMITS[self.cc]["threads"]


def find_ptxas() -> str | None:
    for candidate in (shutil.which("ptxas"), "/usr/local/cuda-13.0/bin/ptxas", "/usr/local/cuda/bin/ptxas"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@contextlib.contextmanager
def _device_functions_for(cc):
    """numba-cuda compiles a kernel's device functions for the *current device*; without one,
    it is told the target cc instead (the kernel itself gets cc from compile_ptx)."""
    import numba.cuda.dispatcher as dispatcher

    class Target:
        compute_capability = cc

    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: Target
    try:
        yield
    finally:
        dispatcher.get_current_device = saved


def compile_kernel(kernels, name, cc) -> str:
    """PTX of kernel `name` of a Kernels namespace for compute capability cc."""
    from numba import cuda

    from ._kernel_util import argtypes

    fn = getattr(kernels, name).py_func
    with _device_functions_for(cc):
        ptx, _ = cuda.compile_ptx(fn, argtypes(kernels.dtype, kernels.kinds[name]), cc=cc,
                                  launch_bounds=kernels.launch_bounds[name])
    return ptx


def assemble(ptx: str, cc, ptxas: str) -> str:
    """ptxas -v's report (stderr) for the PTX; raises if ptxas fails."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                           capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{cc[0]}{cc[1]}:\n{r.stderr}")
    return r.stderr


def parse(report: str) -> dict:
    def num(pattern):
        m = re.search(pattern, report)
        return int(m.group(1)) if m else 0

    return {
        "registers": num(r"Used (\d+) registers"),
        "smem": num(r"(\d+) bytes smem"),
        "stack": num(r"(\d+) bytes stack frame"),
        "spill_stores": num(r"(\d+) bytes spill stores"),
        "spill_loads": num(r"(\d+) bytes spill loads"),
    }


def launch_threads(family: str, name: str) -> int:
    """Threads per block the backend launches kernel `name` with."""
    from . import boxes, conv
    from ._kernel_util import REDUCE_THREADS
    from ._runtime import THREADS

    special = {
        "conv2d_fwd": conv.GEMM_THREADS, "conv2d_dgrad": conv.GEMM_THREADS,
        "conv2d_wgrad": conv.GEMM_THREADS, "depthwise_wgrad": REDUCE_THREADS,
        "bias_grad": REDUCE_THREADS, "nms_mask": boxes.MASK_BITS, "nms_sweep": boxes.SWEEP_THREADS,
    }
    return special.get(name, THREADS)


def all_kernels():
    """(family, Kernels, name) for every kernel and float dtype."""
    from . import KERNEL_FAMILIES
    from ._kernel_util import FLOATS

    for family, factory in KERNEL_FAMILIES.items():
        for dtype in FLOATS:
            ks = factory(dtype)
            for name in ks.names():
                yield family, ks, name


def report(ks, family, name, cc, ptxas) -> PtxasReport:
    fields = parse(assemble(compile_kernel(ks, name, cc), cc, ptxas))
    return PtxasReport(name, ks.dtype.name, cc, threads=launch_threads(family, name), **fields)


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="*", default=[75, 90], help="e.g. 75 90")
    args = ap.parse_args(argv)
    ptxas = find_ptxas()
    if ptxas is None:
        raise SystemExit("ptxas not found (install the CUDA toolkit)")
    print("| kernel | dtype | arch | threads/block | registers | smem B | stack B | spills B | blocks/SM | occupancy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arch in args.arch:
        cc = (arch // 10, arch % 10)
        for family, ks, name in all_kernels():
            r = report(ks, family, name, cc, ptxas)
            print(f"| {family}.{name} | {r.dtype} | sm_{arch} | {r.threads} | {r.registers} | {r.smem} | "
                  f"{r.stack} | {r.spills} | {r.blocks_per_sm} | {r.occupancy:.0%} |")


if __name__ == "__main__":
    main()
