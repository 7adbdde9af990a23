"""pyconv's kernels as differentiable functions on torch tensors, with the signatures of
``torch.nn.functional`` (and ``torchvision.ops`` for the box functions).

Each normalises its arguments, picks the pyconv backend and calls one ``pyconv::*`` operator
(:mod:`pyconv.torch._library`). The backend is, in order: the call's ``backend=`` keyword,
the one chosen with :func:`set_backend`, the one selected in pyconv (``pyconv.set_backend`` /
``pyconv.use_backend``), else ``"cuda"`` for CUDA tensors and ``"cpu"`` for CPU tensors.
Under ``torch.compile`` the choice is made when the function is traced.
"""
from __future__ import annotations

import torch

from ..backends import get as _get_backend
from ..backends import selected as _pyconv_selected
from .._spec.core import ntuple
from . import _library as _lib

__all__ = [
    "set_backend", "get_backend",
    "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "max_unpool2d",
    "lstm_cell", "lstm", "rnn_cell", "leaky_relu", "box_iou", "nms", "batched_nms", "box_iou_rotated",
    "nms_rotated", "soft_nms", "diou_nms", "matrix_nms", "matmul", "embedding", "batch_norm_train",
]

_chosen: str | None = None


def set_backend(name: str | None) -> None:
    """Selects the pyconv backend that runs the ``pyconv.torch`` functions and converted
    modules (None: follow pyconv's own selection, then the tensors' device)."""
    global _chosen
    if name is not None:
        _get_backend(name)  # unknown or unavailable: fail now, not at the first call
    _chosen = name


def get_backend() -> str | None:
    """The backend chosen with :func:`set_backend`, or None."""
    return _chosen


@torch.compiler.assume_constant_result
def _selected_in_pyconv() -> str:
    return _pyconv_selected() or ""


def _backend(backend: str | None, t: torch.Tensor) -> str:
    if backend is not None:
        return backend
    if _chosen is not None:
        return _chosen
    return _selected_in_pyconv() or ("cuda" if t.device.type == "cuda" else "cpu")


_checked_ints: dict = {}


def _ints(op: str, name: str, value, n: int, minimum: int = 0) -> list[int]:
    """`value` (an int or a sequence) as a list of n ints, checked. A module passes the same
    stride, padding and dilation on every call, so plain ints and tuples of them, once checked,
    are remembered (not bools, which compare equal to ints and are refused)."""
    plain = type(value) is int or (type(value) is tuple and all(type(v) is int for v in value))
    key = (op, name, value, n, minimum)
    checked = _checked_ints.get(key) if plain else None
    if checked is None:
        checked = ntuple(op, name, value, n, minimum=minimum)
        if plain and len(_checked_ints) < 4096:
            _checked_ints[key] = checked
    return list(checked)


def _batched(op: str, x: torch.Tensor, batched_ndim: int):
    """(x with a batch axis, whether one was added): torch's modules accept one sample without
    the batch axis."""
    if x.dim() == batched_ndim - 1:
        return x.unsqueeze(0), True
    if x.dim() != batched_ndim:
        raise ValueError(f"{op}: expected a {batched_ndim - 1}-D (unbatched) or {batched_ndim}-D "
                         f"(batched) input, got shape {tuple(x.shape)}")
    return x, False


# --------------------------------------------------------------------------------------------
# Convolution


def _conv(op, fn, nd, input, weight, bias, stride, padding, dilation, groups, backend):
    x, unbatched = _batched(op, input, nd + 2)
    same = isinstance(padding, str) and padding == "same"
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{op}: padding must be an int, a tuple, 'same' or 'valid', "
                             f"got {padding!r}")
        padding = 0
    y = _lib.call(fn, x, weight, bias, _ints(op, "stride", stride, nd, 1),
                  _ints(op, "padding", padding, nd), same, _ints(op, "dilation", dilation, nd, 1),
                  groups, _backend(backend, x))
    return y.squeeze(0) if unbatched else y


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """As ``torch.nn.functional.conv1d``: input (N, C, L) or (C, L), weight (K, C/groups, R)."""
    return _conv("conv1d", _lib.conv1d, 1, input, weight, bias, stride, padding, dilation,
                 groups, backend)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """As ``torch.nn.functional.conv2d``: input (N, C, H, W) or (C, H, W)."""
    return _conv("conv2d", _lib.conv2d, 2, input, weight, bias, stride, padding, dilation,
                 groups, backend)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, backend=None):
    """As ``torch.nn.functional.conv_transpose2d``: weight (C, K/groups, R, S)."""
    op = "conv_transpose2d"
    x, unbatched = _batched(op, input, 4)
    y = _lib.call(_lib.conv_transpose2d, x, weight, bias, _ints(op, "stride", stride, 2, 1),
                  _ints(op, "padding", padding, 2),
                  _ints(op, "output_padding", output_padding, 2), groups,
                  _ints(op, "dilation", dilation, 2, 1), _backend(backend, x))
    return y.squeeze(0) if unbatched else y


# --------------------------------------------------------------------------------------------
# Pooling


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, backend=None):
    """As ``torch.nn.functional.max_pool2d``; indices are flat offsets into each H*W plane."""
    op = "max_pool2d"
    x, unbatched = _batched(op, input, 4)
    kernel = _ints(op, "kernel_size", kernel_size, 2, 1)
    stride = kernel if stride is None or stride == [] else _ints(op, "stride", stride, 2, 1)
    # The backward scatters the gradient to the maxima, so training needs their positions.
    with_indices = bool(return_indices) or (torch.is_grad_enabled() and x.requires_grad)
    y, indices = _lib.call(_lib.max_pool2d, x, kernel, stride, _ints(op, "padding", padding, 2),
                           _ints(op, "dilation", dilation, 2, 1), bool(ceil_mode),
                           with_indices, _backend(backend, x))
    if unbatched:
        y, indices = y.squeeze(0), indices.squeeze(0)
    return (y, indices) if return_indices else y


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, backend=None):
    """As ``torch.nn.functional.avg_pool2d``."""
    op = "avg_pool2d"
    x, unbatched = _batched(op, input, 4)
    kernel = _ints(op, "kernel_size", kernel_size, 2, 1)
    stride = kernel if stride is None or stride == [] else _ints(op, "stride", stride, 2, 1)
    y = _lib.call(_lib.avg_pool2d, x, kernel, stride, _ints(op, "padding", padding, 2),
                  bool(ceil_mode), bool(count_include_pad), divisor_override, _backend(backend, x))
    return y.squeeze(0) if unbatched else y


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None, *,
                 backend=None):
    """As ``torch.nn.functional.max_unpool2d``."""
    op = "max_unpool2d"
    x, unbatched = _batched(op, input, 4)
    if unbatched:
        indices = indices.unsqueeze(0)
    kernel = _ints(op, "kernel_size", kernel_size, 2, 1)
    stride = kernel if stride is None else _ints(op, "stride", stride, 2, 1)
    if output_size is not None:
        output_size = [int(n) for n in output_size][-2:]
    y = _lib.call(_lib.max_unpool2d, x, indices, kernel, stride, _ints(op, "padding", padding, 2),
                  output_size, _backend(backend, x))
    return y.squeeze(0) if unbatched else y


# --------------------------------------------------------------------------------------------
# LSTM (gate rows i, f, g, o, as torch)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One LSTM step, as ``torch.nn.LSTMCell`` -> ``(h_new, c_new)``: x (B, I), h and c (B, H)."""
    return _lib.call(_lib.lstm_cell, x, h, c, w_ih, w_hh, b_ih, b_hh, _backend(backend, x))


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", *, backend=None):
    """One Elman RNN step, as ``torch.nn.RNNCell``: act(x w_ih^T + b_ih + h w_hh^T + b_hh), act
    "tanh" or "relu"; x (B, I) or (I,), h of x's batch shape and (H,), or None (zeros)."""
    return _lib.call(_lib.rnn_cell, x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, _backend(backend, x))


def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One LSTM layer over a sequence x (T, B, I) -> ``(out (T, B, H), (h_T, c_T))``."""
    # Keep the gates of every step for the backward only when there will be one.
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
    out, h, c, _, _ = _lib.call(_lib.lstm, x, h0, c0, w_ih, w_hh, b_ih, b_hh, save,
                                _backend(backend, x))
    return out, (h, c)


# --------------------------------------------------------------------------------------------
# Elementwise


def leaky_relu(input, negative_slope=0.01, *, backend=None):
    """As ``torch.nn.functional.leaky_relu`` (not in place)."""
    return _lib.call(_lib.leaky_relu, input, float(negative_slope), _backend(backend, input))


# --------------------------------------------------------------------------------------------
# Boxes, as torchvision.ops (x1, y1, x2, y2); not differentiable


def box_iou(boxes1, boxes2, *, backend=None):
    """As ``torchvision.ops.box_iou``: (N, 4) and (M, 4) boxes -> (N, M) IoU. Inverted boxes
    (x2 < x1 or y2 < y1) count as empty and an empty union gives 0 (see ``pyconv.ops.box_iou``)."""
    return _lib.call(_lib.box_iou, boxes1, boxes2, _backend(backend, boxes1))


def nms(boxes, scores, iou_threshold, *, backend=None):
    """As ``torchvision.ops.nms``: int64 indices of the kept boxes, by decreasing score. A box
    is dropped when its IoU with a kept, higher-scored box is > iou_threshold."""
    return _lib.call(_lib.nms, boxes, scores, float(iou_threshold), _backend(backend, boxes))


def batched_nms(boxes, scores, idxs, iou_threshold, *, class_agnostic=False, backend=None):
    """As ``torchvision.ops.batched_nms``: NMS within each category ``idxs`` (int64); indices
    of the kept boxes by decreasing score. ``class_agnostic=True`` ignores ``idxs`` (which may
    then be None): plain NMS over all boxes."""
    if idxs is not None:
        idxs = idxs.to(torch.int64)
    return _lib.call(_lib.batched_nms, boxes, scores, idxs, float(iou_threshold),
                     class_agnostic, _backend(backend, boxes))


def box_iou_rotated(boxes1, boxes2, *, backend=None):
    """Pairwise IoU of rotated boxes (cx, cy, w, h, angle in degrees) -> (N, M), as
    detectron2's ``pairwise_iou_rotated`` (see ``pyconv.ops.box_iou_rotated``)."""
    return _lib.call(_lib.box_iou_rotated, boxes1, boxes2, _backend(backend, boxes1))


def nms_rotated(boxes, scores, iou_threshold, *, backend=None):
    """NMS of rotated boxes, as detectron2's ``nms_rotated``: int64 indices of the kept boxes,
    by decreasing score."""
    return _lib.call(_lib.nms_rotated, boxes, scores, float(iou_threshold),
                     _backend(backend, boxes))


def soft_nms(boxes, scores, sigma=0.5, iou_threshold=0.3, score_threshold=0.001,
             method="gaussian", *, backend=None):
    """Soft-NMS -> (kept int64 indices, their decayed scores), in the order picked;
    ``method`` is "gaussian" or "linear" (see ``pyconv.ops.soft_nms``)."""
    return _lib.call(_lib.soft_nms, boxes, scores, float(sigma), float(iou_threshold),
                     float(score_threshold), method, _backend(backend, boxes))


def diou_nms(boxes, scores, iou_threshold, *, backend=None):
    """Greedy NMS on the distance-IoU: int64 indices of the kept boxes, by decreasing score
    (see ``pyconv.ops.diou_nms``)."""
    return _lib.call(_lib.diou_nms, boxes, scores, float(iou_threshold), _backend(backend, boxes))


def matrix_nms(boxes, scores, labels, kernel="gaussian", sigma=2.0, *, backend=None):
    """Matrix NMS -> every box's decayed score (N,), in input order; boxes of different
    ``labels`` (int64) never decay each other (see ``pyconv.ops.matrix_nms``)."""
    return _lib.call(_lib.matrix_nms, boxes, scores, labels.to(torch.int64), kernel, float(sigma),
                     _backend(backend, boxes))


# --------------------------------------------------------------------------------------------
# Dense and normalisation (pyconv's own signatures: torch has no transpose flags, and its
# batch_norm updates running statistics that are the caller's here)


def matmul(a, b, trans_a=False, trans_b=False, *, backend=None):
    """``op(a) @ op(b)`` of 2-D tensors, ``op(m)`` being ``m.T`` where its flag is set, without
    a transposed copy: a linear layer's ``x @ w.T`` is ``matmul(x, w, trans_b=True)``."""
    return _lib.call(_lib.matmul, a, b, bool(trans_a), bool(trans_b), _backend(backend, a))


def embedding(input, weight, padding_idx=None, *, backend=None):
    """Rows of ``weight`` (num_embeddings, dim) picked by the integer tensor ``input``, as
    ``torch.nn.functional.embedding``; row padding_idx (if given) receives no gradient."""
    return _lib.call(_lib.embedding, weight, input, None if padding_idx is None else int(padding_idx),
                     _backend(backend, weight))


def batch_norm_train(input, weight=None, bias=None, eps=1e-5, *, backend=None):
    """Batch normalisation with the batch's statistics, as ``torch.nn.functional.batch_norm``
    with ``training=True`` -> ``(y, mean, var)``: input (N, C, ...), weight and bias (C,) or
    None, var the biased variance y was normalised by. Only y carries a gradient (it includes
    the path through the statistics); mean and var are for the caller's running statistics."""
    return _lib.call(_lib.batch_norm_train, input, weight, bias, float(eps),
                     _backend(backend, input))
