"""Build of the C++ extension ``pyconv._C``.

One build holds every ISA variant of the SIMD kernels (csrc/kernels_<isa>.cpp compile the same
kernel sources under different ``#pragma GCC target`` settings); the variant is picked at run
time from what the CPU reports. Opt-ins, read from the environment at build time:

  PYCONV_NATIVE=1     add -march=native (for a local build only; the result will not run on
                      older CPUs)
  PYCONV_SANITIZE=1   build with AddressSanitizer + UBSan (run with LD_PRELOAD of libasan)
  PYCONV_DEBUG=1      -O0 -g instead of -O3
"""
import os
import sys
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup


def flag(name):
    return os.environ.get(name, "") not in ("", "0")


# `#pragma omp simd` only: the kernels' threads are their own pool (csrc/common/thread_pool.h),
# not an OpenMP runtime.
compile_args = ["-fopenmp-simd", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter"]
link_args = []
if flag("PYCONV_DEBUG"):
    compile_args += ["-O0", "-g"]
else:
    compile_args += ["-O3"]
if flag("PYCONV_NATIVE"):
    compile_args.append("-march=native")
if flag("PYCONV_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    compile_args += san + ["-g"]
    link_args += san

ParallelCompile("PYCONV_BUILD_JOBS", default=os.cpu_count() or 1).install()

ext = Pybind11Extension(
    "pyconv._C",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    depends=sorted(glob("csrc/**/*.h", recursive=True) + glob("csrc/*.inc")),
    cxx_std=17,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

if sys.platform != "linux":
    sys.stderr.write("pyconv's extension is built and tested on Linux with GCC\n")

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
