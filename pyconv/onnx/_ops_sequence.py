"""ONNX LSTM (every direction and layout, on :func:`pyconv.ops.lstm`) and NonMaxSuppression
(on :func:`pyconv.ops.nms`)."""
from __future__ import annotations

import numpy as np

from .. import ops
from ._registry import UnsupportedError, builder

# ---------------------------------------------------------------------------------------------
# LSTM and non-maximum suppression


def _onnx_to_pyconv_gates(a, hidden):
    """ONNX orders the gate blocks i, o, f, c; pyconv (as PyTorch) i, f, g (= c), o."""
    i, o, f, c = (a[k * hidden:(k + 1) * hidden] for k in range(4))
    return np.ascontiguousarray(np.concatenate([i, f, c, o]))


@builder("LSTM")
def _lstm(node):
    direction = node.attr("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise node.refuse(f"direction={direction!r} is not forward, reverse or bidirectional")
    activations = [a.decode() if isinstance(a, bytes) else a for a in node.attr("activations", [])]
    if activations and [a.lower() for a in activations] != ["sigmoid", "tanh", "tanh"] * len(activations[::3]):
        raise node.refuse(f"activations={activations} are not supported (only Sigmoid, Tanh, Tanh)")
    for name in ("clip", "activation_alpha", "activation_beta"):
        if node.attr(name) is not None:
            raise node.refuse(f"attribute {name} is not supported")
    if node.attr("input_forget", 0):
        raise node.refuse("input_forget=1 (coupled input and forget gates) is not supported")
    if node.has(7):
        raise node.refuse("peephole weights (input P) are not supported")
    layout = node.attr("layout", 0)
    hidden = node.attr("hidden_size")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]

    def weights(W, R, B):
        H = R.shape[-1]
        per_dir = []
        for d in range(len(dirs)):
            b_ih = b_hh = None
            if B is not None:
                b_ih, b_hh = (_onnx_to_pyconv_gates(B[d, k * 4 * H:(k + 1) * 4 * H], H) for k in (0, 1))
            per_dir.append((_onnx_to_pyconv_gates(W[d], H), _onnx_to_pyconv_gates(R[d], H), b_ih, b_hh))
        return per_dir

    fixed = None
    if node.const(1) is not None and node.const(2) is not None and (not node.has(3) or node.const(3) is not None):
        fixed = weights(node.const(1), node.const(2), node.const(3))

    def run(X, W, R, B=None, seq_lens=None, h0=None, c0=None, P=None):
        per_dir = fixed if fixed is not None else weights(W, R, B)
        x = X.transpose(1, 0, 2) if layout else X  # (T, B, I)
        T, N = x.shape[:2]
        H = R.shape[-1]
        if hidden is not None and hidden != H:
            raise ValueError(f"pyconv.onnx: {node.where()}: hidden_size={hidden} but R has shape {R.shape}")
        if seq_lens is not None and np.any(seq_lens != T):
            raise UnsupportedError(f"pyconv.onnx: {node.where()}: sequence_lens other than the full "
                                   f"length {T} are not supported")
        if layout and h0 is not None:
            h0 = h0.transpose(1, 0, 2)
        if layout and c0 is not None:
            c0 = c0.transpose(1, 0, 2)
        zeros = np.zeros((N, H), x.dtype)
        ys, hs, cs = [], [], []
        for d, (w_ih, w_hh, b_ih, b_hh) in enumerate(per_dir):
            reverse = dirs[d] == "reverse"
            xd = x[::-1] if reverse else x
            out, (h, c) = ops.lstm(xd, zeros if h0 is None else h0[d], zeros if c0 is None else c0[d],
                                   w_ih, w_hh, b_ih, b_hh)
            ys.append(out[::-1] if reverse else out)
            hs.append(h)
            cs.append(c)
        Y = np.stack(ys, axis=1)  # (T, num_directions, B, H)
        Yh, Yc = np.stack(hs), np.stack(cs)
        if layout:
            Y, Yh, Yc = Y.transpose(2, 0, 1, 3), Yh.transpose(1, 0, 2), Yc.transpose(1, 0, 2)
        return Y, Yh, Yc
    return run


@builder("NonMaxSuppression")
def _nms(node):
    center = node.attr("center_point_box", 0)
    if center not in (0, 1):
        raise node.refuse(f"center_point_box={center} is not 0 or 1")

    def corners(boxes):
        if center:  # (x_center, y_center, width, height)
            xc, yc, w, h = (boxes[:, k] for k in range(4))
            return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
        # (y1, x1, y2, x2), any diagonal pair: the IoU is the same with the axes swapped
        a, b = np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])
        return np.ascontiguousarray(np.concatenate([a, b], axis=1))

    def run(boxes, scores, max_out=None, iou_threshold=None, score_threshold=None):
        limit = 0 if max_out is None else int(np.asarray(max_out).reshape(-1)[0])
        iou = 0.0 if iou_threshold is None else float(np.asarray(iou_threshold).reshape(-1)[0])
        selected = []
        if limit > 0:
            for n in range(scores.shape[0]):
                box_n = corners(boxes[n])
                for c in range(scores.shape[1]):
                    s = scores[n, c]
                    keep = np.arange(s.shape[0])
                    if score_threshold is not None:
                        keep = keep[s > np.asarray(score_threshold).reshape(-1)[0]]
                    if keep.size == 0:
                        continue
                    kept = keep[ops.nms(np.ascontiguousarray(box_n[keep]), np.ascontiguousarray(s[keep]), iou)]
                    for i in kept[:limit]:
                        selected.append((n, c, int(i)))
        return np.array(selected, np.int64).reshape(-1, 3)
    return run
