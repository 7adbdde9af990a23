"""Containers: Sequential, which applies its modules in order."""
from __future__ import annotations

from collections import OrderedDict

from .module import Module, _forward_hooks

__all__ = ["Sequential"]


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
        modules = tuple(self._modules.values())
        i = 0
        while i < len(modules):
            # A pair the first module runs as one (Module._fused_with), unless a forward hook
            # must see the output in between.
            fused = None if _forward_hooks or i + 1 == len(modules) else modules[i]._fused_with(modules[i + 1])
            if fused is None:
                x = modules[i](x)
                i += 1
            else:
                x = fused(x)
                i += 2
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
