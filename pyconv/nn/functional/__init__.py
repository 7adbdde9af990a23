"""Differentiable operations on Tensors (``import pyconv.nn.functional as F``).

Each heavy operation is a :class:`~pyconv.autograd.Function` whose ``forward`` and
``backward`` call :mod:`pyconv.ops` (convolutions, pooling, unpooling, LSTM), so it runs on
whatever backend ``ops`` picks. Everything else is array code written against the input's
array module (NumPy or CuPy), or composed from Tensor arithmetic when that is just as clear.
Signatures and semantics follow ``torch.nn.functional`` where a function of the same name
exists there.

One module per family: :mod:`.conv`, :mod:`.pooling`, :mod:`.linear` (linear, embedding,
flatten), :mod:`.activation`, :mod:`.dropout`, :mod:`.normalization`, :mod:`.recurrent`,
:mod:`.loss` and :mod:`.style` (Gram matrix, AdaIN).
"""
from .activation import elu, gated_tanh, leaky_relu, log_softmax, maxout, prelu, relu, sigmoid, softmax, tanh
from .conv import conv1d, conv2d, conv_transpose2d
from .dropout import dropout
from .linear import embedding, flatten, linear
from .loss import (
    binary_cross_entropy, binary_cross_entropy_with_logits, contrastive_loss, cross_entropy,
    kl_normal, l1_loss, mean_bias_error, mse_loss, multi_margin_loss, nll_loss,
)
from .normalization import batch_norm
from .pooling import avg_pool2d, max_pool2d, max_unpool2d
from .recurrent import lstm, lstm_cell, rnn_cell
from .style import adain, gram_matrix

__all__ = [
    "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "max_unpool2d",
    "linear", "relu", "leaky_relu", "prelu", "elu", "sigmoid", "tanh", "gated_tanh", "softmax",
    "log_softmax", "maxout", "dropout", "batch_norm", "embedding", "flatten",
    "lstm", "lstm_cell", "rnn_cell",
    "cross_entropy", "nll_loss", "multi_margin_loss", "mse_loss", "l1_loss", "mean_bias_error",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_normal", "contrastive_loss",
    "gram_matrix", "adain",
]
