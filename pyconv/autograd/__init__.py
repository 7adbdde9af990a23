"""A define-by-run autograd in the style of Chainer.

    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = (x * x).sum()
    y.backward()            # x.grad == 2 * x.data

Gradients accumulate in the leaves' ``.grad`` (set it to None to reset). The package has three
parts; at load time each imports only the ones listed before it:

- :mod:`~pyconv.autograd.engine`: the backward pass (topological order, gradient accumulation);
- :mod:`~pyconv.autograd.tensor`: :class:`Tensor`, its operators, ``no_grad``;
- :mod:`~pyconv.autograd.functions`: the :class:`Function` base class and the array-level
  primitives behind the operators (arithmetic, ``@``, reductions, reshaping, indexing).

Layers (convolutions, pooling, LSTM, losses) are Functions in :mod:`pyconv.nn.functional`;
:func:`pyconv.testing.gradcheck` checks any of them against finite differences.
"""
from .functions import Function, broadcast_to, concatenate, matrix_product, scatter_add, stack, unbroadcast
from .tensor import Tensor, array_module, enable_grad, is_grad_enabled, no_grad

__all__ = [
    "Tensor", "Function", "no_grad", "enable_grad", "is_grad_enabled", "array_module",
    "broadcast_to", "concatenate", "stack", "unbroadcast", "scatter_add", "matrix_product",
]
