"""Layers: :class:`Module` (parameters, buffers, sub-modules, state dicts) and the layers of
API.md. Constructor arguments, parameter names, weight layouts and default initialisations
follow PyTorch, so ``load_state_dict`` accepts a PyTorch module's state (as NumPy arrays) and
the layer then computes the same function.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .. import _spec
from ..autograd import Tensor, array_module, stack
from . import functional as F
from . import init

__all__ = [
    "Parameter", "Module", "Sequential", "Identity", "Linear", "Conv1d", "Conv2d",
    "ConvTranspose2d", "MaskedConv2d", "MaxPool2d", "AvgPool2d", "MaxUnpool2d", "BatchNorm1d",
    "BatchNorm2d", "Dropout", "ReLU", "LeakyReLU", "PReLU", "ELU", "Sigmoid", "Tanh", "Maxout",
    "Softmax", "LogSoftmax", "Flatten", "Embedding", "RNNCell", "LSTMCell", "LSTM",
    "ResidualBlock",
]

# Callbacks run after every Module call as hook(module, output); used by nn.summary.
_forward_hooks: list = []


class Parameter(Tensor):
    """A Tensor that a Module registers as one of its learnable parameters."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)


def _empty(shape, dtype):
    return Parameter(np.empty(shape, dtype))


class Module:
    """Base class of layers and models. Assigning a Parameter or a Module to an attribute
    registers it; ``register_buffer`` registers a non-learned array (running statistics)."""

    training = True

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        else:  # a plain value; a buffer stays a buffer when its array is replaced
            if name in params:
                if value is not None:
                    raise TypeError(f"{type(self).__name__}.{name} is a parameter: assign a "
                                    f"Parameter or None, not a {type(value).__name__}")
                params[name] = None
            modules.pop(name, None)
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        self._buffers[name] = True
        object.__setattr__(self, name, array)

    def add_module(self, name, module):
        """Registers `module` (or None) under `name`, as an attribute assignment does."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module or None, got {type(module).__name__}")
        self.__setattr__(name, module)

    def register_parameter(self, name, param):
        """Registers `param` (a Parameter, or None for an absent one such as a bias)."""
        if param is None:
            self._parameters[name] = None
            object.__setattr__(self, name, None)
        else:
            self.__setattr__(name, param)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        if _forward_hooks:
            for hook in _forward_hooks:
                hook(self, out)
        return out

    # -- traversal
    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix=""):
        seen = set()
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def apply(self, fn):
        """Calls fn(module) on every sub-module and then on self (e.g. custom initialisation)."""
        for child in self._modules.values():
            child.apply(fn)
        fn(self)
        return self

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def named_buffers(self):
        for mod_name, module in self.named_modules():
            for name in module._buffers:
                yield (f"{mod_name}.{name}" if mod_name else name), getattr(module, name)

    # -- modes, devices, dtypes
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        """Freezes (False) or unfreezes every parameter, e.g. for transfer learning."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def _apply(self, fn):
        """Replaces every parameter's and buffer's array by fn(array), in place."""
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = fn(p.data)
                    p.grad = None if p.grad is None else fn(p.grad)
            for name in m._buffers:
                object.__setattr__(m, name, fn(getattr(m, name)))
        return self

    def to(self, device):
        """Moves parameters and buffers to "cpu" (NumPy) or "cuda" (CuPy), in place."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"Module.to: device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cpu":
            return self._apply(lambda a: a if isinstance(a, np.ndarray) else a.get())
        import cupy

        return self._apply(cupy.asarray)

    def astype(self, dtype):
        """Converts floating-point parameters and buffers to `dtype` (e.g. float64 for gradient
        checks), in place."""
        return self._apply(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a)

    def double(self):
        return self.astype(np.float64)

    def float(self):
        return self.astype(np.float32)

    # -- state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Flat dict of copies of every parameter and buffer, named as PyTorch names them
        (``"features.0.weight"``, ``"bn.running_mean"``)."""
        out = OrderedDict()
        for mod_name, module in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for name, p in module._parameters.items():
                if p is not None:
                    out[prefix + name] = p.data.copy()
            for name in module._buffers:
                out[prefix + name] = getattr(module, name).copy()
        return out

    def load_state_dict(self, state, strict=True):
        """Copies arrays from `state` (as returned by state_dict(), or a PyTorch module's
        state_dict converted to NumPy) into the parameters and buffers, casting to their dtype
        and device. With strict, missing or unexpected keys raise ValueError; a shape mismatch
        always does."""
        targets = OrderedDict()
        for mod_name, module in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for name, p in module._parameters.items():
                if p is not None:
                    targets[prefix + name] = (module, name, True)
            for name in module._buffers:
                targets[prefix + name] = (module, name, False)
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for key, (module, name, is_param) in targets.items():
            if key not in state:
                continue
            current = getattr(module, name).data if is_param else getattr(module, name)
            value = state[key]
            value = value.data if isinstance(value, Tensor) else value
            if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
                value = value.detach().cpu().numpy()
            if tuple(np.shape(value)) != tuple(current.shape):
                raise ValueError(f"load_state_dict: {key!r} has shape {tuple(np.shape(value))} in the "
                                 f"state but {tuple(current.shape)} in the model")
            new = array_module(current).asarray(value, dtype=current.dtype)
            if is_param:
                getattr(module, name).data = new.copy()
            else:
                current[...] = new
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"({name}): {repr(child)}".replace("\n", "\n  ") for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Applies its modules in order. ``Sequential(a, b)`` names them "0", "1"; an OrderedDict
    gives them names."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = modules[0].items()
        else:
            items = ((str(i), m) for i, m in enumerate(modules))
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {name!r} is a {type(m).__name__}, not a Module")
            setattr(self, name, m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        modules = list(self._modules.values())
        return Sequential(*modules[i]) if isinstance(i, slice) else modules[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        setattr(self, str(len(self)), module)
        return self

    def output_shape(self, shape):
        for m in self:
            shape = m.output_shape(shape)
        return shape


class _ShapePreserving:
    """Mixin: output shape = input shape (activations, normalisation, dropout)."""

    def output_shape(self, shape):
        return tuple(shape)


class Identity(_ShapePreserving, Module):
    def forward(self, x):
        return x


# ---------------------------------------------------------------------------------------------
# Linear layers


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty((out_features, in_features), dtype)
        self.register_parameter("bias", _empty((out_features,), dtype) if bias else None)
        init.default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def output_shape(self, shape):
        return tuple(shape[:-1]) + (self.out_features,)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Maxout(Module):
    """Maxout units (Goodfellow et al. 2013): `out_features` units, each the maximum of
    `pool_size` affine functions of the input. weight (out_features * pool_size, in_features),
    the pieces of unit j being rows j*pool_size ... j*pool_size + pool_size - 1."""

    def __init__(self, in_features, out_features, pool_size=2, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features, self.pool_size = in_features, out_features, pool_size
        self.weight = _empty((out_features * pool_size, in_features), dtype)
        self.register_parameter("bias", _empty((out_features * pool_size,), dtype) if bias else None)
        init.default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.maxout(F.linear(x, self.weight, self.bias), self.pool_size, dim=-1)

    def output_shape(self, shape):
        return tuple(shape[:-1]) + (self.out_features,)


class Embedding(Module):
    """A lookup table (num_embeddings, embedding_dim), N(0, 1) initialised as PyTorch; the row
    padding_idx starts at zero and is never updated."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.weight = _empty((num_embeddings, embedding_dim), dtype)
        init.normal_(self.weight)
        if padding_idx is not None:
            self.weight.data[padding_idx] = 0

    def forward(self, indices):
        return F.embedding(indices, self.weight, self.padding_idx)

    def output_shape(self, shape):
        return tuple(shape) + (self.embedding_dim,)


# ---------------------------------------------------------------------------------------------
# Convolutions


def _pair(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _ConvNd(Module):
    nd = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, dtype=np.float32):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: groups={groups} must divide in_channels="
                             f"{in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, self.nd)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.weight = _empty(self._weight_shape(), dtype)
        self.register_parameter("bias", _empty((out_channels,), dtype) if bias else None)
        init.default_layer_init_(self.weight, self.bias)

    def _weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    def _conv_args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def output_shape(self, shape):
        x = _spec.ShapeDtype(shape, self.weight.dtype)
        w = _spec.ShapeDtype(self.weight.shape, self.weight.dtype)
        g = (_spec.conv2d if self.nd == 2 else _spec.conv1d)(x, w, None, *self._conv_args())
        return g.output_shape if self.nd == 2 else (g.N, g.K, g.Wo)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Conv2d(_ConvNd):
    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, *self._conv_args())


class Conv1d(_ConvNd):
    nd = 1

    def forward(self, x):
        return F.conv1d(x, self.weight, self.bias, *self._conv_args())


class MaskedConv2d(Conv2d):
    """PixelCNN's masked convolution (van den Oord et al. 2016): the kernel sees only pixels
    above the centre and left of it in the centre row; mask "A" (first layer) also hides the
    centre pixel itself, mask "B" (later layers) lets it through. The mask is spatial (the same
    for every channel pair); the weight keeps Conv2d's layout and state-dict names."""

    def __init__(self, mask_type, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, dtype=np.float32):
        if mask_type not in ("A", "B"):
            raise ValueError(f"MaskedConv2d: mask_type must be 'A' or 'B', got {mask_type!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, dtype)
        self.mask_type = mask_type
        R, S = self.kernel_size
        mask = np.ones((R, S), dtype)
        mask[R // 2, S // 2 + (mask_type == "B"):] = 0
        mask[R // 2 + 1:, :] = 0
        self.mask = mask

    def forward(self, x):
        mask = array_module(self.weight.data).asarray(self.mask, dtype=self.weight.dtype)
        return F.conv2d(x, self.weight * Tensor(mask), self.bias, *self._conv_args())


class ConvTranspose2d(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, dtype)
        self.output_padding = output_padding

    def _weight_shape(self):
        return (self.in_channels, self.out_channels // self.groups) + self.kernel_size

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)

    def output_shape(self, shape):
        x = _spec.ShapeDtype(shape, self.weight.dtype)
        w = _spec.ShapeDtype(self.weight.shape, self.weight.dtype)
        g = _spec.conv_transpose2d(x, w, None, self.stride, self.padding, self.output_padding,
                                   self.groups, self.dilation)
        return g.input_shape  # the transpose conv's output is the direct conv's input


# ---------------------------------------------------------------------------------------------
# Pooling


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices)

    def output_shape(self, shape):
        return _spec.pool_geom("MaxPool2d", tuple(shape), self.kernel_size, self.stride,
                               self.padding, self.dilation, self.ceil_mode).output_shape


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)

    def forward(self, x):
        return F.avg_pool2d(x, *self.args)

    def output_shape(self, shape):
        k, s, p, ceil = self.args[:4]
        return _spec.pool_geom("AvgPool2d", tuple(shape), k, s, p, 1, ceil).output_shape


class MaxUnpool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x, indices, output_size=None):
        return F.max_unpool2d(x, indices, self.kernel_size, self.stride, self.padding, output_size)


# ---------------------------------------------------------------------------------------------
# Normalisation, dropout, activations


class _BatchNorm(_ShapePreserving, Module):
    ndims = (2, 3, 4)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype))
            self.bias = Parameter(np.zeros(num_features, dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = None

    def forward(self, x):
        ndim = x.ndim if isinstance(x, Tensor) else np.ndim(x)
        if ndim not in self.ndims:
            raise ValueError(f"{type(self).__name__}: expected a {' or '.join(f'{d}-D' for d in self.ndims)} "
                             f"input, got shape {tuple(x.shape)}")
        use_batch_stats = self.training or not self.track_running_stats
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if momentum is None:  # PyTorch's cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            use_batch_stats, momentum or 0.0, self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs."""

    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs."""

    ndims = (4,)


class Dropout(_ShapePreserving, Module):
    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class ReLU(_ShapePreserving, Module):
    def forward(self, x):
        return F.relu(x)


class LeakyReLU(_ShapePreserving, Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)


class PReLU(_ShapePreserving, Module):
    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        super().__init__()
        self.weight = Parameter(np.full(num_parameters, init, dtype))

    def forward(self, x):
        return F.prelu(x, self.weight)


class ELU(_ShapePreserving, Module):
    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return F.elu(x, self.alpha)


class Sigmoid(_ShapePreserving, Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(_ShapePreserving, Module):
    def forward(self, x):
        return F.tanh(x)


class Softmax(_ShapePreserving, Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, self.dim)


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def output_shape(self, shape):
        start, end = self.start_dim % len(shape), self.end_dim % len(shape)
        return tuple(shape[:start]) + (math.prod(shape[start:end + 1]),) + tuple(shape[end + 1:])


# ---------------------------------------------------------------------------------------------
# Recurrent layers. Gate rows i, f, g, o; all weights U(-1/sqrt(H), 1/sqrt(H)) as PyTorch.


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
    or (B, T, I) with batch_first -> ``(out, (h_n, c_n))``, h_n/c_n (num_layers, B, H). Each
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
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"LSTM: expected input (T, B, {self.input_size})"
                             f"{' with batch_first as (B, T, I)' if self.batch_first else ''}, got {x.shape}")
        if self.batch_first:
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
        out = x.transpose(1, 0, 2) if self.batch_first else x
        return out, (stack(h_n), stack(c_n))


# ---------------------------------------------------------------------------------------------
# Residual block


class ResidualBlock(Module):
    """ResNet's basic block (He et al. 2016): relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)),
    3x3 convolutions without bias; the shortcut is a 1x1 convolution + batch norm when the
    stride or the channel count changes, the identity otherwise. Names as torchvision's
    BasicBlock (conv1, bn1, conv2, bn2, downsample.0, downsample.1)."""

    def __init__(self, in_channels, out_channels, stride=1, dtype=np.float32):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, dtype=dtype)
        self.bn1 = BatchNorm2d(out_channels, dtype=dtype)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, dtype=dtype)
        self.bn2 = BatchNorm2d(out_channels, dtype=dtype)
        if stride != 1 or in_channels != out_channels:
            self.downsample = Sequential(
                Conv2d(in_channels, out_channels, 1, stride, bias=False, dtype=dtype),
                BatchNorm2d(out_channels, dtype=dtype),
            )
        else:
            self.downsample = None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)

    def output_shape(self, shape):
        return self.conv1.output_shape(shape)
