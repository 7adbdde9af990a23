"""Loss functions. Each takes reduction "mean" (the default), "sum" or "none", as PyTorch."""
from __future__ import annotations

import numpy as np

from ... import ops
from ...autograd import Function, Tensor, array_module
from ._util import _data, _tensor
from .activation import relu

__all__ = [
    "cross_entropy", "nll_loss", "multi_margin_loss", "mse_loss", "l1_loss", "mean_bias_error",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_normal", "contrastive_loss",
]


def _reduce(loss, reduction, op):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _class_targets(op, scores, target, ignore_index=None, check_values=True):
    """Checks integer class targets for scores (N, C) or (N, C, d1, ...) and returns them as an
    array on the scores' device. Entries equal to ignore_index are allowed anywhere; the
    entries' range is left to the op when check_values is False (an op of pyconv.ops checks
    it itself)."""
    scores_shape = _data(scores).shape
    t = _data(target)
    if not hasattr(t, "dtype"):
        t = np.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class indices, got dtype {t.dtype}")
    if len(scores_shape) < 2:
        raise ValueError(f"{op}: input must be (N, C) or (N, C, d1, ...), got shape {tuple(scores_shape)}")
    want = (scores_shape[0],) + tuple(scores_shape[2:])
    if tuple(t.shape) != want:
        raise ValueError(f"{op}: target must have shape {want} for input of shape "
                         f"{tuple(scores_shape)}, got {tuple(t.shape)}")
    C = scores_shape[1]
    if not check_values:
        return array_module(_data(scores)).asarray(t)
    real = t if ignore_index is None else t[t != ignore_index]
    if real.size and (int(real.min()) < 0 or int(real.max()) >= C):
        raise ValueError(f"{op}: target classes must lie in [0, {C}), got values from "
                         f"{int(real.min())} to {int(real.max())}")
    return array_module(_data(scores)).asarray(t)


def _class_weights(op, weight, C, like):
    """The per-class weight vector (C,) on like's device and dtype, or None."""
    if weight is None:
        return None
    w = _data(weight)
    if tuple(np.shape(w)) != (C,):
        raise ValueError(f"{op}: weight must have shape ({C},) (one per class), got {tuple(np.shape(w))}")
    return array_module(like).asarray(w, dtype=like.dtype)


def _target_rows(t, weight, ignore_index, dtype):
    """Flat targets with ignored entries replaced by class 0, and each row's weight
    (weight[target], 1 without weights, 0 where ignored)."""
    xp = array_module(t)
    t = t.reshape(-1)
    keep = t != ignore_index
    safe = xp.where(keep, t, 0)
    rows = keep.astype(dtype) if weight is None else weight[safe] * keep
    return safe, rows


def _classes_last(x):
    """(N, C, d1, ...) -> (N*d1*..., C) so per-class work is along the last axis."""
    if x.ndim == 2:
        return x
    return array_module(x).moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def _classes_back(grad, shape):
    """Inverse of _classes_last for a gradient of the original `shape`."""
    if len(shape) == 2:
        return grad
    return array_module(grad).moveaxis(grad.reshape((shape[0],) + shape[2:] + (shape[1],)), -1, 1)


def _grad_per_row(g, reduction, rows, denominator, dtype):
    """The upstream gradient of a per-row loss (rows,) under `reduction`."""
    xp = array_module(g)
    if reduction == "none":
        return xp.ascontiguousarray(g.reshape(-1), dtype=dtype)
    scale = g / denominator if reduction == "mean" else g
    return xp.full(rows, scale, dtype)


class _CrossEntropy(Function):
    """log_softmax + weighted negative log-likelihood (+ label smoothing) in one node, run by
    the fused kernels of pyconv.ops on the classes of axis 1 where they lie: the forward is
    one pass per row of logits, giving the row's loss and log-sum-exp; the backward is one
    more pass from the logits and that log-sum-exp (no log-probabilities are stored)."""

    def __init__(self, target, weight, ignore_index, reduction, label_smoothing):
        self.target, self.weight, self.ignore_index = target, weight, ignore_index
        self.reduction, self.eps = reduction, label_smoothing

    def forward(self, x):
        self.x = x
        losses, self.lse = ops.cross_entropy(x, self.target, self.weight, self.ignore_index,
                                             self.eps, class_axis=1)
        if self.reduction == "none":
            return losses
        if self.reduction == "sum":
            return losses.sum()
        if self.weight is None:  # the rows not ignored
            xp = array_module(x)
            kept = self.target.size - xp.count_nonzero(self.target == self.ignore_index)
            self.denominator = xp.asarray(kept, x.dtype)
        else:
            self.denominator = _target_rows(self.target, self.weight, self.ignore_index, x.dtype)[1].sum()
        return losses.sum() / self.denominator

    def backward(self, g):
        grad_loss = _grad_per_row(g, self.reduction, self.target.size,
                                  getattr(self, "denominator", None), self.x.dtype)
        return ops.cross_entropy_backward(grad_loss.reshape(self.target.shape), self.x, self.target,
                                          self.lse, self.weight, self.ignore_index, self.eps,
                                          class_axis=1)


def _check_reduction(op, reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0) -> Tensor:
    """-log softmax(input)[target] over class axis 1, as ``torch.nn.functional.cross_entropy``
    with integer targets: input (N, C) or (N, C, d1, ...), target (N,) or (N, d1, ...); optional
    class weights (C,) (then "mean" divides by the summed weights of the targets), targets
    equal to ignore_index contribute nothing, and label_smoothing mixes in the uniform
    distribution."""
    _check_reduction("cross_entropy", reduction)
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    t = _class_targets("cross_entropy", input, target, ignore_index, check_values=False)
    w = _class_weights("cross_entropy", weight, _data(input).shape[1], _data(input))
    return _CrossEntropy(t, w, ignore_index, reduction, label_smoothing)(input)


def _pick_classes(x, t):
    """x[n, t[n], d...] for scores x (N, C, d...) and integer targets t (N, d...)."""
    x = _tensor(x)
    if x.ndim > 2:
        axes = (0,) + tuple(range(2, x.ndim)) + (1,)
        x = x.transpose(axes).reshape(-1, x.shape[1])
    xp = array_module(t)
    return x[xp.arange(t.size), t.reshape(-1)].reshape(t.shape)


class _NllLoss(Function):
    """-w[t] logp[t] per row in one node: a gather forward, a scatter backward."""

    def __init__(self, target, weight, ignore_index, reduction):
        self.target, self.weight, self.ignore_index = target, weight, ignore_index
        self.reduction = reduction

    def forward(self, logp):
        xp = array_module(logp)
        self.input_shape = logp.shape
        rows = _classes_last(logp)
        self.safe, self.row_w = _target_rows(self.target, self.weight, self.ignore_index, logp.dtype)
        losses = -rows[xp.arange(rows.shape[0]), self.safe] * self.row_w
        if self.reduction == "none":
            return losses.reshape(self.target.shape)
        if self.reduction == "sum":
            return losses.sum()
        self.denominator = self.row_w.sum()
        return losses.sum() / self.denominator

    def backward(self, g):
        xp = array_module(g)
        M = self.safe.shape[0]
        grad_loss = _grad_per_row(g, self.reduction, M, getattr(self, "denominator", None),
                                  self.row_w.dtype)
        grad = xp.zeros((M, self.input_shape[1]), self.row_w.dtype)
        grad[xp.arange(M), self.safe] = -grad_loss * self.row_w
        return _classes_back(grad, self.input_shape)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean") -> Tensor:
    """-input[target] for log-probabilities input (N, C) or (N, C, d1, ...), as
    ``torch.nn.functional.nll_loss`` (class weights, ignore_index)."""
    _check_reduction("nll_loss", reduction)
    t = _class_targets("nll_loss", input, target, ignore_index)
    xd = _data(input)
    w = _class_weights("nll_loss", weight, xd.shape[1], xd)
    return _NllLoss(t, w, ignore_index, reduction)(input)


def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, reduction="mean") -> Tensor:
    """Multiclass hinge (SVM) loss, as ``torch.nn.functional.multi_margin_loss``:
    sum over j != y of w[y] * max(0, margin - x[y] + x[j])^p, divided by the number of classes
    C (p is 1 or 2). The multiclass SVM loss as usually written, sum over j != y of
    max(0, x[j] - x[y] + 1), is the p = 1, margin = 1 case without the 1/C: multiply by C."""
    _check_reduction("multi_margin_loss", reduction)
    if p not in (1, 2):
        raise ValueError(f"multi_margin_loss: p must be 1 or 2, got {p!r}")
    x = _tensor(input)
    if x.ndim != 2:
        raise ValueError(f"multi_margin_loss: input must be (N, C), got shape {x.shape}")
    t = _class_targets("multi_margin_loss", x, target)
    xp = array_module(x.data)
    correct = _pick_classes(x, t).reshape(-1, 1)
    others = xp.ones(x.shape, x.dtype)
    others[xp.arange(t.size), t] = 0
    hinge = relu(x - correct + margin) * Tensor(others)
    if p == 2:
        hinge = hinge * hinge
    w = _class_weights("multi_margin_loss", weight, x.shape[1], x.data)
    if w is not None:
        hinge = hinge * Tensor(w[t].reshape(-1, 1))
    return _reduce(hinge.sum(axis=1) * (1.0 / x.shape[1]), reduction, "multi_margin_loss")


def _same_shape(op, a, b):
    sa, sb = tuple(_data(a).shape), tuple(_data(b).shape)
    if sa != sb:
        raise ValueError(f"{op}: input and target must have the same shape, got {sa} and {sb}")


def mse_loss(input, target, reduction="mean") -> Tensor:
    """Mean squared error (L2 loss)."""
    _same_shape("mse_loss", input, target)
    diff = _tensor(input) - target
    return _reduce(diff * diff, reduction, "mse_loss")


def l1_loss(input, target, reduction="mean") -> Tensor:
    """Mean absolute error (L1 loss)."""
    _same_shape("l1_loss", input, target)
    return _reduce((_tensor(input) - target).abs(), reduction, "l1_loss")


def mean_bias_error(input, target, reduction="mean") -> Tensor:
    """Mean bias error: mean(target - input); positive when predictions are too low (unlike MSE
    and L1, errors of opposite sign cancel, so it measures systematic bias)."""
    _same_shape("mean_bias_error", input, target)
    return _reduce(_tensor(target) - input, reduction, "mean_bias_error")


class _BinaryCrossEntropy(Function):
    """-(t log p + (1 - t) log(1 - p)) with each log clamped at -100, as PyTorch."""

    def forward(self, p, t):
        xp = array_module(p)
        self.p, self.t = p, t
        self.log_p = xp.maximum(xp.log(p), -100)
        self.log_q = xp.maximum(xp.log1p(-p), -100)
        return -(t * self.log_p + (1 - t) * self.log_q)

    def backward(self, g):
        xp = array_module(g)
        p, t = self.p, self.t
        gp = g * (p - t) / xp.maximum(p * (1 - p), 1e-12) if self.needs_input_grad[0] else None
        gt = g * (self.log_q - self.log_p) if self.needs_input_grad[1] else None
        return gp, gt


def binary_cross_entropy(input, target, weight=None, reduction="mean") -> Tensor:
    """Binary cross-entropy of probabilities `input` in [0, 1] against `target`."""
    _same_shape("binary_cross_entropy", input, target)
    p = _data(input)
    if p.size and (float(p.min()) < 0 or float(p.max()) > 1):
        raise ValueError("binary_cross_entropy: input must hold probabilities in [0, 1] "
                         "(use binary_cross_entropy_with_logits for scores)")
    loss = _BinaryCrossEntropy()(input, target)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy")


class _BCEWithLogits(Function):
    """(1 - t) x + (1 + (w - 1) t) softplus(-x), w the pos_weight (1 without one), by the fused
    kernels of pyconv.ops (one pass forward, one backward). A pos_weight that broadcasts along
    the last axis goes to the kernels as one weight per column; any other broadcast is spread
    over every element (the array then runs as one row)."""

    def __init__(self, pos_weight):
        self.pos_weight = pos_weight

    def forward(self, x, t):
        xp = array_module(x)
        t = xp.asarray(t, dtype=x.dtype)
        self.shape = x.shape
        rows = x.reshape(1, -1) if x.ndim == 0 else x
        pw = None
        if self.pos_weight is not None:
            pw = xp.asarray(self.pos_weight, dtype=x.dtype)
            columns = (rows.shape[-1],)
            if pw.ndim <= 1 and pw.size in (1, columns[0]):
                pw = xp.ascontiguousarray(xp.broadcast_to(pw.reshape(-1), columns))
            else:
                try:
                    pw = xp.ascontiguousarray(xp.broadcast_to(pw, x.shape)).reshape(-1)
                except ValueError:
                    raise ValueError(f"binary_cross_entropy_with_logits: pos_weight of shape "
                                     f"{tuple(pw.shape)} does not broadcast to the input's "
                                     f"{tuple(x.shape)}") from None
                rows = x.reshape(1, -1)
        self.rows, self.t, self.pw = rows, t.reshape(rows.shape), pw
        return ops.binary_cross_entropy_with_logits(rows, self.t, pw).reshape(self.shape)

    def backward(self, g):
        xp = array_module(g)
        gx = gt = None
        g_rows = g.reshape(self.rows.shape)
        if self.needs_input_grad[0]:
            gx = ops.binary_cross_entropy_with_logits_backward(
                xp.ascontiguousarray(g_rows), self.rows, self.t, self.pw).reshape(self.shape)
        if self.needs_input_grad[1]:  # rarely wanted: plain array code
            x = self.rows
            softplus_neg = xp.log1p(xp.exp(-abs(x))) + xp.maximum(-x, 0)
            pw = 1 if self.pw is None else self.pw
            gt = (g_rows * (-x + (pw - 1) * softplus_neg)).reshape(self.shape)
        return gx, gt


def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None,
                                     reduction="mean") -> Tensor:
    """Binary cross-entropy of sigmoid(input) against target, computed stably from the logits,
    as ``torch.nn.functional.binary_cross_entropy_with_logits`` (pos_weight broadcasts against
    the input, usually one weight per class of the last axis)."""
    _same_shape("binary_cross_entropy_with_logits", input, target)
    loss = _BCEWithLogits(_data(pos_weight))(input, target)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


class _KLNormal(Function):
    """-1/2 (1 + logvar - mu^2 - exp(logvar)), summed over every axis but the first (per
    element for 1-D inputs). One Function: as a chain of Tensor operations it recorded eight,
    each a few microseconds forward and backward on arrays of a few hundred elements."""

    def forward(self, mu, logvar):
        self.mu, self.var = mu, array_module(logvar).exp(logvar)
        per_element = (1 + logvar - mu * mu - self.var) * -0.5
        return per_element.reshape(mu.shape[0], -1).sum(axis=1) if mu.ndim > 1 else per_element

    def backward(self, g):
        if self.mu.ndim > 1:
            g = g.reshape((-1,) + (1,) * (self.mu.ndim - 1))
        n_mu, n_logvar = self.needs_input_grad
        return (g * self.mu if n_mu else None,
                g * ((self.var - 1) * 0.5) if n_logvar else None)


def kl_normal(mu, logvar, reduction="mean") -> Tensor:
    """KL( N(mu, exp(logvar)) || N(0, I) ) of a VAE's encoder, summed over the latent axes:
    -1/2 sum(1 + logvar - mu^2 - exp(logvar)) per sample; "mean" averages over the batch."""
    _same_shape("kl_normal", mu, logvar)
    mu, logvar = _tensor(mu), _tensor(logvar)
    if mu.dtype != logvar.dtype:
        raise TypeError(f"kl_normal: mu is {mu.dtype} but logvar is {logvar.dtype} (convert "
                        "explicitly; pyconv does not mix precisions)")
    return _reduce(_KLNormal()(mu, logvar), reduction, "kl_normal")


def contrastive_loss(a, b, same, margin=1.0, reduction="mean") -> Tensor:
    """Contrastive loss of embedding pairs (Hadsell, Chopra & LeCun 2006), for metric
    learning: 1/2 d^2 for similar pairs (same = 1) and 1/2 max(0, margin - d)^2 for dissimilar
    ones (same = 0), d the Euclidean distance between rows of a and b (N, D)."""
    _same_shape("contrastive_loss", a, b)
    diff = _tensor(a) - b
    if diff.ndim != 2:
        raise ValueError(f"contrastive_loss: a and b must be (N, D), got shape {diff.shape}")
    s = _data(same)
    if not hasattr(s, "shape"):
        s = np.asarray(s)
    if tuple(s.shape) != (diff.shape[0],):
        raise ValueError(f"contrastive_loss: same must have shape ({diff.shape[0]},), got {tuple(s.shape)}")
    s = array_module(diff.data).asarray(s, dtype=diff.dtype)
    sq = (diff * diff).sum(axis=1)
    d = (sq + 1e-12) ** 0.5  # the epsilon keeps the gradient finite for identical embeddings
    gap = relu(margin - d)
    loss = (sq * Tensor(s) + gap * gap * Tensor(1 - s)) * 0.5
    return _reduce(loss, reduction, "contrastive_loss")
