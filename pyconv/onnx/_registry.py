"""The registry of ONNX operators pyconv runs, and what their builders see of a node.

For each op type a builder reads a node's attributes once (when the graph is loaded), refuses
the values it cannot honour, and returns the function that computes the node's outputs from its
input arrays. The builders live by family in ``_ops_conv`` (convolutions and pooling on
:mod:`pyconv.ops`), ``_ops_dense`` (GEMM, elementwise, normalisation, shapes and constants) and
``_ops_sequence`` (LSTM and non-maximum suppression); semantics follow the ONNX operator
specification (default domain).
"""
from __future__ import annotations

import numpy as np

from ..backends import resolve, selected

__all__ = ["BUILDERS", "VIEW_OPS", "UnsupportedError", "Node", "builder", "KernelCall"]


class UnsupportedError(NotImplementedError):
    """An ONNX node (op type, attribute value or input) that pyconv cannot run."""


class Node:
    """What a builder sees of one node: its name, op type, opset, attributes (as Python values),
    which inputs are present and the values of those that are constants of the graph."""

    def __init__(self, name, op_type, opset, attrs, n_inputs, n_outputs, consts):
        self.name, self.op_type, self.opset = name, op_type, opset
        self.attrs, self.n_inputs, self.n_outputs, self.consts = attrs, n_inputs, n_outputs, consts
        self.overwrite_first = False  # set by the planner: input 0 may be written in place

    def where(self) -> str:
        return f"node {self.name!r} ({self.op_type}, opset {self.opset})"

    def refuse(self, what) -> UnsupportedError:
        return UnsupportedError(f"pyconv.onnx: {self.where()}: {what}")

    def attr(self, name, default=None):
        return self.attrs.get(name, default)

    def has(self, i) -> bool:
        return i < self.n_inputs and self.consts[i] is not _ABSENT

    def const(self, i):
        """The constant value of input i, None where the input is absent or computed."""
        if i >= self.n_inputs:
            return None
        v = self.consts[i]
        return None if v is _ABSENT or v is _RUNTIME else v


_ABSENT = object()   # an optional input left out ('' in the node's input list)
_RUNTIME = object()  # an input computed when the graph runs

BUILDERS: dict = {}
# Ops whose output may share memory with their input: the planner never lets a consumer
# overwrite such an output in place.
VIEW_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout",
            "Expand", "Slice", "Gather"}


def builder(*op_types):
    """Registers the decorated function as the builder of `op_types`."""
    def register(fn):
        for t in op_types:
            BUILDERS[t] = fn
        return fn
    return register


class KernelCall:
    """A node's call of one pyconv backend kernel with the op's argument checks and shape rules
    run once per signature: the first call with given input shapes and dtypes, settings (hashable
    values such as the padding) and selected backend runs ``prepare(*arrays, *settings)``, which
    checks the arguments as the public op does and returns the kernel's trailing parameters (its
    geometry), and picks the backend's kernel; later calls with the same signature go straight
    to the kernel. A graph calls a node again and again with the same shapes, so the public op's
    checks on every call would be repeated work."""

    def __init__(self, op, kernel, prepare):
        self.op, self.kernel, self.prepare = op, kernel, prepare
        self._bound = {}

    def __call__(self, arrays, *settings):
        key = (selected(), settings) + tuple(None if a is None else (a.shape, a.dtype) for a in arrays)
        bound = self._bound.get(key)
        if bound is None:
            params = self.prepare(*arrays, *settings)
            kernel = resolve(None, arrays, self.op).kernel(self.kernel)
            bound = self._bound[key] = (kernel, params)
        kernel, params = bound
        return kernel(*[a if a is None or a.flags.c_contiguous else np.ascontiguousarray(a)
                        for a in arrays], *params)
