"""The "reference" backend: the readable definition of every kernel, in vectorised NumPy.

This module says what each kernel computes; the other backends are tested against it. It
favours clarity over speed: convolutions gather every input window into one
array (``_unfold``) and contract it with the weights; their input gradients scatter the
windows back (``_fold``, the transpose of ``_unfold``). Everything is computed in the dtype of
the inputs (float32 or float64), except the rotated-box IoU, a polygon clipping computed in
float64 one pair at a time. Arguments arrive checked by ``pyconv._spec`` and C-contiguous.
"""
from __future__ import annotations

import math

import numpy as np

from . import Backend, LstmSaved

backend = Backend("reference", "numpy", "plain NumPy: the definition of every kernel")


# --------------------------------------------------------------------------------------------
# Windows. A geometry g (ConvGeom or PoolGeom) places output (ho, wo) over the input rows
# ho*sh - ph + r*dh (r < kernel height) and columns wo*sw - pw + s*dw.


def _kernel_hw(g):
    return (g.R, g.S) if hasattr(g, "R") else (g.kh, g.kw)


def _reads(n_out, n, stride, pad, dilation, tap):
    """Along one axis: the outputs whose kernel `tap` lands inside the input [0, n), and the
    input positions they read with it -> (slice of outputs, slice of inputs)."""
    first = tap * dilation - pad                     # what output 0 reads
    o_lo = max(0, -(first // stride))                # first output reading at or after 0
    o_hi = max(o_lo, min(n_out, (n - 1 - first) // stride + 1))
    if o_lo == o_hi:
        return slice(0, 0), slice(0, 0)
    i_lo = first + o_lo * stride
    return slice(o_lo, o_hi), slice(i_lo, i_lo + (o_hi - o_lo - 1) * stride + 1, stride)


def _touching_taps(n_out, n, k, stride, pad, dilation):
    """Along one axis: the kernel taps [lo, hi) that land inside the input for some output.
    A pooling window may be far larger than the input; its other taps only see padding."""
    lo = max(0, -(((n_out - 1) * stride - pad) // dilation))
    hi = min(k, (n - 1 + pad) // dilation + 1)
    return lo, max(lo, hi)


def _pool_taps(g):
    return (_touching_taps(g.Ho, g.H, g.kh, g.sh, g.ph, g.dh),
            _touching_taps(g.Wo, g.W, g.kw, g.sw, g.pw, g.dw))


def _unfold(x, g, fill=0.0, taps=None):
    """(N, C, Ho, Wo, R, S): the input pixels under each output's window, with `fill` where the
    window hangs over the padding. `taps` ((r0, r1), (s0, s1)) keeps only those kernel rows and
    columns (default: all of them)."""
    N, C, H, W = x.shape
    R, S = _kernel_hw(g)
    (r0, r1), (s0, s1) = taps or ((0, R), (0, S))
    windows = np.full((N, C, g.Ho, g.Wo, r1 - r0, s1 - s0), fill, x.dtype)
    for r in range(r0, r1):
        out_rows, in_rows = _reads(g.Ho, H, g.sh, g.ph, g.dh, r)
        for s in range(s0, s1):
            out_cols, in_cols = _reads(g.Wo, W, g.sw, g.pw, g.dw, s)
            windows[:, :, out_rows, out_cols, r - r0, s - s0] = x[:, :, in_rows, in_cols]
    return windows


def _fold(cols, g, H, W, taps=None):
    """Transpose of `_unfold`: adds each window entry cols[n, c, ho, wo, r, s] onto the input
    pixel it was read from (entries that fall on the padding are dropped) -> (N, C, H, W)."""
    N, C, _, _, R, S = cols.shape
    (r0, _), (s0, _) = taps or ((0, R), (0, S))
    grad = np.zeros((N, C, H, W), cols.dtype)
    for r in range(r0, r0 + R):
        out_rows, in_rows = _reads(g.Ho, H, g.sh, g.ph, g.dh, r)
        for s in range(s0, s0 + S):
            out_cols, in_cols = _reads(g.Wo, W, g.sw, g.pw, g.dw, s)
            # One tap reads distinct pixels for distinct outputs: no index repeats here.
            grad[:, :, in_rows, in_cols] += cols[:, :, out_rows, out_cols, r - r0, s - s0]
    return grad


def _grouped(a, groups, axis=1):
    """Splits `axis` (channels) into (groups, channels per group)."""
    shape = a.shape
    return a.reshape(shape[:axis] + (groups, shape[axis] // groups) + shape[axis + 1:])


# --------------------------------------------------------------------------------------------
# Convolution (cross-correlation, as every deep-learning library computes it)


@backend.register
def conv2d(x, w, b, g):
    """y[n, k, ho, wo] = b[k] + sum over c in k's group, r, s of
    x[n, c, ho*sh - ph + r*dh, wo*sw - pw + s*dw] * w[k, c mod C/groups, r, s]
    (x read as 0 outside the input)."""
    # Every tap, even one that only ever sees padding: 0 * inf is NaN, as zero padding gives.
    windows = _grouped(_unfold(x, g), g.groups)                  # (N, G, C/G, Ho, Wo, R, S)
    y = np.einsum("ngchwrs,gkcrs->ngkhw", windows, _grouped(w, g.groups, 0), optimize=True)
    y = y.reshape(g.output_shape)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y)


@backend.register
def conv2d_grad_input(grad_out, w, g):
    """Gradient of conv2d with respect to x: each output's gradient times the weights, scattered
    back onto the window it read (the transpose convolution). Only the Ho x Wo outputs of g
    contribute, so an input pixel below/right of every window gets 0."""
    cols = np.einsum("ngkhw,gkcrs->ngchwrs", _grouped(grad_out, g.groups),
                     _grouped(w, g.groups, 0), optimize=True)
    cols = cols.reshape(g.N, g.C, g.Ho, g.Wo, *_kernel_hw(g))
    return _fold(cols, g, g.H, g.W)


@backend.register
def conv2d_grad_weight(grad_out, x, g):
    """Gradient of conv2d with respect to w: the correlation of each window with the output
    gradient, summed over the batch and the output positions."""
    windows = _grouped(_unfold(x, g), g.groups)
    gw = np.einsum("ngchwrs,ngkhw->gkcrs", windows, _grouped(grad_out, g.groups), optimize=True)
    return np.ascontiguousarray(gw.reshape(g.weight_shape))


@backend.register
def conv2d_grad_bias(grad_out):
    """Gradient of conv2d with respect to b: grad_out summed over N, H, W."""
    return grad_out.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------------------------
# Pooling


@backend.register
def max_pool2d(x, g, with_indices):
    """Maximum over each window, as PyTorch (padding never wins; ceil-mode windows are clipped
    to the input). Index = flat offset ih*W + iw into the input plane. The scan is row-major
    and takes a value when ``v > best or isnan(v)``: so the first maximum wins, any NaN makes
    the output NaN with the index of the window's last NaN, and an all -inf window reports its
    first input pixel."""
    N, C, H, W = x.shape
    taps = _pool_taps(g)
    plane_index = np.arange(H * W, dtype=np.int64).reshape(1, 1, H, W)
    index = _unfold(plane_index, g, fill=-1, taps=taps).reshape(1, 1, g.Ho, g.Wo, -1)
    values = _unfold(x, g, fill=-np.inf, taps=taps).reshape(N, C, g.Ho, g.Wo, -1)
    inside = index >= 0
    best = values.max(axis=-1, keepdims=True)
    first_max = np.argmax(inside & (values == best), axis=-1)
    nan = np.isnan(values)
    last_nan = nan.shape[-1] - 1 - np.argmax(nan[..., ::-1], axis=-1)
    pick = np.where(nan.any(axis=-1), last_nan, first_max)[..., None]
    y = np.take_along_axis(values, pick, axis=-1)[..., 0]
    if not with_indices:
        return y, None
    idx = np.take_along_axis(np.broadcast_to(index, values.shape), pick, axis=-1)[..., 0]
    return y, idx


@backend.register
def max_pool2d_backward(grad_out, indices, input_shape):
    """grad_x = 0, then grad_x[n, c].flat[indices[n, c, i, j]] += grad_out[n, c, i, j]
    (a scatter-ADD: a pixel that is the maximum of several windows collects all of them)."""
    N, C, H, W = input_shape
    grad_x = np.zeros((N * C, H * W), grad_out.dtype)
    planes = np.arange(N * C)[:, None]
    np.add.at(grad_x, (planes, indices.reshape(N * C, -1)), grad_out.reshape(N * C, -1))
    return grad_x.reshape(input_shape)


def _avg_divisors(g, count_include_pad, divisor_override, dtype):
    """(Ho, Wo) divisors, as PyTorch: a window spans [o*s - p, min(o*s - p + k, n + p)); its
    size counts the padding it covers, its clipped count only the input pixels."""
    if divisor_override:
        return np.full((g.Ho, g.Wo), divisor_override, dtype)

    def sizes(n_out, n, k, s, p):
        start = np.arange(n_out) * s - p
        end = np.minimum(start + k, n + p)
        if count_include_pad:
            return end - start
        return np.minimum(end, n) - np.maximum(start, 0)

    rows = sizes(g.Ho, g.H, g.kh, g.sh, g.ph)
    cols = sizes(g.Wo, g.W, g.kw, g.sw, g.pw)
    return np.multiply.outer(rows, cols).astype(dtype)


@backend.register
def avg_pool2d(x, g, count_include_pad, divisor_override):
    """Sum over each window (padding counts as 0) divided by: divisor_override if non-zero,
    else the window size including the padding it covers (count_include_pad), else the number
    of input pixels it covers. Ceil-mode windows past the padding are clipped first."""
    sums = _unfold(x, g, taps=_pool_taps(g)).sum(axis=(-2, -1))
    return sums / _avg_divisors(g, count_include_pad, divisor_override, x.dtype)


@backend.register
def avg_pool2d_backward(grad_out, g, count_include_pad, divisor_override):
    """Each output's gradient divided by its divisor, spread over every input pixel of its
    window (the transpose of avg_pool2d)."""
    share = grad_out / _avg_divisors(g, count_include_pad, divisor_override, grad_out.dtype)
    taps = _pool_taps(g)
    (r0, r1), (s0, s1) = taps
    cols = np.broadcast_to(share[..., None, None], share.shape + (r1 - r0, s1 - s0))
    return _fold(cols, g, g.H, g.W, taps)


@backend.register
def max_unpool2d(x, indices, output_shape):
    """y = 0, then y[n, c].flat[indices[n, c, i, j]] = x[n, c, i, j]. When an index repeats
    within a plane, the last write in row-major order wins (as PyTorch's CPU loop)."""
    N, C, H, W = output_shape
    target = (np.arange(N * C)[:, None] * (H * W) + indices.reshape(N * C, -1)).ravel()
    # np.unique on the reversed targets finds each target's LAST write.
    _, last = np.unique(target[::-1], return_index=True)
    last = target.size - 1 - last
    y = np.zeros(N * C * H * W, x.dtype)
    y[target[last]] = x.ravel()[last]
    return y.reshape(output_shape)


# --------------------------------------------------------------------------------------------
# LSTM. Gate rows of w_ih, w_hh and the biases are in the order i, f, g, o (as PyTorch):
#   i, f, o = sigmoid(.), g = tanh(.),  c' = f*c + i*g,  h' = o*tanh(c').


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1/(1 + exp(-z)), without overflow


def _gates(z):
    """Pre-activations (B, 4H) -> activated gates i, f, g, o, each (B, H)."""
    zi, zf, zg, zo = np.split(z, 4, axis=1)
    return _sigmoid(zi), _sigmoid(zf), np.tanh(zg), _sigmoid(zo)


def _step_backward(grad_h, grad_c, c, c_new, gates):
    """One cell's backward pass from its input cell state c, output cell state c_new and
    activated gates (B, 4H) -> (grad of the pre-activations (B, 4H), grad of c)."""
    i, f, g, o = np.split(gates, 4, axis=1)
    tanh_c = np.tanh(c_new)
    grad_c = grad_c + grad_h * o * (1 - tanh_c**2)
    grad_z = np.concatenate([
        grad_c * g * i * (1 - i),
        grad_c * c * f * (1 - f),
        grad_c * i * (1 - g**2),
        grad_h * tanh_c * o * (1 - o),
    ], axis=1)
    return grad_z, grad_c * f


def _bias(b):
    return 0 if b is None else b


def _cell_update(z, c):
    """Pre-activations z (B, 4H) and cell state c -> (h', c', activated gates (B, 4H))."""
    gates = _gates(z)
    i, f, g, o = gates
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new, np.concatenate(gates, axis=1)


def _cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step: z = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh -> (h', c', activated gates)."""
    return _cell_update(x @ w_ih.T + _bias(b_ih) + h @ w_hh.T + _bias(b_hh), c)


@backend.register
def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step (biases may be None) -> (h', c')."""
    h_new, c_new, _ = _cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    return h_new, c_new


@backend.register
def lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh):
    """Gradients of lstm_cell given those of h' and c' (it recomputes the gates)."""
    _, c_new, gates = _cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    grad_z, grad_c_prev = _step_backward(grad_h, grad_c, c, c_new, gates)
    grad_b = grad_z.sum(axis=0)
    return (grad_z @ w_ih, grad_z @ w_hh, grad_c_prev, grad_z.T @ x, grad_z.T @ h,
            None if b_ih is None else grad_b, None if b_hh is None else grad_b.copy())


def _lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """Runs the sequence -> LstmSaved: hs, cs (T+1, B, H) (index 0 = initial state) and the
    activated gates (T, B, 4H). The input projection of all T steps is one product."""
    T = x.shape[0]
    x_proj = x @ w_ih.T + _bias(b_ih)
    hs = np.empty((T + 1,) + h0.shape, x.dtype)
    cs = np.empty_like(hs)
    gates = np.empty(x_proj.shape, x.dtype)
    hs[0], cs[0] = h0, c0
    for t in range(T):
        hs[t + 1], cs[t + 1], gates[t] = _cell_update(x_proj[t] + hs[t] @ w_hh.T + _bias(b_hh), cs[t])
    return LstmSaved(backend.name, gates, hs, cs)


@backend.register
def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save):
    """x (T, B, I) -> (out (T, B, H) = h_1..h_T, (h_T, c_T), the LstmSaved if save)."""
    s = _lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    return s.hs[1:], (s.hs[-1].copy(), s.cs[-1].copy()), s if save else None


@backend.register
def lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, saved):
    """Backpropagation through time: from the saved forward (recomputed when saved is None),
    walks back from T, carrying the gradients of h and c to the previous step."""
    s = saved if saved is not None else _lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    grad_z = np.empty_like(s.gates)
    grad_h, grad_c = grad_hT, grad_cT
    for t in reversed(range(x.shape[0])):
        grad_z[t], grad_c = _step_backward(grad_out[t] + grad_h, grad_c, s.cs[t], s.cs[t + 1], s.gates[t])
        grad_h = grad_z[t] @ w_hh
    grad_b = grad_z.sum(axis=(0, 1))
    return (grad_z @ w_ih, grad_h, grad_c,
            np.einsum("tbg,tbi->gi", grad_z, x), np.einsum("tbg,tbh->gh", grad_z, s.hs[:-1]),
            None if b_ih is None else grad_b, None if b_hh is None else grad_b.copy())


@backend.register
def rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    """h' = act(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh), act tanh or relu."""
    z = x @ w_ih.T + _bias(b_ih) + h @ w_hh.T + _bias(b_hh)
    return tanh(z) if nonlinearity == "tanh" else relu(z)


@backend.register
def rnn_cell_backward(grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    """The gradient of the pre-activation from h' (tanh' = 1 - h'^2, relu' = [h' > 0]), then
    the products of the forward, transposed."""
    grad_z = (tanh_backward if nonlinearity == "tanh" else relu_backward)(grad_h, h_new)
    grad_b = grad_z.sum(axis=0)
    return (grad_z @ w_ih, grad_z @ w_hh, grad_z.T @ x, grad_z.T @ h,
            None if b_ih is None else grad_b, None if b_hh is None else grad_b.copy())


# --------------------------------------------------------------------------------------------
# Boxes (x1, y1, x2, y2)


def _area(boxes):
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


@backend.register
def box_iou(boxes1, boxes2):
    """IoU[i, j] = area(b1[i] & b2[j]) / area(b1[i] | b2[j]). Widths and heights are clamped at
    0, so a degenerate box (x2 < x1 or y2 < y1) is empty; where the union is 0 the IoU is 0.
    NaN and inf follow IEEE arithmetic (np.maximum, np.minimum and np.clip propagate NaN): a
    NaN coordinate gives NaN IoU for the pairs it is in; inf - inf and 0 * inf give NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
        bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
        wh = np.clip(bottom_right - top_left, 0, None)
        inter = wh[..., 0] * wh[..., 1]
        union = _area(boxes1)[:, None] + _area(boxes2)[None, :] - inter
        return np.where(union == 0, 0, inter / union).astype(boxes1.dtype)


def _ranking(scores):
    """Indices by decreasing score; equal scores keep the lower index first; NaN scores last."""
    return np.argsort(-scores, kind="stable")  # NumPy sorts NaN after every number


@backend.register
def nms(boxes, scores, iou_threshold):
    """Greedy NMS: walk the boxes by decreasing score (see _ranking); keep a box unless its IoU
    with an already KEPT box is > iou_threshold (strictly). Returns the kept indices in that
    order (int64; empty for no boxes). A NaN IoU (NaN coordinates) never suppresses. The IoU,
    computed in the boxes' dtype, is compared with the threshold in float64 (as torchvision)."""
    order = _ranking(scores)
    ranked = boxes[order]
    suppressed = np.zeros(order.size, bool)
    for i in range(order.size):
        if not suppressed[i]:  # box i is kept: it suppresses the lower-ranked boxes it overlaps
            iou = box_iou(ranked[i:i + 1], ranked[i + 1:])[0]
            suppressed[i + 1:] |= iou.astype(np.float64) > iou_threshold
    return order[~suppressed].astype(np.int64)


def _groups(labels):
    """The box indices of each label, from one stable sort (increasing index in each)."""
    by_label = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.diff(labels[by_label], prepend=labels[by_label[:1]] - 1))
    return np.split(by_label, starts[1:]) if by_label.size else []


@backend.register
def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS run separately within each category idxs (boxes of different categories never
    suppress each other); the survivors of all categories, ranked as in nms."""
    kept = np.zeros(boxes.shape[0], bool)
    for members in _groups(idxs):
        kept[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    order = _ranking(scores)
    return order[kept[order]].astype(np.int64)


# --------------------------------------------------------------------------------------------
# The NMS family: soft-NMS, DIoU-NMS, Matrix NMS


@backend.register
def soft_nms(boxes, scores, sigma, iou_threshold, score_threshold, method):
    """Soft-NMS: pick the box of highest current score (np.argmax: the lower index among
    equal scores), decay the others by their IoU with it, drop those no longer >=
    score_threshold; repeat. All arithmetic in the boxes' dtype; a NaN IoU decays nothing."""
    dt = boxes.dtype.type
    current = scores.copy()
    alive = current >= score_threshold  # False for NaN
    keep, kept_scores = [], []
    with np.errstate(invalid="ignore", over="ignore"):
        while alive.any():
            k = int(np.argmax(np.where(alive, current, -np.inf)))  # alive scores are > -inf
            keep.append(k)
            kept_scores.append(current[k])
            alive[k] = False
            iou = box_iou(boxes[k:k + 1], boxes)[0]
            if method == "gaussian":
                weight = np.exp(-(iou * iou) / dt(sigma))
            else:
                weight = np.where(iou.astype(np.float64) > iou_threshold, dt(1) - iou, dt(1))
            weight = np.where(np.isnan(iou), dt(1), weight).astype(boxes.dtype)
            current = np.where(alive, current * weight, current)
            alive &= current >= score_threshold
    return np.array(keep, np.int64), np.array(kept_scores, scores.dtype)


def _diou(box, boxes):
    """DIoU = IoU - d^2 / c^2 of one box (4,) with each of boxes (M, 4), in their dtype."""
    dt = boxes.dtype.type
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = box_iou(box[None], boxes)[0]
        half = dt(0.5)
        dx = (box[0] + box[2]) * half - (boxes[:, 0] + boxes[:, 2]) * half
        dy = (box[1] + box[3]) * half - (boxes[:, 1] + boxes[:, 3]) * half
        cw = np.maximum(box[2], boxes[:, 2]) - np.minimum(box[0], boxes[:, 0])
        ch = np.maximum(box[3], boxes[:, 3]) - np.minimum(box[1], boxes[:, 1])
        d2 = dx * dx + dy * dy
        c2 = cw * cw + ch * ch
        return iou - np.where(c2 == 0, dt(0), d2 / c2).astype(boxes.dtype)


@backend.register
def diou_nms(boxes, scores, iou_threshold):
    """Greedy NMS as nms, on the DIoU instead of the IoU (compared in float64)."""
    order = _ranking(scores)
    ranked = boxes[order]
    suppressed = np.zeros(order.size, bool)
    for i in range(order.size):
        if not suppressed[i]:
            diou = _diou(ranked[i], ranked[i + 1:])
            suppressed[i + 1:] |= diou.astype(np.float64) > iou_threshold
    return order[~suppressed].astype(np.int64)


@backend.register
def matrix_nms(boxes, scores, labels, kernel, sigma):
    """Matrix NMS: per label, the IoU matrix of the boxes ranked by score, kept above the
    diagonal (i ranked before j); comp = its column maxima; decay_j = min(1, min over the
    rows i of the terms f(iou_ij) / f(comp_i)); np.min and np.max propagate NaN."""
    dt = boxes.dtype.type
    decayed = np.empty_like(scores)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for members in _groups(labels):
            members = members[_ranking(scores[members])]
            n = members.size
            iou = box_iou(boxes[members], boxes[members])
            before = np.triu(np.ones((n, n), bool), 1)  # [i, j]: i ranked before j
            comp = np.max(np.where(before, iou, dt(0)), axis=0)[:, None]  # comp_i per row i
            if kernel == "gaussian":
                term = np.exp(-dt(sigma) * (iou * iou - comp * comp))
            else:
                term = (dt(1) - iou) / (dt(1) - comp)
                before &= ~(comp == 1)  # box i certainly suppressed: it decays nothing
            decay = np.min(np.where(before, term, dt(1)), axis=0, initial=dt(1))
            decayed[members] = scores[members] * decay.astype(scores.dtype)
    return decayed


# --------------------------------------------------------------------------------------------
# Elementwise activations


@backend.register
def relu(x):
    # max(x, 0) keeping x unless x < 0, as PyTorch: NaN stays NaN, -0.0 stays -0.0.
    return np.where(x < 0, x.dtype.type(0), x)


@backend.register
def relu_backward(grad_out, y):
    # 0 where y <= 0: a NaN output passes the gradient, as PyTorch's threshold_backward.
    return np.where(y <= 0, grad_out.dtype.type(0), grad_out)


@backend.register
def leaky_relu(x, negative_slope):
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, as in PyTorch
        return np.where(x > 0, x, x * x.dtype.type(negative_slope))


@backend.register
def leaky_relu_backward(grad_out, x, negative_slope):
    with np.errstate(invalid="ignore"):
        return np.where(x > 0, grad_out, grad_out * x.dtype.type(negative_slope))


@backend.register
def elu(x, alpha):
    with np.errstate(invalid="ignore"):
        return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


@backend.register
def elu_backward(grad_out, x, alpha):
    with np.errstate(invalid="ignore"):
        return np.where(x > 0, grad_out, grad_out * (x.dtype.type(alpha) * np.exp(np.minimum(x, 0))))


def _channel_slopes(x, weight):
    """weight as an array that broadcasts against x along its channel axis (1)."""
    return weight.reshape((1, -1) + (1,) * (x.ndim - 2)) if x.ndim >= 2 else weight


@backend.register
def prelu(x, weight):
    with np.errstate(invalid="ignore"):
        return np.where(x > 0, x, x * _channel_slopes(x, weight))


@backend.register
def prelu_backward(grad_out, x, weight):
    with np.errstate(invalid="ignore"):
        grad_x = np.where(x > 0, grad_out, grad_out * _channel_slopes(x, weight))
        per_element = np.where(x > 0, 0, grad_out * x)
    if weight.shape[0] == 1 or x.ndim < 2:
        grad_weight = per_element.sum(dtype=np.float64).reshape(1)
    else:
        grad_weight = per_element.sum(axis=(0,) + tuple(range(2, x.ndim)), dtype=np.float64)
    return grad_x, grad_weight.astype(x.dtype)


@backend.register
def sigmoid(x):
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-x))).astype(x.dtype)


@backend.register
def sigmoid_backward(grad_out, y):
    return grad_out * (1 - y) * y


@backend.register
def tanh(x):
    return np.tanh(x)


@backend.register
def tanh_backward(grad_out, y):
    return grad_out * (1 - y * y)


@backend.register
def gated_tanh(x, dim):
    a, b = np.split(x, 2, axis=dim)
    return np.tanh(a) * sigmoid(b)


@backend.register
def gated_tanh_backward(grad_out, x, dim):
    a, b = np.split(x, 2, axis=dim)
    t, s = np.tanh(a), sigmoid(b)
    return np.concatenate((grad_out * s * (1 - t * t), grad_out * t * (s * (1 - s))), axis=dim)


_PHILOX_M0, _PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_LOW32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counters, key):
    """Philox4x32-10 (Salmon et al., SC 2011): counters (n, 4) and key (k0, k1), 32-bit words
    -> (n, 4) uint32 words."""
    c0, c1, c2, c3 = np.asarray(counters, np.uint64).T
    k0, k1 = int(key[0]), int(key[1])
    for _ in range(10):
        p0, p1 = _PHILOX_M0 * c0, _PHILOX_M1 * c2  # 32 x 32 -> 64 bits, exact in uint64
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _LOW32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _LOW32)
        k0, k1 = (k0 + _PHILOX_W0) & 0xFFFFFFFF, (k1 + _PHILOX_W1) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def dropout_words(n, seed):
    """The 32-bit draw of each of n elements: element i takes word i % 4 of block i // 4, the
    block's counter (i // 4 mod 2^32, i // 4 // 2^32, 0, 0), the key (seed mod 2^32, seed //
    2^32)."""
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    zeros = np.zeros_like(blocks)
    counters = np.stack([blocks & _LOW32, blocks >> np.uint64(32), zeros, zeros], axis=1)
    return philox4x32_10(counters, (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)[:n]


@backend.register
def dropout(x, keep_threshold, scale, seed):
    mask = ((dropout_words(x.size, seed) >> 8) < keep_threshold).astype(np.uint8).reshape(x.shape)
    with np.errstate(invalid="ignore"):
        y = x * np.where(mask == 1, x.dtype.type(scale), x.dtype.type(0))
    return y, mask


@backend.register
def dropout_backward(grad_out, mask, scale):
    with np.errstate(invalid="ignore"):
        return grad_out * np.where(mask == 1, grad_out.dtype.type(scale), grad_out.dtype.type(0))


# --------------------------------------------------------------------------------------------
# Rotated boxes (cx, cy, w, h, angle in degrees). Every backend follows these steps, in float64.


def _cos_sin_degrees(angle):
    """cos and sin of `angle` degrees. The angle is reduced to q quarter turns plus a remainder
    r with |r| <= 45 (both steps exact), so multiples of 90 degrees give exact 0 and +-1."""
    a = math.fmod(angle, 360.0)
    q = math.floor(a / 90.0 + 0.5)
    t = (a - 90.0 * q) * (math.pi / 180.0)
    c, s = math.cos(t), math.sin(t)
    return ((c, s), (-s, c), (-c, -s), (s, -c))[q % 4]


def _rotated_corners(box):
    """The corners of `box` relative to its centre, counter-clockwise (positive shoelace area).
    The width runs along (cos, -sin), the height along (sin, cos)."""
    _, _, w, h, angle = box
    c, s = _cos_sin_degrees(angle)
    hw, hh = 0.5 * w, 0.5 * h
    ux, uy = c * hw, -s * hw
    vx, vy = s * hh, c * hh
    return [(-ux - vx, -uy - vy), (ux - vx, uy - vy), (ux + vx, uy + vy), (-ux + vx, -uy + vy)]


# Exact clipping of a quadrilateral by four half-planes leaves at most 8 vertices. Rounding can
# give a sliver lying along a clipping line alternating signs, and so more crossings; every
# backend keeps the first 8 vertices (a sliver's area is within rounding of 0 anyway).
MAX_VERTICES = 8


def _clip(polygon, a, b):
    """Sutherland-Hodgman: the part of a convex polygon on the left of (or on) the line a -> b."""
    ex, ey = b[0] - a[0], b[1] - a[1]
    side = [ex * (y - a[1]) - ey * (x - a[0]) for x, y in polygon]
    out = []
    for k, (cur, s_cur) in enumerate(zip(polygon, side)):
        nxt, s_nxt = polygon[(k + 1) % len(polygon)], side[(k + 1) % len(polygon)]
        if s_cur >= 0:
            out.append(cur)
        if (s_cur > 0 and s_nxt < 0) or (s_cur < 0 and s_nxt > 0):
            t = s_cur / (s_cur - s_nxt)
            out.append((cur[0] + t * (nxt[0] - cur[0]), cur[1] + t * (nxt[1] - cur[1])))
    return out[:MAX_VERTICES]


def _rotated_iou(a, b):
    """IoU of two rotated boxes (5 Python floats each): NaN when a value is not finite, 0 when a
    box is empty (w or h <= 0), else the area of a's rectangle clipped by the four edges of b's
    (in coordinates centred on a, for precision) over the union."""
    if not all(math.isfinite(v) for v in (*a, *b)):
        return math.nan
    if not (a[2] > 0 and a[3] > 0 and b[2] > 0 and b[3] > 0):
        return 0.0
    dx, dy = b[0] - a[0], b[1] - a[1]
    ra, rb = 0.5 * math.sqrt(a[2] * a[2] + a[3] * a[3]), 0.5 * math.sqrt(b[2] * b[2] + b[3] * b[3])
    if dx * dx + dy * dy > (ra + rb) * (ra + rb):  # the circumscribed circles are apart
        return 0.0
    polygon = _rotated_corners(a)
    edges = [(dx + x, dy + y) for x, y in _rotated_corners(b)]
    for k in range(4):
        polygon = _clip(polygon, edges[k], edges[(k + 1) % 4])
    twice = sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(polygon, polygon[1:] + polygon[:1]))
    area_a, area_b = a[2] * a[3], b[2] * b[3]
    inter = min(max(0.5 * twice, 0.0), area_a, area_b)
    union = area_a + area_b - inter
    return 0.0 if union <= 0 else inter / union


@backend.register
def box_iou_rotated(boxes1, boxes2):
    """_rotated_iou of every pair, rounded to the boxes' dtype. Pairs of finite boxes whose
    circumscribed circles are apart (most pairs, usually) are found with array operations
    first: their IoU is 0, as _rotated_iou would say, and only the others go through it."""
    a, b = boxes1.astype(np.float64), boxes2.astype(np.float64)
    out = np.zeros((len(a), len(b)), np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        finite_a, finite_b = np.isfinite(a).all(axis=1), np.isfinite(b).all(axis=1)
        radius_a = 0.5 * np.sqrt(a[:, 2] ** 2 + a[:, 3] ** 2)
        radius_b = 0.5 * np.sqrt(b[:, 2] ** 2 + b[:, 3] ** 2)
        dx = b[None, :, 0] - a[:, None, 0]
        dy = b[None, :, 1] - a[:, None, 1]
        reach = radius_a[:, None] + radius_b[None, :]
        apart = (dx * dx + dy * dy > reach * reach) & finite_a[:, None] & finite_b[None, :]
    for i, j in zip(*np.nonzero(~apart)):
        out[i, j] = _rotated_iou(a[i].tolist(), b[j].tolist())
    return out.astype(boxes1.dtype)


@backend.register
def nms_rotated(boxes, scores, iou_threshold):
    """Greedy NMS as nms, with box_iou_rotated's IoU (rounded to the boxes' dtype)."""
    order = _ranking(scores)
    ranked = boxes[order]
    suppressed = np.zeros(order.size, bool)
    for i in range(order.size):
        if not suppressed[i]:
            iou = box_iou_rotated(ranked[i:i + 1], ranked[i + 1:])[0]
            suppressed[i + 1:] |= iou.astype(np.float64) > iou_threshold
    return order[~suppressed].astype(np.int64)

@backend.register
def matmul(a, b, trans_a, trans_b):
    return np.ascontiguousarray((a.T if trans_a else a) @ (b.T if trans_b else b))


@backend.register
def embedding(weight, indices):
    return weight[indices]


@backend.register
def embedding_backward(grad_out, indices, num_embeddings, padding_idx):
    grad_weight = np.zeros((num_embeddings, grad_out.shape[-1]), grad_out.dtype)
    # np.add.at adds one row after another, in the order of the indices.
    np.add.at(grad_weight, indices.reshape(-1), grad_out.reshape(indices.size, grad_out.shape[-1]))
    if padding_idx >= 0:
        grad_weight[padding_idx] = 0
    return grad_weight


# --------------------------------------------------------------------------------------------
# Normalisation


def _per_channel_axes(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def activated(y, activation, negative_slope, relu, leaky_relu):
    """y through batch_norm_train's activation, given a backend's relu and leaky_relu."""
    if activation == "relu":
        return relu(y)
    return leaky_relu(y, negative_slope) if activation == "leaky_relu" else y


def through_activation(grad_out, y, activation, negative_slope, relu_backward, leaky_relu_backward):
    """batch_norm_train_backward's grad_out through the activation, from the output y (for a
    slope >= 0, y > 0 exactly where the activation's input is)."""
    if activation == "relu":
        return relu_backward(grad_out, y)
    return leaky_relu_backward(grad_out, y, negative_slope) if activation == "leaky_relu" else grad_out


@backend.register
def batch_norm_train(x, weight, bias, eps, activation, negative_slope):
    axes, shape = _per_channel_axes(x)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    invstd = 1 / np.sqrt(var.astype(np.float64) + eps)
    y = (x - mean.reshape(shape)) * invstd.astype(x.dtype).reshape(shape)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return activated(y, activation, negative_slope, relu, leaky_relu), mean, var


@backend.register
def batch_norm_train_backward(grad_out, x, mean, invstd, weight, y, activation, negative_slope):
    grad_out = through_activation(grad_out, y, activation, negative_slope, relu_backward, leaky_relu_backward)
    axes, shape = _per_channel_axes(x)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    grad_bias = grad_out.sum(axis=axes)
    grad_weight = (grad_out * xhat).sum(axis=axes)
    scale = invstd if weight is None else invstd * weight
    n = x.size // x.shape[1]
    grad_x = scale.reshape(shape) * (grad_out - (grad_bias.reshape(shape) + xhat * grad_weight.reshape(shape)) / n)
    return grad_x, grad_weight, grad_bias


# --------------------------------------------------------------------------------------------
# Softmax and losses over rows x (M, C). Written with array methods and the module of the
# arrays (NumPy here; the cuda backend runs the same formulas on CuPy arrays).


def _module_of(a):
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


def _shifted(x):
    """x minus each row's maximum (rows of no classes stay as they are)."""
    return x - x.max(axis=1, keepdims=True) if x.shape[1] else x


@backend.register
def softmax(x):
    xp = _module_of(x)
    with np.errstate(invalid="ignore", over="ignore"):
        e = xp.exp(_shifted(x))
        return e / e.sum(axis=1, keepdims=True)


@backend.register
def softmax_backward(grad_out, y):
    with np.errstate(invalid="ignore", over="ignore"):
        return y * (grad_out - (grad_out * y).sum(axis=1, keepdims=True))


@backend.register
def log_softmax(x):
    xp = _module_of(x)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        shifted = _shifted(x)
        return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


@backend.register
def log_softmax_backward(grad_out, y):
    xp = _module_of(y)
    with np.errstate(invalid="ignore", over="ignore"):
        return grad_out - xp.exp(y) * grad_out.sum(axis=1, keepdims=True)


def _target_weights(target, weight, ignore_index, dtype):
    """Targets with ignored rows pointed at class 0, and each row's weight w[t] (0 where
    ignored)."""
    xp = _module_of(target)
    keep = target != ignore_index
    safe = xp.where(keep, target, 0)
    row_w = keep.astype(dtype) if weight is None else weight[safe] * keep
    return safe, row_w


def _class_rows(x):
    """x (N, C, P) as rows (N * P, C) in (n, p) order (a copy unless P = 1)."""
    return _module_of(x).moveaxis(x, 1, 2).reshape(-1, x.shape[1])


@backend.register
def cross_entropy(x, target, weight, ignore_index, label_smoothing):
    xp = _module_of(x)
    x = _class_rows(x)
    M, C = x.shape
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = x.max(axis=1, keepdims=True)
        lse = m + xp.log(xp.exp(x - m).sum(axis=1, keepdims=True))
        logp = x - lse
        safe, row_w = _target_weights(target, weight, ignore_index, x.dtype)
        counts = row_w != 0
        loss = -logp[xp.arange(M), safe] * row_w
        if label_smoothing:
            per_class = logp if weight is None else logp * weight
            loss = (1 - label_smoothing) * loss + (label_smoothing / C) * -per_class.sum(axis=1)
        loss = xp.where(counts, loss, x.dtype.type(0))
    return loss, lse.reshape(M)


@backend.register
def cross_entropy_backward(grad_loss, x, target, weight, lse, ignore_index, label_smoothing):
    xp = _module_of(x)
    N, C, P = x.shape
    x = _class_rows(x)
    M = N * P
    safe, row_w = _target_weights(target, weight, ignore_index, x.dtype)
    counts = (row_w != 0)[:, None]
    a = xp.zeros((M, C), x.dtype)  # d loss / d log_softmax(x)
    a[xp.arange(M), safe] = -(1 - label_smoothing) * row_w
    if label_smoothing:
        per_class = xp.ones(C, x.dtype) if weight is None else weight
        a -= (label_smoothing / C) * per_class
    with np.errstate(invalid="ignore", over="ignore"):
        p = xp.exp(x - lse[:, None])
        grad = grad_loss[:, None] * (a - p * a.sum(axis=1, keepdims=True))
    grad = xp.where(counts, grad, x.dtype.type(0))
    return xp.ascontiguousarray(xp.moveaxis(grad.reshape(N, P, C), 2, 1))


def _positive_weights(pos_weight):
    return 1 if pos_weight is None else pos_weight


# With p the pos_weight, the loss (1 - t) x + (1 + (p - 1) t) log(1 + exp(-x)) and its
# gradient are written per sign of x so that no two large terms cancel: with
# L = log1p(exp(-|x|)) and e = exp(-|x|),
#   loss = (1 + (p - 1) t) L + ((1 - t) x if x >= 0 else -p t x),
#   d loss / dx = ((1 - t - p t e) if x >= 0 else (e (1 - t) - p t)) / (1 + e).


@backend.register
def binary_cross_entropy_with_logits(x, target, pos_weight):
    xp = _module_of(x)
    p = _positive_weights(pos_weight)
    with np.errstate(invalid="ignore", over="ignore"):
        softplus = xp.log1p(xp.exp(-abs(x)))
        linear = xp.where(x >= 0, (1 - target) * x, -p * target * x)
        return (1 + (p - 1) * target) * softplus + linear


@backend.register
def binary_cross_entropy_with_logits_backward(grad_out, x, target, pos_weight):
    xp = _module_of(x)
    p = _positive_weights(pos_weight)
    with np.errstate(invalid="ignore", over="ignore"):
        e = xp.exp(-abs(x))
        slope = xp.where(x >= 0, 1 - target - p * target * e, e * (1 - target) - p * target)
        return grad_out * (slope / (1 + e))


# --------------------------------------------------------------------------------------------
# Optimiser steps, in place, one parameter after another. Python scalars meet the arrays as
# scalars of the arrays' dtype (NumPy's promotion rules), which the other backends reproduce.


@backend.register
def sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, nesterov, weight_decay,
             first_step):
    for i, (p, g) in enumerate(zip(params, grads)):
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            buf = momentum_buffers[i]
            if first_step:
                buf[...] = g
            else:
                buf *= momentum
                buf += (1 - dampening) * g if dampening else g
            g = g + momentum * buf if nesterov else buf
        p -= lr * g


@backend.register
def adam_step(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay,
              decoupled_weight_decay):
    step_size = lr / (1 - beta1 ** step)
    bias2_sqrt = math.sqrt(1 - beta2 ** step)
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        if weight_decay and decoupled_weight_decay:
            p *= 1 - lr * weight_decay
        elif weight_decay:
            g = g + weight_decay * p
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        p -= step_size * m / (_module_of(v).sqrt(v) / bias2_sqrt + eps)
