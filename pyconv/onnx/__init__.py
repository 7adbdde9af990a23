"""pyconv.onnx: ONNX models in and out of pyconv (needs the ``onnx`` package: the ``interop``
extra).

    graph = pyconv.onnx.load("model.onnx")                 # runs on pyconv's kernels
    (y,) = graph.run(None, {"x": x})                        # as onnxruntime.InferenceSession.run
    y = graph(x=x)

    pyconv.onnx.export(model, example_input, "model.onnx")  # a pyconv model as an ONNX graph

``load`` runs inference graphs of the default ONNX domain (opset 9 and later) whose nodes are
among :data:`SUPPORTED_OPS`: convolutions, pooling, LSTM and non-maximum suppression on
:mod:`pyconv.ops`, the rest in NumPy. A node, attribute value or input it cannot honour raises
:class:`UnsupportedError` (a ``NotImplementedError``) naming the node, its op type and opset.
``export`` traces one forward pass of a pyconv model; see :func:`export` for what it covers.
"""
from __future__ import annotations

from ._export import OPSET, export
from ._graph import SUPPORTED_OPS, Graph, load
from ._registry import UnsupportedError

__all__ = ["load", "export", "Graph", "UnsupportedError", "SUPPORTED_OPS", "OPSET"]
