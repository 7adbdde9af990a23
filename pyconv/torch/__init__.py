"""pyconv inside PyTorch: pyconv's kernels as PyTorch custom operators, modules and a model
converter. Needs PyTorch (``import pyconv`` itself never imports it).

    import pyconv.torch
    model = pyconv.torch.convert(model)          # Conv2d, LSTM, ... now run pyconv's kernels
    y = pyconv.torch.conv2d(x, w, padding=1)     # torch.nn.functional's signatures
    keep = pyconv.torch.nms(boxes, scores, 0.5)  # torchvision.ops' signatures

* ``torch.ops.pyconv.<op>``: every op of :mod:`pyconv.ops` as a ``torch.library`` custom
  operator with a fake (meta) implementation and, where differentiable, an autograd formula
  running pyconv's backward kernels, so they work under autograd, ``torch.autograd.gradcheck``
  and ``torch.compile`` (one opaque node each, no graph break).
* :mod:`pyconv.torch.functional`: the same ops with torch's signatures (also here, at the top).
* :mod:`pyconv.torch.nn`: pyconv-backed ``Conv1d``, ``Conv2d``, ``ConvTranspose2d``,
  ``MaxPool2d``, ``AvgPool2d``, ``MaxUnpool2d``, ``LSTM``, ``LSTMCell``, ``RNNCell``;
  :func:`convert`.

Tensors cross without copies: CPU tensors as NumPy arrays (``Tensor.numpy()`` /
``torch.from_numpy``), CUDA tensors as CuPy arrays through DLPack, on torch's current stream.
The backend that runs: the ``backend=`` keyword, else :func:`set_backend`, else pyconv's
selected backend, else ``"cpu"`` (``"cuda"`` for CUDA tensors).
"""
from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as e:
    raise ImportError("pyconv.torch needs PyTorch (pip install torch); the rest of pyconv runs "
                      "without it") from e

from . import _library, functional, nn
from ._library import OPERATORS
from .functional import (avg_pool2d, batch_norm_train, batched_nms, box_iou, box_iou_rotated,
                         conv1d, conv2d, conv_transpose2d, diou_nms, embedding, get_backend, leaky_relu,
                         lstm, lstm_cell, matmul, matrix_nms, max_pool2d, max_unpool2d, nms,
                         nms_rotated, rnn_cell, set_backend, soft_nms)
from .nn import convert

__all__ = [
    "convert", "set_backend", "get_backend", "OPERATORS", "functional", "nn",
    "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "max_unpool2d",
    "lstm_cell", "lstm", "rnn_cell", "leaky_relu", "box_iou", "nms", "batched_nms", "box_iou_rotated",
    "nms_rotated", "soft_nms", "diou_nms", "matrix_nms", "matmul", "embedding", "batch_norm_train",
]
