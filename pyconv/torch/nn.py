"""torch.nn modules whose forward runs pyconv's kernels, and :func:`convert`, which swaps them
into an existing model.

Each class subclasses the torch module it stands for (``pyconv.torch.nn.Conv2d`` is a
``torch.nn.Conv2d``), has its attributes, parameters and state-dict keys, and only replaces
``forward``. The ``backend`` attribute (None by default) picks the pyconv backend as the
``backend=`` keyword of :mod:`pyconv.torch.functional` does.
"""
from __future__ import annotations

import torch
from torch import nn

from ..backends import get as _get_backend
from . import functional as F

__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "MaxUnpool2d",
           "LSTM", "LSTMCell", "RNNCell", "convert", "CONVERTIBLE"]


def _refuse_padding_mode(module, path="this module"):
    if module.padding_mode != "zeros":
        raise ValueError(f"pyconv.torch: cannot convert {path} ({type(module).__name__}): "
                         f"padding_mode={module.padding_mode!r}; pyconv pads with zeros only")


class Conv1d(nn.Conv1d):
    backend: str | None = None

    def forward(self, input):
        _refuse_padding_mode(self)
        return F.conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups, backend=self.backend)


class Conv2d(nn.Conv2d):
    backend: str | None = None

    def forward(self, input):
        _refuse_padding_mode(self)
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups, backend=self.backend)


class ConvTranspose2d(nn.ConvTranspose2d):
    backend: str | None = None

    def forward(self, input, output_size=None):
        _refuse_padding_mode(self)
        # torch's own rule turns a requested output size into the output padding.
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return F.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                  output_padding, self.groups, self.dilation, backend=self.backend)


class MaxPool2d(nn.MaxPool2d):
    backend: str | None = None

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices, backend=self.backend)


class AvgPool2d(nn.AvgPool2d):
    backend: str | None = None

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override, backend=self.backend)


class MaxUnpool2d(nn.MaxUnpool2d):
    backend: str | None = None

    def forward(self, input, indices, output_size=None):
        return F.max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding,
                              output_size, backend=self.backend)


class LSTMCell(nn.LSTMCell):
    backend: str | None = None

    def forward(self, input, hx=None):
        x, unbatched = F._batched("LSTMCell", input, 2)
        if hx is None:
            zeros = x.new_zeros((x.shape[0], self.hidden_size))
            h, c = zeros, zeros
        else:
            h, c = (s.unsqueeze(0) if unbatched else s for s in hx)
        h, c = F.lstm_cell(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                           backend=self.backend)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


class RNNCell(nn.RNNCell):
    backend: str | None = None

    def forward(self, input, hx=None):
        return F.rnn_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                          self.nonlinearity, backend=self.backend)


def _lstm_refusal(module) -> str | None:
    if module.proj_size:
        return f"proj_size={module.proj_size}: pyconv's LSTM has no projection"
    return None


class LSTM(nn.Module):
    """torch.nn.LSTM on pyconv's whole-sequence LSTM kernel: one ``pyconv::lstm`` call per layer
    and direction (the reverse direction runs on the time-reversed sequence). Dropout between
    layers, in training, is torch's. PackedSequence inputs are not supported.

    It takes torch.nn.LSTM's arguments and has its attributes and parameter names, but is not
    a subclass of it: torch.compile refuses to trace torch's recurrent modules."""

    backend: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.__dict__.update(nn.LSTM(*args, **kwargs).__dict__)

    extra_repr = nn.LSTM.extra_repr

    def forward(self, input, hx=None):
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError("pyconv.torch.nn.LSTM: PackedSequence inputs are not supported; "
                            "pad the sequences (torch.nn.utils.rnn.pad_packed_sequence)")
        why = _lstm_refusal(self)
        if why:
            raise ValueError(f"pyconv.torch.nn.LSTM: {why}")
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: expected a 2-D (unbatched) or 3-D input, got shape "
                             f"{tuple(input.shape)}")
        unbatched = input.dim() == 2
        x = input
        if unbatched:
            x = x.unsqueeze(1)  # the batch axis of an unbatched (T, I) sequence
        elif self.batch_first:
            x = x.transpose(0, 1)
        directions = 2 if self.bidirectional else 1
        if hx is None:
            zeros = x.new_zeros((self.num_layers * directions, x.shape[1], self.hidden_size))
            h0, c0 = zeros, zeros
        else:
            h0, c0 = (s.unsqueeze(1) if unbatched else s for s in hx)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                weights = [getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}"),
                           *((getattr(self, f"bias_ih{suffix}"), getattr(self, f"bias_hh{suffix}"))
                             if self.bias else (None, None))]
                k = layer * directions + direction
                seq = x.flip(0) if direction else x
                out, (h, c) = F.lstm(seq, h0[k], c0[k], *weights, backend=self.backend)
                outputs.append(out.flip(0) if direction else out)
                h_n.append(h)
                c_n.append(c)
            x = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            return x.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (x.transpose(0, 1) if self.batch_first else x), (h_n, c_n)


# torch module type -> its pyconv-backed replacement.
CONVERTIBLE: dict[type, type] = {
    nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.ConvTranspose2d: ConvTranspose2d,
    nn.MaxPool2d: MaxPool2d, nn.AvgPool2d: AvgPool2d, nn.MaxUnpool2d: MaxUnpool2d,
    nn.LSTM: LSTM, nn.LSTMCell: LSTMCell, nn.RNNCell: RNNCell,
}


def _why_not(module) -> str | None:
    """Why `module` (one of CONVERTIBLE's keys) cannot run on pyconv, or None."""
    if hasattr(module, "padding_mode") and module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r}: pyconv pads with zeros only"
    if isinstance(module, nn.LSTM):
        return _lstm_refusal(module)
    for name, p in list(module.named_parameters(recurse=False)):
        if p.dtype not in (torch.float32, torch.float64):
            return f"{name} is {p.dtype}: pyconv runs float32 and float64"
    return None


def _targets(ops) -> dict[type, type]:
    if ops is None:
        return dict(CONVERTIBLE)
    by_name = {t.__name__: t for t in CONVERTIBLE}
    targets = {}
    for op in ops:
        key = by_name.get(op) if isinstance(op, str) else op
        if key not in CONVERTIBLE:
            raise ValueError(f"convert: ops must name module types among "
                             f"{', '.join(by_name)} (as classes or names), got {op!r}")
        targets[key] = CONVERTIBLE[key]
    return targets


def _swapped(module, cls, backend):
    """A `cls` sharing the module's parameters, buffers, submodules, hooks and settings."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for name in ("_parameters", "_buffers", "_modules"):
        new.__dict__[name] = dict(module.__dict__[name])
    new.backend = backend
    return new


def convert(model: nn.Module, ops=None, *, backend: str | None = None) -> nn.Module:
    """Replaces, in place, every ``Conv1d``, ``Conv2d``, ``ConvTranspose2d``, ``MaxPool2d``,
    ``AvgPool2d``, ``MaxUnpool2d``, ``LSTM``, ``LSTMCell`` and ``RNNCell`` inside `model` by its
    pyconv-backed twin (:mod:`pyconv.torch.nn`) and returns `model`.

    The twins keep the very Parameter objects, buffers and hooks of the modules they replace,
    so ``model.state_dict()`` has the same keys and tensors and an optimiser built before the
    conversion keeps working. Only modules of exactly those types are converted (not
    subclasses of them). ``ops`` limits the conversion to some of the types (classes, or
    names such as ``"Conv2d"``); ``backend`` fixes the pyconv backend of the converted modules
    (default: chosen at each call, see :mod:`pyconv.torch.functional`). When `model` itself
    is one of those types, the twin is returned and `model` is left as it was.

    Raises ValueError, naming the module's path and the attribute, for a module pyconv cannot
    run (``padding_mode`` other than ``"zeros"``, an LSTM with ``proj_size``, parameters that are
    not float32/float64), before changing anything.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    targets = _targets(ops)
    if backend is not None:
        _get_backend(backend)  # unknown or unavailable backend: fail now
    found = []
    for path, module in model.named_modules():
        if type(module) in targets:
            why = _why_not(module)
            if why:
                raise ValueError(f"convert: cannot convert {path or 'the model'} "
                                 f"({type(module).__name__}): {why}")
            found.append(path)
    if type(model) in targets:
        return _swapped(model, targets[type(model)], backend)
    for path in found:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        child = parent._modules[name]
        parent._modules[name] = _swapped(child, targets[type(child)], backend)
    return model
