"""The "cuda" backend: hand-written Numba CUDA kernels on CuPy arrays.

Every kernel of the contract (``pyconv.backends``) runs on the GPU: convolution as a
shared-memory tiled implicit GEMM (``conv.py``), pooling and max-unpooling (``pool.py``), the
LSTM with CuPy's cuBLAS GEMMs and one fused elementwise kernel per step (``lstm.py``), box
IoU / bitmask NMS (``boxes.py``), the same for rotated boxes (``boxes_rotated.py``),
elementwise activations (``elementwise.py``), softmax and losses (``loss.py``),
optimiser steps (``optim.py``), and CuPy's matmul (``dense.py``) and reductions
(``norm.py``) for matrix products and batch normalisation. Numba compiles the kernels;
``_runtime.launch`` launches them on CuPy arrays on CuPy's current stream, packing the arrays'
pointers, shapes and strides itself (``PYCONV_CUDA_LAUNCH=numba``: through Numba's dispatcher).

Without a GPU, ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is imported) runs the same kernels
in Numba's CUDA simulator on NumPy arrays, which is how they are tested on CPU-only machines;
``python -m pyconv.backends.cuda.ptx`` (and tests/cuda/test_cuda_ptx.py) compiles every kernel
to PTX for sm_75/sm_90 and assembles it with ptxas, without a device.
"""
import numpy as _np

if not hasattr(_np, "row_stack"):  # numba-cuda 0.30 overloads np.row_stack, gone in NumPy 2.5
    _np.row_stack = _np.vstack

from .. import Backend  # noqa: E402
from ._runtime import SIMULATOR  # noqa: E402

backend = Backend(
    "cuda",
    "numpy" if SIMULATOR else "cupy",
    "Numba CUDA kernels (CUDA simulator on NumPy arrays)" if SIMULATOR
    else "Numba CUDA kernels and cuBLAS on CuPy arrays",
)

from . import boxes, boxes_rotated, conv, dense, elementwise, lstm, norm, pool  # noqa: E402,F401  (each registers its kernels)
from . import loss, optim  # noqa: E402,F401

# Every kernel family: a factory dtype -> Kernels, for tools that walk all kernels (PTX).
KERNEL_FAMILIES = {"conv": conv.kernels, "pool": pool.kernels, "lstm": lstm.kernels,
                   "boxes": boxes.kernels, "nms_family": boxes.nms_family_kernels,
                   "elementwise": elementwise.kernels, "boxes_rotated": boxes_rotated.kernels,
                   "loss": loss.kernels, "optim": optim.kernels, "dense": dense.kernels}
