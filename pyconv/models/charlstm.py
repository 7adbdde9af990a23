"""A character-level language model: embedding, a stack of recurrent layers, and a softmax
over the next character (Karpathy's char-rnn).

``cell="lstm"`` uses nn.LSTM (one fused kernel call per layer and sequence); ``cell="rnn"`` a
plain tanh RNN of the same width built from nn.RNNCell, for comparison: its state is
overwritten at every step, so what it read a few dozen characters ago fades, while the
LSTM's gated cell state can keep it.
"""
from __future__ import annotations

import math

import numpy as np

from .. import nn
from .. import random as _random
from ..autograd import Tensor, array_module, no_grad, stack
from ..nn import functional as F

__all__ = ["CharLSTM"]


class CharLSTM(nn.Module):
    """Next-character model over the characters of `vocab` (a string of distinct characters).

        model = CharLSTM(vocab="abc .", hidden_size=128, num_layers=2)
        logits, state = model(ids, state)       # ids (B, T) -> logits (B, T, V)
        text = model.sample("the ", 200, temperature=0.8)

    The state (per layer h, and c for the LSTM) goes in and out of every call, so training
    can carry it across consecutive windows of a long text (truncated backpropagation
    through time: :meth:`detach_state` cuts the graph between windows).
    """

    def __init__(self, vocab, embed_dim=32, hidden_size=128, num_layers=2, cell="lstm",
                 dtype=np.float32):
        super().__init__()
        if cell not in ("lstm", "rnn"):
            raise ValueError(f"CharLSTM: cell must be 'lstm' or 'rnn', got {cell!r}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("CharLSTM: vocab must not repeat characters")
        self.config = dict(vocab=vocab, embed_dim=embed_dim, hidden_size=hidden_size,
                           num_layers=num_layers, cell=cell)
        self.vocab, self.cell, self.num_layers = vocab, cell, num_layers
        self.index = {ch: i for i, ch in enumerate(vocab)}
        self.embed = nn.Embedding(len(vocab), embed_dim, dtype=dtype)
        if cell == "lstm":
            self.rnn = nn.LSTM(embed_dim, hidden_size, num_layers, dtype=dtype)
            # forget gates start open (bias 1, Jozefowicz et al. 2015): the cell state keeps what
            # it read from the start of training, so long-range gradients do not vanish at once
            for k in range(num_layers):
                getattr(self.rnn, f"bias_ih_l{k}").data[hidden_size:2 * hidden_size] = 1.0
        else:
            self.cells = nn.Sequential(*[nn.RNNCell(embed_dim if k == 0 else hidden_size, hidden_size,
                                                    dtype=dtype) for k in range(num_layers)])
        self.out = nn.Linear(hidden_size, len(vocab), dtype=dtype)

    @classmethod
    def from_config(cls, **config):
        return cls(**config)

    def encode(self, text) -> np.ndarray:
        try:
            return np.array([self.index[ch] for ch in text], np.int64)
        except KeyError as e:
            raise ValueError(f"CharLSTM: character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in np.asarray(ids).reshape(-1))

    def forward(self, ids, state=None):
        """ids (B, T) int -> (logits (B, T, V), state)."""
        ids = ids.data if isinstance(ids, Tensor) else array_module(ids).asarray(ids)
        x = self.embed(ids.T)  # (T, B, E): time first, as the recurrent layers want
        if self.cell == "lstm":
            h, state = self.rnn(x, state)
        else:
            h, state = self._run_rnn(x, state)
        T, B, H = h.shape
        logits = self.out(h.reshape(T * B, H)).reshape(T, B, -1)
        return logits.transpose(1, 0, 2), state

    def _run_rnn(self, x, state):
        states = list(state) if state is not None else [None] * self.num_layers
        for k, cell in enumerate(self.cells):
            outputs, h = [], states[k]
            for t in range(x.shape[0]):
                h = cell(x[t], h)
                outputs.append(h)
            states[k] = h
            x = stack(outputs, axis=0)
        return x, tuple(states)

    @staticmethod
    def detach_state(state):
        """The state as constants: the next window's gradients stop here."""
        if state is None:
            return None
        return tuple(s.detach() if isinstance(s, Tensor) else s for s in state)

    def loss(self, ids, targets, state=None):
        """Mean cross-entropy (nats per character) of predicting `targets` (B, T) -> (loss,
        state)."""
        logits, state = self(ids, state)
        B, T, V = logits.shape
        targets = array_module(targets).asarray(targets)
        return F.cross_entropy(logits.reshape(B * T, V), targets.reshape(-1)), state

    def sample(self, prefix, n, temperature=1.0, rng=None) -> str:
        """`prefix` followed by n characters drawn one at a time from softmax(logits / T)."""
        rng = rng or _random.generator()
        if not prefix:
            raise ValueError("CharLSTM.sample: needs a non-empty prefix")
        ids = self.encode(prefix)
        was_training = self.training
        self.eval()
        out = []
        try:
            with no_grad():
                logits, state = self(ids[None])
                for _ in range(n):
                    z = np.asarray(logits.data[0, -1], np.float64) / max(temperature, 1e-6)
                    p = np.exp(z - z.max())
                    p /= p.sum()
                    nxt = int(min(np.searchsorted(p.cumsum(), rng.random()), len(p) - 1))
                    out.append(nxt)
                    logits, state = self(np.array([[nxt]]), state)
        finally:
            self.train(was_training)
        return prefix + self.decode(out)

    def bits_per_char(self, ids, batch_size=16, seq_len=128) -> float:
        """Mean -log2 p(next character) over the token sequence `ids`, reading it as
        `batch_size` streams with the state carried along (as in training)."""
        from ..data import TextStreams

        total, count = 0.0, 0
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                state = None
                for x, y, _ in TextStreams(ids, batch_size, seq_len):
                    loss, state = self.loss(x, y, state)
                    total += float(loss.item()) * y.size
                    count += y.size
        finally:
            self.train(was_training)
        return total / count / math.log(2)
