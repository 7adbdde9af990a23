"""Recurrent layers: a whole-sequence LSTM, one LSTM step and one Elman RNN step. Gate rows are
ordered i, f, g, o, as PyTorch; each forward and backward is one fused :mod:`pyconv.ops` kernel."""
from __future__ import annotations

import dataclasses

from ... import ops
from ...autograd import Function, Tensor, array_module
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
        if record is not None and self.last_backward:  # the graph goes after this backward
            record = dataclasses.replace(record, last_use=True)
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
    """One Elman step as one graph node and one kernel each way (``ops.rnn_cell`` and its
    backward): a recurrent network records a node per step, where the products, biases and
    activation as nodes of their own cost more in bookkeeping than in arithmetic."""

    def __init__(self, nonlinearity):
        self.nonlinearity = nonlinearity

    def forward(self, x, h, w_ih, w_hh, b_ih, b_hh):
        self.saved = (x, h, w_ih, w_hh, b_ih, b_hh)
        self.y = ops.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, self.nonlinearity)
        return self.y

    def backward(self, g):
        x, h, w_ih, w_hh, b_ih, b_hh = self.saved
        return ops.rnn_cell_backward(g, x, h, self.y, w_ih, w_hh, b_ih, b_hh, self.nonlinearity)


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh") -> Tensor:
    """Elman RNN step: act(x w_ih^T + b_ih + h w_hh^T + b_hh), as ``torch.nn.RNNCell``; x (B, I)
    or unbatched (I,), h of x's batch shape and (H,) or None (zeros)."""
    return _RNNCell(nonlinearity)(x, h, w_ih, w_hh, b_ih, b_hh)
