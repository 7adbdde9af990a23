"""The ONNX operators pyconv runs: for each op type, a builder that reads a node's attributes
once (when the graph is loaded), refuses the values it cannot honour, and returns the function
that computes the node's outputs from its input arrays.

Convolutions, pooling, LSTM and non-max suppression run pyconv's kernels (:mod:`pyconv.ops`);
LeakyRelu runs pyconv's fused kernel; the rest is NumPy. Semantics follow the ONNX operator
specification (default domain); where it left room, ONNX Runtime's choice is the one taken,
since that is what the tests compare with.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import ops
from ..backends import get_backend

__all__ = ["BUILDERS", "VIEW_OPS", "UnsupportedError", "Node"]


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

    def only(self, name, allowed):
        value = self.attrs.get(name)
        if value is not None and value not in allowed:
            raise self.refuse(f"attribute {name}={value!r} is not supported (supported: "
                              f"{', '.join(map(repr, allowed))})")


_ABSENT = object()   # an optional input left out ('' in the node's input list)
_RUNTIME = object()  # an input computed when the graph runs

BUILDERS: dict = {}
# Ops whose output may share memory with their input: the planner never lets a consumer
# overwrite such an output in place.
VIEW_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout",
            "Expand", "Slice", "Gather"}


def builder(*op_types):
    def register(fn):
        for t in op_types:
            BUILDERS[t] = fn
        return fn
    return register


# ---------------------------------------------------------------------------------------------
# Padding geometry shared by Conv, ConvTranspose and the pools


def _same_pads(n, k, s, d, upper):
    """(begin, end) padding of one axis for auto_pad SAME_UPPER / SAME_LOWER: the output has
    ceil(n / s) positions and the odd pixel goes at the end (UPPER) or the beginning (LOWER)."""
    out = -(-n // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _auto_pad(node):
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise node.refuse(f"auto_pad={auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    return auto_pad


def _pads_rule(node, nd):
    """A function (spatial input sizes, kernel sizes, strides, dilations) -> (begins, ends)
    following the node's auto_pad and pads attributes."""
    auto_pad = _auto_pad(node)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        upper = auto_pad == "SAME_UPPER"

        def same(sizes, kernel, strides, dilations):
            both = [_same_pads(n, k, s, d, upper) for n, k, s, d in zip(sizes, kernel, strides, dilations)]
            return [b for b, _ in both], [e for _, e in both]
        return same
    pads = [0] * (2 * nd) if auto_pad == "VALID" else list(node.attr("pads", [0] * (2 * nd)))
    if len(pads) != 2 * nd or min(pads) < 0:
        raise node.refuse(f"pads={pads} must hold {2 * nd} non-negative values")
    begins, ends = pads[:nd], pads[nd:]
    return lambda sizes, kernel, strides, dilations: (begins, ends)


def _ints(node, name, nd, default):
    v = list(node.attr(name, [default] * nd))
    if len(v) != nd:
        raise node.refuse(f"{name}={v} must hold {nd} values (one per spatial axis)")
    return v


def _spatial_rank(node, nd):
    if nd not in (1, 2):
        raise node.refuse(f"only 1-D and 2-D {node.op_type} is supported, got {nd}-D")
    return nd


def _pad_array(x, begins, ends, value=0.0):
    return np.pad(x, [(0, 0), (0, 0)] + list(zip(begins, ends)), constant_values=value)


def _to_2d(nd, x):
    """1-D spatial data (N, C, L) as 2-D (N, C, 1, L), so the 2-D kernels run it."""
    return x[:, :, None, :] if nd == 1 else x


def _pair(nd, v, one):
    return (one, v[0]) if nd == 1 else tuple(v)


# ---------------------------------------------------------------------------------------------
# Convolution


def _per_rank(build):
    """A builder for a conv-like node whose spatial rank (1-D or 2-D) comes from kernel_shape or
    its constant weight, else from the weight it is given when the graph runs."""
    def builder_(node):
        _auto_pad(node)
        w = node.const(1)
        nd = len(node.attr("kernel_shape")) if node.attr("kernel_shape") is not None else (
            None if w is None else w.ndim - 2)
        if nd is not None:
            return build(node, _spatial_rank(node, nd))
        by_rank = {}

        def run(x, w, b=None):
            nd = w.ndim - 2
            if nd not in by_rank:
                by_rank[nd] = build(node, _spatial_rank(node, nd))
            return by_rank[nd](x, w, b)
        return run
    return builder_


@builder("Conv")
@_per_rank
def _conv(node, nd):
    strides, dilations = _ints(node, "strides", nd, 1), _ints(node, "dilations", nd, 1)
    group = node.attr("group", 1)
    pads = _pads_rule(node, nd)
    kernel_attr = node.attr("kernel_shape")

    def run(x, w, b=None):
        kernel = w.shape[2:]
        if kernel_attr is not None and list(kernel_attr) != list(kernel):
            raise ValueError(f"pyconv.onnx: {node.where()}: kernel_shape={list(kernel_attr)} but "
                             f"the weight has shape {w.shape}")
        begins, ends = pads(x.shape[2:], kernel, strides, dilations)
        common = [min(b_, e) for b_, e in zip(begins, ends)]
        if begins != common or ends != common:  # asymmetric: the extra zeros go in first
            x = _pad_array(x, [b_ - c for b_, c in zip(begins, common)],
                           [e - c for e, c in zip(ends, common)])
        if nd == 1:
            return ops.conv1d(x, w, b, strides[0], common[0], dilations[0], group)
        return ops.conv2d(x, w, b, tuple(strides), tuple(common), tuple(dilations), group)
    return run


@builder("ConvTranspose")
@_per_rank
def _conv_transpose(node, nd):
    strides, dilations = _ints(node, "strides", nd, 1), _ints(node, "dilations", nd, 1)
    out_pad = _ints(node, "output_padding", nd, 0)
    group = node.attr("group", 1)
    auto_pad = _auto_pad(node)
    output_shape = node.attr("output_shape")
    if output_shape is not None:
        output_shape = list(output_shape)[-nd:]
    explicit = _pads_rule(node, nd) if auto_pad in ("NOTSET", "VALID") and output_shape is None else None
    if explicit is None and auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER"):
        raise node.refuse(f"auto_pad={auto_pad!r} with output_shape is not supported")

    def crops(sizes, kernel):
        """(begins, ends): how much of the full transpose convolution each side drops."""
        if explicit is not None:
            return explicit(sizes, kernel, strides, dilations)
        full = [s * (n - 1) + op + (k - 1) * d + 1
                for n, k, s, d, op in zip(sizes, kernel, strides, dilations, out_pad)]
        target = output_shape if output_shape is not None else [n * s for n, s in zip(sizes, strides)]
        totals = [f - t for f, t in zip(full, target)]
        if auto_pad == "SAME_UPPER":
            return [t // 2 for t in totals], [t - t // 2 for t in totals]
        return [t - t // 2 for t in totals], [t // 2 for t in totals]

    def run(x, w, b=None):
        kernel = w.shape[2:]
        begins, ends = crops(x.shape[2:], kernel)
        native = (begins == ends and min(begins) >= 0
                  and all(op < max(s, d) for op, s, d in zip(out_pad, strides, dilations)))
        if native:
            y = ops.conv_transpose2d(_to_2d(nd, x), _to_2d(nd, w), b, _pair(nd, strides, 1),
                                     _pair(nd, begins, 0), _pair(nd, out_pad, 0), group,
                                     _pair(nd, dilations, 1))
            return y[:, :, 0, :] if nd == 1 else y
        # The whole transpose convolution, then the window [begin, begin + out) of it, with
        # zeros where that window reaches past it (output_padding, negative pads).
        full = ops.conv_transpose2d(_to_2d(nd, x), _to_2d(nd, w), None, _pair(nd, strides, 1), 0, 0,
                                    group, _pair(nd, dilations, 1))
        full = full[:, :, 0, :] if nd == 1 else full
        sizes = [f + op - b_ - e for f, op, b_, e in zip(full.shape[2:], out_pad, begins, ends)]
        if min(sizes) < 1:
            raise ValueError(f"pyconv.onnx: {node.where()}: empty output {sizes}")
        y = np.zeros(full.shape[:2] + tuple(sizes), full.dtype)
        src, dst = [slice(None)] * 2, [slice(None)] * 2
        for f, b_, n in zip(full.shape[2:], begins, sizes):
            lo, hi = max(b_, 0), min(f, b_ + n)
            src.append(slice(lo, max(hi, lo)))
            dst.append(slice(lo - b_, max(hi, lo) - b_))
        y[tuple(dst)] = full[tuple(src)]
        if b is not None:
            y += b.reshape((1, -1) + (1,) * nd)
        return y
    return run


# ---------------------------------------------------------------------------------------------
# Pooling


def _pool_common(node):
    if node.attr("kernel_shape") is None:
        raise node.refuse("kernel_shape is missing")
    nd = _spatial_rank(node, len(node.attr("kernel_shape")))
    kernel = list(node.attr("kernel_shape"))
    strides, dilations = _ints(node, "strides", nd, 1), _ints(node, "dilations", nd, 1)
    return nd, kernel, strides, dilations, _pads_rule(node, nd), bool(node.attr("ceil_mode", 0))


@builder("MaxPool")
def _max_pool(node):
    nd, kernel, strides, dilations, pads, ceil_mode = _pool_common(node)
    with_indices = node.n_outputs > 1
    if with_indices and node.attr("storage_order", 0) != 0:
        raise node.refuse("storage_order=1 (column-major indices) is not supported")

    def run(x):
        begins, ends = pads(x.shape[2:], kernel, strides, dilations)
        x2 = _to_2d(nd, x)
        k2, s2, d2 = _pair(nd, kernel, 1), _pair(nd, strides, 1), _pair(nd, dilations, 1)
        if begins == ends and all(p <= k // 2 for p, k in zip(begins, kernel)):
            res = ops.max_pool2d(x2, k2, s2, _pair(nd, begins, 0), d2, ceil_mode,
                                 return_indices=with_indices)
        else:
            if with_indices:
                raise node.refuse(f"the Indices output with pads {begins + ends} (asymmetric or "
                                  "over half the kernel) is not supported")
            res = ops.max_pool2d(_pad_array(x2, _pair(nd, begins, 0), _pair(nd, ends, 0), -np.inf),
                                 k2, s2, 0, d2, ceil_mode)
        if not with_indices:
            return res[:, :, 0, :] if nd == 1 else res
        y, idx = res
        N, C, H, W = x2.shape
        # pyconv's indices count within each plane; ONNX's count over the whole tensor
        idx += (np.arange(N * C, dtype=np.int64) * (H * W)).reshape(N, C, 1, 1)
        return (y[:, :, 0, :], idx[:, :, 0, :]) if nd == 1 else (y, idx)
    return run


@builder("AveragePool")
def _avg_pool(node):
    nd, kernel, strides, dilations, pads, ceil_mode = _pool_common(node)
    if any(d != 1 for d in dilations):
        raise node.refuse(f"dilations={dilations} is not supported for AveragePool")
    include_pad = bool(node.attr("count_include_pad", 0))

    def run(x):
        begins, ends = pads(x.shape[2:], kernel, strides, dilations)
        x2 = _to_2d(nd, x)
        k2, s2 = _pair(nd, kernel, 1), _pair(nd, strides, 1)
        if begins == ends and all(p <= k // 2 for p, k in zip(begins, kernel)):
            y = ops.avg_pool2d(x2, k2, s2, _pair(nd, begins, 0), ceil_mode, include_pad)
        else:
            b2, e2 = _pair(nd, begins, 0), _pair(nd, ends, 0)
            y = ops.avg_pool2d(_pad_array(x2, b2, e2), k2, s2, 0, ceil_mode, True)
            if not include_pad:  # the mean over the real inputs: divide by their share
                ones = _pad_array(np.ones((1, 1) + x2.shape[2:], x2.dtype), b2, e2)
                y /= ops.avg_pool2d(ones, k2, s2, 0, ceil_mode, True)
        return y[:, :, 0, :] if nd == 1 else y
    return run


@builder("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node):
    reduce = np.mean if node.op_type == "GlobalAveragePool" else np.max
    return lambda x: reduce(x, axis=tuple(range(2, x.ndim)), keepdims=True)


# ---------------------------------------------------------------------------------------------
# Dense layers and elementwise arithmetic


@functools.lru_cache(maxsize=None)
def _extension_gemm():
    try:
        from .. import _C
    except ImportError:
        return None
    return _C.gemm


def _packed_gemm():
    """pyconv's own packed GEMM when the cpu backend is selected (it runs on pyconv's threads:
    NumPy's BLAS would bring a thread pool of its own, which fights pyconv's for the cores
    between nodes), else None."""
    return _extension_gemm() if get_backend() == "cpu" else None


def matmul_2d(a, b, c=None):
    """a (M, K) @ b (K, N) [+ c, broadcast to (M, N)] on pyconv's GEMM where it applies."""
    gemm = _packed_gemm()
    if gemm is None or a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.kind != "f" \
            or (c is not None and np.result_type(a, c) != a.dtype) or 0 in a.shape + b.shape:
        y = a @ b
        if c is not None:
            y += c
        return y
    shape = (a.shape[0], b.shape[1])
    if c is None:
        y = np.empty(shape, a.dtype)
    else:
        y = np.empty(shape, a.dtype)
        y[...] = c
    gemm(np.ascontiguousarray(a), np.ascontiguousarray(b), y, c is not None)
    return y


@builder("Gemm")
def _gemm(node):
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    b_const, c_const = node.const(1), node.const(2)
    if b_const is not None:  # transB and alpha folded into the constant once
        b_const = b_const.T if trans_b else b_const
        b_const = np.ascontiguousarray(b_const * b_const.dtype.type(alpha) if alpha != 1.0 else b_const)
    if c_const is not None and beta != 1.0:
        c_const = c_const * c_const.dtype.type(beta)

    def run(a, b, c=None):
        a = a.T if trans_a else a
        if b_const is not None:
            return matmul_2d(a, b_const, c_const if c is not None and c_const is not None else
                             (None if c is None else c * beta))
        y = matmul_2d(a, b.T if trans_b else b)
        if alpha != 1.0:
            y *= alpha
        if c is not None:
            y += c * beta if beta != 1.0 else c
        return y
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


def _relu(x, out=None):
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

    def softmax(x, ax):
        shifted = x - x.max(axis=ax, keepdims=True)
        if log:
            return shifted - np.log(np.exp(shifted).sum(axis=ax, keepdims=True))
        e = np.exp(shifted)
        e /= e.sum(axis=ax, keepdims=True)
        return e

    if node.opset >= 13:
        return lambda x: softmax(x, axis)
    # before opset 13 the input is seen as a matrix: axes before `axis` are rows, the rest columns
    return lambda x: softmax(x.reshape(int(np.prod(x.shape[:axis % x.ndim])), -1), 1).reshape(x.shape)


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
        return x.reshape(int(np.prod(x.shape[:a])), -1)
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

    def run(x, axes=None):
        axes = axes_attr if axes is None else [int(a) for a in axes]
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

    def reduce(x, axes):
        axes = None if axes is None or len(axes) == 0 else tuple(axes)
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


# ---------------------------------------------------------------------------------------------
# LSTM and non-maximum suppression


def _onnx_to_pyconv_gates(a, hidden):
    """ONNX orders the gate blocks i, o, f, c; pyconv (as PyTorch) i, f, g (= c), o."""
    i, o, f, c = (a[k * hidden:(k + 1) * hidden] for k in range(4))
    return np.ascontiguousarray(np.concatenate([i, f, c, o]))


@builder("LSTM")
def _lstm(node):
    direction = node.attr("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise node.refuse(f"direction={direction!r} is not forward, reverse or bidirectional")
    activations = [a.decode() if isinstance(a, bytes) else a for a in node.attr("activations", [])]
    if activations and [a.lower() for a in activations] != ["sigmoid", "tanh", "tanh"] * len(activations[::3]):
        raise node.refuse(f"activations={activations} are not supported (only Sigmoid, Tanh, Tanh)")
    for name in ("clip", "activation_alpha", "activation_beta"):
        if node.attr(name) is not None:
            raise node.refuse(f"attribute {name} is not supported")
    if node.attr("input_forget", 0):
        raise node.refuse("input_forget=1 (coupled input and forget gates) is not supported")
    if node.has(7):
        raise node.refuse("peephole weights (input P) are not supported")
    layout = node.attr("layout", 0)
    hidden = node.attr("hidden_size")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]

    def weights(W, R, B):
        H = R.shape[-1]
        per_dir = []
        for d in range(len(dirs)):
            b_ih = b_hh = None
            if B is not None:
                b_ih, b_hh = (_onnx_to_pyconv_gates(B[d, k * 4 * H:(k + 1) * 4 * H], H) for k in (0, 1))
            per_dir.append((_onnx_to_pyconv_gates(W[d], H), _onnx_to_pyconv_gates(R[d], H), b_ih, b_hh))
        return per_dir

    fixed = None
    if node.const(1) is not None and node.const(2) is not None and (not node.has(3) or node.const(3) is not None):
        fixed = weights(node.const(1), node.const(2), node.const(3))

    def run(X, W, R, B=None, seq_lens=None, h0=None, c0=None, P=None):
        per_dir = fixed if fixed is not None else weights(W, R, B)
        x = X.transpose(1, 0, 2) if layout else X  # (T, B, I)
        T, N = x.shape[:2]
        H = R.shape[-1]
        if hidden is not None and hidden != H:
            raise ValueError(f"pyconv.onnx: {node.where()}: hidden_size={hidden} but R has shape {R.shape}")
        if seq_lens is not None and np.any(seq_lens != T):
            raise UnsupportedError(f"pyconv.onnx: {node.where()}: sequence_lens other than the full "
                                   f"length {T} are not supported")
        if layout and h0 is not None:
            h0 = h0.transpose(1, 0, 2)
        if layout and c0 is not None:
            c0 = c0.transpose(1, 0, 2)
        zeros = np.zeros((N, H), x.dtype)
        ys, hs, cs = [], [], []
        for d, (w_ih, w_hh, b_ih, b_hh) in enumerate(per_dir):
            reverse = dirs[d] == "reverse"
            xd = x[::-1] if reverse else x
            out, (h, c) = ops.lstm(xd, zeros if h0 is None else h0[d], zeros if c0 is None else c0[d],
                                   w_ih, w_hh, b_ih, b_hh)
            ys.append(out[::-1] if reverse else out)
            hs.append(h)
            cs.append(c)
        Y = np.stack(ys, axis=1)  # (T, num_directions, B, H)
        Yh, Yc = np.stack(hs), np.stack(cs)
        if layout:
            Y, Yh, Yc = Y.transpose(2, 0, 1, 3), Yh.transpose(1, 0, 2), Yc.transpose(1, 0, 2)
        return Y, Yh, Yc
    return run


@builder("NonMaxSuppression")
def _nms(node):
    center = node.attr("center_point_box", 0)
    if center not in (0, 1):
        raise node.refuse(f"center_point_box={center} is not 0 or 1")

    def corners(boxes):
        if center:  # (x_center, y_center, width, height)
            xc, yc, w, h = (boxes[:, k] for k in range(4))
            return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
        # (y1, x1, y2, x2), any diagonal pair: the IoU is the same with the axes swapped
        a, b = np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])
        return np.ascontiguousarray(np.concatenate([a, b], axis=1))

    def run(boxes, scores, max_out=None, iou_threshold=None, score_threshold=None):
        limit = 0 if max_out is None else int(np.asarray(max_out).reshape(-1)[0])
        iou = 0.0 if iou_threshold is None else float(np.asarray(iou_threshold).reshape(-1)[0])
        selected = []
        if limit > 0:
            for n in range(scores.shape[0]):
                box_n = corners(boxes[n])
                for c in range(scores.shape[1]):
                    s = scores[n, c]
                    keep = np.arange(s.shape[0])
                    if score_threshold is not None:
                        keep = keep[s > np.asarray(score_threshold).reshape(-1)[0]]
                    if keep.size == 0:
                        continue
                    kept = keep[ops.nms(np.ascontiguousarray(box_n[keep]), np.ascontiguousarray(s[keep]), iou)]
                    for i in kept[:limit]:
                        selected.append((n, c, int(i)))
        return np.array(selected, np.int64).reshape(-1, 3)
    return run
