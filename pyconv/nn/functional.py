"""Differentiable operations on Tensors (``import pyconv.nn.functional as F``).

Each heavy operation is a :class:`~pyconv.autograd.Function` whose ``forward`` and
``backward`` call :mod:`pyconv.ops` (convolutions, pooling, unpooling, LSTM), so it runs on
whatever backend ``ops`` picks. Everything else is array code written against the input's
array module (NumPy or CuPy), or composed from Tensor arithmetic when that is just as clear.
Signatures and semantics follow ``torch.nn.functional`` where a function of the same name
exists there.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from .. import random as _random
from ..autograd import Function, Tensor, array_module, scatter_add, unbroadcast

__all__ = [
    "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "max_unpool2d",
    "linear", "relu", "leaky_relu", "prelu", "elu", "sigmoid", "tanh", "softmax",
    "log_softmax", "maxout", "dropout", "batch_norm", "embedding", "flatten",
    "lstm", "lstm_cell", "rnn_cell",
    "cross_entropy", "nll_loss", "multi_margin_loss", "mse_loss", "l1_loss", "mean_bias_error",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_normal", "contrastive_loss",
    "gram_matrix", "adain",
]


def _data(t):
    return t.data if isinstance(t, Tensor) else t


def _tensor(t):
    return t if isinstance(t, Tensor) else Tensor(t)


# ---------------------------------------------------------------------------------------------
# Convolutions (pyconv.ops does the work and the argument checking)


class _Conv(Function):
    def __init__(self, nd, stride, padding, dilation, groups):
        self.forward_op = ops.conv2d if nd == 2 else ops.conv1d
        self.backward_op = ops.conv2d_backward if nd == 2 else ops.conv1d_backward
        self.params = (stride, padding, dilation, groups)

    def forward(self, x, w, b):
        self.x, self.w, self.has_bias = x, w, b is not None
        return self.forward_op(x, w, b, *self.params)

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        return self.backward_op(g, self.x, self.w, *self.params, needs=(nx, nw, nb and self.has_bias))


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """2-D cross-correlation: x (N, C, H, W), weight (K, C/groups, R, S) -> (N, K, Ho, Wo)."""
    return _Conv(2, stride, padding, dilation, groups)(x, weight, bias)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """1-D cross-correlation: x (N, C, L), weight (K, C/groups, R) -> (N, K, Lo)."""
    return _Conv(1, stride, padding, dilation, groups)(x, weight, bias)


class _ConvTranspose2d(Function):
    def __init__(self, stride, padding, output_padding, groups, dilation):
        self.params = (stride, padding, output_padding, groups, dilation)

    def forward(self, x, w, b):
        self.x, self.w, self.has_bias = x, w, b is not None
        return ops.conv_transpose2d(x, w, b, *self.params)

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        return ops.conv_transpose2d_backward(g, self.x, self.w, *self.params,
                                             needs=(nx, nw, nb and self.has_bias))


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1) -> Tensor:
    """Transpose convolution: x (N, C, H, W), weight (C, K/groups, R, S) -> (N, K, Ho, Wo)."""
    return _ConvTranspose2d(stride, padding, output_padding, groups, dilation)(x, weight, bias)


# ---------------------------------------------------------------------------------------------
# Pooling


class _MaxPool2d(Function):
    def __init__(self, *params):
        self.params = params

    def forward(self, x):
        self.input_shape = x.shape
        y, self.indices = ops.max_pool2d(x, *self.params, return_indices=True)
        return y

    def backward(self, g):
        return ops.max_pool2d_backward(g, self.indices, self.input_shape)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max pooling; with ``return_indices`` -> ``(y, indices)`` (indices an int64 Tensor of
    flat offsets into each H*W plane, for :func:`max_unpool2d`)."""
    fn = _MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode)
    y = fn(x)
    return (y, Tensor(fn.indices)) if return_indices else y


class _AvgPool2d(Function):
    def __init__(self, *params):
        self.params = params

    def forward(self, x):
        self.input_shape = x.shape
        return ops.avg_pool2d(x, *self.params)

    def backward(self, g):
        return ops.avg_pool2d_backward(g, self.input_shape, *self.params)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None) -> Tensor:
    """Average pooling, as ``torch.nn.functional.avg_pool2d``."""
    return _AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)(x)


class _MaxUnpool2d(Function):
    def __init__(self, indices, *params):
        self.indices, self.params = indices, params

    def forward(self, x):
        self.input_shape = x.shape
        return ops.max_unpool2d(x, self.indices, *self.params)

    def backward(self, g):
        # Each input element was written to one output position: its gradient is read back there.
        N, C = self.input_shape[:2]
        picked = array_module(g).take_along_axis(
            g.reshape(N, C, -1), self.indices.reshape(N, C, -1).astype("int64"), axis=2)
        return picked.reshape(self.input_shape)


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None) -> Tensor:
    """Inverse of max pooling: zeros except at the remembered positions."""
    return _MaxUnpool2d(_data(indices), kernel_size, stride, padding, output_size)(x)


# ---------------------------------------------------------------------------------------------
# Linear layers, embedding


class _Linear(Function):
    def forward(self, x, w, b):
        self.x, self.w = x, w
        y = x @ w.T
        if b is not None:
            y += b
        return y

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        x, w = self.x, self.w
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g @ w) if nx else None
        gw = (g2.T @ x.reshape(-1, x.shape[-1])) if nw else None
        gb = g2.sum(axis=0) if nb else None
        return gx, gw, gb


def linear(x, weight, bias=None) -> Tensor:
    """``x @ weight.T + bias``: x (..., in), weight (out, in), bias (out,)."""
    xs, ws = _data(x).shape, _data(weight).shape
    if len(ws) != 2 or not xs or xs[-1] != ws[1]:
        raise ValueError(f"linear: x of shape {tuple(xs)} does not fit weight of shape {tuple(ws)} "
                         "(need x.shape[-1] == weight.shape[1])")
    if bias is not None and _data(bias).shape != (ws[0],):
        raise ValueError(f"linear: bias must have shape ({ws[0]},), got {tuple(_data(bias).shape)}")
    return _Linear()(x, weight, bias)


class _Embedding(Function):
    def __init__(self, indices, padding_idx):
        self.indices, self.padding_idx = indices, padding_idx

    def forward(self, w):
        self.weight_shape, self.dtype = w.shape, w.dtype
        return w[self.indices]

    def backward(self, g):
        grad = array_module(g).zeros(self.weight_shape, self.dtype)
        scatter_add(grad, self.indices, g)  # a row used twice gets both gradients
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0  # the padding row stays fixed, as in PyTorch
        return grad


def embedding(indices, weight, padding_idx=None) -> Tensor:
    """Rows of `weight` (num_embeddings, dim) picked by integer `indices` of any shape; the row
    padding_idx (if given) receives no gradient."""
    idx = _data(indices)
    if not hasattr(idx, "dtype"):
        idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got {idx.dtype}")
    n = _data(weight).shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"embedding: indices must lie in [0, {n}), got values from "
                         f"{int(idx.min())} to {int(idx.max())}")
    if padding_idx is not None and padding_idx < 0:
        padding_idx += n
    return _Embedding(array_module(_data(weight)).asarray(idx), padding_idx)(weight)


def flatten(x, start_dim=1, end_dim=-1) -> Tensor:
    """Merges the axes start_dim..end_dim: (N, C, H, W) -> (N, C*H*W) by default."""
    x = _tensor(x)
    start, end = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])


# ---------------------------------------------------------------------------------------------
# Activations


class _ReLU(Function):
    def forward(self, x):
        self.y = array_module(x).maximum(x, 0)
        return self.y

    def backward(self, g):
        return g * (self.y > 0)


def relu(x) -> Tensor:
    return _ReLU()(x)


class _LeakyReLU(Function):
    def __init__(self, slope):
        self.slope = slope

    def forward(self, x):
        self.positive = x > 0
        return array_module(x).where(self.positive, x, x * self.slope)

    def backward(self, g):
        return array_module(g).where(self.positive, g, g * self.slope)


def leaky_relu(x, negative_slope=0.01) -> Tensor:
    """max(0, x) + negative_slope * min(0, x)."""
    return _LeakyReLU(negative_slope)(x)


def _channel_shape(x_ndim, n):
    """Shape that broadcasts a per-channel vector of length n along axis 1 of an x_ndim array."""
    return (1, n) + (1,) * (x_ndim - 2) if x_ndim >= 2 else (n,)


class _PReLU(Function):
    def forward(self, x, w):
        self.x, self.w_shape = x, w.shape
        self.slope = w.reshape(_channel_shape(x.ndim, w.shape[0]))
        self.positive = x > 0
        return array_module(x).where(self.positive, x, x * self.slope)

    def backward(self, g):
        xp = array_module(g)
        gx = xp.where(self.positive, g, g * self.slope) if self.needs_input_grad[0] else None
        gw = None
        if self.needs_input_grad[1]:
            per_channel = unbroadcast(xp.where(self.positive, 0, g * self.x), self.slope.shape)
            gw = per_channel.reshape(self.w_shape)
        return gx, gw


def prelu(x, weight) -> Tensor:
    """Leaky ReLU with a learned slope per channel (axis 1): weight (C,) or (1,)."""
    n, xs = _data(weight).shape, _data(x).shape
    if len(n) != 1 or (n[0] != 1 and (len(xs) < 2 or xs[1] != n[0])):
        raise ValueError(f"prelu: weight of shape {tuple(n)} must be (1,) or (C,) with C = x.shape[1] "
                         f"(x.shape={tuple(xs)})")
    return _PReLU()(x, weight)


class _ELU(Function):
    def __init__(self, alpha):
        self.alpha = alpha

    def forward(self, x):
        xp = array_module(x)
        self.positive = x > 0
        self.y = xp.where(self.positive, x, self.alpha * xp.expm1(xp.minimum(x, 0)))
        return self.y

    def backward(self, g):
        return array_module(g).where(self.positive, g, g * (self.y + self.alpha))


def elu(x, alpha=1.0) -> Tensor:
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    return _ELU(alpha)(x)


class _Sigmoid(Function):
    def forward(self, x):
        # 0.5 (1 + tanh(x/2)) equals 1 / (1 + exp(-x)) and never overflows.
        self.y = 0.5 * (1 + array_module(x).tanh(0.5 * x))
        return self.y

    def backward(self, g):
        return g * self.y * (1 - self.y)


def sigmoid(x) -> Tensor:
    return _Sigmoid()(x)


class _Tanh(Function):
    def forward(self, x):
        self.y = array_module(x).tanh(x)
        return self.y

    def backward(self, g):
        return g * (1 - self.y * self.y)


def tanh(x) -> Tensor:
    return _Tanh()(x)


class _Softmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        e = array_module(x).exp(x - x.max(axis=self.axis, keepdims=True))
        self.y = e / e.sum(axis=self.axis, keepdims=True)
        return self.y

    def backward(self, g):
        y = self.y
        return y * (g - (g * y).sum(axis=self.axis, keepdims=True))


def softmax(x, dim=-1) -> Tensor:
    return _Softmax(dim)(x)


def _log_softmax_array(x, axis):
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class _LogSoftmax(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, x):
        self.y = _log_softmax_array(x, self.axis)
        return self.y

    def backward(self, g):
        return g - array_module(g).exp(self.y) * g.sum(axis=self.axis, keepdims=True)


def log_softmax(x, dim=-1) -> Tensor:
    return _LogSoftmax(dim)(x)


def maxout(x, pool_size, dim=1) -> Tensor:
    """Maxout (Goodfellow et al. 2013): the maximum over groups of `pool_size` consecutive
    features along `dim` -> that axis shrinks pool_size times."""
    x = _tensor(x)
    dim = dim % x.ndim
    n = x.shape[dim]
    if pool_size < 1 or n % pool_size:
        raise ValueError(f"maxout: pool_size={pool_size} must divide the size {n} of dim {dim} "
                         f"(x.shape={x.shape})")
    grouped = x.reshape(x.shape[:dim] + (n // pool_size, pool_size) + x.shape[dim + 1:])
    return grouped.max(axis=dim + 1)


def dropout(x, p=0.5, training=True) -> Tensor:
    """Zeros each element with probability p and scales the rest by 1/(1-p) (training only).
    The mask comes from pyconv's seeded generator (:func:`pyconv.manual_seed`)."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    x = _tensor(x)
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0
    keep = _random.generator().random(x.shape) >= p
    mask = array_module(x.data).asarray(keep.astype(x.dtype) * (1.0 / (1.0 - p)), dtype=x.dtype)
    return x * Tensor(mask)


# ---------------------------------------------------------------------------------------------
# Batch normalisation


class _BatchNorm(Function):
    def __init__(self, mean, invstd, training):
        self.mean, self.invstd, self.training = mean, invstd, training

    def forward(self, x, w, b):
        C = x.shape[1]
        self.axes = (0,) + tuple(range(2, x.ndim))
        shape = _channel_shape(x.ndim, C)
        self.xhat = (x - self.mean.reshape(shape)) * self.invstd.reshape(shape)
        self.scale = self.invstd.reshape(shape) if w is None else (w * self.invstd).reshape(shape)
        y = self.xhat if w is None else self.xhat * w.reshape(shape)
        return y if b is None else y + b.reshape(shape)

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        axes, xhat = self.axes, self.xhat
        gw = (g * xhat).sum(axis=axes) if nw else None
        gb = g.sum(axis=axes) if nb else None
        gx = None
        if nx:
            if self.training:  # the batch statistics depend on x too
                n = g.size // g.shape[1]
                sum_g = g.sum(axis=axes, keepdims=True)
                sum_gx = (g * xhat).sum(axis=axes, keepdims=True)
                gx = self.scale * (g - (sum_g + xhat * sum_gx) / n)
            else:
                gx = g * self.scale
        return gx, gw, gb


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5) -> Tensor:
    """Batch normalisation over axis 1, as ``torch.nn.functional.batch_norm``. In training it
    normalises with the batch statistics and updates running_mean / running_var in place
    (running_var with the unbiased variance); otherwise it uses the running statistics."""
    xd = _data(x)
    if xd.ndim < 2:
        raise ValueError(f"batch_norm: x must be at least 2-D (N, C, ...), got shape {xd.shape}")
    C = xd.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if a is not None and _data(a).shape != (C,):
            raise ValueError(f"batch_norm: {name} must have shape ({C},) for x of shape {xd.shape}, "
                             f"got {_data(a).shape}")
    xp = array_module(xd)
    rm, rv = _data(running_mean), _data(running_var)
    if training:
        axes = (0,) + tuple(range(2, xd.ndim))
        n = xd.size // C
        if n < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel, got x of shape {xd.shape}")
        mean = xd.mean(axis=axes)
        var = xd.var(axis=axes)
        if rm is not None:
            rm *= 1 - momentum
            rm += momentum * mean
        if rv is not None:
            rv *= 1 - momentum
            rv += momentum * var * (n / (n - 1))
    else:
        if rm is None or rv is None:
            raise ValueError("batch_norm: evaluation mode needs running_mean and running_var")
        mean, var = rm, rv
    invstd = 1.0 / xp.sqrt(var + eps)
    return _BatchNorm(mean.astype(xd.dtype), invstd.astype(xd.dtype), training)(x, weight, bias)


# ---------------------------------------------------------------------------------------------
# Recurrent cells (gate order i, f, g, o, as PyTorch)


def _zeros_state(x, batch, hidden):
    return array_module(x).zeros((batch, hidden), x.dtype)


class _LSTM(Function):
    def forward(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        self.saved = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        self.forward_record = None
        if True not in self.needs_input_grad:
            out, (h, c) = ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        else:  # keep the gates and states of every step, so the backward need not recompute them
            out, (h, c), self.forward_record = ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                        save_for_backward=True)
        return out, h, c

    def backward(self, g_out, g_h, g_c):
        record = self.forward_record
        backend = None if record is None else record.backend  # where the forward ran
        return tuple(ops.lstm_backward(g_out, g_h, g_c, *self.saved, backend=backend, saved=record))


def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None):
    """A single-layer LSTM over a sequence x (T, B, I) -> ``(out (T, B, H), (h_T, c_T))``;
    h0/c0 may be None (zeros). Backpropagation through time is one ``ops.lstm_backward``."""
    T, B, _ = _data(x).shape
    H = _data(w_hh).shape[1]
    h0 = _zeros_state(_data(x), B, H) if h0 is None else h0
    c0 = _zeros_state(_data(x), B, H) if c0 is None else c0
    out, h, c = _LSTM()(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    return out, (h, c)


class _LSTMCell(Function):
    def forward(self, x, h, c, w_ih, w_hh, b_ih, b_hh):
        self.saved = (x, h, c, w_ih, w_hh, b_ih, b_hh)
        return ops.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)

    def backward(self, g_h, g_c):
        return tuple(ops.lstm_cell_backward(g_h, g_c, *self.saved))


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step -> ``(h_new, c_new)``; h/c may be None (zeros)."""
    B, H = _data(x).shape[0], _data(w_hh).shape[1]
    h = _zeros_state(_data(x), B, H) if h is None else h
    c = _zeros_state(_data(x), B, H) if c is None else c
    return _LSTMCell()(x, h, c, w_ih, w_hh, b_ih, b_hh)


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh") -> Tensor:
    """Elman RNN step: act(x w_ih^T + b_ih + h w_hh^T + b_hh), as ``torch.nn.RNNCell``."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn_cell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if h is None:
        h = _zeros_state(_data(x), _data(x).shape[0], _data(w_hh).shape[1])
    pre = linear(x, w_ih, b_ih) + linear(h, w_hh, b_hh)
    return tanh(pre) if nonlinearity == "tanh" else relu(pre)


# ---------------------------------------------------------------------------------------------
# Losses. reduction is "mean" (default), "sum" or "none", as PyTorch.


def _reduce(loss, reduction, op):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _class_targets(op, scores, target, ignore_index=None):
    """Checks integer class targets for scores (N, C) or (N, C, d1, ...) and returns them as an
    array on the scores' device. Entries equal to ignore_index are allowed anywhere."""
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


class _CrossEntropy(Function):
    """log_softmax + weighted negative log-likelihood (+ label smoothing) in one node. With
    a = dloss/dlog_softmax, the input gradient is a - softmax * sum(a) (just softmax - one-hot
    in the plain case)."""

    def __init__(self, target, weight, ignore_index, reduction, label_smoothing):
        self.target, self.weight, self.ignore_index = target, weight, ignore_index
        self.reduction, self.eps = reduction, label_smoothing

    def forward(self, x):
        xp = array_module(x)
        self.input_shape = x.shape
        self.logp = logp = _log_softmax_array(_classes_last(x), axis=1)
        self.safe, self.row_w = _target_rows(self.target, self.weight, self.ignore_index, x.dtype)
        C = logp.shape[1]
        losses = -logp[xp.arange(logp.shape[0]), self.safe] * self.row_w
        if self.eps:
            per_class = logp if self.weight is None else logp * self.weight
            smooth = -per_class.sum(axis=1) * (self.row_w != 0)
            losses = (1 - self.eps) * losses + (self.eps / C) * smooth
        if self.reduction == "none":
            return losses.reshape((x.shape[0],) + x.shape[2:])
        if self.reduction == "sum":
            return losses.sum()
        self.denominator = self.row_w.sum()
        return losses.sum() / self.denominator

    def backward(self, g):
        xp = array_module(g)
        M, C = self.logp.shape
        a = xp.zeros((M, C), self.logp.dtype)  # d loss_i / d logp_ic
        a[xp.arange(M), self.safe] = -(1 - self.eps) * self.row_w
        if self.eps:
            per_class = 1 if self.weight is None else self.weight
            a -= (self.eps / C) * (self.row_w != 0)[:, None] * per_class
        if self.reduction == "none":
            a *= g.reshape(-1, 1)
        else:
            a *= g / self.denominator if self.reduction == "mean" else g
        grad = a - xp.exp(self.logp) * a.sum(axis=1, keepdims=True)
        return _classes_back(grad, self.input_shape)


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
    t = _class_targets("cross_entropy", input, target, ignore_index)
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


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean") -> Tensor:
    """-input[target] for log-probabilities input (N, C) or (N, C, d1, ...), as
    ``torch.nn.functional.nll_loss`` (class weights, ignore_index)."""
    _check_reduction("nll_loss", reduction)
    t = _class_targets("nll_loss", input, target, ignore_index)
    xd = _data(input)
    w = _class_weights("nll_loss", weight, xd.shape[1], xd)
    safe, row_w = _target_rows(t, w, ignore_index, xd.dtype)
    losses = -_pick_classes(input, safe.reshape(t.shape)) * Tensor(row_w.reshape(t.shape))
    if reduction == "mean":
        return losses.sum() * (1.0 / float(row_w.sum()))
    return _reduce(losses, reduction, "nll_loss")


def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, reduction="mean") -> Tensor:
    """Multiclass hinge (SVM) loss, as ``torch.nn.functional.multi_margin_loss``:
    sum over j != y of w[y] * max(0, margin - x[y] + x[j])^p, divided by the number of classes
    C (p is 1 or 2). Seed 001 writes the p = 1 sum without the 1/C; multiply by C to get it."""
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
    """Mean bias error of seed 001: mean(target - input); positive when predictions are too low."""
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
    """(1 - t) x + (1 + (w - 1) t) softplus(-x), w the pos_weight (1 without one)."""

    def __init__(self, pos_weight):
        self.pos_weight = pos_weight

    def forward(self, x, t):
        xp = array_module(x)
        self.x, self.t = x, t
        self.softplus_neg = xp.log1p(xp.exp(-abs(x))) + xp.maximum(-x, 0)  # log(1 + e^-x), stable
        self.lw = 1 if self.pos_weight is None else 1 + (self.pos_weight - 1) * t
        return (1 - t) * x + self.lw * self.softplus_neg

    def backward(self, g):
        xp = array_module(g)
        sig = 0.5 * (1 + xp.tanh(0.5 * self.x))
        gx = g * ((1 - self.t) - self.lw * (1 - sig)) if self.needs_input_grad[0] else None
        gt = None
        if self.needs_input_grad[1]:
            pw = 1 if self.pos_weight is None else self.pos_weight
            gt = g * (-self.x + (pw - 1) * self.softplus_neg)
        return gx, gt


def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None,
                                     reduction="mean") -> Tensor:
    """Binary cross-entropy of sigmoid(input) against target, computed stably from the logits."""
    _same_shape("binary_cross_entropy_with_logits", input, target)
    loss = _BCEWithLogits(_data(pos_weight))(input, target)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def kl_normal(mu, logvar, reduction="mean") -> Tensor:
    """KL( N(mu, exp(logvar)) || N(0, I) ) of a VAE's encoder, summed over the latent axes:
    -1/2 sum(1 + logvar - mu^2 - exp(logvar)) per sample; "mean" averages over the batch."""
    _same_shape("kl_normal", mu, logvar)
    mu, logvar = _tensor(mu), _tensor(logvar)
    per_element = (1 + logvar - mu * mu - logvar.exp()) * -0.5
    per_sample = per_element.reshape(mu.shape[0], -1).sum(axis=1) if mu.ndim > 1 else per_element
    return _reduce(per_sample, reduction, "kl_normal")


def contrastive_loss(a, b, same, margin=1.0, reduction="mean") -> Tensor:
    """Contrastive loss of embedding pairs (Hadsell, Chopra & LeCun 2006; seed 001's metric
    learning): 1/2 d^2 for similar pairs (same = 1) and 1/2 max(0, margin - d)^2 for dissimilar
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


# ---------------------------------------------------------------------------------------------
# Style statistics (neural style transfer)


def gram_matrix(x) -> Tensor:
    """Channel correlations of feature maps (N, C, H, W) -> (N, C, C), F F^T / (C H W) with F
    the (C, H*W) features of each sample (Gatys et al.)."""
    x = _tensor(x)
    if x.ndim != 4:
        raise ValueError(f"gram_matrix: x must be (N, C, H, W), got shape {x.shape}")
    N, C, H, W = x.shape
    f = x.reshape(N, C, H * W)
    return (f @ f.transpose(0, 2, 1)) * (1.0 / (C * H * W))


def adain(content, style, eps=1e-5) -> Tensor:
    """Adaptive instance normalisation (Huang & Belongie 2017): each channel of `content`
    normalised to zero mean and unit variance, then given the mean and standard deviation of
    the same channel of `style`. Both (N, C, H, W); the spatial sizes may differ."""
    content, style = _tensor(content), _tensor(style)
    if content.ndim != 4 or style.ndim != 4 or content.shape[:2] != style.shape[:2]:
        raise ValueError(f"adain: content and style must be (N, C, H, W) with equal N and C, got "
                         f"{content.shape} and {style.shape}")
    axes = (2, 3)
    c_mean, s_mean = content.mean(axes, keepdims=True), style.mean(axes, keepdims=True)
    c_std = (content.var(axes, keepdims=True) + eps) ** 0.5
    s_std = (style.var(axes, keepdims=True) + eps) ** 0.5
    return (content - c_mean) / c_std * s_std + s_mean
