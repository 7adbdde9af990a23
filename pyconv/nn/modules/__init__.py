"""Layers: :class:`Module` (parameters, buffers, sub-modules, state dicts) and the layers of
:mod:`pyconv.nn`. Constructor arguments, parameter names, weight layouts and default
initialisations follow PyTorch, so ``load_state_dict`` accepts a PyTorch module's state (as
NumPy arrays) and the layer then computes the same function.

One module per family, mirroring :mod:`pyconv.nn.functional`: :mod:`.module` (the base class,
Parameter, Identity), :mod:`.container`, :mod:`.linear`, :mod:`.conv`, :mod:`.pooling`,
:mod:`.normalization`, :mod:`.dropout`, :mod:`.activation`, :mod:`.recurrent` and
:mod:`.residual`.
"""
from .activation import ELU, LeakyReLU, LogSoftmax, PReLU, ReLU, Sigmoid, Softmax, Tanh
from .container import Sequential
from .conv import Conv1d, Conv2d, ConvTranspose2d, MaskedConv2d
from .dropout import Dropout
from .linear import Embedding, Flatten, Linear, Maxout
from .module import Identity, Module, Parameter
from .normalization import BatchNorm1d, BatchNorm2d
from .pooling import AvgPool2d, MaxPool2d, MaxUnpool2d
from .recurrent import LSTM, LSTMCell, RNNCell
from .residual import ResidualBlock

__all__ = [
    "Parameter", "Module", "Sequential", "Identity", "Linear", "Conv1d", "Conv2d",
    "ConvTranspose2d", "MaskedConv2d", "MaxPool2d", "AvgPool2d", "MaxUnpool2d", "BatchNorm1d",
    "BatchNorm2d", "Dropout", "ReLU", "LeakyReLU", "PReLU", "ELU", "Sigmoid", "Tanh", "Maxout",
    "Softmax", "LogSoftmax", "Flatten", "Embedding", "RNNCell", "LSTMCell", "LSTM",
    "ResidualBlock",
]
