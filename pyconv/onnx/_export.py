"""Writing a pyconv model as an ONNX graph, by tracing one forward pass.

Every differentiable operation in pyconv is a :class:`pyconv.autograd.Function` (layers and
Tensor operators alike), so running the model once with ``Function.__call__`` recorded gives
the whole computation: which Function ran, on which tensors, with which settings (stride,
padding, axes, ...), producing which tensors. Each recorded Function becomes one or a few ONNX
nodes; tensors that no recorded Function produced are the model's inputs (the example inputs)
or constants (parameters under their ``named_parameters`` names, and any other array).

The batch size (axis 0 of every input) is left symbolic where the model allows: the model is
traced a second time with one more sample, every reshape whose target changes with the batch
gets -1 on the one axis that follows it, and the graph is checked (run by pyconv at the second
batch size) against that trace. A model whose graph would still hold the batch size (a constant
shaped by it, such as default LSTM states, or a reshape with two axes that follow it) is
exported for the example's batch size only.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..autograd import Function, Tensor, no_grad
from ._registry import UnsupportedError

__all__ = ["export", "OPSET", "IR_VERSION"]

OPSET = 17
IR_VERSION = 8  # what ONNX Runtime 1.17 and later load with opset 17


@contextlib.contextmanager
def _recording(records):
    """Within the block every Function call appends (function, inputs, outputs) to `records`."""
    original = Function.__call__

    def call(fn, *inputs):
        out = original(fn, *inputs)
        records.append((fn, inputs, out))
        return out

    Function.__call__ = call
    try:
        yield
    finally:
        Function.__call__ = original


def _flatten(out):
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten(item)]
    raise UnsupportedError(f"pyconv.onnx.export: the model returned a {type(out).__name__}; only "
                           "Tensors (or tuples and lists of them) can be graph outputs")


class _Builder:
    """The ONNX graph being written: nodes, initializers and the name of every traced value."""

    def __init__(self, param_names):
        self.nodes, self.initializers = [], []
        self.names = {}           # id(Tensor) -> value name
        self.traced = set()       # ids of the Tensors that the traced Functions produced
        self.param_names = param_names
        self.counter = 0
        self.keep = []            # objects whose id() names a value: kept alive while exporting
        # id of a traced Tensor -> its shape in the trace with one more sample (dynamic batch)
        self.shapes_at_next_batch = None

    def target_shape(self, out):
        """The shape to reshape to for the traced Tensor `out`: its traced shape, with -1 on the
        axis that follows the batch size (when the batch is symbolic)."""
        shape = list(out.shape)
        if self.shapes_at_next_batch is None:
            return shape
        changed = [k for k, (a, b) in enumerate(zip(shape, self.shapes_at_next_batch[id(out)])) if a != b]
        if len(changed) > 1:
            raise _BatchBound(f"a reshape to {tuple(out.shape)} changes {len(changed)} axes with the batch")
        for k in changed:
            shape[k] = -1
        return shape

    def fresh(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def const(self, array, hint="const"):
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values, hint="shape"):
        return self.const(np.asarray(values, np.int64), hint)

    def node(self, op_type, inputs, outputs=None, **attrs):
        from onnx import helper

        outputs = outputs if outputs is not None else [self.fresh(op_type.lower())]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                           name=f"{op_type}_{len(self.nodes)}", **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def value(self, item, like=None):
        """The name of a Function input: a traced tensor, a parameter, or a new constant."""
        if item is None:
            return ""
        if isinstance(item, Tensor):
            if id(item) in self.names:
                return self.names[id(item)]
            name = self.param_names.get(id(item.data))
            if name is None:
                return self.const(item.data)
            self.const_named(item.data, name)
            self.names[id(item)] = name
            self.keep.append(item)
            return name
        dtype = like.dtype if like is not None and not hasattr(item, "dtype") else None
        return self.const(np.asarray(item, dtype))

    def const_named(self, array, name):
        from onnx import numpy_helper

        if not any(i.name == name for i in self.initializers):
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))


# ---------------------------------------------------------------------------------------------
# One converter per Function type: (builder, function, input names, traced inputs, outputs
# (Tensors), output names) -> writes the nodes whose outputs carry the given names.


def _tuple2(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv(b, fn, names, inputs, outs, out_names):
    from .. import ops

    stride, padding, dilation, groups = fn.params
    nd = 2 if fn.forward_op is ops.conv2d else 1
    w = inputs[1].data if isinstance(inputs[1], Tensor) else np.asarray(inputs[1])
    kernel = w.shape[2:]
    norm = (lambda v: _tuple2(v)) if nd == 2 else (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,))
    stride, dilation = norm(stride), norm(dilation)
    if padding == "valid":
        begins = ends = (0,) * nd
    elif padding == "same":  # the odd pixel of padding goes at the end
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        begins, ends = tuple(t // 2 for t in totals), tuple(t - t // 2 for t in totals)
    else:
        begins = ends = norm(padding)
    b.node("Conv", names if names[2] else names[:2], out_names,
           kernel_shape=list(kernel), strides=list(stride), pads=list(begins) + list(ends),
           dilations=list(dilation), group=int(groups))


def _conv_transpose(b, fn, names, inputs, outs, out_names):
    stride, padding, output_padding, groups, dilation = (_tuple2(v) if i != 3 else v
                                                         for i, v in enumerate(fn.params))
    w = inputs[1].data if isinstance(inputs[1], Tensor) else np.asarray(inputs[1])
    b.node("ConvTranspose", names if names[2] else names[:2], out_names,
           kernel_shape=list(w.shape[2:]), strides=list(stride), pads=list(padding) * 2,
           output_padding=list(output_padding), dilations=list(dilation), group=int(groups))


def _max_pool(b, fn, names, inputs, outs, out_names):
    kernel, stride, padding, dilation, ceil_mode = fn.params
    kernel = _tuple2(kernel)
    b.node("MaxPool", names, out_names, kernel_shape=list(kernel),
           strides=list(kernel if stride is None else _tuple2(stride)),
           pads=list(_tuple2(padding)) * 2, dilations=list(_tuple2(dilation)), ceil_mode=int(bool(ceil_mode)))


def _avg_pool(b, fn, names, inputs, outs, out_names):
    kernel, stride, padding, ceil_mode, count_include_pad, divisor_override = fn.params
    if divisor_override is not None:
        raise UnsupportedError("pyconv.onnx.export: avg_pool2d with divisor_override has no ONNX "
                               "AveragePool equivalent")
    kernel = _tuple2(kernel)
    b.node("AveragePool", names, out_names, kernel_shape=list(kernel),
           strides=list(kernel if stride is None else _tuple2(stride)), pads=list(_tuple2(padding)) * 2,
           ceil_mode=int(bool(ceil_mode)), count_include_pad=int(bool(count_include_pad)))


def _linear(b, fn, names, inputs, outs, out_names):
    x = inputs[0]
    if x.ndim == 2:
        b.node("Gemm", names if names[2] else names[:2], out_names, transB=1)
        return
    wt = b.node("Transpose", [names[1]], perm=[1, 0])
    if names[2]:
        b.node("Add", [b.node("MatMul", [names[0], wt]), names[2]], out_names)
    else:
        b.node("MatMul", [names[0], wt], out_names)


def _batch_norm(b, fn, names, inputs, outs, out_names):
    if fn.training:
        raise UnsupportedError("pyconv.onnx.export: batch_norm in training mode (export runs the "
                               "model in eval mode; a functional batch_norm(training=True) cannot be exported)")
    dtype = fn.mean.dtype
    C = fn.mean.shape[0]
    scale = names[1] or b.const(np.ones(C, dtype), "bn_scale")
    bias = names[2] or b.const(np.zeros(C, dtype), "bn_bias")
    # the Function keeps 1/sqrt(var + eps); the variance it stands for, with epsilon 0
    var = (1.0 / fn.invstd.astype(np.float64) ** 2).astype(dtype)
    b.node("BatchNormalization", [names[0], scale, bias, b.const(fn.mean, "bn_mean"), b.const(var, "bn_var")],
           out_names, epsilon=0.0)


def _simple(op_type, **fixed):
    def convert(b, fn, names, inputs, outs, out_names):
        b.node(op_type, names, out_names, **fixed)
    return convert


def _with_attrs(op_type, **attr_of):
    """A node whose attributes come from the Function's fields: attr name -> field name."""
    def convert(b, fn, names, inputs, outs, out_names):
        b.node(op_type, names, out_names, **{a: getattr(fn, f) for a, f in attr_of.items()})
    return convert


def _softmax(b, fn, names, inputs, outs, out_names):
    b.node("LogSoftmax" if fn.log else "Softmax", names, out_names, axis=fn.axis)


def _prelu(b, fn, names, inputs, outs, out_names):
    x, w = inputs
    if id(w) in b.traced:
        raise UnsupportedError("pyconv.onnx.export: a prelu slope computed in the forward pass is "
                               "not supported (it must be a parameter or a constant)")
    slope = w.data.reshape((-1,) + (1,) * (x.ndim - 2)) if x.ndim > 2 else w.data
    b.node("PRelu", [names[0], b.const(slope, "prelu_slope")], out_names)


def _pow(b, fn, names, inputs, outs, out_names):
    b.node("Pow", [names[0], b.const(np.asarray(fn.exponent, outs[0].dtype))], out_names)


def _clip(b, fn, names, inputs, outs, out_names):
    dtype = outs[0].dtype
    lo = "" if fn.lo is None else b.const(np.asarray(fn.lo, dtype))
    hi = "" if fn.hi is None else b.const(np.asarray(fn.hi, dtype))
    b.node("Clip", [names[0], lo, hi], out_names)


def _reduce(op_type):
    def convert(b, fn, names, inputs, outs, out_names):
        attrs = {"keepdims": int(bool(fn.keepdims))}
        axes = None if fn.axis is None else list(fn.axis if isinstance(fn.axis, tuple) else (fn.axis,))
        if op_type == "ReduceSum":  # axes became an input in opset 13
            b.node(op_type, [names[0]] + ([b.ints(axes, "axes")] if axes is not None else []), out_names, **attrs)
        else:
            if axes is not None:
                attrs["axes"] = axes
            b.node(op_type, names, out_names, **attrs)
    return convert


def _reshape(b, fn, names, inputs, outs, out_names):
    b.node("Reshape", [names[0], b.ints(b.target_shape(outs[0]))], out_names)


def _transpose(b, fn, names, inputs, outs, out_names):
    perm = list(fn.axes) if fn.axes is not None else list(range(inputs[0].ndim))[::-1]
    b.node("Transpose", names, out_names, perm=perm)


def _get_item(b, fn, names, inputs, outs, out_names):
    index = fn.index if isinstance(fn.index, tuple) else (fn.index,)
    if any(not (isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis) for i in index):
        raise UnsupportedError("pyconv.onnx.export: indexing with arrays (advanced indexing) is not "
                               "supported; only ints, slices, None and ...")
    shape = inputs[0].shape
    real = [i for i in index if i is not None]
    if Ellipsis in real:
        k = real.index(Ellipsis)
        real = real[:k] + [slice(None)] * (len(shape) - len(real) + 1) + real[k + 1:]
    starts, ends, axes, steps = [], [], [], []
    for axis, i in enumerate(real):
        n = shape[axis]
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if (start, stop, step) == (0, n, 1):
                continue
            if step < 0 and stop < 0:
                stop = -(2 ** 62)  # through the first element
        else:
            start, step = int(i) % n, 1
            stop = start + 1
        starts.append(start), ends.append(stop), axes.append(axis), steps.append(step)
    x = names[0]
    if axes:
        x = b.node("Slice", [x, b.ints(starts), b.ints(ends), b.ints(axes), b.ints(steps)])
    b.node("Reshape", [x, b.ints(b.target_shape(outs[0]))], out_names)  # drops int axes, adds None axes


def _window(b, fn, names, inputs, outs, out_names=None):
    """The masked convolutions' input window: a Slice of the part inside x, then a zero Pad."""
    shape = inputs[0].shape
    inside, placed = fn._placement(shape)
    nd = len(shape)
    axes = [nd - 2, nd - 1]
    x = b.node("Slice", [names[0], b.ints([inside[1].start, inside[2].start]),
                         b.ints([inside[1].stop, inside[2].stop]), b.ints(axes)])
    size = (fn.rows[1] - fn.rows[0], fn.cols[1] - fn.cols[0])
    before = [0] * (nd - 2) + [placed[1].start, placed[2].start]
    after = [0] * (nd - 2) + [size[0] - placed[1].stop, size[1] - placed[2].stop]
    return b.node("Pad", [x, b.ints(before + after)], out_names)


def _windowed_conv(b, fn, names, inputs, outs, out_names):
    """A masked convolution: its input window, then the convolution."""
    window = _window(b, fn.window, names[:1], inputs[:1], None)
    _conv(b, fn, [window] + list(names[1:]), inputs, outs, out_names)


def _gated_tanh(b, fn, names, inputs, outs, out_names):
    """The gated activation: tanh of the first half of axis dim times sigmoid of the second."""
    c = inputs[0].shape[fn.dim] // 2
    a = b.node("Slice", [names[0], b.ints([0]), b.ints([c]), b.ints([fn.dim])])
    g = b.node("Slice", [names[0], b.ints([c]), b.ints([2 * c]), b.ints([fn.dim])])
    b.node("Mul", [b.node("Tanh", [a]), b.node("Sigmoid", [g])], out_names)


def _broadcast_to(b, fn, names, inputs, outs, out_names):
    # Expand broadcasts: 1 keeps the input's own size (the batch, when it is symbolic), only the
    # repeated axes are given
    lead = len(fn.shape) - inputs[0].ndim
    shape = [n if k < lead or inputs[0].shape[k - lead] != n else 1 for k, n in enumerate(fn.shape)]
    b.node("Expand", [names[0], b.ints(shape)], out_names)


def _concat(b, fn, names, inputs, outs, out_names):
    b.node("Concat", names, out_names, axis=fn.axis)


def _stack(b, fn, names, inputs, outs, out_names):
    axes = b.ints([fn.axis])
    b.node("Concat", [b.node("Unsqueeze", [n, axes]) for n in names], out_names, axis=fn.axis)


def _as_type(b, fn, names, inputs, outs, out_names):
    from onnx.helper import np_dtype_to_tensor_dtype

    b.node("Cast", names, out_names, to=np_dtype_to_tensor_dtype(np.dtype(fn.dtype)))


def _pyconv_to_onnx_gates(a, H):
    """pyconv's (as PyTorch's) gate blocks i, f, g, o in ONNX's order i, o, f, c (c = g)."""
    i, f, g, o = (a[k * H:(k + 1) * H] for k in range(4))
    return np.concatenate([i, o, f, g])


def _lstm_node(b, names, inputs, x_name, out_names_y_h_c):
    """An ONNX LSTM (one direction) from pyconv's (x, h0, c0, w_ih, w_hh, b_ih, b_hh)."""
    if any(id(t) in b.traced for t in inputs[3:7] if t is not None):
        raise UnsupportedError("pyconv.onnx.export: LSTM weights computed in the forward pass "
                               "are not supported (they must be parameters or constants)")
    w_ih, w_hh, b_ih, b_hh = (None if t is None else (t.data if isinstance(t, Tensor) else np.asarray(t))
                              for t in inputs[3:7])
    H = w_hh.shape[1]
    W = b.const(_pyconv_to_onnx_gates(w_ih, H)[None], "lstm_W")
    R = b.const(_pyconv_to_onnx_gates(w_hh, H)[None], "lstm_R")
    zeros = np.zeros(4 * H, w_ih.dtype)
    bias = np.concatenate([_pyconv_to_onnx_gates(zeros if b_ih is None else b_ih, H),
                           _pyconv_to_onnx_gates(zeros if b_hh is None else b_hh, H)])[None]
    axes0 = b.ints([0], "axes")
    h0, c0 = (b.node("Unsqueeze", [n, axes0]) for n in names[1:3])
    b.node("LSTM", [x_name, W, R, b.const(bias, "lstm_B"), "", h0, c0], out_names_y_h_c, hidden_size=H)


def _lstm(b, fn, names, inputs, outs, out_names):
    y, yh, yc = b.fresh("lstm_Y"), b.fresh("lstm_Y_h"), b.fresh("lstm_Y_c")
    _lstm_node(b, names, inputs, names[0], [y, yh, yc])
    b.node("Squeeze", [y, b.ints([1], "axes")], [out_names[0]])
    b.node("Squeeze", [yh, b.ints([0], "axes")], [out_names[1]])
    b.node("Squeeze", [yc, b.ints([0], "axes")], [out_names[2]])


def _lstm_cell(b, fn, names, inputs, outs, out_names):
    x = b.node("Unsqueeze", [names[0], b.ints([0], "axes")])
    yh, yc = b.fresh("lstm_Y_h"), b.fresh("lstm_Y_c")
    _lstm_node(b, names, inputs, x, ["", yh, yc])
    b.node("Squeeze", [yh, b.ints([0], "axes")], [out_names[0]])
    b.node("Squeeze", [yc, b.ints([0], "axes")], [out_names[1]])


# inputs a converter reads as arrays and writes in its own layout (not under their own names)
_prelu.array_inputs = (1,)
_lstm.array_inputs = _lstm_cell.array_inputs = (3, 4, 5, 6)

CONVERTERS = {
    "_Conv": _conv, "_ConvTranspose2d": _conv_transpose, "_MaxPool2d": _max_pool,
    "_AvgPool2d": _avg_pool, "_Linear": _linear, "_BatchNorm": _batch_norm,
    "_BatchNormTrain": _batch_norm,
    "_ReLU": _simple("Relu"), "_Sigmoid": _simple("Sigmoid"), "_Tanh": _simple("Tanh"),
    "_LeakyReLU": _with_attrs("LeakyRelu", alpha="slope"), "_ELU": _with_attrs("Elu", alpha="alpha"),
    "_Softmax": _softmax,
    "_PReLU": _prelu,
    "Add": _simple("Add"), "Sub": _simple("Sub"), "Mul": _simple("Mul"), "Div": _simple("Div"),
    "MatMul": _simple("MatMul"), "Neg": _simple("Neg"), "Exp": _simple("Exp"), "Log": _simple("Log"),
    "Abs": _simple("Abs"), "Pow": _pow, "Clip": _clip,
    "Sum": _reduce("ReduceSum"), "Max": _reduce("ReduceMax"),
    "Reshape": _reshape, "Transpose": _transpose, "GetItem": _get_item,
    "Concatenate": _concat, "BroadcastTo": _broadcast_to, "Stack": _stack, "AsType": _as_type, "ToDevice": _simple("Identity"),
    "_LSTM": _lstm, "_LSTMCell": _lstm_cell,
    "_WindowedConv": _windowed_conv, "_GatedTanh": _gated_tanh,
}
EXPORTABLE = tuple(sorted(CONVERTERS)) + ("_Embedding",)


def _embedding_indices(b, fn, int_inputs):
    """The graph value holding an Embedding's indices: an integer example input, its
    transpose, or (indices not drawn from an input) a constant."""
    idx = fn.indices
    for name, arr in int_inputs:
        if idx is arr:
            return name
        if np.shares_memory(idx, arr):
            if arr.ndim == 2 and idx.shape == arr.shape[::-1] and np.array_equal(idx, arr.T):
                return b.node("Transpose", [name], perm=[1, 0])
            raise UnsupportedError(f"pyconv.onnx.export: an embedding reads a view of input {name!r} "
                                   "other than the input itself or its transpose")
    return b.const(np.asarray(idx, np.int64), "indices")


class _BatchBound(Exception):
    """The graph cannot leave the batch size symbolic (the message says why)."""


def _trace(model, args):
    """Runs `model` once on `args` in eval mode without gradients -> (records, output Tensors)."""
    records = []
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with no_grad(), _recording(records):
            result = model(*args)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    return records, _flatten(result)


def _one_more_sample(examples):
    """The example inputs with their first sample repeated at the end (batch size + 1), or None
    where they do not share a batch axis."""
    if any(e.ndim == 0 for e in examples) or len({e.shape[0] for e in examples}) != 1 or examples[0].shape[0] == 0:
        return None
    return [np.concatenate([e, e[:1]]) for e in examples]


def _shapes_at_next_batch(records, outputs, records2, outputs2):
    """id of each traced Tensor -> its shape in the second trace; _BatchBound where the two
    traces did not run the same Functions."""
    if len(records) != len(records2) or len(outputs) != len(outputs2) or any(
            type(f) is not type(f2) for (f, _, _), (f2, _, _) in zip(records, records2)):
        raise _BatchBound("the model runs other operations at another batch size")
    shapes = {}
    for (_, _, out), (_, _, out2) in zip(records, records2):
        for t, t2 in zip(out if isinstance(out, tuple) else [out], out2 if isinstance(out2, tuple) else [out2]):
            shapes[id(t)] = t2.shape
    return shapes


def export(model, example_input, path=None, *, input_names=None, output_names=None, dynamic_batch=True):
    """Writes `model` (a pyconv.nn.Module, or any callable on Tensors) as an ONNX graph (opset 17,
    IR version 8) by running it once, in eval mode and without gradients, on `example_input`
    (a NumPy array, or a tuple of them for several inputs; integer arrays are passed as they are,
    for embeddings; floating-point ones as Tensors). Returns the ``onnx.ModelProto`` and, with
    `path`, saves it there.

    Covered: conv1d/conv2d (int, tuple, "same", "valid" padding), conv_transpose2d, max and
    average pooling, linear, batch norm (eval), relu, leaky_relu, prelu, elu, sigmoid, tanh,
    softmax, log_softmax, embedding (indices from an input), LSTM and LSTMCell, and the Tensor
    operations (+ - * / @, neg, pow, exp, log, abs, clip, sum, max, reshape, transpose,
    basic indexing, concatenate, stack, astype). Anything else raises
    :class:`~pyconv.onnx.UnsupportedError` naming it.

    With `dynamic_batch` (the default) axis 0 of the inputs, and the output axes that follow
    it, are the symbolic dimension ``batch``, so the graph runs at any batch size, where the
    model allows (see the module's description: the model is traced and the graph checked at a
    second batch size); where it does not, and with ``dynamic_batch=False``, the graph has the
    example inputs' shapes. While it traces, every Function call in the process is recorded:
    run nothing else on pyconv in other threads meanwhile.
    """
    single = not isinstance(example_input, (tuple, list))
    examples = [example_input] if single else list(example_input)
    examples = [np.asarray(e.data if isinstance(e, Tensor) else e) for e in examples]
    input_names = list(input_names) if input_names else (
        ["input"] if len(examples) == 1 else [f"input_{k}" for k in range(len(examples))])
    if len(input_names) != len(examples):
        raise ValueError(f"pyconv.onnx.export: {len(input_names)} input names for {len(examples)} inputs")
    args = [Tensor(e) if e.dtype.kind == "f" else e for e in examples]
    records, outputs = _trace(model, args)
    output_names = list(output_names) if output_names else (
        ["output"] if len(outputs) == 1 else [f"output_{k}" for k in range(len(outputs))])
    if len(output_names) != len(outputs):
        raise ValueError(f"pyconv.onnx.export: {len(output_names)} output names for {len(outputs)} outputs")

    bigger = _one_more_sample(examples) if dynamic_batch else None
    proto = None
    if bigger is not None:
        args2 = [Tensor(e) if e.dtype.kind == "f" else e for e in bigger]
        try:
            try:
                records2, outputs2 = _trace(model, args2)
            except Exception as e:  # whatever the model raises: it is bound to the batch size
                raise _BatchBound(f"the model fails at another batch size: {e}") from e
            shapes = _shapes_at_next_batch(records, outputs, records2, outputs2)
            proto = _graph(model, examples, args, records, outputs, input_names, output_names, shapes)
            _check_at_next_batch(proto, input_names, bigger, [t.data for t in outputs2])
        except _BatchBound:
            proto = None
    if proto is None:
        proto = _graph(model, examples, args, records, outputs, input_names, output_names, None)
    if path is not None:
        import onnx

        onnx.save(proto, path)
    return proto


def _check_at_next_batch(proto, input_names, inputs, expected):
    """_BatchBound unless the graph, run by pyconv on `inputs`, gives `expected`."""
    from ._graph import Graph

    try:
        got = Graph(proto).run(None, dict(zip(input_names, inputs)))
    except (ValueError, TypeError, NotImplementedError) as e:
        raise _BatchBound(f"the graph fails at another batch size: {e}") from e
    for g, e in zip(got, expected):
        if g.shape != e.shape or not np.allclose(g, e, rtol=1e-4, atol=1e-4, equal_nan=True):
            raise _BatchBound("the graph computes something else at another batch size")


def _graph(model, examples, args, records, outputs, input_names, output_names, shapes_at_next_batch):
    """The ONNX model of the traced `records`; with `shapes_at_next_batch`, axis 0 of the inputs
    and the output axes that follow it are the symbolic dimension ``batch``."""
    import onnx
    from onnx import helper

    params = dict(model.named_parameters()) if hasattr(model, "named_parameters") else {}
    buffers = {}
    if hasattr(model, "state_dict"):
        buffers = {k: v for k, v in model.state_dict().items() if k not in params}
    param_names = {id(p.data): name for name, p in params.items()}
    param_names.update({id(a): name for name, a in buffers.items() if hasattr(a, "shape")})

    b = _Builder(param_names)
    b.shapes_at_next_batch = shapes_at_next_batch
    int_inputs = []
    for name, arg in zip(input_names, args):
        if isinstance(arg, Tensor):
            b.names[id(arg)] = name
        else:
            int_inputs.append((name, arg))
    for fn, inputs, out in records:
        kind = type(fn).__name__
        outs = list(out) if isinstance(out, tuple) else [out]
        out_names = [b.fresh(kind.strip("_").lower()) for _ in outs]
        if kind == "_Embedding":
            b.node("Gather", [b.value(inputs[0]), _embedding_indices(b, fn, int_inputs)], out_names, axis=0)
        elif kind in CONVERTERS:
            skip = getattr(CONVERTERS[kind], "array_inputs", ())
            names = [None if k in skip else b.value(i, like=outs[0].data) for k, i in enumerate(inputs)]
            CONVERTERS[kind](b, fn, names, inputs, outs, out_names)
        else:
            raise UnsupportedError(
                f"pyconv.onnx.export: {kind} (from {type(fn).__module__}) has no ONNX mapping; "
                f"export covers {', '.join(EXPORTABLE)}")
        for t, n in zip(outs, out_names):
            b.names[id(t)] = n
            b.traced.add(id(t))
        b.keep.append(outs)

    for t, name in zip(outputs, output_names):
        b.node("Identity", [b.value(t)], [name])

    def info(name, a, dims=None):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                             list(a.shape) if dims is None else dims)

    def output_dims(t):
        if shapes_at_next_batch is None or id(t) not in shapes_at_next_batch:
            return None
        batch = examples[0].shape[0]
        return [d if d == d2 else ("batch" if (d, d2) == (batch, batch + 1) else None)
                for d, d2 in zip(t.shape, shapes_at_next_batch[id(t)])]

    dynamic = shapes_at_next_batch is not None
    graph = helper.make_graph(b.nodes, type(model).__name__,
                              [info(n, e, ["batch", *e.shape[1:]] if dynamic else None)
                               for n, e in zip(input_names, examples)],
                              [info(n, t.data, output_dims(t)) for n, t in zip(output_names, outputs)],
                              initializer=b.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="pyconv")
    onnx.checker.check_model(proto)
    return proto
