"""The ``pyconv::*`` PyTorch custom operators: every op of :mod:`pyconv.ops` (and the backward
kernels that train them) registered with ``torch.library.custom_op``.

Each operator hands its tensors to pyconv without copying (``Tensor.numpy()`` on the CPU,
DLPack to CuPy on a CUDA device), runs the pyconv kernel on the backend named by its ``backend``
argument and wraps the result the same way (``torch.from_numpy`` / ``torch.from_dlpack``).
Each has a fake implementation that computes the output's shape and dtype with the op's own
shape rules (:mod:`pyconv._spec`, on abstract shapes), so ``torch.compile`` traces through it
as one opaque node, and the differentiable ones have an autograd formula that calls the
pyconv backward operators (themselves custom operators, so a compiled backward stays one
graph too). Backward operators are not differentiable again (no double backward).
An operator without a gradient whose fake implementation is just its ``_spec`` check and the
outputs' shapes registers in one line, with the ``_checked_operator`` decorator.

Argument conventions of the schemas (torch's schemas have no int-or-tuple or optional-string
types): sizes are lists with one int per spatial dimension; a convolution's ``padding="same"``
is ``same=True`` with ``padding`` ignored; an unneeded gradient is returned as an empty tensor
(the ``needs`` mask says which are wanted).
"""
# No ``from __future__ import annotations``: torch.library reads the schemas from the
# annotations as written.
import contextlib
import functools
import inspect
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from torch.utils._python_dispatch import _get_current_dispatch_mode as _get_dispatch_mode

from .. import _spec, ops
from ..backends import LstmSaved

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64,
                 torch.uint8: np.uint8}  # uint8: dropout's mask


# --------------------------------------------------------------------------------------------
# Crossing between torch tensors and pyconv arrays, without copies.


def to_array(t: Optional[Tensor], op: str = "pyconv.torch"):
    """A NumPy (CPU) or CuPy (CUDA) array sharing the tensor's memory; None stays None."""
    if t is None:
        return None
    if t.dtype not in _NUMPY_DTYPES:
        raise TypeError(f"{op}: pyconv runs float32 and float64 tensors (int64 for indices), "
                        f"got {t.dtype}")
    t = t.detach()
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(t)
    raise TypeError(f"{op}: pyconv runs tensors on the CPU or a CUDA device, got {t.device}")


def to_tensor(a) -> Tensor:
    """A torch tensor sharing the array's memory (NumPy -> CPU, CuPy -> CUDA)."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


class _on_stream_of:
    """Runs the enclosed CuPy work on torch's current CUDA stream, so that it is ordered after
    the kernels that produced its inputs and before those that consume its outputs; nothing on
    the CPU."""

    def __init__(self, t: Tensor):
        self.device = t.device if t.device.type == "cuda" else None

    def __enter__(self):
        if self.device is not None:
            import cupy

            stream = torch.cuda.current_stream(self.device)
            self._stream = cupy.cuda.ExternalStream(stream.cuda_stream, self.device.index)
            self._stream.__enter__()

    def __exit__(self, *exc):
        if self.device is not None:
            self._stream.__exit__(*exc)


def _shape(t: Optional[Tensor]):
    """The abstract array (shape, dtype) of a tensor, for pyconv's shape rules."""
    if t is None:
        return None
    if t.dtype not in _NUMPY_DTYPES:
        raise TypeError(f"pyconv: float32 or float64 tensors expected, got {t.dtype}")
    return _spec.ShapeDtype(tuple(int(n) for n in t.shape), _NUMPY_DTYPES[t.dtype])


def _run(fn, *args, **kwargs):
    """Calls the pyconv op `fn` on arrays viewing the tensor arguments; tensors back out."""
    first = next(a for a in args if isinstance(a, Tensor))
    arrays = [to_array(a, fn.__name__) if isinstance(a, Tensor) else a for a in args]
    with _on_stream_of(first):
        out = fn(*arrays, **kwargs)
    return _wrap(out)


def _wrap(out):
    if out is None:
        return None
    if isinstance(out, (tuple, list)):
        return tuple(_wrap(o) for o in out)
    return to_tensor(out)


def _empty(like: Tensor) -> Tensor:
    """What an operator returns for a gradient nobody asked for."""
    return like.new_empty((0,))


def _or_empty(grads, like: Tensor):
    return tuple(_empty(like) if g is None else g for g in grads)


def _or_none(grads, wanted):
    return tuple(g if w else None for g, w in zip(grads, wanted))


def _padding(padding, same):
    return "same" if same else tuple(padding)


def _new(like: Tensor, shape, dtype=None) -> Tensor:
    return like.new_empty(tuple(shape), dtype=dtype)


# --------------------------------------------------------------------------------------------
# Calling an operator. Through torch's dispatcher a Python custom operator costs some tens of
# microseconds more per call than the kernel's own Python glue (argument defaults, the
# redispatch past autograd, a torch.compile guard), paid again by its backward. In plain eager
# calls, `call` skips that: it runs the operator's implementation directly, under an
# autograd.Function made of the operator's own setup_context and backward. Whenever anything
# may be watching the dispatcher (torch.compile, export or other tracing, fake tensors, tensor
# subclasses, torch.func transforms, dispatch or function modes, the profiler), it goes
# through the dispatcher as registered.

_direct: dict = {}


def _direct_form(op):
    """(implementation, autograd.Function or None) of a custom operator; None if this torch
    does not expose them."""
    if op not in _direct:
        impl = getattr(op, "_init_fn", None)
        setup, backward = getattr(op, "_setup_context_fn", None), getattr(op, "_backward_fn", None)
        function = None
        if impl is not None and backward is not None and setup is not None:
            # forward(ctx, *args) rather than a separate setup_context: with the latter,
            # Function.apply binds the arguments to forward's signature (inspect.signature) on
            # every call, which cost more than a small kernel.
            def forward(ctx, *args, impl=impl, setup=setup):
                output = impl(*args)
                setup(ctx, args, output)
                return output
            function = type(f"pyconv_{op._name}", (torch.autograd.Function,), {
                "forward": staticmethod(forward),
                "backward": staticmethod(backward),
            })
        _direct[op] = None if impl is None else (impl, function)
    return _direct[op]


def _plain_eager(args) -> bool:
    if (torch.compiler.is_compiling() or torch.autograd.profiler._is_profiler_enabled
            or _get_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None):
        return False
    return all(type(a) in (Tensor, torch.nn.Parameter) for a in args if isinstance(a, Tensor))


def call(op, *args):
    """Runs the custom operator `op` on `args` (see above for when it skips the dispatcher)."""
    form = _direct_form(op) if _plain_eager(args) else None
    if form is None:
        return op(*args)
    impl, function = form
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(a, Tensor) and a.requires_grad for a in args)
    if needs_grad and function is not None:
        return function.apply(*args)
    if needs_grad:
        return op(*args)  # the dispatcher says why it cannot be differentiated
    with torch.no_grad():
        return impl(*args)


# --------------------------------------------------------------------------------------------
# The kernels of the convolution and pooling operators, called directly. An operator's
# arguments are checked by the op's shape rules (pyconv._spec) the first time it sees a given
# signature (shapes, dtypes, settings, backend); the geometry they give is kept, and later calls
# with that signature hand the tensors' memory straight to the backend's kernel (what the
# public op would do after its checks). A training step calls each layer's operators with the
# same signature every time, and the checks cost about as much as a small kernel.

_GEOMETRY: dict = {}
_GEOMETRY_LIMIT = 4096  # signatures kept (then forgotten all at once)


def _geometry(key, rules):
    """What `rules()` returns for the signature `key`, computed on first use."""
    found = _GEOMETRY.get(key)
    if found is None:
        if len(_GEOMETRY) >= _GEOMETRY_LIMIT:
            _GEOMETRY.clear()
        found = _GEOMETRY[key] = rules()
    return found


def _host_backend(backend: str, ndim: int, *tensors):
    """The pyconv backend `backend` where it runs on NumPy arrays and the tensors are CPU
    tensors of the dtypes pyconv runs, the first of rank `ndim` (batched); None sends the call
    through the public op."""
    from ..backends import get as get_backend

    if tensors[0].dim() != ndim or any(t is not None and (t.device.type != "cpu" or t.dtype not in _NUMPY_DTYPES)
                                       for t in tensors):
        return None  # the public op says what is wrong, or runs it
    be = get_backend(backend)
    return be if be.array_kind == "numpy" else None


def _signature(*tensors):
    return tuple(None if t is None else (t.shape, t.dtype) for t in tensors)


def _array(t: Optional[Tensor]):
    """A C-contiguous NumPy array of a CPU tensor (its own memory where it is contiguous)."""
    if t is None:
        return None
    a = to_array(t)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


# --------------------------------------------------------------------------------------------
# Convolution


@torch.library.custom_op("pyconv::conv2d", mutates_args=())
def conv2d(x: Tensor, w: Tensor, b: Optional[Tensor], stride: list[int], padding: list[int],
           same: bool, dilation: list[int], groups: int, backend: str) -> Tensor:
    be = _host_backend(backend, 4, x, w, b)
    if be is not None:
        key = ("conv2d", backend, _signature(x, w, b), tuple(stride), tuple(padding), same,
               tuple(dilation), groups)
        g = _geometry(key, lambda: _spec.conv2d(_shape(x), _shape(w), _shape(b), tuple(stride),
                                                _padding(padding, same), tuple(dilation), groups))
        return to_tensor(be.kernel("conv2d")(_array(x), _array(w), _array(b), g))
    return _run(ops.conv2d, x, w, b, tuple(stride), _padding(padding, same), tuple(dilation),
                groups, backend=backend)


@conv2d.register_fake
def _(x, w, b, stride, padding, same, dilation, groups, backend):
    g = _spec.conv2d(_shape(x), _shape(w), _shape(b), tuple(stride), _padding(padding, same),
                     tuple(dilation), groups)
    return _new(x, g.output_shape)


@torch.library.custom_op("pyconv::conv2d_backward", mutates_args=())
def conv2d_backward(grad_out: Tensor, x: Tensor, w: Tensor, stride: list[int],
                    padding: list[int], same: bool, dilation: list[int], groups: int,
                    needs: list[bool], backend: str) -> tuple[Tensor, Tensor, Tensor]:
    be = _host_backend(backend, 4, x, grad_out, w)
    if be is not None:
        key = ("conv2d_backward", backend, _signature(grad_out, x, w), tuple(stride), tuple(padding),
               same, tuple(dilation), groups, tuple(needs))
        g, wanted = _geometry(key, lambda: _spec.conv_backward(
            _shape(grad_out), _shape(x), _shape(w), tuple(stride), _padding(padding, same),
            tuple(dilation), groups, tuple(needs), 2))
        gy = _array(grad_out)
        grads = (be.kernel("conv2d_grad_input")(gy, _array(w), g) if wanted[0] else None,
                 be.kernel("conv2d_grad_weight")(gy, _array(x), g) if wanted[1] else None,
                 be.kernel("conv2d_grad_bias")(gy) if wanted[2] else None)
        return _or_empty(_wrap(grads), x)
    grads = _run(ops.conv2d_backward, grad_out, x, w, tuple(stride), _padding(padding, same),
                 tuple(dilation), groups, tuple(needs), backend=backend)
    return _or_empty(grads, x)


@torch.library.custom_op("pyconv::conv1d", mutates_args=())
def conv1d(x: Tensor, w: Tensor, b: Optional[Tensor], stride: list[int], padding: list[int],
           same: bool, dilation: list[int], groups: int, backend: str) -> Tensor:
    return _run(ops.conv1d, x, w, b, tuple(stride), _padding(padding, same), tuple(dilation),
                groups, backend=backend)


@conv1d.register_fake
def _(x, w, b, stride, padding, same, dilation, groups, backend):
    g = _spec.conv1d(_shape(x), _shape(w), _shape(b), tuple(stride), _padding(padding, same),
                     tuple(dilation), groups)
    return _new(x, (g.N, g.K, g.Wo))


@torch.library.custom_op("pyconv::conv1d_backward", mutates_args=())
def conv1d_backward(grad_out: Tensor, x: Tensor, w: Tensor, stride: list[int],
                    padding: list[int], same: bool, dilation: list[int], groups: int,
                    needs: list[bool], backend: str) -> tuple[Tensor, Tensor, Tensor]:
    grads = _run(ops.conv1d_backward, grad_out, x, w, tuple(stride), _padding(padding, same),
                 tuple(dilation), groups, tuple(needs), backend=backend)
    return _or_empty(grads, x)


def _conv_grads_fake(x, w, needs, bias_size):
    shapes = (x.shape, w.shape, (bias_size,))
    return tuple(_new(x, s if n else (0,)) for s, n in zip(shapes, needs))


@conv2d_backward.register_fake
def _(grad_out, x, w, stride, padding, same, dilation, groups, needs, backend):
    return _conv_grads_fake(x, w, needs, w.shape[0])


@conv1d_backward.register_fake
def _(grad_out, x, w, stride, padding, same, dilation, groups, needs, backend):
    return _conv_grads_fake(x, w, needs, w.shape[0])


def _conv_setup(ctx, inputs, output):
    x, w, _b, *params = inputs
    ctx.save_for_backward(x, w)
    ctx.params = params


def _conv_autograd(backward_op):
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:3])
        grads = call(backward_op, grad, x, w, *ctx.params[:-1], needs, ctx.params[-1])
        return (*_or_none(grads, needs), *(None,) * len(ctx.params))
    return backward


conv2d.register_autograd(_conv_autograd(conv2d_backward), setup_context=_conv_setup)
conv1d.register_autograd(_conv_autograd(conv1d_backward), setup_context=_conv_setup)


@torch.library.custom_op("pyconv::conv_transpose2d", mutates_args=())
def conv_transpose2d(x: Tensor, w: Tensor, b: Optional[Tensor], stride: list[int],
                     padding: list[int], output_padding: list[int], groups: int,
                     dilation: list[int], backend: str) -> Tensor:
    be = _host_backend(backend, 4, x, w, b)
    if be is not None:
        key = ("conv_transpose2d", backend, _signature(x, w, b), tuple(stride), tuple(padding),
               tuple(output_padding), groups, tuple(dilation))
        g = _geometry(key, lambda: _spec.conv_transpose2d(
            _shape(x), _shape(w), _shape(b), tuple(stride), tuple(padding), tuple(output_padding),
            groups, tuple(dilation)))
        # the transpose convolution is the input gradient of the convolution it inverts
        y = be.kernel("conv2d_grad_input")(_array(x), _array(w), g)
        if b is not None:
            y += _array(b).reshape(1, -1, 1, 1)
        return to_tensor(y)
    return _run(ops.conv_transpose2d, x, w, b, tuple(stride), tuple(padding),
                tuple(output_padding), groups, tuple(dilation), backend=backend)


@conv_transpose2d.register_fake
def _(x, w, b, stride, padding, output_padding, groups, dilation, backend):
    g = _spec.conv_transpose2d(_shape(x), _shape(w), _shape(b), tuple(stride), tuple(padding),
                               tuple(output_padding), groups, tuple(dilation))
    return _new(x, g.input_shape)


@torch.library.custom_op("pyconv::conv_transpose2d_backward", mutates_args=())
def conv_transpose2d_backward(grad_out: Tensor, x: Tensor, w: Tensor, stride: list[int],
                              padding: list[int], output_padding: list[int], groups: int,
                              dilation: list[int], needs: list[bool],
                              backend: str) -> tuple[Tensor, Tensor, Tensor]:
    be = _host_backend(backend, 4, x, grad_out, w)
    if be is not None:
        key = ("conv_transpose2d_backward", backend, _signature(grad_out, x, w), tuple(stride),
               tuple(padding), tuple(output_padding), groups, tuple(dilation), tuple(needs))
        g, wanted = _geometry(key, lambda: _spec.conv_transpose2d_backward(
            _shape(grad_out), _shape(x), _shape(w), tuple(stride), tuple(padding),
            tuple(output_padding), groups, tuple(dilation), tuple(needs)))
        gy, xa, wa = _array(grad_out), _array(x), _array(w)
        # the direct convolution that the transpose one inverts gives each gradient
        grads = (be.kernel("conv2d")(gy, wa, None, g) if wanted[0] else None,
                 be.kernel("conv2d_grad_weight")(xa, gy, g) if wanted[1] else None,
                 be.kernel("conv2d_grad_bias")(gy) if wanted[2] else None)
        return _or_empty(_wrap(grads), x)
    grads = _run(ops.conv_transpose2d_backward, grad_out, x, w, tuple(stride), tuple(padding),
                 tuple(output_padding), groups, tuple(dilation), tuple(needs), backend=backend)
    return _or_empty(grads, x)


@conv_transpose2d_backward.register_fake
def _(grad_out, x, w, stride, padding, output_padding, groups, dilation, needs, backend):
    return _conv_grads_fake(x, w, needs, w.shape[1] * groups)


conv_transpose2d.register_autograd(_conv_autograd(conv_transpose2d_backward),
                                   setup_context=_conv_setup)


# --------------------------------------------------------------------------------------------
# Pooling


@torch.library.custom_op("pyconv::max_pool2d", mutates_args=())
def max_pool2d(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               dilation: list[int], ceil_mode: bool, return_indices: bool,
               backend: str) -> tuple[Tensor, Tensor]:
    """-> (y, indices); indices is empty unless return_indices (the backward needs them)."""
    be = _host_backend(backend, 4, x)
    if be is not None:
        key = ("max_pool2d", backend, _signature(x), tuple(kernel_size), tuple(stride),
               tuple(padding), tuple(dilation), ceil_mode)
        g = _geometry(key, lambda: _spec.max_pool2d(_shape(x), tuple(kernel_size), tuple(stride),
                                                    tuple(padding), tuple(dilation), ceil_mode))
        y, indices = be.kernel("max_pool2d")(_array(x), g, bool(return_indices))
        return to_tensor(y), (to_tensor(indices) if return_indices else x.new_empty((0,), dtype=torch.int64))
    out = _run(ops.max_pool2d, x, tuple(kernel_size), tuple(stride), tuple(padding),
               tuple(dilation), ceil_mode, return_indices, backend=backend)
    return out if return_indices else (out, x.new_empty((0,), dtype=torch.int64))


@max_pool2d.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend):
    g = _spec.max_pool2d(_shape(x), tuple(kernel_size), tuple(stride), tuple(padding),
                         tuple(dilation), ceil_mode)
    return _new(x, g.output_shape), _new(x, g.output_shape if return_indices else (0,), torch.int64)


@torch.library.custom_op("pyconv::max_pool2d_backward", mutates_args=())
def max_pool2d_backward(grad_out: Tensor, indices: Tensor, input_shape: list[int],
                        backend: str) -> Tensor:
    # Only on the C++ kernels, which check every index they scatter to: the op's own check of
    # the indices' values reads them all on every call.
    be = _host_backend(backend, 4, grad_out, indices) if backend == "cpu" else None
    if be is not None and indices.dtype == torch.int64:
        key = ("max_pool2d_backward", backend, _signature(grad_out, indices), tuple(input_shape))
        shape = _geometry(key, lambda: _spec.max_pool2d_backward(
            _shape(grad_out), _spec.ShapeDtype(tuple(indices.shape), np.int64), tuple(input_shape)))
        return to_tensor(be.kernel("max_pool2d_backward")(_array(grad_out), _array(indices), shape))
    return _run(ops.max_pool2d_backward, grad_out, indices, tuple(input_shape), backend=backend)


@max_pool2d_backward.register_fake
def _(grad_out, indices, input_shape, backend):
    return _new(grad_out, input_shape)


def _max_pool_setup(ctx, inputs, output):
    x, *_, return_indices, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.input_shape, ctx.backend = list(x.shape), backend


def _max_pool_backward(ctx, grad, _grad_indices):
    (indices,) = ctx.saved_tensors
    if indices.numel() == 0:
        raise RuntimeError("pyconv::max_pool2d: its gradient needs the positions of the maxima; "
                           "call it with return_indices=True")
    return (call(max_pool2d_backward, grad, indices, ctx.input_shape, ctx.backend),) + (None,) * 7


max_pool2d.register_autograd(_max_pool_backward, setup_context=_max_pool_setup)


@torch.library.custom_op("pyconv::avg_pool2d", mutates_args=())
def avg_pool2d(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               ceil_mode: bool, count_include_pad: bool, divisor_override: Optional[int],
               backend: str) -> Tensor:
    be = _host_backend(backend, 4, x)
    if be is not None:
        key = ("avg_pool2d", backend, _signature(x), tuple(kernel_size), tuple(stride),
               tuple(padding), ceil_mode, divisor_override)
        g, divisor = _geometry(key, lambda: _spec.avg_pool2d(
            _shape(x), tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode, divisor_override))
        return to_tensor(be.kernel("avg_pool2d")(_array(x), g, bool(count_include_pad), divisor))
    return _run(ops.avg_pool2d, x, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode,
                count_include_pad, divisor_override, backend=backend)


@avg_pool2d.register_fake
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, backend):
    g, _ = _spec.avg_pool2d(_shape(x), tuple(kernel_size), tuple(stride), tuple(padding),
                            ceil_mode, divisor_override)
    return _new(x, g.output_shape)


@torch.library.custom_op("pyconv::avg_pool2d_backward", mutates_args=())
def avg_pool2d_backward(grad_out: Tensor, input_shape: list[int], kernel_size: list[int],
                        stride: list[int], padding: list[int], ceil_mode: bool,
                        count_include_pad: bool, divisor_override: Optional[int],
                        backend: str) -> Tensor:
    be = _host_backend(backend, 4, grad_out)
    if be is not None:
        key = ("avg_pool2d_backward", backend, _signature(grad_out), tuple(input_shape),
               tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode, divisor_override)
        g, divisor = _geometry(key, lambda: _spec.avg_pool2d_backward(
            _shape(grad_out), tuple(input_shape), tuple(kernel_size), tuple(stride), tuple(padding),
            ceil_mode, divisor_override))
        return to_tensor(be.kernel("avg_pool2d_backward")(_array(grad_out), g, bool(count_include_pad),
                                                          divisor))
    return _run(ops.avg_pool2d_backward, grad_out, tuple(input_shape), tuple(kernel_size),
                tuple(stride), tuple(padding), ceil_mode, count_include_pad, divisor_override,
                backend=backend)


@avg_pool2d_backward.register_fake
def _(grad_out, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
      divisor_override, backend):
    return _new(grad_out, input_shape)


def _avg_pool_setup(ctx, inputs, output):
    x, *params = inputs
    ctx.input_shape, ctx.params = list(x.shape), params


def _avg_pool_backward(ctx, grad):
    return (call(avg_pool2d_backward, grad, ctx.input_shape, *ctx.params),) + (None,) * 7


avg_pool2d.register_autograd(_avg_pool_backward, setup_context=_avg_pool_setup)


@torch.library.custom_op("pyconv::max_unpool2d", mutates_args=())
def max_unpool2d(x: Tensor, indices: Tensor, kernel_size: list[int], stride: list[int],
                 padding: list[int], output_size: Optional[list[int]], backend: str) -> Tensor:
    return _run(ops.max_unpool2d, x, indices, tuple(kernel_size), tuple(stride), tuple(padding),
                None if output_size is None else tuple(output_size), backend=backend)


@max_unpool2d.register_fake
def _(x, indices, kernel_size, stride, padding, output_size, backend):
    shape = _spec.max_unpool2d(_shape(x), _spec.ShapeDtype(tuple(indices.shape), np.int64),
                               tuple(kernel_size), tuple(stride), tuple(padding),
                               None if output_size is None else tuple(output_size))
    return _new(x, shape)


def _max_unpool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _max_unpool_backward(ctx, grad):
    # The unpooling wrote x at `indices`; its adjoint reads the gradient back from there.
    (indices,) = ctx.saved_tensors
    grad_x = grad.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
    return (grad_x,) + (None,) * 6


max_unpool2d.register_autograd(_max_unpool_backward, setup_context=_max_unpool_setup)


# --------------------------------------------------------------------------------------------
# LSTM


@torch.library.custom_op("pyconv::lstm_cell", mutates_args=())
def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], backend: str) -> tuple[Tensor, Tensor]:
    return _run(ops.lstm_cell, x, h, c, w_ih, w_hh, b_ih, b_hh, backend=backend)


@lstm_cell.register_fake
def _(x, h, c, w_ih, w_hh, b_ih, b_hh, backend):
    _spec.lstm_cell(*map(_shape, (x, h, c, w_ih, w_hh, b_ih, b_hh)))
    return _new(h, h.shape), _new(c, c.shape)


_LSTM_GRADS = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("pyconv::lstm_cell_backward", mutates_args=())
def lstm_cell_backward(grad_h: Tensor, grad_c: Tensor, x: Tensor, h: Tensor, c: Tensor,
                       w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                       backend: str) -> _LSTM_GRADS:
    grads = _run(ops.lstm_cell_backward, grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh,
                 backend=backend)
    return _or_empty(grads, x)


def _lstm_grads_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    return tuple(_new(x, (0,) if a is None else a.shape)
                 for a in (x, h0, c0, w_ih, w_hh, b_ih, b_hh))


@lstm_cell_backward.register_fake
def _(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh, backend):
    return _lstm_grads_fake(x, h, c, w_ih, w_hh, b_ih, b_hh)


def _lstm_setup(ctx, inputs, output):
    *tensors, backend = inputs
    ctx.save_for_backward(*tensors)
    ctx.backend = backend


def _lstm_autograd(backward_op, n_outputs):
    def backward(ctx, *grads):
        # Output gradients nobody used arrive as None; pyconv reads None as zero.
        grads = [torch.zeros_like(o) if g is None else g
                 for g, o in zip(grads, ctx.saved_tensors[1:1 + n_outputs])]
        out = call(backward_op, *grads, *ctx.saved_tensors, ctx.backend)
        return (*_or_none(out, ctx.needs_input_grad[:7]), None)
    return backward


lstm_cell.register_autograd(_lstm_autograd(lstm_cell_backward, 2), setup_context=_lstm_setup)


def _saved_gate_columns(backend: str, hidden: int, dtype) -> int:
    """Width of the gate rows that `backend`'s lstm keeps for its backward: 4H, or wider in
    the C++ kernels' padded layout."""
    if backend == "cpu":
        from .. import _C

        return _C.lstm_gate_columns(int(hidden), np.dtype(_NUMPY_DTYPES[dtype]))
    return 4 * hidden


@torch.library.custom_op("pyconv::lstm", mutates_args=())
def lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
         b_hh: Optional[Tensor], save: bool,
         backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A single-layer LSTM over x (T, B, I) -> (out (T, B, H), h_T, c_T, gates, cells). With
    `save`, gates and cells are what the backward reuses instead of running the recurrence
    again: the activated gates of every step, in the backend's layout, and c_0..c_T; without
    it they are empty."""
    arrays = [to_array(t, "lstm") for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)]
    with _on_stream_of(x):
        out, (h, c), *record = ops.lstm(*arrays, backend=backend, save_for_backward=save)
    out, h, c = to_tensor(out), to_tensor(h), to_tensor(c)
    if not save:
        return out, h, c, _empty(x), _empty(x)
    # out is a view of the record's hs, which the backward rebuilds from h0 and out: returning
    # both would make two outputs share memory.
    return out, h, c, to_tensor(record[0].gates), to_tensor(record[0].cs)


@lstm.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save, backend):
    T, B, _, H = _spec.lstm(*map(_shape, (x, h0, c0, w_ih, w_hh, b_ih, b_hh)))
    if save:
        gates = _new(x, (T, B, _saved_gate_columns(backend, H, x.dtype)))
        cells = _new(x, (T + 1, B, H))
    else:
        gates, cells = _new(x, (0,)), _new(x, (0,))
    return _new(x, (T, B, H)), _new(h0, h0.shape), _new(c0, c0.shape), gates, cells


@torch.library.custom_op("pyconv::lstm_backward", mutates_args=())
def lstm_backward(grad_out: Tensor, grad_hT: Tensor, grad_cT: Tensor, x: Tensor, h0: Tensor,
                  c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                  b_hh: Optional[Tensor], out: Optional[Tensor], gates: Optional[Tensor],
                  cells: Optional[Tensor], backend: str) -> _LSTM_GRADS:
    """Backpropagation through time. Given the forward's out, gates and cells (``lstm`` with
    save) it reuses them; without (None) it runs the recurrence again first."""
    saved = None
    if gates is not None:
        hs = torch.cat([h0.detach()[None], out.detach()])
        saved = LstmSaved(backend, *(to_array(t, "lstm_backward") for t in (gates, hs, cells)))
    grads = _run(ops.lstm_backward, grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                 backend=backend, saved=saved)
    return _or_empty(grads, x)


@lstm_backward.register_fake
def _(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, out, gates, cells, backend):
    return _lstm_grads_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh)


def _lstm_seq_setup(ctx, inputs, output):
    *tensors, save, backend = inputs
    out, _, _, gates, cells = output
    ctx.mark_non_differentiable(gates, cells)
    ctx.save_for_backward(*tensors, *((out, gates, cells) if save else ()))
    ctx.backend = backend


def _lstm_seq_autograd(ctx, grad_out, grad_h, grad_c, _grad_gates, _grad_cells):
    x, h0, c0 = ctx.saved_tensors[:3]
    grads = [torch.zeros((x.shape[0], *h0.shape), dtype=x.dtype, device=x.device)
             if grad_out is None else grad_out,
             torch.zeros_like(h0) if grad_h is None else grad_h,
             torch.zeros_like(c0) if grad_c is None else grad_c]
    inputs, record = ctx.saved_tensors[:7], ctx.saved_tensors[7:] or (None, None, None)
    out = call(lstm_backward, *grads, *inputs, *record, ctx.backend)
    return (*_or_none(out, ctx.needs_input_grad[:7]), None, None)


lstm.register_autograd(_lstm_seq_autograd, setup_context=_lstm_seq_setup)


# --------------------------------------------------------------------------------------------
# Elman RNN cell


@torch.library.custom_op("pyconv::rnn_cell", mutates_args=())
def rnn_cell(x: Tensor, h: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
             b_hh: Optional[Tensor], nonlinearity: str, backend: str) -> Tensor:
    return _run(ops.rnn_cell, x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, backend=backend)


@rnn_cell.register_fake
def _(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, backend):
    B, _, H = _spec.rnn_cell(*map(_shape, (x, h, w_ih, w_hh, b_ih, b_hh)), nonlinearity)
    return _new(x, _spec.without_batch((B, H), x.dim() == 1))


@torch.library.custom_op("pyconv::rnn_cell_backward", mutates_args=())
def rnn_cell_backward(grad_h: Tensor, x: Tensor, h: Optional[Tensor], h_new: Tensor, w_ih: Tensor,
                      w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                      nonlinearity: str, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _run(ops.rnn_cell_backward, grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity,
                 backend=backend)
    return _or_empty(grads, x)


@rnn_cell_backward.register_fake
def _(grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity, backend):
    return tuple(_new(x, (0,) if a is None else a.shape) for a in (x, h_new, w_ih, w_hh, b_ih, b_hh))


def _rnn_cell_setup(ctx, inputs, output):
    x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, backend = inputs
    ctx.save_for_backward(x, h, output, w_ih, w_hh, b_ih, b_hh)
    ctx.nonlinearity, ctx.backend = nonlinearity, backend


def _rnn_cell_autograd(ctx, grad):
    x, h, h_new, w_ih, w_hh, b_ih, b_hh = ctx.saved_tensors
    grads = call(rnn_cell_backward, grad, x, h, h_new, w_ih, w_hh, b_ih, b_hh, ctx.nonlinearity,
                 ctx.backend)
    return (*_or_none(grads, ctx.needs_input_grad[:6]), None, None)


rnn_cell.register_autograd(_rnn_cell_autograd, setup_context=_rnn_cell_setup)


# --------------------------------------------------------------------------------------------
# Operators declared by their implementation: the name, the schema and the fake implementation
# follow from its signature and the op's shape rules, the autograd formula from the backward
# operator's signature.

_signatures: dict = {}  # operator -> the signature of its implementation


def _checked_operator(outputs, check=None):
    """Decorator: registers the function as the operator ``pyconv::<its name>``, with a fake
    implementation that checks the arguments with `check`, by default ``_spec.<its name>``
    (tensors passed as their shapes, everything but ``backend``, in the signature's order), and
    returns ``outputs(**arguments)``, empty tensors of the outputs' shapes."""
    def register(implementation):
        name = implementation.__name__
        operator = torch.library.custom_op(f"pyconv::{name}", mutates_args=())(implementation)
        check_arguments = check or getattr(_spec, name)
        signature = _signatures[operator] = inspect.signature(implementation)

        @operator.register_fake
        def _(*args, **kwargs):
            arguments = signature.bind(*args, **kwargs).arguments
            check_arguments(*(_shape(v) if isinstance(v, Tensor) else v
                              for k, v in arguments.items() if k != "backend"))
            return outputs(**arguments)

        return operator

    return register


def _like(name):
    """The `outputs` of a _checked_operator with one output shaped and typed like its
    argument `name`."""
    return lambda **arguments: _new(arguments[name], arguments[name].shape)


def _differentiable(backward, outputs=("y",)):
    """Decorator for a _checked_operator differentiable through the operator `backward`:
    ``backward(grad, *saved)`` is the gradient of the forward's first argument (a tuple: of its
    first arguments), where `saved` are backward's further arguments, each the forward's
    argument or output of that name (`outputs` names the forward's outputs; all but the first
    are not differentiable). The tensors among them are kept with save_for_backward."""
    saved = list(_signatures[backward].parameters.values())[1:]
    is_tensor = [p.annotation in (Tensor, Optional[Tensor]) for p in saved]

    def register(forward):
        arguments = tuple(_signatures[forward].parameters)
        at = [(*arguments, *outputs).index(p.name) for p in saved]  # in (*inputs, *output)

        def setup(ctx, inputs, output):
            output = output if isinstance(output, tuple) else (output,)
            if len(output) > 1:
                ctx.mark_non_differentiable(*output[1:])
            available = (*inputs, *output)
            ctx.save_for_backward(*(available[i] for i, t in zip(at, is_tensor) if t))
            ctx.saved_values = [available[i] for i, t in zip(at, is_tensor) if not t]

        def differentiate(ctx, grad, *_grads_of_the_other_outputs):
            tensors, values = iter(ctx.saved_tensors), iter(ctx.saved_values)
            grads = call(backward, grad.contiguous(),
                         *(next(tensors) if t else next(values) for t in is_tensor))
            grads = _or_none(grads if isinstance(grads, tuple) else (grads,), ctx.needs_input_grad)
            return (*grads, *[None] * (len(arguments) - len(grads)))

        forward.register_autograd(differentiate, setup_context=setup)
        return forward

    return register


# --------------------------------------------------------------------------------------------
# Boxes (not differentiable)


def _kept_size():
    # How many boxes survive depends on their values: a size unknown until run time.
    return torch.library.get_ctx().new_dynamic_size()


# For the NMS operators that return the int64 indices of the boxes they keep.
_kept_indices_operator = _checked_operator(
    lambda boxes, **_: boxes.new_empty((_kept_size(),), dtype=torch.int64))
# For the operators that return the IoU matrix of two sets of boxes.
_pairwise_operator = _checked_operator(
    lambda boxes1, boxes2, **_: _new(boxes1, (boxes1.shape[0], boxes2.shape[0])))


@_pairwise_operator
def box_iou(boxes1: Tensor, boxes2: Tensor, backend: str) -> Tensor:
    return _run(ops.box_iou, boxes1, boxes2, backend=backend)


@_pairwise_operator
def box_iou_rotated(boxes1: Tensor, boxes2: Tensor, backend: str) -> Tensor:
    return _run(ops.box_iou_rotated, boxes1, boxes2, backend=backend)


@_kept_indices_operator
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, backend: str) -> Tensor:
    return _run(ops.nms, boxes, scores, iou_threshold, backend=backend)


@_kept_indices_operator
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                class_agnostic: bool, backend: str) -> Tensor:
    """idxs may be None when class_agnostic (plain NMS over all boxes)."""
    return _run(ops.batched_nms, boxes, scores, idxs, iou_threshold,
                class_agnostic=class_agnostic, backend=backend)


@_kept_indices_operator
def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float, backend: str) -> Tensor:
    return _run(ops.nms_rotated, boxes, scores, iou_threshold, backend=backend)


@_kept_indices_operator
def diou_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, backend: str) -> Tensor:
    return _run(ops.diou_nms, boxes, scores, iou_threshold, backend=backend)


def _kept_indices_and_scores(boxes, scores, **_):
    kept = _kept_size()  # one size for both outputs: one score per kept index
    return boxes.new_empty((kept,), dtype=torch.int64), _new(scores, (kept,))


@_checked_operator(_kept_indices_and_scores)
def soft_nms(boxes: Tensor, scores: Tensor, sigma: float, iou_threshold: float,
             score_threshold: float, method: str, backend: str) -> tuple[Tensor, Tensor]:
    """-> (kept int64 indices, their decayed scores), in the order picked."""
    return _run(ops.soft_nms, boxes, scores, sigma, iou_threshold, score_threshold, method,
                backend=backend)


@_checked_operator(_like("scores"))
def matrix_nms(boxes: Tensor, scores: Tensor, labels: Tensor, kernel: str, sigma: float,
               backend: str) -> Tensor:
    """-> every box's decayed score (N,), in input order."""
    return _run(ops.matrix_nms, boxes, scores, labels, kernel, sigma, backend=backend)


# --------------------------------------------------------------------------------------------
# Elementwise: each forward operator is differentiable through its backward operator, defined
# before it (relu, sigmoid and tanh keep their output y for it, the others their input).


@_checked_operator(_like("x"))
def leaky_relu_backward(grad_out: Tensor, x: Tensor, negative_slope: float, backend: str) -> Tensor:
    return _run(ops.leaky_relu_backward, grad_out, x, negative_slope, backend=backend)


@_differentiable(leaky_relu_backward)
@_checked_operator(_like("x"))
def leaky_relu(x: Tensor, negative_slope: float, backend: str) -> Tensor:
    return _run(ops.leaky_relu, x, negative_slope, backend=backend)


@_checked_operator(_like("x"))
def elu_backward(grad_out: Tensor, x: Tensor, alpha: float, backend: str) -> Tensor:
    return _run(ops.elu_backward, grad_out, x, alpha, backend=backend)


@_differentiable(elu_backward)
@_checked_operator(_like("x"))
def elu(x: Tensor, alpha: float, backend: str) -> Tensor:
    return _run(ops.elu, x, alpha, backend=backend)


@_checked_operator(lambda x, weight, **_: (_new(x, x.shape), _new(weight, weight.shape)))
def prelu_backward(grad_out: Tensor, x: Tensor, weight: Tensor,
                   backend: str) -> tuple[Tensor, Tensor]:
    """-> (grad_x, grad_weight)."""
    return _run(ops.prelu_backward, grad_out, x, weight, backend=backend)


@_differentiable(prelu_backward)
@_checked_operator(_like("x"))
def prelu(x: Tensor, weight: Tensor, backend: str) -> Tensor:
    return _run(ops.prelu, x, weight, backend=backend)


def _operators_through_output(name, check=None, check_backward=None):
    """The operators pyconv::<name> (y = f(x), shaped like x) and pyconv::<name>_backward
    (grad_x from grad_out and y), the first differentiable through the second. Their shape
    rules are ``_spec.<name>`` and ``_spec.<name>_backward`` unless given."""
    public, public_backward = getattr(ops, name), getattr(ops, f"{name}_backward")

    def backward(grad_out: Tensor, y: Tensor, backend: str) -> Tensor:
        return _run(public_backward, grad_out, y, backend=backend)

    def forward(x: Tensor, backend: str) -> Tensor:
        return _run(public, x, backend=backend)

    forward.__name__, backward.__name__ = name, f"{name}_backward"
    backward = _checked_operator(_like("y"), check_backward)(backward)
    forward = _checked_operator(_like("x"), check)(forward)
    return _differentiable(backward)(forward), backward


relu, relu_backward = _operators_through_output("relu")
sigmoid, sigmoid_backward = _operators_through_output("sigmoid")
tanh, tanh_backward = _operators_through_output("tanh")


@_checked_operator(_like("x"))
def gated_tanh_backward(grad_out: Tensor, x: Tensor, dim: int, backend: str) -> Tensor:
    return _run(ops.gated_tanh_backward, grad_out, x, dim, backend=backend)


@_differentiable(gated_tanh_backward)
@_checked_operator(lambda x, dim, **_: _new(x, _spec.gated_tanh_output_shape(x.shape, dim % x.dim())))
def gated_tanh(x: Tensor, dim: int, backend: str) -> Tensor:
    """-> tanh(a) * sigmoid(b) of x = [a, b] split in halves along dim."""
    return _run(ops.gated_tanh, x, dim, backend=backend)


@_checked_operator(_like("grad_out"))
def dropout_backward(grad_out: Tensor, mask: Tensor, p: float, backend: str) -> Tensor:
    return _run(ops.dropout_backward, grad_out, mask, p, backend=backend)


@_differentiable(dropout_backward, outputs=("y", "mask"))
@_checked_operator(lambda x, **_: (_new(x, x.shape), _new(x, x.shape, torch.uint8)))
def dropout(x: Tensor, p: float, seed: int, backend: str) -> tuple[Tensor, Tensor]:
    """-> (y, mask (uint8)); the mask is a function of seed (an int in [0, 2**63) here)."""
    return _run(ops.dropout, x, p, seed, backend=backend)


# --------------------------------------------------------------------------------------------
# Dense


@torch.library.custom_op("pyconv::matmul", mutates_args=())
def matmul(a: Tensor, b: Tensor, trans_a: bool, trans_b: bool, backend: str) -> Tensor:
    """op(a) @ op(b), op(m) being m.T where its flag is set."""
    return _run(ops.matmul, a, b, trans_a, trans_b, backend=backend)


@matmul.register_fake
def _(a, b, trans_a, trans_b, backend):
    _spec.matmul(_shape(a), _shape(b), trans_a, trans_b)
    rows = a.shape[1] if trans_a else a.shape[0]
    cols = b.shape[0] if trans_b else b.shape[1]
    return _new(a, (rows, cols))


def _matmul_setup(ctx, inputs, output):
    a, b, ctx.trans_a, ctx.trans_b, ctx.backend = inputs
    ctx.save_for_backward(a, b)


def _matmul_backward(ctx, grad):
    # With C = A @ B for A = op(a), B = op(b): dA = grad @ B.T and dB = A.T @ grad, and where
    # a (or b) is stored transposed its gradient is the transpose of that. Each is one matmul
    # with the flags that read the stored arrays in the right orientation; since the backward
    # is matmul again, it is itself differentiable.
    a, b = ctx.saved_tensors
    ta, tb, backend = ctx.trans_a, ctx.trans_b, ctx.backend
    grad_a = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_a = (call(matmul, b, grad, tb, True, backend) if ta
                  else call(matmul, grad, b, False, not tb, backend))
    if ctx.needs_input_grad[1]:
        grad_b = (call(matmul, grad, a, True, ta, backend) if tb
                  else call(matmul, a, grad, not ta, False, backend))
    return grad_a, grad_b, None, None, None


matmul.register_autograd(_matmul_backward, setup_context=_matmul_setup)


def _index_shape(t: Tensor):
    """The abstract array of an integer index tensor, for pyconv's shape rules."""
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"pyconv: int64 or int32 index tensors expected, got {t.dtype}")
    return _spec.ShapeDtype(tuple(int(n) for n in t.shape), np.int64)


@torch.library.custom_op("pyconv::embedding_backward", mutates_args=())
def embedding_backward(grad_out: Tensor, indices: Tensor, num_embeddings: int, padding_idx: Optional[int],
                       backend: str) -> Tensor:
    """grad_out's rows summed into a (num_embeddings, dim) table by their indices."""
    return _run(ops.embedding_backward, grad_out, indices.to(torch.int64), num_embeddings, padding_idx,
                backend=backend)


@embedding_backward.register_fake
def _(grad_out, indices, num_embeddings, padding_idx, backend):
    if isinstance(num_embeddings, int):  # else a traced size: the forward's table, checked there
        _spec.embedding_backward(_shape(grad_out), _index_shape(indices), num_embeddings, padding_idx)
    return _new(grad_out, (num_embeddings, grad_out.shape[-1]))


@torch.library.custom_op("pyconv::embedding", mutates_args=())
def embedding(weight: Tensor, indices: Tensor, padding_idx: Optional[int], backend: str) -> Tensor:
    """weight's rows picked by indices; row padding_idx (if given) gets no gradient."""
    return _run(ops.embedding, weight, indices.to(torch.int64), backend=backend)


@embedding.register_fake
def _(weight, indices, padding_idx, backend):
    table, picks = _shape(weight), _index_shape(indices)
    shape = _spec.embedding(table, picks)
    if padding_idx is not None:
        _spec.embedding_backward(_spec.ShapeDtype(shape, table.dtype), picks, table.shape[0], padding_idx)
    return _new(weight, shape)


def _embedding_setup(ctx, inputs, output):
    weight, indices, ctx.padding_idx, ctx.backend = inputs
    ctx.num_embeddings = weight.shape[0]
    ctx.save_for_backward(indices)


def _embedding_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    return (call(embedding_backward, grad, indices, ctx.num_embeddings, ctx.padding_idx, ctx.backend),
            None, None, None)


embedding.register_autograd(_embedding_backward, setup_context=_embedding_setup)


# --------------------------------------------------------------------------------------------
# Normalisation


@torch.library.custom_op("pyconv::batch_norm_train", mutates_args=())
def batch_norm_train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                     backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """-> (y, mean, var) with the batch's statistics. Only y is differentiable: mean and var
    are returned for the caller's running statistics, and no gradient flows back through
    them (the gradient of y already includes the path through the statistics)."""
    return _run(ops.batch_norm_train, x, weight, bias, eps, backend=backend)


@batch_norm_train.register_fake
def _(x, weight, bias, eps, backend):
    _spec.batch_norm_train(_shape(x), _shape(weight), _shape(bias), eps)
    channels = (x.shape[1],)
    return _new(x, x.shape), _new(x, channels), _new(x, channels)


@torch.library.custom_op("pyconv::batch_norm_train_backward", mutates_args=())
def batch_norm_train_backward(grad_out: Tensor, x: Tensor, mean: Tensor, invstd: Tensor,
                              weight: Optional[Tensor],
                              backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """-> (grad_x, grad_weight, grad_bias); the last two whether or not there is a weight."""
    return _run(ops.batch_norm_train_backward, grad_out, x, mean, invstd, weight,
                backend=backend)


@batch_norm_train_backward.register_fake
def _(grad_out, x, mean, invstd, weight, backend):
    _spec.batch_norm_train_backward(*map(_shape, (grad_out, x, mean, invstd, weight)))
    channels = (x.shape[1],)
    return _new(x, x.shape), _new(x, channels), _new(x, channels)


def _batch_norm_setup(ctx, inputs, output):
    x, weight, _bias, ctx.eps, ctx.backend = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, weight, mean, var)


def _batch_norm_backward(ctx, grad, _grad_mean, _grad_var):
    x, weight, mean, var = ctx.saved_tensors
    invstd = torch.rsqrt(var + ctx.eps)
    grads = call(batch_norm_train_backward, grad, x, mean, invstd, weight, ctx.backend)
    return (*_or_none(grads, ctx.needs_input_grad[:3]), None, None)


batch_norm_train.register_autograd(_batch_norm_backward, setup_context=_batch_norm_setup)


# --------------------------------------------------------------------------------------------
# Softmax and losses over the last axis


# softmax's shape rules serve log_softmax, told the op's name.
softmax, softmax_backward = _operators_through_output("softmax")
log_softmax, log_softmax_backward = _operators_through_output(
    "log_softmax", functools.partial(_spec.softmax, op="log_softmax"),
    functools.partial(_spec.softmax_backward, op="log_softmax_backward"))


@_checked_operator(_like("x"))
def cross_entropy_backward(grad_loss: Tensor, x: Tensor, target: Tensor, lse: Tensor,
                           weight: Optional[Tensor], ignore_index: int, label_smoothing: float,
                           backend: str) -> Tensor:
    return _run(ops.cross_entropy_backward, grad_loss, x, target, lse, weight, ignore_index,
                label_smoothing, backend=backend)


@_differentiable(cross_entropy_backward, outputs=("loss", "lse"))
@_checked_operator(lambda x, **_: (_new(x, x.shape[:-1]), _new(x, x.shape[:-1])))
def cross_entropy(x: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
                  label_smoothing: float, backend: str) -> tuple[Tensor, Tensor]:
    """-> (per-row loss, per-row log-sum-exp); only the loss is differentiable (in x)."""
    return _run(ops.cross_entropy, x, target, weight, ignore_index, label_smoothing,
                backend=backend)


@_checked_operator(_like("x"))
def binary_cross_entropy_with_logits_backward(grad_out: Tensor, x: Tensor, target: Tensor,
                                              pos_weight: Optional[Tensor], backend: str) -> Tensor:
    return _run(ops.binary_cross_entropy_with_logits_backward, grad_out, x, target, pos_weight,
                backend=backend)


@_differentiable(binary_cross_entropy_with_logits_backward)
@_checked_operator(_like("x"))
def binary_cross_entropy_with_logits(x: Tensor, target: Tensor, pos_weight: Optional[Tensor],
                                     backend: str) -> Tensor:
    """Element-wise loss; differentiable in x only."""
    return _run(ops.binary_cross_entropy_with_logits, x, target, pos_weight, backend=backend)


# --------------------------------------------------------------------------------------------
# Optimiser steps: in place on the parameters and the state (torch.optim's own classes are
# what a torch user steps with; these let such a user run pyconv's kernels on torch tensors).


@torch.library.custom_op("pyconv::sgd_step", mutates_args=("params", "momentum_buffers"))
def sgd_step(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor],
             lr: float, momentum: float, dampening: float, nesterov: bool, weight_decay: float,
             first_step: bool, backend: str) -> None:
    """momentum_buffers is an empty list without momentum."""
    arrays = lambda ts: [to_array(t, "sgd_step") for t in ts]  # noqa: E731
    with _on_stream_of(params[0]) if params else contextlib.nullcontext():
        ops.sgd_step(arrays(params), arrays(grads), arrays(momentum_buffers) or None, lr, momentum,
                     dampening, nesterov, weight_decay, first_step, backend=backend)


@torch.library.custom_op("pyconv::adam_step",
                         mutates_args=("params", "exp_avgs", "exp_avg_sqs"))
def adam_step(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
              exp_avg_sqs: list[Tensor], step: int, lr: float, beta1: float, beta2: float,
              eps: float, weight_decay: float, decoupled_weight_decay: bool, backend: str) -> None:
    arrays = lambda ts: [to_array(t, "adam_step") for t in ts]  # noqa: E731
    with _on_stream_of(params[0]) if params else contextlib.nullcontext():
        ops.adam_step(arrays(params), arrays(grads), arrays(exp_avgs), arrays(exp_avg_sqs), step,
                      lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, backend=backend)


# Public op of pyconv.ops -> its operator here (torch.ops.pyconv.<name> is the same object).
OPERATORS = {
    "conv1d": conv1d, "conv2d": conv2d, "conv1d_backward": conv1d_backward,
    "conv2d_backward": conv2d_backward, "conv_transpose2d": conv_transpose2d,
    "conv_transpose2d_backward": conv_transpose2d_backward,
    "max_pool2d": max_pool2d, "max_pool2d_backward": max_pool2d_backward,
    "avg_pool2d": avg_pool2d, "avg_pool2d_backward": avg_pool2d_backward,
    "max_unpool2d": max_unpool2d, "lstm_cell": lstm_cell, "lstm_cell_backward": lstm_cell_backward,
    "lstm": lstm, "lstm_backward": lstm_backward, "rnn_cell": rnn_cell,
    "rnn_cell_backward": rnn_cell_backward, "box_iou": box_iou, "nms": nms,
    "batched_nms": batched_nms, "box_iou_rotated": box_iou_rotated, "nms_rotated": nms_rotated,
    "relu": relu, "relu_backward": relu_backward, "leaky_relu": leaky_relu,
    "leaky_relu_backward": leaky_relu_backward,
    "soft_nms": soft_nms, "diou_nms": diou_nms, "matrix_nms": matrix_nms, "matmul": matmul,
    "embedding": embedding, "embedding_backward": embedding_backward,
    "batch_norm_train": batch_norm_train, "batch_norm_train_backward": batch_norm_train_backward,
    "elu": elu, "elu_backward": elu_backward, "prelu": prelu, "prelu_backward": prelu_backward,
    "sigmoid": sigmoid, "sigmoid_backward": sigmoid_backward, "tanh": tanh,
    "tanh_backward": tanh_backward, "gated_tanh": gated_tanh, "gated_tanh_backward": gated_tanh_backward,
    "dropout": dropout, "dropout_backward": dropout_backward,
    "softmax": softmax, "softmax_backward": softmax_backward, "log_softmax": log_softmax,
    "log_softmax_backward": log_softmax_backward, "cross_entropy": cross_entropy,
    "cross_entropy_backward": cross_entropy_backward,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "binary_cross_entropy_with_logits_backward": binary_cross_entropy_with_logits_backward,
    "sgd_step": sgd_step, "adam_step": adam_step,
}
