"""pyconv.ops: the kernels, without autograd.

Each function checks its arguments once (``pyconv._spec``), picks the backend (the
``backend=`` keyword, else the selected one, else ``"cpu"`` for NumPy and ``"cuda"`` for CuPy
arrays) and calls that backend's kernel with C-contiguous arrays and the computed geometry.
Layouts are NCHW (NCL for 1-D); weights as PyTorch; float32 or float64; index arrays int64.
Outputs are new C-contiguous arrays. Arguments out of the supported ranges (``pyconv._spec``)
raise ValueError before any backend runs; an output too large for the memory at hand raises
MemoryError naming the op.
"""
from __future__ import annotations

from . import _spec
from .backends import LstmSaved as _LstmSaved
from .backends import resolve as _resolve

__all__ = [
    "conv1d", "conv2d", "conv1d_backward", "conv2d_backward",
    "conv_transpose2d", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "max_unpool2d",
    "lstm_cell", "lstm_cell_backward", "lstm", "lstm_backward",
    "box_iou", "nms", "batched_nms", "soft_nms", "diou_nms", "matrix_nms",
    "leaky_relu", "leaky_relu_backward",
]


def _run(kernel: str, op: str, backend, arrays, *params):
    """Runs `kernel` of the chosen backend on C-contiguous copies (where needed) of `arrays`."""
    be = _resolve(backend, arrays, op)
    fn = be.kernel(kernel)
    if be.array_kind == "cupy":
        import cupy as xp
    else:
        import numpy as xp
    arrays = [None if a is None else xp.ascontiguousarray(a) for a in arrays]
    try:
        return fn(*arrays, *params)
    except MemoryError as e:
        # The spec bounds every output; what is left is a machine without that much memory.
        raise MemoryError(f"{op}: not enough memory on backend {be.name!r}: {e}") from e


def _as_int64(a):
    return a if a.dtype == "int64" else a.astype("int64")


# --------------------------------------------------------------------------------------------
# Convolution. conv1d runs as the conv2d with H = 1.


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    x (N, C, H, W), w (K, C/groups, R, S), b (K,) or None -> (N, K, Ho, Wo). ``padding`` is an
    int, a pair, ``"valid"`` or ``"same"`` (stride 1; the odd pixel of padding goes bottom/right).
    """
    g = _spec.conv2d(x, w, b, stride, padding, dilation, groups)
    return _run("conv2d", "conv2d", backend, (x, w, b), g)


def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None):
    """1-D cross-correlation, as ``torch.nn.functional.conv1d``: x (N, C, L), w (K, C/groups, R)."""
    g = _spec.conv1d(x, w, b, stride, padding, dilation, groups)
    y = _run("conv2d", "conv1d", backend, (x[:, :, None, :], w[:, :, None, :], b), g)
    return y.reshape(g.N, g.K, g.Wo)


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


def conv2d_backward(grad_out, x, w, stride=1, padding=0, dilation=1, groups=1,
                    needs=(True, True, True), *, backend=None):
    """Gradients of :func:`conv2d` -> ``(grad_x, grad_w, grad_b)``, None where ``needs`` is False."""
    g, needs = _spec.conv_backward(grad_out, x, w, stride, padding, dilation, groups, needs, 2)
    return _conv_backward("conv2d_backward", grad_out, x, w, g, needs, backend)


def conv1d_backward(grad_out, x, w, stride=1, padding=0, dilation=1, groups=1,
                    needs=(True, True, True), *, backend=None):
    """Gradients of :func:`conv1d` -> ``(grad_x, grad_w, grad_b)``."""
    g, needs = _spec.conv_backward(grad_out, x, w, stride, padding, dilation, groups, needs, 1)
    gx, gw, gb = _conv_backward(
        "conv1d_backward", grad_out[:, :, None, :], x[:, :, None, :], w[:, :, None, :], g, needs, backend
    )
    return (
        None if gx is None else gx.reshape(x.shape),
        None if gw is None else gw.reshape(w.shape),
        gb,
    )


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     *, backend=None):
    """Transpose convolution, as ``torch.nn.functional.conv_transpose2d``.

    x (N, C, H, W), w (C, K/groups, R, S) -> (N, K, Ho, Wo) with
    ``Ho = (H - 1)*stride - 2*padding + dilation*(R - 1) + output_padding + 1``. It is the input
    gradient of the direct convolution that maps the output back to x, so backends run it with
    the same kernel as conv2d's backward-data pass.
    """
    g = _spec.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)
    y = _run("conv2d_grad_input", "conv_transpose2d", backend, (x, w), g)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_backward(grad_out, x, w, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, needs=(True, True, True), *, backend=None):
    """Gradients of :func:`conv_transpose2d` -> ``(grad_x, grad_w, grad_b)``.

    With the direct convolution D that the transpose conv inverts: grad_x = D(grad_out),
    grad_w = D's weight gradient with x as its output gradient, grad_b = sum of grad_out.
    """
    op = "conv_transpose2d_backward"
    g, needs = _spec.conv_transpose2d_backward(grad_out, x, w, stride, padding, output_padding,
                                               groups, dilation, needs)
    be = _resolve(backend, (grad_out, x, w), op)
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = _run("conv2d", op, be.name, (grad_out, w, None), g)
    if needs[1]:
        grad_w = _run("conv2d_grad_weight", op, be.name, (x, grad_out), g)
    if needs[2]:
        grad_b = _run("conv2d_grad_bias", op, be.name, (grad_out,))
    return grad_x, grad_w, grad_b


# --------------------------------------------------------------------------------------------
# Pooling


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, backend=None):
    """Max pooling, as ``torch.nn.functional.max_pool2d``.

    Returns y, or ``(y, indices)`` with int64 flat offsets into each H*W input plane. A NaN in
    a window propagates to its output.
    """
    g = _spec.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    y, idx = _run("max_pool2d", "max_pool2d", backend, (x,), g, bool(return_indices))
    return (y, idx) if return_indices else y


def max_pool2d_backward(grad_out, indices, input_shape, *, backend=None):
    """Gradient of max pooling: grad_out scattered (added) into a zero (N, C, H, W) array at
    ``indices``."""
    shape = _spec.max_pool2d_backward(grad_out, indices, input_shape)
    return _run("max_pool2d_backward", "max_pool2d_backward", backend,
                (grad_out, _as_int64(indices)), shape)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, backend=None):
    """Average pooling, as ``torch.nn.functional.avg_pool2d``."""
    g, divisor = _spec.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, divisor_override)
    return _run("avg_pool2d", "avg_pool2d", backend, (x,), g, bool(count_include_pad), divisor)


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None,
                        *, backend=None):
    """Gradient of :func:`avg_pool2d` with respect to its input of shape ``input_shape``."""
    g, divisor = _spec.avg_pool2d_backward(grad_out, input_shape, kernel_size, stride, padding,
                                           ceil_mode, divisor_override)
    return _run("avg_pool2d_backward", "avg_pool2d_backward", backend, (grad_out,), g,
                bool(count_include_pad), divisor)


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None, *, backend=None):
    """Inverse of max pooling, as ``torch.nn.functional.max_unpool2d``: zeros except
    ``y.flat-per-plane[indices] = x``. Repeated indices: the last one in row-major order wins."""
    shape = _spec.max_unpool2d(x, indices, kernel_size, stride, padding, output_size)
    return _run("max_unpool2d", "max_unpool2d", backend, (x, _as_int64(indices)), shape)


# --------------------------------------------------------------------------------------------
# LSTM (gate rows i, f, g, o as PyTorch)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One LSTM step, as ``torch.nn.LSTMCell`` -> ``(h_new, c_new)``.

    x (B, I), h and c (B, H), w_ih (4H, I), w_hh (4H, H), biases (4H,) or None.
    """
    _spec.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    return _run("lstm_cell", "lstm_cell", backend, (x, h, c, w_ih, w_hh, b_ih, b_hh))


def lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """Gradients of :func:`lstm_cell` -> ``(grad_x, grad_h_prev, grad_c_prev, grad_w_ih,
    grad_w_hh, grad_b_ih, grad_b_hh)`` (bias gradients None where the bias is None).
    grad_h or grad_c may be None (zero)."""
    B, _, Hd = _spec.lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh)
    grad_h, grad_c = (_zeros_like_if_none(g, x, (B, Hd)) for g in (grad_h, grad_c))
    return _run("lstm_cell_backward", "lstm_cell_backward", backend,
                (grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh))


def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None, save_for_backward=False):
    """A single-layer LSTM over a whole sequence: x (T, B, I) -> ``(out (T, B, H), (h_T, c_T))``.

    The input projection of all T steps is one GEMM; then the recurrence runs step by step.
    With ``save_for_backward=True`` it returns ``(out, (h_T, c_T), saved)``: ``saved`` holds
    the gates and states of every step (opaque; pass it to :func:`lstm_backward`, which then
    skips running the forward again). Do not modify ``out`` in place while ``saved`` is in use:
    it may share memory with it.
    """
    _spec.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    out, state, saved = _run("lstm", "lstm", backend, (x, h0, c0, w_ih, w_hh, b_ih, b_hh),
                             bool(save_for_backward))
    return (out, state, saved) if save_for_backward else (out, state)


def lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None,
                  *, backend=None, saved=None):
    """Backpropagation through time of :func:`lstm` -> ``(grad_x, grad_h0, grad_c0, grad_w_ih,
    grad_w_hh, grad_b_ih, grad_b_hh)``. Any of grad_out, grad_hT, grad_cT may be None (zero).
    ``saved``: what ``lstm(..., save_for_backward=True)`` returned for the same inputs on the
    same backend; without it the forward recurrence is computed again."""
    T, B, _, Hd = _spec.lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    grad_out = _zeros_like_if_none(grad_out, x, (T, B, Hd))
    grad_hT, grad_cT = (_zeros_like_if_none(g, x, (B, Hd)) for g in (grad_hT, grad_cT))
    arrays = (grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    be = _resolve(backend, arrays, "lstm_backward")
    if saved is not None:
        if not isinstance(saved, _LstmSaved):
            raise ValueError("lstm_backward: saved must be the third value returned by "
                             f"lstm(..., save_for_backward=True), got {type(saved).__name__}")
        saved.check("lstm_backward", be, x, h0)
    return _run("lstm_backward", "lstm_backward", be.name, arrays, saved)


def _zeros_like_if_none(g, like, shape):
    if g is not None:
        return g
    if _spec.array_kind(like) == "cupy":
        import cupy as xp
    else:
        import numpy as xp
    return xp.zeros(shape, like.dtype)


# --------------------------------------------------------------------------------------------
# Boxes (x1, y1, x2, y2)


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


def leaky_relu(x, negative_slope=0.01, *, backend=None):
    """``x`` where ``x > 0``, else ``negative_slope * x``, as ``torch.nn.functional.leaky_relu``
    (a slope of 0 is ReLU). Any shape; NaN stays NaN."""
    slope = _spec.leaky_relu(x, negative_slope)
    return _run("leaky_relu", "leaky_relu", backend, (x,), slope)


def leaky_relu_backward(grad_out, x, negative_slope=0.01, *, backend=None):
    """Gradient of :func:`leaky_relu` at ``x``: ``grad_out`` where ``x > 0``, else
    ``negative_slope * grad_out`` (at 0 the slope, as PyTorch)."""
    slope = _spec.leaky_relu_backward(grad_out, x, negative_slope)
    return _run("leaky_relu_backward", "leaky_relu_backward", backend, (grad_out, x), slope)
