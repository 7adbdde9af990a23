"""pyconv.ops: the kernels, without autograd.

Each function checks its arguments once (``pyconv._spec``), picks the backend (the
``backend=`` keyword, else the selected one, else ``"cpu"`` for NumPy and ``"cuda"`` for CuPy
arrays) and calls that backend's kernel with C-contiguous arrays and the computed geometry.
Layouts are NCHW (NCL for 1-D); weights as PyTorch; float32 or float64; index arrays int64.
Outputs are new C-contiguous arrays. Arguments out of the supported ranges (``pyconv._spec``)
raise ValueError before any backend runs; an output too large for the memory at hand raises
MemoryError naming the op.

Unbatched inputs: as PyTorch, the convolutions, pooling and unpooling also take one sample
without its batch axis ((C, H, W), or (C, L) for conv1d), the LSTM cell x (I,) with states
(H,), and the LSTM sequence x (T, I) with states (H,); their outputs and gradients then have
no batch axis either. They run as a batch of one: the axis is added and removed as views.

Arrays from other libraries: any argument may be an array that speaks DLPack
(``__dlpack__``: a PyTorch tensor, a JAX array, ...). It is taken without a copy, as a NumPy
array when it is in host memory and as a CuPy array when it is in CUDA memory (by its
``__dlpack_device__``), and the results are NumPy or CuPy arrays accordingly. A PyTorch
tensor that requires grad cannot be exported: pass ``tensor.detach()``.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

from . import _spec
from .backends import LstmSaved as _LstmSaved
from .backends import resolve as _resolve

__all__ = [
    "conv1d", "conv2d", "conv1d_backward", "conv2d_backward",
    "conv_transpose2d", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "max_unpool2d",
    "lstm_cell", "lstm_cell_backward", "lstm", "lstm_backward", "rnn_cell", "rnn_cell_backward",
    "box_iou", "nms", "batched_nms", "soft_nms", "diou_nms", "matrix_nms",
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward",
    "box_iou_rotated", "nms_rotated",
    "matmul", "embedding", "embedding_backward", "batch_norm_train", "batch_norm_train_backward",
    "elu", "elu_backward", "prelu", "prelu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "gated_tanh", "gated_tanh_backward", "dropout", "dropout_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "cross_entropy", "cross_entropy_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "sgd_step", "adam_step",
]


def _run(kernel: str, op: str, backend, arrays, *params):
    """Runs `kernel` of the chosen backend on C-contiguous copies (where needed) of `arrays`."""
    be = _resolve(backend, arrays, op)
    fn = be.kernel(kernel)
    xp = np if be.array_kind == "numpy" else _cupy()
    arrays = [None if a is None else xp.ascontiguousarray(a) for a in arrays]
    try:
        return fn(*arrays, *params)
    except MemoryError as e:
        # The spec bounds every output; what is left is a machine without that much memory.
        raise MemoryError(f"{op}: not enough memory on backend {be.name!r}: {e}") from e


def _cupy():
    import cupy  # only where CuPy arrays are used: importing it takes seconds

    return cupy


# Argument types that are never another library's array: the check below skips them at once.
_NATIVE_TYPES = frozenset({np.ndarray, bool, int, float, str, tuple, list, type(None)})


def _any_foreign(values):
    for v in values:
        if type(v) not in _NATIVE_TYPES and _spec.is_foreign_array(v):
            return True
    return False


def _takes_dlpack(op):
    """Lets the public op `op` take, for any array argument, another library's array that
    speaks DLPack (see the module docstring): such arguments become NumPy or CuPy arrays on
    the same memory before the op sees them."""
    names = tuple(inspect.signature(op).parameters)

    @functools.wraps(op)
    def taking_dlpack(*args, **kwargs):
        if _any_foreign(args) or (kwargs and _any_foreign(kwargs.values())):
            # Positional arguments beyond the signature pass through, for the call to refuse.
            args = tuple(_spec.from_dlpack(op.__name__, name, value)
                         for name, value in zip(names, args)) + args[len(names):]
            kwargs = {name: _spec.from_dlpack(op.__name__, name, value)
                      for name, value in kwargs.items()}
        return op(*args, **kwargs)

    return taking_dlpack


def _as_int64(a):
    return a if a.dtype == "int64" else a.astype("int64")


class _BatchAxis:
    """An op called on one sample, its batch axis left out (as PyTorch allows), runs as a batch
    of one: ``add`` gives an input that axis, of size 1, and ``drop`` takes it from an output,
    both as views (no copy). For a batched call both return their argument unchanged.
    `reference` is the argument whose rank tells, `batched_ndim` its rank with a batch axis."""

    def __init__(self, reference, batched_ndim):
        self.missing = reference.ndim == batched_ndim - 1

    def add(self, a, axis=0):
        return a if a is None or not self.missing else a[(slice(None),) * axis + (None,)]

    def drop(self, a, axis=0):
        return a if a is None or not self.missing else a[(slice(None),) * axis + (0,)]


# --------------------------------------------------------------------------------------------
# Convolution. conv1d runs as the conv2d with H = 1.


@_takes_dlpack
def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="auto",
           backend=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    x (N, C, H, W), w (K, C/groups, R, S), b (K,) or None -> (N, K, Ho, Wo); an unbatched x
    (C, H, W) gives (K, Ho, Wo). ``padding`` is an int, a pair, ``"valid"`` or ``"same"``
    (stride 1; the odd pixel of padding goes bottom/right).

    ``algorithm``: ``"auto"`` (the backend picks by shape), ``"gemm"``, ``"direct"`` or
    ``"winograd"`` (F(4x4, 3x3) for 3x3 kernels with stride 1, F(4x4, 2x2) over the stride
    phases for 4x4 kernels with stride 2; dilation 1 and groups 1 only; a ValueError
    otherwise). The cpu backend honours it; the others accept it and pick their
    own. Winograd's float32 error is larger than a direct sum's (README, "Convolution
    algorithms").
    """
    g = _spec.conv2d(x, w, b, stride, padding, dilation, groups, algorithm=algorithm)
    batch = _BatchAxis(x, 4)
    return batch.drop(_run("conv2d", "conv2d", backend, (batch.add(x), w, b), g))


@_takes_dlpack
def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """1-D cross-correlation, as ``torch.nn.functional.conv1d``: x (N, C, L) or unbatched
    (C, L), w (K, C/groups, R)."""
    g = _spec.conv1d(x, w, b, stride, padding, dilation, groups)
    batch = _BatchAxis(x, 3)
    x = batch.add(x)
    y = _run("conv2d", "conv1d", backend, (x[:, :, None, :], w[:, :, None, :], b), g)
    return batch.drop(y.reshape(g.N, g.K, g.Wo))


def _conv_backward(op, grad_out, x, w, g, needs, backend):
    """(grad_x, grad_w, grad_b) of a direct convolution with geometry g (4-D arrays)."""
    be = _resolve(backend, (grad_out, x, w), op)
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = _run("conv2d_grad_input", op, be.name, (grad_out, w), g)
    if needs[1]:
        grad_w = _run("conv2d_grad_weight", op, be.name, (grad_out, x), g)
    if needs[2]:
        grad_b = _run("conv2d_grad_bias", op, be.name, (grad_out,))
    return grad_x, grad_w, grad_b


@_takes_dlpack
def conv2d_backward(grad_out, x, w, stride=1, padding=0, dilation=1, groups=1,
                    needs=(True, True, True), *, algorithm="auto", backend=None):
    """Gradients of :func:`conv2d` -> ``(grad_x, grad_w, grad_b)``, None where ``needs`` is False.
    An unbatched call (x (C, H, W), grad_out (K, Ho, Wo)) gives an unbatched grad_x.
    ``algorithm`` as for :func:`conv2d`; on the cpu backend "winograd" computes grad_x (as the
    forward convolution with the flipped weights, when padding <= 2; else by the GEMM) and
    grad_w (the adjoint of the forward's transforms) with F(4x4, 3x3) for 3x3 stride-1 layers,
    and both with F(4x4, 2x2) over the stride phases for 4x4 stride-2 layers."""
    g, needs = _spec.conv_backward(grad_out, x, w, stride, padding, dilation, groups, needs, 2,
                                   algorithm=algorithm)
    batch = _BatchAxis(x, 4)
    gx, gw, gb = _conv_backward("conv2d_backward", batch.add(grad_out), batch.add(x), w, g, needs,
                                backend)
    return batch.drop(gx), gw, gb


@_takes_dlpack
def conv1d_backward(grad_out, x, w, stride=1, padding=0, dilation=1, groups=1,
                    needs=(True, True, True), *, backend=None):
    """Gradients of :func:`conv1d` -> ``(grad_x, grad_w, grad_b)`` (grad_x unbatched for an
    unbatched call)."""
    g, needs = _spec.conv_backward(grad_out, x, w, stride, padding, dilation, groups, needs, 1)
    batch = _BatchAxis(x, 3)
    grad_out, x = batch.add(grad_out), batch.add(x)
    gx, gw, gb = _conv_backward(
        "conv1d_backward", grad_out[:, :, None, :], x[:, :, None, :], w[:, :, None, :], g, needs, backend
    )
    return (
        None if gx is None else batch.drop(gx.reshape(x.shape)),
        None if gw is None else gw.reshape(w.shape),
        gb,
    )


@_takes_dlpack
def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     *, backend=None):
    """Transpose convolution, as ``torch.nn.functional.conv_transpose2d``.

    x (N, C, H, W), w (C, K/groups, R, S) -> (N, K, Ho, Wo), or unbatched (C, H, W) ->
    (K, Ho, Wo), with ``Ho = (H - 1)*stride - 2*padding + dilation*(R - 1) + output_padding + 1``.
    It is the input gradient of the direct convolution that maps the output back to x, so
    backends run it with the same kernel as conv2d's backward-data pass.
    """
    g = _spec.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)
    batch = _BatchAxis(x, 4)
    y = _run("conv2d_grad_input", "conv_transpose2d", backend, (batch.add(x), w), g)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return batch.drop(y)


@_takes_dlpack
def conv_transpose2d_backward(grad_out, x, w, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, needs=(True, True, True), *, backend=None):
    """Gradients of :func:`conv_transpose2d` -> ``(grad_x, grad_w, grad_b)``.

    With the direct convolution D that the transpose conv inverts: grad_x = D(grad_out),
    grad_w = D's weight gradient with x as its output gradient, grad_b = sum of grad_out.
    """
    op = "conv_transpose2d_backward"
    g, needs = _spec.conv_transpose2d_backward(grad_out, x, w, stride, padding, output_padding,
                                               groups, dilation, needs)
    batch = _BatchAxis(x, 4)
    grad_out, x = batch.add(grad_out), batch.add(x)
    be = _resolve(backend, (grad_out, x, w), op)
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = _run("conv2d", op, be.name, (grad_out, w, None), g)
    if needs[1]:
        grad_w = _run("conv2d_grad_weight", op, be.name, (x, grad_out), g)
    if needs[2]:
        grad_b = _run("conv2d_grad_bias", op, be.name, (grad_out,))
    return batch.drop(grad_x), grad_w, grad_b


# --------------------------------------------------------------------------------------------
# Pooling


@_takes_dlpack
def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, backend=None):
    """Max pooling, as ``torch.nn.functional.max_pool2d``.

    x (N, C, H, W) or unbatched (C, H, W). Returns y, or ``(y, indices)`` with int64 flat
    offsets into each H*W input plane. A NaN in a window propagates to its output.
    """
    g = _spec.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    batch = _BatchAxis(x, 4)
    y, idx = _run("max_pool2d", "max_pool2d", backend, (batch.add(x),), g, bool(return_indices))
    return (batch.drop(y), batch.drop(idx)) if return_indices else batch.drop(y)


@_takes_dlpack
def max_pool2d_backward(grad_out, indices, input_shape, *, backend=None):
    """Gradient of max pooling: grad_out scattered (added) into a zero array of ``input_shape``
    ((N, C, H, W), or unbatched (C, H, W)) at ``indices``."""
    shape = _spec.max_pool2d_backward(grad_out, indices, input_shape)
    batch = _BatchAxis(grad_out, 4)
    return batch.drop(_run("max_pool2d_backward", "max_pool2d_backward", backend,
                           (batch.add(grad_out), batch.add(_as_int64(indices))), shape))


@_takes_dlpack
def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, backend=None):
    """Average pooling, as ``torch.nn.functional.avg_pool2d``: x (N, C, H, W) or unbatched
    (C, H, W)."""
    g, divisor = _spec.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, divisor_override)
    batch = _BatchAxis(x, 4)
    return batch.drop(_run("avg_pool2d", "avg_pool2d", backend, (batch.add(x),), g,
                           bool(count_include_pad), divisor))


@_takes_dlpack
def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None,
                        *, backend=None):
    """Gradient of :func:`avg_pool2d` with respect to its input of shape ``input_shape``
    ((N, C, H, W), or unbatched (C, H, W))."""
    g, divisor = _spec.avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding,
                                           ceil_mode, divisor_override)
    batch = _BatchAxis(grad_out, 4)
    return batch.drop(_run("avg_pool2d_backward", "avg_pool2d_backward", backend,
                           (batch.add(grad_out),), g, bool(count_include_pad), divisor))


@_takes_dlpack
def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None, *, backend=None):
    """Inverse of max pooling, as ``torch.nn.functional.max_unpool2d``: zeros except
    ``y.flat-per-plane[indices] = x``. Repeated indices: the last one in row-major order wins.
    x and indices (N, C, H, W), or unbatched (C, H, W)."""
    shape = _spec.max_unpool2d(x, indices, kernel_size, stride, padding, output_size)
    batch = _BatchAxis(x, 4)
    return batch.drop(_run("max_unpool2d", "max_unpool2d", backend,
                           (batch.add(x), batch.add(_as_int64(indices))), shape))


# --------------------------------------------------------------------------------------------
# LSTM (gate rows i, f, g, o as PyTorch)


@_takes_dlpack
def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One LSTM step, as ``torch.nn.LSTMCell`` -> ``(h_new, c_new)``.

    x (B, I), h and c (B, H), w_ih (4H, I), w_hh (4H, H), biases (4H,) or None; unbatched, x (I,)
    with h and c (H,).
    """
    _spec.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    batch = _BatchAxis(x, 2)
    h_new, c_new = _run("lstm_cell", "lstm_cell", backend,
                        (batch.add(x), batch.add(h), batch.add(c), w_ih, w_hh, b_ih, b_hh))
    return batch.drop(h_new), batch.drop(c_new)


@_takes_dlpack
def lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """Gradients of :func:`lstm_cell` -> ``(grad_x, grad_h_prev, grad_c_prev, grad_w_ih,
    grad_w_hh, grad_b_ih, grad_b_hh)`` (bias gradients None where the bias is None).
    grad_h or grad_c may be None (zero). Unbatched (x (I,), states (H,)): grad_x, grad_h_prev
    and grad_c_prev unbatched too."""
    B, _, Hd = _spec.lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh)
    batch = _BatchAxis(x, 2)
    grad_h, grad_c, x, h, c = (batch.add(a) for a in (grad_h, grad_c, x, h, c))
    grad_h, grad_c = (_zeros_like_if_none(g, x, (B, Hd)) for g in (grad_h, grad_c))
    grad_x, grad_h, grad_c, *grad_weights = _run(
        "lstm_cell_backward", "lstm_cell_backward", backend,
        (grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh))
    return (batch.drop(grad_x), batch.drop(grad_h), batch.drop(grad_c), *grad_weights)


@_takes_dlpack
def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None, save_for_backward=False):
    """A single-layer LSTM over a whole sequence: x (T, B, I) -> ``(out (T, B, H), (h_T, c_T))``
    with h0, c0, h_T and c_T (B, H); unbatched, x (T, I) -> out (T, H) with states (H,).

    With ``save_for_backward=True`` it returns ``(out, (h_T, c_T), saved)``: ``saved`` holds
    the gates and states of every step (opaque; pass it to :func:`lstm_backward`, which then
    skips running the forward again). Do not modify ``out`` in place while ``saved`` is in use:
    it may share memory with it.
    """
    _spec.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    batch = _BatchAxis(x, 3)
    out, (h, c), saved = _run(
        "lstm", "lstm", backend,
        (batch.add(x, axis=1), batch.add(h0), batch.add(c0), w_ih, w_hh, b_ih, b_hh),
        bool(save_for_backward))
    out, state = batch.drop(out, axis=1), (batch.drop(h), batch.drop(c))
    return (out, state, saved) if save_for_backward else (out, state)


@_takes_dlpack
def lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None,
                  *, backend=None, saved=None):
    """Backpropagation through time of :func:`lstm` -> ``(grad_x, grad_h0, grad_c0, grad_w_ih,
    grad_w_hh, grad_b_ih, grad_b_hh)``, unbatched for an unbatched call (x (T, I), grad_out
    (T, H), states (H,)). Any of grad_out, grad_hT, grad_cT may be None (zero).
    ``saved``: what ``lstm(..., save_for_backward=True)`` returned for the same inputs on the
    same backend; without it the forward recurrence is computed again. Its arrays are left as
    they are, unless it is marked as their last use (``dataclasses.replace(saved,
    last_use=True)``, as the autograd does): the backend may then use them as scratch."""
    T, B, _, Hd = _spec.lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    batch = _BatchAxis(x, 3)
    grad_out, x = batch.add(grad_out, axis=1), batch.add(x, axis=1)
    grad_hT, grad_cT, h0, c0 = (batch.add(a) for a in (grad_hT, grad_cT, h0, c0))
    grad_out = _zeros_like_if_none(grad_out, x, (T, B, Hd))
    grad_hT, grad_cT = (_zeros_like_if_none(g, x, (B, Hd)) for g in (grad_hT, grad_cT))
    arrays = (grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    be = _resolve(backend, arrays, "lstm_backward")
    if saved is not None:
        if not isinstance(saved, _LstmSaved):
            raise ValueError("lstm_backward: saved must be the third value returned by "
                             f"lstm(..., save_for_backward=True), got {type(saved).__name__}")
        saved.check("lstm_backward", be, x, h0)
    grad_x, grad_h0, grad_c0, *grad_weights = _run("lstm_backward", "lstm_backward", be.name,
                                                   arrays, saved)
    return (batch.drop(grad_x, axis=1), batch.drop(grad_h0), batch.drop(grad_c0), *grad_weights)


@_takes_dlpack
def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", *, backend=None):
    """One Elman RNN step, as ``torch.nn.RNNCell``: ``act(x w_ih^T + b_ih + h w_hh^T + b_hh)``
    with act tanh or relu (`nonlinearity`).

    x (B, I), h (B, H) or None (zeros), w_ih (H, I), w_hh (H, H), biases (H,) or None -> (B, H);
    unbatched, x (I,) with h (H,) -> (H,). Both products, the biases and the activation run as
    one kernel call.
    """
    B, _, Hd = _spec.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    batch = _BatchAxis(x, 2)
    x, h = batch.add(x), _zeros_like_if_none(batch.add(h), x, (B, Hd))
    return batch.drop(_run("rnn_cell", "rnn_cell", backend, (x, h, w_ih, w_hh, b_ih, b_hh),
                           nonlinearity))


@_takes_dlpack
def rnn_cell_backward(grad_h, x, h, h_new, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh",
                      *, backend=None):
    """Gradients of :func:`rnn_cell` given that of its output ``h_new`` (which the backward
    reads in place of the pre-activation) -> ``(grad_x, grad_h_prev, grad_w_ih, grad_w_hh,
    grad_b_ih, grad_b_hh)``; bias gradients are None where the bias is None, and grad_h_prev is
    computed for an ``h`` of None (zeros) too. Unbatched calls give unbatched grad_x and
    grad_h_prev."""
    B, _, Hd = _spec.rnn_cell_backward(grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    batch = _BatchAxis(x, 2)
    grad_h, x, h_new = batch.add(grad_h), batch.add(x), batch.add(h_new)
    h = _zeros_like_if_none(batch.add(h), x, (B, Hd))
    grad_x, grad_h, *grad_weights = _run(
        "rnn_cell_backward", "rnn_cell_backward", backend,
        (grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh), nonlinearity)
    return (batch.drop(grad_x), batch.drop(grad_h), *grad_weights)


def _zeros_like_if_none(g, like, shape):
    if g is not None:
        return g
    xp = _cupy() if _spec.array_kind(like) == "cupy" else np
    return xp.zeros(shape, like.dtype)


# --------------------------------------------------------------------------------------------
# Boxes (x1, y1, x2, y2)


@_takes_dlpack
def box_iou(boxes1, boxes2, *, backend=None):
    """Pairwise IoU -> (N, M), as ``torchvision.ops.box_iou``. Boxes with x2 < x1 or y2 < y1
    count as empty; the IoU of two boxes whose union is empty is 0.

    The rule, in the boxes' dtype with IEEE arithmetic: area = max(x2 - x1, 0) * max(y2 - y1, 0)
    (max propagating NaN); the intersection is the area of (max(x1), max(y1), min(x2), min(y2));
    union = area1 + area2 - intersection; IoU = 0 where union == 0, else intersection / union.
    So, as torchvision, a NaN coordinate makes the IoU of every pair with its box NaN, and
    infinite coordinates give what that arithmetic gives: an infinite box against a finite one
    has IoU 0, against itself NaN (inf / inf), and so does an infinitely wide box of zero
    height (0 * inf). Unlike torchvision, inverted boxes have area 0 rather than a negative
    one, and an empty union gives 0 rather than 0 / 0."""
    _spec.box_iou(boxes1, boxes2)
    return _run("box_iou", "box_iou", backend, (boxes1, boxes2))


@_takes_dlpack
def nms(boxes, scores, iou_threshold, *, backend=None):
    """Greedy non-maximum suppression, as ``torchvision.ops.nms`` -> int64 indices of the kept
    boxes by decreasing score. A box is dropped when its IoU with a kept, higher-scored box is
    > iou_threshold; equal scores keep the lower index first; NaN scores rank below all others.
    Boxes with x2 < x1 or y2 < y1 are empty (area 0) and the IoU of two boxes with an empty
    union is 0, so with a threshold >= 0 an empty box neither suppresses nor is suppressed
    (a negative threshold keeps only the top box). The IoU is computed in the boxes' precision
    and compared exactly with the threshold. A NaN IoU (see :func:`box_iou`) suppresses
    nothing, whatever the threshold. No boxes -> an empty int64 array."""
    thr = _spec.nms(boxes, scores, iou_threshold)
    return _run("nms", "nms", backend, (boxes, scores), thr)


@_takes_dlpack
def batched_nms(boxes, scores, idxs, iou_threshold, *, class_agnostic=False, backend=None):
    """NMS within each category ``idxs`` (boxes of different categories never suppress each
    other), as ``torchvision.ops.batched_nms`` -> kept indices by decreasing score, ties and
    NaN as :func:`nms`. The boxes are sorted once, grouped by category and each group runs
    its own greedy NMS, so the work is the sum over categories of the work within each: no
    box is compared with a box of another category (torchvision's trick of shifting each
    category's boxes by a large coordinate offset compares all pairs, and rounds).

    ``class_agnostic=True`` ignores ``idxs`` (which may then be None): plain :func:`nms` over
    all boxes, as mmcv's ``batched_nms`` with ``class_agnostic``."""
    thr = _spec.batched_nms(boxes, scores, idxs, iou_threshold, class_agnostic)
    if class_agnostic:
        return _run("nms", "batched_nms", backend, (boxes, scores), thr)
    return _run("batched_nms", "batched_nms", backend, (boxes, scores, _as_int64(idxs)), thr)


@_takes_dlpack
def soft_nms(boxes, scores, sigma=0.5, iou_threshold=0.3, score_threshold=0.001,
             method="gaussian", *, backend=None):
    """Soft-NMS (Bodla et al. 2017) -> (kept int64 indices, their decayed scores), in the
    order picked.

    Every box starts with its score. Repeatedly the box with the highest current score is
    picked (equal scores: the lower index first) and every box not yet picked has its score
    multiplied by a decay of its IoU with the picked box: ``exp(-iou**2 / sigma)`` for
    ``method="gaussian"`` (iou_threshold unused), ``1 - iou`` where ``iou > iou_threshold``
    for ``method="linear"``. A box whose current score is not >= score_threshold is dropped
    (never picked); so are NaN scores. The kept scores are the scores at the time each box
    was picked; with scores >= 0 they do not increase along the output.

    Arithmetic, in the boxes' dtype: the IoU of :func:`box_iou`; ``w = exp(-(iou * iou) /
    sigma)`` or ``w = 1 - iou``; ``score = score * w``. The linear method's IoU is compared
    exactly (as a double) with the threshold, as in :func:`nms`. A NaN IoU (NaN coordinates)
    decays nothing, as it suppresses nothing in :func:`nms`. ``exp`` may differ in its last
    bit between backends, so decayed scores agree to rounding, and equal scores stay equal
    (ties are broken alike) on every backend; the linear method is exact.

    The same as OpenCV's ``cv2.dnn.softNMSBoxes(boxes, scores, score_threshold,
    iou_threshold, sigma=sigma, method=...)`` (picks, order, decays, ties and the threshold
    test), except that OpenCV takes integer (x, y, w, h) rectangles and keeps scores in
    float32, where pyconv takes (x1, y1, x2, y2) boxes of either precision. mmcv's
    ``soft_nms`` also outputs a top box scoring under ``min_score``; pyconv, as OpenCV, never
    keeps a box under score_threshold. No boxes -> two empty arrays."""
    params = _spec.soft_nms(boxes, scores, sigma, iou_threshold, score_threshold, method)
    return _run("soft_nms", "soft_nms", backend, (boxes, scores), *params)


@_takes_dlpack
def diou_nms(boxes, scores, iou_threshold, *, backend=None):
    """Greedy NMS on the distance-IoU (Zheng et al. 2020) -> int64 indices of the kept boxes
    by decreasing score: a box is dropped when ``DIoU = IoU - d**2 / c**2`` with a kept,
    higher-scored box is > iou_threshold, d being the distance between the two boxes'
    centres and c the diagonal of the smallest box enclosing both. Order, ties, NaN scores
    and empty boxes as :func:`nms`; a NaN DIoU suppresses nothing.

    Arithmetic, in the boxes' dtype: the IoU of :func:`box_iou`; centres ``(x1 + x2) * 0.5``;
    ``d2 = dx * dx + dy * dy``; ``c2 = cw * cw + ch * ch`` with ``cw = max(x2) - min(x1)``
    and ``ch = max(y2) - min(y1)`` over the pair; the penalty ``d2 / c2`` is 0 where
    ``c2 == 0`` (two boxes that are the same point). DIoU <= IoU: a box suppresses another
    only where :func:`nms` would at the same threshold (the greedy outcomes may still differ
    either way, as a box kept here may suppress others)."""
    thr = _spec.diou_nms(boxes, scores, iou_threshold)
    return _run("diou_nms", "diou_nms", backend, (boxes, scores), thr)


@_takes_dlpack
def matrix_nms(boxes, scores, labels, kernel="gaussian", sigma=2.0, *, backend=None):
    """Matrix NMS (SOLOv2, Wang et al. 2020) on boxes -> every box's decayed score, shape
    (N,), in input order (the caller thresholds them; nothing is dropped here).

    Within each label, the boxes are ranked by decreasing score (equal scores: the lower
    index first; NaN scores last). For box j, ``comp_j`` is its largest IoU with a box ranked
    before it (0 for none), and its decay is ``min(1, min_i f(iou_ij) / f(comp_i))`` over the
    boxes i of its label ranked before it: ``f(iou) = exp(-sigma * iou**2)`` for
    ``kernel="gaussian"`` (computed as ``exp(-sigma * (iou_ij**2 - comp_i**2))``), ``1 -
    iou`` for ``kernel="linear"`` (a term with ``comp_i == 1``, a box i that is itself
    certainly suppressed, is left out). The output is ``scores * decay``; boxes of different
    labels never decay each other. All in the boxes' dtype, one parallel pass over the IoUs.

    This is SOLOv2's / mmdet's ``mask_matrix_nms`` decay on box IoUs without its pre- and
    post-filtering: their formula takes the min over every row of the IoU matrix, whose extra
    terms are >= 1 and change nothing, except the linear 0 / 0 (left out here) and a NaN in
    an unrelated box (ignored here). NaN is otherwise propagated: a NaN IoU with a box ranked
    before it (NaN coordinates) makes a box's decayed score NaN."""
    kernel_name, sigma = _spec.matrix_nms(boxes, scores, labels, kernel, sigma)
    return _run("matrix_nms", "matrix_nms", backend, (boxes, scores, _as_int64(labels)),
                kernel_name, sigma)


# --------------------------------------------------------------------------------------------
# Elementwise activations


@_takes_dlpack
def relu(x, *, backend=None):
    """``max(x, 0)``, as ``torch.relu``: ``x`` where ``x >= 0`` (``-0.0`` stays ``-0.0``), 0
    where ``x < 0`` (``-inf`` included), NaN stays NaN. Any shape."""
    _spec.relu(x)
    return _run("relu", "relu", backend, (x,))


@_takes_dlpack
def relu_backward(grad_out, y, *, backend=None):
    """Gradient of :func:`relu` from its output ``y``: 0 where ``y <= 0``, else ``grad_out``
    (NaN included), as PyTorch's ``threshold_backward``. The input ``x`` in place of ``y``
    gives the same gradient."""
    _spec.relu_backward(grad_out, y)
    return _run("relu_backward", "relu_backward", backend, (grad_out, y))


@_takes_dlpack
def leaky_relu(x, negative_slope=0.01, *, backend=None):
    """``x`` where ``x > 0``, else ``negative_slope * x``, as ``torch.nn.functional.leaky_relu``
    (a slope of 0 is ReLU). Any shape; NaN stays NaN."""
    slope = _spec.leaky_relu(x, negative_slope)
    return _run("leaky_relu", "leaky_relu", backend, (x,), slope)


@_takes_dlpack
def leaky_relu_backward(grad_out, x, negative_slope=0.01, *, backend=None):
    """Gradient of :func:`leaky_relu` at ``x``: ``grad_out`` where ``x > 0``, else
    ``negative_slope * grad_out`` (at 0 the slope, as PyTorch)."""
    slope = _spec.leaky_relu_backward(grad_out, x, negative_slope)
    return _run("leaky_relu_backward", "leaky_relu_backward", backend, (grad_out, x), slope)


@_takes_dlpack
def elu(x, alpha=1.0, *, backend=None):
    """``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``, as ``torch.nn.functional.elu``.
    Any shape; NaN stays NaN."""
    alpha = _spec.elu(x, alpha)
    return _run("elu", "elu", backend, (x,), alpha)


@_takes_dlpack
def elu_backward(grad_out, x, alpha=1.0, *, backend=None):
    """Gradient of :func:`elu` at ``x``: ``grad_out`` where ``x > 0``, else
    ``grad_out * alpha * exp(x)``."""
    alpha = _spec.elu_backward(grad_out, x, alpha)
    return _run("elu_backward", "elu_backward", backend, (grad_out, x), alpha)


@_takes_dlpack
def prelu(x, weight, *, backend=None):
    """``x`` where ``x > 0``, else ``weight[c] * x`` for the channel c of the element (axis 1;
    x with fewer than two axes has one channel), as ``torch.nn.functional.prelu``: weight (C,)
    or (1,), one slope shared by every channel."""
    _spec.prelu(x, weight)
    return _run("prelu", "prelu", backend, (x, weight))


@_takes_dlpack
def prelu_backward(grad_out, x, weight, *, backend=None):
    """Gradients ``(grad_x, grad_weight)`` of :func:`prelu` at ``x``: grad_x is ``grad_out``
    where ``x > 0``, else ``weight[c] * grad_out``; grad_weight (weight's shape) sums
    ``grad_out * x`` over the elements ``x <= 0`` of each channel (of all, for one slope)."""
    _spec.prelu_backward(grad_out, x, weight)
    return _run("prelu_backward", "prelu_backward", backend, (grad_out, x, weight))


@_takes_dlpack
def sigmoid(x, *, backend=None):
    """``1 / (1 + exp(-x))``, as ``torch.sigmoid``: 0 at -inf, 1 at inf."""
    _spec.sigmoid(x)
    return _run("sigmoid", "sigmoid", backend, (x,))


@_takes_dlpack
def sigmoid_backward(grad_out, y, *, backend=None):
    """Gradient of :func:`sigmoid` from its output ``y``: ``grad_out * (1 - y) * y``."""
    _spec.sigmoid_backward(grad_out, y)
    return _run("sigmoid_backward", "sigmoid_backward", backend, (grad_out, y))


@_takes_dlpack
def tanh(x, *, backend=None):
    """The hyperbolic tangent, as ``torch.tanh``."""
    _spec.tanh(x)
    return _run("tanh", "tanh", backend, (x,))


@_takes_dlpack
def tanh_backward(grad_out, y, *, backend=None):
    """Gradient of :func:`tanh` from its output ``y``: ``grad_out * (1 - y * y)``."""
    _spec.tanh_backward(grad_out, y)
    return _run("tanh_backward", "tanh_backward", backend, (grad_out, y))


@_takes_dlpack
def gated_tanh(x, dim=1, *, backend=None):
    """The gated activation ``tanh(a) * sigmoid(b)`` of ``x = [a, b]``, split in halves along
    ``dim`` (the gate of a gated PixelCNN or WaveNet; ``torch.nn.functional.glu`` with tanh
    on the first half): one pass over x. The output has x's shape with axis dim halved."""
    dim = _spec.gated_tanh(x, dim)
    return _run("gated_tanh", "gated_tanh", backend, (x,), dim)


@_takes_dlpack
def gated_tanh_backward(grad_out, x, dim=1, *, backend=None):
    """Gradient of :func:`gated_tanh` at ``x`` (x's shape): ``grad_out * s * (1 - t**2)`` for
    the half a and ``grad_out * t * s * (1 - s)`` for b, with t = tanh(a), s = sigmoid(b)."""
    dim = _spec.gated_tanh_backward(grad_out, x, dim)
    return _run("gated_tanh_backward", "gated_tanh_backward", backend, (grad_out, x), dim)


@_takes_dlpack
def dropout(x, p, seed, *, backend=None):
    """Dropout in training mode -> ``(y, mask)``: each element is kept with probability
    ``1 - p`` and then scaled by ``1 / (1 - p)``, else multiplied by 0; mask (uint8, x's shape)
    is 1 where kept. The draw is Philox4x32-10 keyed by ``seed`` (an int in [0, 2**64)) and
    counted by the element's flat index: the same seed gives the same mask on every backend
    and for any number of threads. (``pyconv.nn.functional.dropout`` draws the seed from
    pyconv's generator.) p is resolved to 2**-24: the element is kept when its 24-bit draw is
    below ``round((1 - p) * 2**24)``."""
    draw, seed = _spec.dropout(x, p, seed)
    return _run("dropout", "dropout", backend, (x,), draw.keep_threshold, draw.scale, seed)


@_takes_dlpack
def dropout_backward(grad_out, mask, p, *, backend=None):
    """Gradient of :func:`dropout`: ``grad_out * (1 / (1 - p) if mask else 0)``."""
    scale = _spec.dropout_backward(grad_out, mask, p)
    return _run("dropout_backward", "dropout_backward", backend, (grad_out, mask), scale)


# --------------------------------------------------------------------------------------------
# Rotated boxes


@_takes_dlpack
def box_iou_rotated(boxes1, boxes2, *, backend=None):
    """Pairwise IoU of rotated boxes -> (N, M), as detectron2's ``pairwise_iou_rotated``.

    A box is (cx, cy, w, h, angle): its centre, its width and height, and its rotation in
    degrees, counter-clockwise as seen on an image (y pointing down): at angle a the width runs
    along (cos a, -sin a) and the height along (sin a, cos a) (OpenCV's ``RotatedRect`` angle
    turns the other way: it is minus this one). So angle 180 or 360 is the
    unrotated box and angle 90 is the box with w and h swapped (exactly: the angle is reduced
    to a quarter turn plus a remainder of at most 45 degrees before any sine or cosine).

    The intersection is the exact convex polygon where the two rectangles overlap, computed in
    float64 whatever the boxes' dtype, and rounded to that dtype at the end. A box with w <= 0
    or h <= 0 is empty: its IoU with any box is 0. A box with a NaN or infinite value has no
    defined polygon: its IoU with every box is NaN (which :func:`nms_rotated` never counts as
    an overlap). Unlike detectron2, which computes in the boxes' precision and treats boxes of
    area below 1e-14 as empty, only w <= 0 or h <= 0 makes a box empty here."""
    _spec.box_iou_rotated(boxes1, boxes2)
    return _run("box_iou_rotated", "box_iou_rotated", backend, (boxes1, boxes2))


@_takes_dlpack
def nms_rotated(boxes, scores, iou_threshold, *, backend=None):
    """Greedy non-maximum suppression of rotated boxes (see :func:`box_iou_rotated`), as
    detectron2's ``nms_rotated`` -> int64 indices of the kept boxes by decreasing score. A box
    is dropped when its IoU with a kept, higher-scored box is > iou_threshold; equal scores keep
    the lower index first; NaN scores rank below all others. The IoU, rounded to the boxes'
    dtype as :func:`box_iou_rotated` returns it, is compared exactly with the threshold; a NaN
    IoU suppresses nothing. No boxes -> an empty int64 array."""
    thr = _spec.nms_rotated(boxes, scores, iou_threshold)
    return _run("nms_rotated", "nms_rotated", backend, (boxes, scores), thr)

# Dense


@_takes_dlpack
def matmul(a, b, trans_a=False, trans_b=False, *, backend=None):
    """Matrix product ``op(a) @ op(b)`` of 2-D arrays, ``op(m)`` being ``m.T`` where its flag is
    set: a dense layer's ``x @ w.T`` is ``matmul(x, w, trans_b=True)`` and its weight gradient
    ``matmul(g, x, trans_a=True)``, with no transposed copy made."""
    trans_a, trans_b = _spec.matmul(a, b, trans_a, trans_b)
    return _run("matmul", "matmul", backend, (a, b), trans_a, trans_b)


@_takes_dlpack
def embedding(weight, indices, *, backend=None):
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``indices`` of any shape, as
    ``torch.nn.functional.embedding``: shape ``indices.shape + (dim,)``."""
    _spec.embedding(weight, indices)
    return _run("embedding", "embedding", backend, (weight, _as_int64(indices)))


@_takes_dlpack
def embedding_backward(grad_out, indices, num_embeddings, padding_idx=None, *, backend=None):
    """Gradient of :func:`embedding` with respect to its table: ``grad_out``'s rows
    (``indices.shape + (dim,)``) summed into the rows of a (num_embeddings, dim) table their
    indices picked, in the order of the indices (the same sums for any number of threads and on
    every backend); row ``padding_idx`` (if given; negative counts from the end) stays zero."""
    padding_idx = _spec.embedding_backward(grad_out, indices, num_embeddings, padding_idx)
    return _run("embedding_backward", "embedding_backward", backend, (grad_out, _as_int64(indices)),
                int(num_embeddings), padding_idx)


# --------------------------------------------------------------------------------------------
# Normalisation


@_takes_dlpack
def batch_norm_train(x, weight=None, bias=None, eps=1e-5, *, activation=None, negative_slope=0.01,
                     backend=None):
    """Batch normalisation with the batch's statistics, as ``torch.nn.functional.batch_norm``
    in training mode: x (N, C, ...) normalised per channel over every other axis, then scaled by
    weight and shifted by bias (C,) where given. Returns ``(y, mean, var)``, var the biased
    variance the normalisation divided by (the running statistics are the caller's).

    ``activation`` ("relu", or "leaky_relu" with ``negative_slope`` >= 0) is applied to y in
    the same pass, with the bits of :func:`relu` / :func:`leaky_relu` run on y afterwards (a
    network's BatchNorm -> ReLU pair without a pass of its own)."""
    eps, slope = _spec.batch_norm_train(x, weight, bias, eps, activation, negative_slope)
    return _run("batch_norm_train", "batch_norm_train", backend, (x, weight, bias), eps, activation, slope)


@_takes_dlpack
def batch_norm_train_backward(grad_out, x, mean, invstd, weight=None, *, y=None, activation=None,
                              negative_slope=0.01, backend=None):
    """Gradients ``(grad_x, grad_weight, grad_bias)`` of :func:`batch_norm_train` at x, given
    the mean and ``invstd = 1 / sqrt(var + eps)`` of its forward (grad_x includes the path
    through the batch statistics). With an ``activation``, grad_out is the gradient of the
    activated output ``y`` (the forward's result, from which the activation's gradient is
    taken, as :func:`relu_backward` does)."""
    slope = _spec.batch_norm_train_backward(grad_out, x, mean, invstd, weight, y, activation, negative_slope)
    return _run("batch_norm_train_backward", "batch_norm_train_backward", backend,
                (grad_out, x, mean, invstd, weight, y), activation, slope)


# --------------------------------------------------------------------------------------------
# Softmax and losses over the class axis, the last: x (..., C) runs as rows (M, C).


def _rows_of(a):
    """a (..., C) as (M, C): a view where a is contiguous (a copy otherwise, as _run makes)."""
    return a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a


def _row_values(a):
    return a.reshape(-1)


@_takes_dlpack
def softmax(x, *, backend=None):
    """``exp(x) / sum(exp(x))`` over the last axis of x (..., C), as
    ``torch.softmax(x, dim=-1)``: one pass per row after its maximum is subtracted."""
    _spec.softmax(x)
    return _run("softmax", "softmax", backend, (_rows_of(x),)).reshape(x.shape)


@_takes_dlpack
def softmax_backward(grad_out, y, *, backend=None):
    """Gradient of :func:`softmax` given its output y: ``y * (grad_out - sum(grad_out * y))``
    over the last axis."""
    _spec.softmax_backward(grad_out, y)
    return _run("softmax_backward", "softmax_backward", backend,
                (_rows_of(grad_out), _rows_of(y))).reshape(y.shape)


@_takes_dlpack
def log_softmax(x, *, backend=None):
    """``x - max - log(sum(exp(x - max)))`` over the last axis of x (..., C), as
    ``torch.log_softmax(x, dim=-1)``."""
    _spec.softmax(x, op="log_softmax")
    return _run("log_softmax", "log_softmax", backend, (_rows_of(x),)).reshape(x.shape)


@_takes_dlpack
def log_softmax_backward(grad_out, y, *, backend=None):
    """Gradient of :func:`log_softmax` given its output y: ``grad_out - exp(y) * sum(grad_out)``
    over the last axis."""
    _spec.softmax_backward(grad_out, y, op="log_softmax_backward")
    return _run("log_softmax_backward", "log_softmax_backward", backend,
                (_rows_of(grad_out), _rows_of(y))).reshape(y.shape)


@_takes_dlpack
def cross_entropy(x, target, weight=None, ignore_index=-100, label_smoothing=0.0, *,
                  class_axis=-1, backend=None):
    """Per-row cross-entropy of logits x against integer classes target, as
    ``torch.nn.functional.cross_entropy(..., reduction="none")``:
    ``-(1 - s) w[t] log_softmax(x)[t] - (s / C) sum_c w[c] log_softmax(x)[c]``, s the label
    smoothing, w the class weights (ones where None); rows whose target is ignore_index (or
    whose class weight is 0) give 0. One pass per row, no log-probabilities stored.

    The classes lie on x's last axis (x (..., C), target (...)), or with ``class_axis=1`` on
    axis 1 as in PyTorch's (N, C, d1, ...) with target (N, d1, ...): read in place, the
    per-pixel loss of a segmentation needs no transposed copy.

    Returns ``(loss, lse)`` of target's shape, lse each row's log-sum-exp (what
    :func:`cross_entropy_backward` needs). A "mean" reduction divides the summed loss by the
    summed ``w[t]`` of the rows not ignored."""
    ignore_index, eps, layout = _spec.cross_entropy(x, target, weight, ignore_index,
                                                    label_smoothing, class_axis)
    loss, lse = _run("cross_entropy", "cross_entropy", backend,
                     (x.reshape(layout), _row_values(_as_int64(target)), weight), ignore_index, eps)
    return loss.reshape(target.shape), lse.reshape(target.shape)


@_takes_dlpack
def cross_entropy_backward(grad_loss, x, target, lse, weight=None, ignore_index=-100,
                           label_smoothing=0.0, *, class_axis=-1, backend=None):
    """Gradient of :func:`cross_entropy` with respect to x, given each row's upstream gradient
    grad_loss and the lse the forward returned (both of target's shape):
    ``grad_loss * (softmax(x) * A - a)`` with a the loss's derivative with respect to
    log_softmax(x) and A its sum over the row. ``class_axis`` as for the forward."""
    ignore_index, eps, layout = _spec.cross_entropy_backward(
        grad_loss, x, target, lse, weight, ignore_index, label_smoothing, class_axis)
    grad = _run("cross_entropy_backward", "cross_entropy_backward", backend,
                (_row_values(grad_loss), x.reshape(layout), _row_values(_as_int64(target)), weight,
                 _row_values(lse)), ignore_index, eps)
    return grad.reshape(x.shape)


@_takes_dlpack
def binary_cross_entropy_with_logits(x, target, pos_weight=None, *, backend=None):
    """Element-wise binary cross-entropy of sigmoid(x) against target, as
    ``torch.nn.functional.binary_cross_entropy_with_logits(..., reduction="none")``, computed
    stably from the logits: ``(1 - t) x + (1 + (p - 1) t) log(1 + exp(-x))``, p the pos_weight
    of the column (its last-axis position; 1 where None), evaluated per sign of x as
    ``(1 + (p - 1) t) log1p(exp(-|x|)) + ((1 - t) x if x >= 0 else -p t x)`` so that no two
    large terms cancel."""
    _spec.binary_cross_entropy_with_logits(x, target, pos_weight)
    loss = _run("binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits", backend,
                (_rows_of(x), _rows_of(target), pos_weight))
    return loss.reshape(x.shape)


@_takes_dlpack
def binary_cross_entropy_with_logits_backward(grad_out, x, target, pos_weight=None, *,
                                              backend=None):
    """Gradient of :func:`binary_cross_entropy_with_logits` with respect to x:
    ``grad_out * ((1 - t) - (1 + (p - 1) t) sigmoid(-x))``, evaluated per sign of x."""
    _spec.binary_cross_entropy_with_logits_backward(grad_out, x, target, pos_weight)
    grad = _run("binary_cross_entropy_with_logits_backward",
                "binary_cross_entropy_with_logits_backward", backend,
                (_rows_of(grad_out), _rows_of(x), _rows_of(target), pos_weight))
    return grad.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# Optimiser steps: in place, over lists of parameters, gradients and state buffers.


def _run_in_place(kernel, backend, lists, *params):
    """Runs the in-place `kernel` on `lists` of arrays: gradients (read only) may be copied to
    C-contiguous arrays; parameters and state are the caller's arrays (the spec made sure they
    are contiguous and writable)."""
    flat = [a for arrays in lists if arrays is not None for a in arrays]
    be = _resolve(backend, flat, kernel)
    xp = np if be.array_kind == "numpy" else _cupy()
    lists = list(lists)
    lists[1] = [xp.ascontiguousarray(g) for g in lists[1]]
    be.kernel(kernel)(*[None if arrays is None else list(arrays) for arrays in lists], *params)


@_takes_dlpack
def sgd_step(params, grads, momentum_buffers=None, lr=1e-3, momentum=0.0, dampening=0.0,
             nesterov=False, weight_decay=0.0, first_step=False, *, backend=None):
    """One step of SGD over lists of parameters and their gradients, in place, as
    ``torch.optim.SGD``: ``g = grad + weight_decay * p``; with momentum,
    ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` on the first step) and
    ``g = g + momentum * buf`` (Nesterov) or ``g = buf``; then ``p -= lr * g``. One pass over
    every element of every parameter. Returns ``(params, momentum_buffers)``, updated."""
    norm = _spec.sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, nesterov,
                          weight_decay, first_step)
    _run_in_place("sgd_step", backend,
                  (params, grads, momentum_buffers if norm[1] else None), *norm)
    return params, momentum_buffers


@_takes_dlpack
def adam_step(params, grads, exp_avgs, exp_avg_sqs, step, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, *, backend=None):
    """Step number `step` (from 1) of Adam over lists of parameters, gradients and moment
    estimates, in place, as ``torch.optim.Adam`` (or ``torch.optim.AdamW`` with
    ``decoupled_weight_decay``): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``; weight decay adds
    ``weight_decay * p`` to g, or (decoupled) scales p by ``1 - lr * weight_decay`` first.
    Returns ``(params, exp_avgs, exp_avg_sqs)``, updated."""
    norm = _spec.adam_step(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps,
                           weight_decay, decoupled_weight_decay)
    _run_in_place("adam_step", backend, (params, grads, exp_avgs, exp_avg_sqs), *norm)
    return params, exp_avgs, exp_avg_sqs
