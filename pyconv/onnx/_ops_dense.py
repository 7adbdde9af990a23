"""ONNX Gemm and MatMul (pyconv's packed GEMM), elementwise arithmetic and activations
(Relu and LeakyRelu on pyconv's kernels, the rest NumPy), Softmax, BatchNormalization, Dropout, and
the shape, constant and indexing nodes exporters emit around the layers."""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import ops
from ..backends import get_backend
from ._registry import BUILDERS, builder

__all__ = ["batch_norm_affine", "matmul_2d", "relu_in_place"]

# ---------------------------------------------------------------------------------------------
# Dense layers and elementwise arithmetic


@functools.lru_cache(maxsize=None)
def _extension(name):
    try:
        from .. import _C
    except ImportError:
        return None
    return getattr(_C, name)


def _cpu_kernel(name):
    """The C++ kernel `name` when the cpu backend is selected, else None."""
    return _extension(name) if get_backend() == "cpu" else None


def _matmul_kernel():
    """pyconv's own matrix product when the cpu backend is selected (it runs on pyconv's threads:
    NumPy's BLAS would bring a thread pool of its own, which fights pyconv's for the cores
    between nodes; and a product with one row, a batch of one image, runs as a matrix-vector
    product rather than a padded GEMM), else None."""
    return _extension("matmul") if get_backend() == "cpu" else None


def matmul_2d(a, b, c=None, trans_a=False, trans_b=False):
    """op(a) (M, K) @ op(b) (K, N) [+ c, broadcast to (M, N)], op(x) = x.T where trans_x, on
    pyconv's kernel where it applies."""
    matmul = _matmul_kernel()
    if matmul is None or a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.kind != "f" \
            or (c is not None and np.result_type(a, c) != a.dtype) or 0 in a.shape + b.shape:
        y = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if c is not None:
            y += c
        return y
    shape = (a.shape[1 if trans_a else 0], b.shape[0 if trans_b else 1])
    y = np.empty(shape, a.dtype)
    if c is not None:
        y[...] = c
    matmul(np.ascontiguousarray(a), trans_a, np.ascontiguousarray(b), trans_b, y, c is not None)
    return y


@builder("Gemm")
def _gemm(node):
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    b_const, c_const = node.const(1), node.const(2)
    if b_const is not None:  # alpha folded into the constant once
        b_const = np.ascontiguousarray(b_const * b_const.dtype.type(alpha) if alpha != 1.0 else b_const)
    if c_const is not None and beta != 1.0:
        c_const = c_const * c_const.dtype.type(beta)

    # A dense layer (constant B and C): per signature of A, the output's shape and C broadcast
    # to it, settled on the first call; later calls copy C and run the kernel. At batch 1 the
    # general path's checks took as long as the matrix-vector product (LeNet-5's three layers).
    layer = {}  # (a.shape, a.dtype, no C) -> ((M, N), C as an (M, N) array or None), or None: the general path

    def layer_plan(a, with_c):
        if a.ndim != 2 or a.dtype != b_const.dtype or a.dtype.kind != "f" or 0 in a.shape:
            return None
        shape = (a.shape[1 if trans_a else 0], b_const.shape[0 if trans_b else 1])
        if (a.shape[0 if trans_a else 1] != b_const.shape[1 if trans_b else 0]
                or (with_c and np.broadcast_shapes(c_const.shape, shape) != shape)):
            return None  # the general path raises NumPy's error
        return shape, np.ascontiguousarray(np.broadcast_to(c_const, shape)) if with_c else None

    kernel, relu_kernel = _extension("matmul"), _extension("relu")

    def run(a, b, c=None, relu=False):
        if b_const is not None:
            if (kernel is not None and type(a) is np.ndarray and (c is None or c is c_const)
                    and get_backend() == "cpu"):
                key = a.shape, a.dtype, c is None
                plan = layer.get(key, False)
                if plan is False:
                    plan = layer[key] = layer_plan(a, c is not None)
                if plan is not None:
                    shape, c_full = plan
                    y = np.empty(shape, a.dtype) if c_full is None else c_full.copy()
                    kernel(np.ascontiguousarray(a), trans_a, b_const, trans_b, y, c_full is not None)
                    if relu:  # y: fresh, contiguous, floating point
                        relu_kernel(y, y)
                    return y
            y = matmul_2d(a, b_const, c_const if c is not None and c_const is not None else
                          (None if c is None else c * beta), trans_a, trans_b)
            return relu_in_place(y) if relu else y
        y = matmul_2d(a, b, trans_a=trans_a, trans_b=trans_b)
        if alpha != 1.0:
            y *= alpha
        if c is not None:
            y += c * beta if beta != 1.0 else c
        return relu_in_place(y) if relu else y

    run.with_relu = lambda a, b, c=None: run(a, b, c, True)
    return run


@builder("MatMul")
def _matmul(node):
    return lambda a, b: matmul_2d(a, b) if a.ndim == 2 and b.ndim == 2 else np.matmul(a, b)


def _binary(fn):
    def build(node):
        if not node.overwrite_first:
            return fn

        def run(a, b):
            if a.shape == np.broadcast_shapes(a.shape, np.shape(b)) and np.result_type(a, b) == a.dtype:
                return fn(a, b, out=a)
            return fn(a, b)
        return run
    return build


for _op, _fn in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", np.divide),
                 ("Pow", np.power), ("Max", np.maximum), ("Min", np.minimum)):
    BUILDERS[_op] = _binary(_fn)
for _op, _fn in (("Equal", np.equal), ("Less", np.less), ("Greater", np.greater),
                 ("And", np.logical_and), ("Or", np.logical_or)):
    BUILDERS[_op] = (lambda f: lambda node: f)(_fn)


def _sigmoid(x, out=None):
    # 0.5 (1 + tanh(x/2)) equals 1 / (1 + exp(-x)) and never overflows
    y = np.multiply(x, 0.5, out=out)
    np.tanh(y, out=y)
    y += 1
    y *= 0.5
    return y


def relu_in_place(y):
    """max(y, 0) written over y, a fresh array of the step's own. On the cpu backend pyconv's
    vectorised kernel: NumPy's maximum against a scalar runs 3x slower (16x16x32x32 float32:
    90 us against 30 us, 64x6x14x14: 26 against 16)."""
    if y.dtype.kind == "f" and y.flags.c_contiguous and get_backend() == "cpu":
        relu = _extension("relu")
        if relu is not None:
            relu(y, y)
            return y
    return np.maximum(y, 0, out=y)


def add_relu_in_place(y, r):
    """max(y + r, 0) written over y, a fresh array of the step's own, in one pass of pyconv's
    kernel (the sum, then relu's rules: the same bits as the Add and the Relu apart, except
    that a sum below the normal range is flushed to zero as in all pyconv kernels; half the
    passes over the array, on pyconv's threads); None where the kernel does not apply (other
    backends, r not of y's shape and dtype, other dtypes, non-contiguous arrays)."""
    if (r.shape == y.shape and r.dtype == y.dtype and y.dtype in (np.float32, np.float64)
            and y.flags.c_contiguous and r.flags.c_contiguous and get_backend() == "cpu"):
        add_relu = _extension("add_relu")
        if add_relu is not None:
            add_relu(y, r, y)
            return y
    return None


def _relu(x, out=None):
    # In place where the planner allows it: a new output's first touch of fresh pages costs
    # more than the pass itself. Otherwise pyconv's relu kernel. In place, NumPy's
    # single-threaded pass rather than that kernel: it is bound by memory, and on a loaded host
    # a parallel pass paid for descheduled workers (1 MiB in place, measured with OpenMP:
    # median 46 us on 2 threads against 98 us, but mean 1070 us against 100 us).
    if out is None and x.dtype.kind == "f":
        return ops.relu(x)
    return np.maximum(x, 0, out=out)


_UNARY = {"Relu": _relu, "Sigmoid": _sigmoid, "Tanh": np.tanh, "Exp": np.exp, "Log": np.log,
          "Sqrt": np.sqrt, "Neg": np.negative, "Abs": np.abs, "Reciprocal": np.reciprocal,
          "Floor": np.floor, "Ceil": np.ceil, "Not": np.logical_not, "Sign": np.sign}


def _unary(node):
    fn = _UNARY[node.op_type]
    if node.overwrite_first:
        return lambda x: fn(x, out=x)
    return fn


for _op in _UNARY:
    BUILDERS[_op] = _unary


@builder("LeakyRelu")
def _leaky_relu(node):
    slope = node.attr("alpha", 0.01)
    return lambda x: ops.leaky_relu(x, slope)


@builder("Elu")
def _elu(node):
    alpha = node.attr("alpha", 1.0)
    return lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype)


@builder("Clip")
def _clip(node):
    lo, hi = node.attr("min"), node.attr("max")  # opset < 11; later they are inputs

    def run(x, a=None, b=None):
        return np.clip(x, lo if a is None else a, hi if b is None else b)
    return run


@builder("Softmax", "LogSoftmax")
def _softmax(node):
    log = node.op_type == "LogSoftmax"
    axis = node.attr("axis", -1 if node.opset >= 13 else 1)

    kernel = _extension("log_softmax" if log else "softmax")

    def softmax(x, ax):
        if kernel is not None and ax % x.ndim == x.ndim - 1 and x.dtype.char in "fd" \
                and x.size > 0 and get_backend() == "cpu":  # rows of the last axis: pyconv's one-pass kernel
            rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
            y = np.empty_like(rows)
            kernel(rows, y)
            return y.reshape(x.shape)
        shifted = x - x.max(axis=ax, keepdims=True)
        if log:
            return shifted - np.log(np.exp(shifted).sum(axis=ax, keepdims=True))
        e = np.exp(shifted)
        e /= e.sum(axis=ax, keepdims=True)
        return e

    if node.opset >= 13:
        return lambda x: softmax(x, axis)
    # before opset 13 the input is seen as a matrix: axes before `axis` are rows, the rest columns
    return lambda x: softmax(x.reshape(math.prod(x.shape[:axis % x.ndim]), -1), 1).reshape(x.shape)


@builder("BatchNormalization")
def _batch_norm(node):
    if node.attr("training_mode", 0):
        raise node.refuse("training_mode=1 is not supported (inference only)")
    if node.attr("spatial", 1) != 1:
        raise node.refuse("spatial=0 is not supported")
    if node.n_outputs > 1:
        raise node.refuse("the running-statistics outputs (training mode) are not supported")
    eps = node.attr("epsilon", 1e-5)
    params = [node.const(i) for i in range(1, 5)]
    folded = None
    if all(p is not None for p in params):
        folded = batch_norm_affine(*params, eps)

    def run(x, scale, bias, mean, var):
        s, t = folded if folded is not None else batch_norm_affine(scale, bias, mean, var, eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = x * s.reshape(shape).astype(x.dtype)
        y += t.reshape(shape).astype(x.dtype)
        return y
    return run


def batch_norm_affine(scale, bias, mean, var, eps):
    """Inference batch norm as y = x * s + t, computed in float64: (s, t)."""
    s = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return s, bias.astype(np.float64) - mean.astype(np.float64) * s


@builder("Dropout")
def _dropout(node):
    if node.attr("is_test", 1) == 0 and node.opset < 7:
        raise node.refuse("training-mode dropout is not supported")
    if node.has(2) and node.const(2) is not None and bool(node.const(2)):
        raise node.refuse("training_mode=True is not supported (inference only)")
    with_mask = node.n_outputs > 1

    def run(x, ratio=None, training=None):
        if training is not None and bool(training):
            raise ValueError(f"pyconv.onnx: {node.where()}: training_mode=True at run time is not "
                             "supported (inference only)")
        return (x, np.ones(x.shape, bool)) if with_mask else x
    return run


# ---------------------------------------------------------------------------------------------
# Shapes, constants and indexing (what exporters emit around the layers)


@builder("Identity")
def _identity(node):
    return lambda x: x


@builder("Flatten")
def _flatten(node):
    axis = node.attr("axis", 1)

    def run(x):
        a = axis % x.ndim if x.ndim else 0
        return x.reshape(math.prod(x.shape[:a]), -1)
    return run


@builder("Reshape")
def _reshape(node):
    allow_zero = node.attr("allowzero", 0)

    def run(x, shape):
        shape = [int(v) for v in shape]
        if not allow_zero:
            shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
        return x.reshape(shape)
    return run


@builder("Transpose")
def _transpose(node):
    perm = node.attr("perm")
    return lambda x: np.transpose(x, perm)


@builder("Concat")
def _concat(node):
    axis = node.attr("axis")
    return lambda *xs: np.concatenate(xs, axis=axis)


@builder("Shape")
def _shape(node):
    start, end = node.attr("start", 0), node.attr("end")
    return lambda x: np.array(x.shape[start:end], np.int64)


@builder("Size")
def _size(node):
    return lambda x: np.array(x.size, np.int64)


@builder("Gather")
def _gather(node):
    axis = node.attr("axis", 0)
    return lambda x, idx: np.take(x, idx, axis=axis)


def _axes_op(node, fn):
    axes_attr = node.attr("axes")
    axes_input = node.const(1)  # opset 13/18 on: an input, usually a constant, read once
    constant_axes = None if axes_input is None else [int(a) for a in axes_input]

    def run(x, axes=None):
        if axes is None:
            axes = axes_attr
        else:
            axes = constant_axes if axes is axes_input else [int(a) for a in axes]
        return fn(x, axes)
    return run


@builder("Unsqueeze")
def _unsqueeze(node):
    def unsqueeze(x, axes):
        return np.expand_dims(x, tuple(a % (x.ndim + len(axes)) for a in axes))
    return _axes_op(node, unsqueeze)


@builder("Squeeze")
def _squeeze(node):
    def squeeze(x, axes):
        return np.squeeze(x) if axes is None else np.squeeze(x, tuple(a % x.ndim for a in axes))
    return _axes_op(node, squeeze)


@builder("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(node):
    fn = {"ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min}[node.op_type]
    keep = bool(node.attr("keepdims", 1))
    if node.attr("noop_with_empty_axes", 0):
        raise node.refuse("noop_with_empty_axes=1 is not supported")

    from ._ops_conv import global_average

    def reduce(x, axes):
        axes = None if axes is None or len(axes) == 0 else tuple(axes)
        if (fn is np.mean and axes is not None and x.ndim in (3, 4) and x.dtype.kind == "f"
                and sorted(a % x.ndim for a in axes) == list(range(2, x.ndim))):
            # the mean over the spatial axes (PyTorch's export of adaptive average pooling to
            # 1x1): GlobalAveragePool's kernel
            y = global_average(x)
            return y if keep else y.reshape(x.shape[:2])
        return np.asarray(fn(x, axis=axes, keepdims=keep))
    return _axes_op(node, reduce)


@builder("Cast")
def _cast(node):
    from onnx.helper import tensor_dtype_to_np_dtype

    dtype = tensor_dtype_to_np_dtype(node.attr("to"))
    return lambda x: x.astype(dtype)


@builder("Constant")
def _constant(node):
    from onnx.numpy_helper import to_array

    attrs = node.attrs
    if "value" in attrs:
        value = to_array(attrs["value"])
    elif "value_float" in attrs:
        value = np.array(attrs["value_float"], np.float32)
    elif "value_floats" in attrs:
        value = np.array(attrs["value_floats"], np.float32)
    elif "value_int" in attrs:
        value = np.array(attrs["value_int"], np.int64)
    elif "value_ints" in attrs:
        value = np.array(attrs["value_ints"], np.int64)
    else:
        raise node.refuse(f"attributes {sorted(attrs)} are not supported (sparse or string constants)")
    return lambda: value


@builder("ConstantOfShape")
def _constant_of_shape(node):
    from onnx.numpy_helper import to_array

    value = to_array(node.attr("value")) if "value" in node.attrs else np.zeros(1, np.float32)
    return lambda shape: np.full([int(v) for v in shape], value.reshape(-1)[0], value.dtype)


@builder("Expand")
def _expand(node):
    return lambda x, shape: np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(int(v) for v in shape)))


@builder("Where")
def _where(node):
    return np.where


@builder("Range")
def _range(node):
    return lambda start, limit, delta: np.arange(start, limit, delta, dtype=np.result_type(start))


@builder("Slice")
def _slice(node):
    attr_form = node.opset < 10

    def run(x, starts=None, ends=None, axes=None, steps=None):
        if attr_form:
            starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
        axes = range(len(starts)) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        index = [slice(None)] * x.ndim
        for a, s, e, st in zip(axes, starts, ends, steps):
            n = x.shape[int(a)]
            s, e, st = int(s), int(e), int(st)
            # ONNX clamps huge sentinels (INT64_MAX) as Python's slice does
            index[int(a)] = slice(max(min(s, n), -n - 1), max(min(e, n), -n - 1), st)
        return x[tuple(index)]
    return run


@builder("Pad")
def _pad(node):
    mode = node.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    np_mode = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}.get(mode)
    if np_mode is None:
        raise node.refuse(f"mode={mode!r} is not supported")
    attr_pads, attr_value = node.attr("pads"), node.attr("value", 0.0)

    def run(x, pads=None, value=None, axes=None):
        pads = attr_pads if pads is None else [int(p) for p in pads]
        axes = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in axes]
        k = len(axes)
        widths = [[0, 0] for _ in range(x.ndim)]
        for i, a in enumerate(axes):
            widths[a] = [pads[i], pads[i + k]]
        crop = tuple(slice(-b if b < 0 else 0, x.shape[a] + e if e < 0 else None)
                     for a, (b, e) in enumerate(widths))
        x = x[crop]  # negative pads remove
        widths = [(max(b, 0), max(e, 0)) for b, e in widths]
        if np_mode == "constant":
            fill = attr_value if value is None or np.size(value) == 0 else np.asarray(value).reshape(-1)[0]
            return np.pad(x, widths, constant_values=fill)
        return np.pad(x, widths, mode=np_mode)
    return run
