"""Recurrent layers: RNNCell, LSTMCell and the multi-layer LSTM. Gate rows are ordered i, f,
g, o and every weight starts U(-1/sqrt(H), 1/sqrt(H)), as PyTorch."""
from __future__ import annotations

import math

import numpy as np

from ...autograd import Tensor, stack
from .. import functional as F
from .. import init
from .module import Module, _empty

__all__ = ["RNNCell", "LSTMCell", "LSTM"]


def _recurrent_init(module, hidden_size):
    bound = 1 / math.sqrt(hidden_size)
    for p in module.parameters():
        init.uniform_(p, -bound, bound)


class _CellBase(Module):
    gates = 1

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        G = self.gates * hidden_size
        self.weight_ih = _empty((G, input_size), dtype)
        self.weight_hh = _empty((G, hidden_size), dtype)
        self.register_parameter("bias_ih", _empty((G,), dtype) if bias else None)
        self.register_parameter("bias_hh", _empty((G,), dtype) if bias else None)
        _recurrent_init(self, hidden_size)

    def _weights(self):
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh


class RNNCell(_CellBase):
    """h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh) (or relu), as torch.nn.RNNCell."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype=np.float32):
        super().__init__(input_size, hidden_size, bias, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, x, h=None):
        return F.rnn_cell(x, h, *self._weights(), nonlinearity=self.nonlinearity)


class LSTMCell(_CellBase):
    """One LSTM step (fused ``ops.lstm_cell``): forward(x, (h, c) or None) -> (h', c')."""

    gates = 4

    def forward(self, x, hx=None):
        h, c = (None, None) if hx is None else hx
        return F.lstm_cell(x, h, c, *self._weights())


class LSTM(Module):
    """A stack of LSTM layers over a sequence, as torch.nn.LSTM (unidirectional): x (T, B, I),
    or (B, T, I) with batch_first -> ``(out, (h_n, c_n))``, h_n/c_n (num_layers, B, H); an
    unbatched x (T, I) (batch_first or not) takes and gives states (num_layers, H). Each
    layer is one fused ``ops.lstm`` call forward and one ``ops.lstm_backward`` backward."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32):
        super().__init__()
        if bidirectional:
            raise NotImplementedError("LSTM: bidirectional=True is not supported (run a second LSTM "
                                      "on the reversed sequence)")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout = batch_first, dropout
        for layer in range(num_layers):
            n_in = input_size if layer == 0 else hidden_size
            setattr(self, f"weight_ih_l{layer}", _empty((4 * hidden_size, n_in), dtype))
            setattr(self, f"weight_hh_l{layer}", _empty((4 * hidden_size, hidden_size), dtype))
            for name in (f"bias_ih_l{layer}", f"bias_hh_l{layer}"):
                self.register_parameter(name, _empty((4 * hidden_size,), dtype) if bias else None)
        _recurrent_init(self, hidden_size)

    def forward(self, x, hx=None):
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise ValueError(f"LSTM: expected input (T, B, {self.input_size})"
                             f"{' with batch_first as (B, T, I)' if self.batch_first else ''}"
                             f" or unbatched (T, {self.input_size}), got {x.shape}")
        batch_first = self.batch_first and x.ndim == 3  # an unbatched sequence has no batch axis
        if batch_first:
            x = x.transpose(1, 0, 2)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            h0 = c0 = None
            if hx is not None:
                h0, c0 = hx[0][layer], hx[1][layer]
            weights = [getattr(self, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            x, (h, c) = F.lstm(x, h0, c0, *weights)
            h_n.append(h)
            c_n.append(c)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout)
        out = x.transpose(1, 0, 2) if batch_first else x
        return out, (stack(h_n), stack(c_n))
