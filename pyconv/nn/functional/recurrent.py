"""Recurrent layers: a whole-sequence LSTM, one LSTM step and one Elman RNN step. Gate rows are
ordered i, f, g, o, as PyTorch; the LSTM forward and backward are fused :mod:`pyconv.ops` kernels."""
from __future__ import annotations

from ... import ops
from ...autograd import Function, Tensor, array_module
from ...autograd import matrix_product as _product
from ._util import _data

__all__ = ["lstm", "lstm_cell", "rnn_cell"]


def _zeros_state(x, hidden, batched_ndim):
    """A zero (B, hidden) state for x, or (hidden,) when x is unbatched (no batch axis)."""
    batch = x.shape[-2:-1] if x.ndim == batched_ndim else ()
    return array_module(x).zeros(batch + (hidden,), x.dtype)


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
    """A single-layer LSTM over a sequence x (T, B, I) -> ``(out (T, B, H), (h_T, c_T))``, or
    unbatched x (T, I) -> ``(out (T, H), (h_T, c_T))`` with (H,) states; h0/c0 may be None
    (zeros). Backpropagation through time is one ``ops.lstm_backward``."""
    H = _data(w_hh).shape[1]
    h0 = _zeros_state(_data(x), H, 3) if h0 is None else h0
    c0 = _zeros_state(_data(x), H, 3) if c0 is None else c0
    out, h, c = _LSTM()(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    return out, (h, c)


class _LSTMCell(Function):
    def forward(self, x, h, c, w_ih, w_hh, b_ih, b_hh):
        self.saved = (x, h, c, w_ih, w_hh, b_ih, b_hh)
        return ops.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)

    def backward(self, g_h, g_c):
        return tuple(ops.lstm_cell_backward(g_h, g_c, *self.saved))


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step on x (B, I), or unbatched (I,) with (H,) states -> ``(h_new, c_new)``;
    h/c may be None (zeros)."""
    H = _data(w_hh).shape[1]
    h = _zeros_state(_data(x), H, 2) if h is None else h
    c = _zeros_state(_data(x), H, 2) if c is None else c
    return _LSTMCell()(x, h, c, w_ih, w_hh, b_ih, b_hh)


class _RNNCell(Function):
    """One Elman step as one graph node: a recurrent network records a node per step, and
    the two products, the biases and the activation as nodes of their own cost more in the
    graph's bookkeeping than in arithmetic."""

    def __init__(self, nonlinearity):
        self.tanh = nonlinearity == "tanh"

    def forward(self, x, h, w_ih, w_hh, b_ih, b_hh):
        dtype = array_module(x).result_type(*(a for a in (x, h, w_ih, w_hh, b_ih, b_hh) if a is not None))
        self.x_shape, self.h_shape = x.shape, h.shape
        self.x, self.h = x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1])
        self.w_ih, self.w_hh = w_ih, w_hh
        pre = _product(self.x, w_ih, trans_b=True).astype(dtype, copy=False)
        pre += _product(self.h, w_hh, trans_b=True)
        for b in (b_ih, b_hh):
            if b is not None:
                pre += b
        self.y = (ops.tanh if self.tanh else ops.relu)(pre).reshape(h.shape)
        return self.y

    def backward(self, g):
        need_x, need_h, need_w_ih, need_w_hh, need_b_ih, need_b_hh = self.needs_input_grad
        d = (ops.tanh_backward if self.tanh else ops.relu_backward)(g, self.y)
        d = d.reshape(-1, d.shape[-1])  # the gradient of the sum before the activation
        b_grad = d.sum(axis=0) if need_b_ih or need_b_hh else None
        return (_product(d, self.w_ih).reshape(self.x_shape) if need_x else None,
                _product(d, self.w_hh).reshape(self.h_shape) if need_h else None,
                _product(d, self.x, trans_a=True) if need_w_ih else None,
                _product(d, self.h, trans_a=True) if need_w_hh else None,
                b_grad if need_b_ih else None,
                # two leaves must not share one gradient array: an in-place update of one
                # would change the other
                (b_grad.copy() if need_b_ih else b_grad) if need_b_hh else None)


def _check_rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn_cell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    xs, ws = _data(x).shape, _data(w_ih).shape
    if len(ws) != 2 or len(xs) not in (1, 2) or xs[-1] != ws[1]:
        raise ValueError(f"rnn_cell: x of shape {tuple(xs)} does not fit w_ih of shape {tuple(ws)} "
                         "(need x (B, input_size) or (input_size,) and w_ih (hidden_size, input_size))")
    H = ws[0]
    if _data(w_hh).shape != (H, H):
        raise ValueError(f"rnn_cell: w_hh must have shape ({H}, {H}) to match w_ih {tuple(ws)}, "
                         f"got {tuple(_data(w_hh).shape)}")
    if h is not None and _data(h).shape != xs[:-1] + (H,):
        raise ValueError(f"rnn_cell: h must have shape {xs[:-1] + (H,)} for x of shape {tuple(xs)}, "
                         f"got {tuple(_data(h).shape)}")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and _data(b).shape != (H,):
            raise ValueError(f"rnn_cell: {name} must have shape ({H},), got {tuple(_data(b).shape)}")


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh") -> Tensor:
    """Elman RNN step: act(x w_ih^T + b_ih + h w_hh^T + b_hh), as ``torch.nn.RNNCell``; x (B, I)
    or unbatched (I,), h of x's batch shape and (H,) or None (zeros)."""
    _check_rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    if h is None:
        h = _zeros_state(_data(x), _data(w_hh).shape[1], 2)
    return _RNNCell(nonlinearity)(x, h, w_ih, w_hh, b_ih, b_hh)
