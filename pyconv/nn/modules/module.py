"""The Module base class (parameters, buffers, sub-modules, modes, devices, state dicts),
Parameter, and the layers every model needs: Identity and the shape-preserving mixin."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ...autograd import Tensor, array_module

__all__ = ["Parameter", "Module", "Identity"]

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

    def _fused_with(self, follower):
        """A function of one argument that runs this module and then `follower` as one step (a
        batch norm and the activation after it: one kernel instead of two), or None.
        Sequential asks each neighbouring pair."""
        return None

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
        or a value that cannot be cast always does. All or nothing: every entry is checked and
        converted before the first one is assigned, so a failed load leaves the model as it was."""
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
        converted = []
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
            try:
                new = array_module(current).array(value, dtype=current.dtype, copy=True)
            except (TypeError, ValueError) as e:
                raise ValueError(f"load_state_dict: {key!r} cannot be converted to "
                                 f"{current.dtype}: {e}") from e
            converted.append((module, name, is_param, current, new))
        for module, name, is_param, current, new in converted:
            if is_param:
                getattr(module, name).data = new
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


class _ShapePreserving:
    """Mixin: output shape = input shape (activations, normalisation, dropout)."""

    def output_shape(self, shape):
        return tuple(shape)


class Identity(_ShapePreserving, Module):
    def forward(self, x):
        return x
