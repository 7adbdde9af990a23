"""ONNX Conv, ConvTranspose, MaxPool, AveragePool and the global pools on pyconv's kernels
(:mod:`pyconv.ops`), with ONNX's padding rules (auto_pad, asymmetric pads) mapped onto them."""
from __future__ import annotations

import numpy as np

from .. import ops
from .. import _spec
from ..backends import get_backend
from ._ops_dense import _cpu_kernel, _extension, relu_in_place
from ._registry import KernelCall, builder

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
    weight = node.const(1)  # a constant weight gets its filters transformed once (cpu backend)
    # (x.shape[2:], w.shape) -> (extra begin and end padding or None, common padding, stride)
    geometry = {}

    def plan(x, w):
        kernel = w.shape[2:]
        if kernel_attr is not None and list(kernel_attr) != list(kernel):
            raise ValueError(f"pyconv.onnx: {node.where()}: kernel_shape={list(kernel_attr)} but "
                             f"the weight has shape {w.shape}")
        begins, ends = pads(x.shape[2:], kernel, strides, dilations)
        common = [min(b_, e) for b_, e in zip(begins, ends)]
        extra = None
        if begins != common or ends != common:  # asymmetric: the extra zeros go in first
            extra = ([b_ - c for b_, c in zip(begins, common)], [e - c for e, c in zip(ends, common)])
        subsampled = all(k == 1 for k in kernel) and not any(begins + ends) and max(strides) > 1
        return extra, tuple(_pair(nd, common, 0)), tuple(_pair(nd, strides, 1)), subsampled

    conv = KernelCall("conv2d", "conv2d", lambda x, w, b, padding, stride: (_spec.conv2d(
        x, w, b, stride, padding, _pair(nd, dilations, 1), group),))

    def run(x, w, b=None):
        if x.ndim != nd + 2 or w.ndim != nd + 2:
            raise ValueError(f"pyconv.onnx: {node.where()}: x {x.shape} and w {w.shape} must both "
                             f"have {nd + 2} dimensions (batch, channels and {nd} spatial)")
        key = x.shape[2:], w.shape
        if key not in geometry:
            geometry[key] = plan(x, w)
        extra, common, stride, subsampled = geometry[key]
        if extra is not None:
            x = _pad_array(x, *extra)
        if subsampled and get_backend() != "cpu":
            # A strided 1x1 convolution without padding reads only every stride-th pixel: on
            # those, copied out, it is the unstrided 1x1 convolution (the same sums, bit for
            # bit). The cpu kernel does this itself, gathering the pixels as it packs them.
            x = x[(slice(None), slice(None)) + tuple(slice(None, None, s_) for s_ in strides)]
            stride = (1, 1)
        if nd == 1:
            return conv((x[:, :, None, :], w[:, :, None, :], b), common, stride)[:, :, 0, :]
        return conv((x, w, b), common, stride)

    def with_epilogue(epilogue, otherwise):
        """run followed by `epilogue` (an Add of a last argument, a Relu; the planner's fused
        step; none for the Conv alone), where `otherwise` does it in passes of their own. On
        the cpu backend the convolution kernel takes them (Winograd applies them as it stores
        its outputs, the other algorithms in one pass): the same bits, without the separate
        kernel calls. A constant weight's filters are transformed once per signature, as
        ONNX Runtime prepacks its initializers."""
        add, relu = "Add" in epilogue, "Relu" in epilogue
        # signature -> (the kernel's geometry, its output shape, prepared filters), or None
        # where otherwise applies. A call with the node's own constant weight and bias and no
        # residual is keyed by x alone (the whole signature's key cost a quarter of the node's
        # Python in a batch-1 LeNet-5).
        bound = {}
        bias = node.const(2)
        kernel = _extension("conv2d")

        def kernel_setup(x, w, b, r):
            if (nd != 2 or x.ndim != 4 or w.ndim != 4 or x.dtype not in (np.float32, np.float64)
                    or w.dtype != x.dtype or (b is not None and b.dtype != x.dtype)):
                return None
            key = x.shape[2:], w.shape
            if key not in geometry:
                geometry[key] = plan(x, w)
            extra, common, stride, _ = geometry[key]
            if extra is not None:
                return None
            g = _spec.conv2d(x, w, b, stride, common, tuple(dilations), group)
            if r is not None and (r.shape != tuple(g.output_shape) or r.dtype != x.dtype):
                return None
            constant = w is weight and w.flags.c_contiguous  # passed to the kernel as it is
            filters = _cpu_kernel("conv2d_prepare")(w, g) if constant else None
            return g, tuple(g.output_shape), filters

        def fused(*args):
            # (A graph of small layers at batch 1 spends as long here as in the kernel: the
            # checks are kept to what a signature's first call has not settled.)
            conv_args, r = (args[:-1], args[-1]) if add else (args, None)
            if kernel is None or len(conv_args) < 2 or get_backend() != "cpu":
                return otherwise(*args)
            x, w = conv_args[0], conv_args[1]
            b = conv_args[2] if len(conv_args) > 2 else None
            if type(x) is not np.ndarray:
                return otherwise(*args)
            if w is weight and b is bias and r is None:
                key = x.shape, x.dtype
            elif (type(w) is np.ndarray and (b is None or type(b) is np.ndarray)
                    and (r is None or type(r) is np.ndarray)):
                key = (x.shape, x.dtype, w.shape, w.dtype, None if b is None else (b.shape, b.dtype),
                       None if r is None else (r.shape, r.dtype))
            else:
                return otherwise(*args)
            setup = bound.get(key, False)
            if setup is False:
                setup = bound[key] = kernel_setup(x, w, b, r)
            if setup is None:
                return otherwise(*args)
            g, shape, filters = setup
            y = np.empty(shape, x.dtype)
            contiguous = np.ascontiguousarray
            kernel(contiguous(x), contiguous(w), None if b is None else contiguous(b), y, g,
                   None if r is None else contiguous(r), relu, filters)
            return y
        return fused

    alone = with_epilogue((), run)
    alone.with_epilogue = with_epilogue
    return alone


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
    # output_shape, where given, decides the padding whatever pads and auto_pad say
    explicit = _pads_rule(node, nd) if auto_pad in ("NOTSET", "VALID") and output_shape is None else None

    def crops(sizes, kernel):
        """(begins, ends): how much of the full transpose convolution each side drops."""
        if explicit is not None:
            return explicit(sizes, kernel, strides, dilations)
        full = [s * (n - 1) + op + (k - 1) * d + 1
                for n, k, s, d, op in zip(sizes, kernel, strides, dilations, out_pad)]
        target = output_shape if output_shape is not None else [n * s for n, s in zip(sizes, strides)]
        begins, ends = [], []
        for t in (f - t for f, t in zip(full, target)):
            if t < 0:  # larger than the full output: as ONNX Runtime, an explicit output_shape
                # gets zeros appended at the end; auto_pad alone keeps the full output
                b_, e = 0, t if output_shape is not None else 0
            elif auto_pad == "SAME_UPPER":
                b_, e = t // 2, t - t // 2
            else:
                b_, e = t - t // 2, t // 2
            begins.append(b_)
            ends.append(e)
        return begins, ends

    # the transpose convolution is the input gradient of the convolution it inverts
    def geometry(x, w, bias, padding):
        return _spec.conv_transpose2d(x, w, None if bias is None else _spec.ShapeDtype(*bias), _pair(nd, strides, 1),
                                      padding, _pair(nd, out_pad, 0), group, _pair(nd, dilations, 1))

    transpose = KernelCall("conv_transpose2d", "conv2d_grad_input", lambda *args: (geometry(*args),))
    weight = node.const(1)  # a constant weight gets packed once (cpu backend)
    kernel = _extension("conv2d_grad_input")
    packed = {}  # (x's signature, padding) -> (the kernel's geometry, its output shape, prepared filters)

    def transpose_packed_once(x, w, b, padding, relu):
        """The transposed convolution with its bias b (or None), then relu if asked, on the cpu
        backend with the node's constant weight: its filters packed on the first call of each
        signature, as ONNX Runtime prepacks its initializers, and the bias and relu applied by
        the kernel. None where that does not apply."""
        if (kernel is None or w is not weight or type(x) is not np.ndarray or x.dtype != w.dtype
                or x.dtype.char not in "fd" or not w.flags.c_contiguous or get_backend() != "cpu"):
            return None
        key = x.shape, x.dtype, padding
        if key not in packed:
            g = geometry(x, w, None, padding)
            packed[key] = g, tuple(g.input_shape), _cpu_kernel("conv2d_grad_input_prepare")(w, g)
        g, shape, filters = packed[key]
        if b is not None and (type(b) is not np.ndarray or b.dtype != x.dtype or b.shape != shape[1:2]):
            return None
        y = np.empty(shape, x.dtype)
        kernel(np.ascontiguousarray(x), w, y, g, filters, b, relu)
        return y

    plans = {}  # (x.shape[2:], w.shape[2:]) -> (begins, ends, native padding or None)

    def plan(sizes, kernel):
        begins, ends = crops(sizes, kernel)
        native = (begins == ends and min(begins) >= 0
                  and all(op < max(s, d) for op, s, d in zip(out_pad, strides, dilations)))
        return begins, ends, tuple(_pair(nd, begins, 0)) if native else None

    def run(x, w, b=None, relu=False):
        if x.ndim != nd + 2 or w.ndim != nd + 2:
            raise ValueError(f"pyconv.onnx: {node.where()}: x {x.shape} and w {w.shape} must both "
                             f"have {nd + 2} dimensions (batch, channels and {nd} spatial)")
        key = x.shape[2:], w.shape[2:]
        if key not in plans:
            plans[key] = plan(*key)
        begins, ends, padding = plans[key]
        if padding is not None:
            x2, w2 = _to_2d(nd, x), _to_2d(nd, w)
            y = transpose_packed_once(x2, w2, b, padding, relu)
            if y is None:
                y = transpose((x2, w2), None if b is None else (b.shape, b.dtype), padding)
                if b is not None:
                    y += b.reshape(1, -1, 1, 1)
                if relu:
                    relu_in_place(y)
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
        return relu_in_place(y) if relu else y

    # the planner's ConvTranspose+Relu step: the kernel applies the relu with the bias
    run.with_relu = lambda x, w, b=None: run(x, w, b, True)
    return run


# ---------------------------------------------------------------------------------------------
# Pooling


def _pool_output_size(n, k, s, d, begin, end, ceil_mode):
    """Output positions of one pooled axis, as ONNX Runtime (and PyTorch) count them: in ceil
    mode a last window that would start past the input and the leading padding is dropped."""
    span = (k - 1) * d + 1
    out = (-(-(n + begin + end - span) // s) if ceil_mode else (n + begin + end - span) // s) + 1
    if ceil_mode and (out - 1) * s >= n + begin:
        out -= 1
    return out


def _crop_to(nd, y, sizes, kernel, strides, dilations, begins, ends, ceil_mode):
    """y pooled from an input padded beforehand, cut to the output ONNX asks for (in ceil mode
    the kernel, seeing no padding, may keep a window more)."""
    if not ceil_mode:
        return y
    out = [_pool_output_size(*a, ceil_mode) for a in zip(sizes, kernel, strides, dilations, begins, ends)]
    return y[(..., *[slice(0, o) for o in _pair(nd, out, 1)])]


def _check_rank(node, nd, x):
    if x.ndim != nd + 2:
        raise ValueError(f"pyconv.onnx: {node.where()}: x {x.shape} must have {nd + 2} dimensions "
                         f"(batch, channels and {nd} spatial)")


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

    pool = KernelCall("max_pool2d", "max_pool2d", lambda x, k2, s2, p2, d2: (
        _spec.max_pool2d(x, k2, s2, p2, d2, ceil_mode), with_indices))

    def run(x):
        _check_rank(node, nd, x)
        begins, ends = pads(x.shape[2:], kernel, strides, dilations)
        x2 = _to_2d(nd, x)
        k2, s2, d2 = _pair(nd, kernel, 1), _pair(nd, strides, 1), _pair(nd, dilations, 1)
        if begins == ends and all(p <= k // 2 for p, k in zip(begins, kernel)):
            res = pool((x2,), k2, s2, tuple(_pair(nd, begins, 0)), d2)
            res = res if with_indices else res[0]
        else:
            if with_indices:
                raise node.refuse(f"the Indices output with pads {begins + ends} (asymmetric or "
                                  "over half the kernel) is not supported")
            res = ops.max_pool2d(_pad_array(x2, _pair(nd, begins, 0), _pair(nd, ends, 0), -np.inf),
                                 k2, s2, 0, d2, ceil_mode)
            res = _crop_to(nd, res, x.shape[2:], kernel, strides, dilations, begins, ends, ceil_mode)
        if not with_indices:
            return res[:, :, 0, :] if nd == 1 else res
        y, idx = res
        N, C, H, W = x2.shape
        # pyconv's indices count within each plane; ONNX's count over the whole tensor
        idx += (np.arange(N * C, dtype=np.int64) * (H * W)).reshape(N, C, 1, 1)
        return (y[:, :, 0, :], idx[:, :, 0, :]) if nd == 1 else (y, idx)

    if not with_indices:
        run.with_relu = _max_pool_then_relu(run, nd, kernel, strides, dilations, pads, ceil_mode)
    return run


def _max_pool_then_relu(run, nd, kernel, strides, dilations, pads, ceil_mode):
    """run (a MaxPool without indices), then a Relu (the planner's MaxPool+Relu step). On the cpu
    backend, where run calls the pool kernel directly (symmetric padding of at most half the
    window), the kernel clamps each output as it stores it: no pass of the Relu's own over the
    pooled array and one kernel call fewer."""
    k2, s2, d2 = tuple(_pair(nd, kernel, 1)), tuple(_pair(nd, strides, 1)), tuple(_pair(nd, dilations, 1))
    geometry = {}  # (x.shape, x.dtype) -> (the pool's geometry, its output shape), None where run's other path applies
    pool = _extension("max_pool2d")

    def fused_geometry(x):
        if x.ndim != nd + 2 or x.dtype not in (np.float32, np.float64):
            return None
        begins, ends = pads(x.shape[2:], kernel, strides, dilations)
        if begins != ends or any(p > k // 2 for p, k in zip(begins, kernel)):
            return None
        g = _spec.max_pool2d(_to_2d(nd, x), k2, s2, tuple(_pair(nd, begins, 0)), d2, ceil_mode)
        return g, tuple(g.output_shape)

    def run_with_relu(x):
        key = (x.shape, x.dtype)
        setup = geometry.get(key, False)
        if setup is False:
            setup = geometry[key] = fused_geometry(x)
        if setup is None or pool is None or get_backend() != "cpu":
            return relu_in_place(run(x))
        g, shape = setup
        y = np.empty(shape, x.dtype)
        pool(np.ascontiguousarray(_to_2d(nd, x)), y, None, g, True)  # relu: positional, the cheaper call
        return y[:, :, 0, :] if nd == 1 else y
    return run_with_relu


@builder("AveragePool")
def _avg_pool(node):
    nd, kernel, strides, dilations, pads, ceil_mode = _pool_common(node)
    if any(d != 1 for d in dilations):
        raise node.refuse(f"dilations={dilations} is not supported for AveragePool")
    include_pad = bool(node.attr("count_include_pad", 0))

    def prepare(x, k2, s2, p2):
        g, divisor = _spec.avg_pool2d(x, k2, s2, p2, ceil_mode, None)
        return g, include_pad, divisor
    pool = KernelCall("avg_pool2d", "avg_pool2d", prepare)

    def run(x):
        _check_rank(node, nd, x)
        begins, ends = pads(x.shape[2:], kernel, strides, dilations)
        x2 = _to_2d(nd, x)
        k2, s2 = tuple(_pair(nd, kernel, 1)), tuple(_pair(nd, strides, 1))
        if begins == ends and all(p <= k // 2 for p, k in zip(begins, kernel)):
            y = pool((x2,), k2, s2, tuple(_pair(nd, begins, 0)))
        else:
            b2, e2 = _pair(nd, begins, 0), _pair(nd, ends, 0)
            geometry = (x.shape[2:], kernel, strides, dilations, begins, ends, ceil_mode)
            y = _crop_to(nd, ops.avg_pool2d(_pad_array(x2, b2, e2), k2, s2, 0, ceil_mode, True), *geometry)
            if not include_pad:  # the mean over the real inputs: divide by their share
                ones = _pad_array(np.ones((1, 1) + x2.shape[2:], x2.dtype), b2, e2)
                y /= _crop_to(nd, ops.avg_pool2d(ones, k2, s2, 0, ceil_mode, True), *geometry)
        return y[:, :, 0, :] if nd == 1 else y
    return run


def _whole_plane_pool(x, k2):
    g, divisor = _spec.avg_pool2d(x, k2, k2, (0, 0), False, None)
    return g, False, divisor


_WHOLE_PLANE_POOL = KernelCall("avg_pool2d", "avg_pool2d", _whole_plane_pool)


def global_average(x):
    """The mean of every (n, c) plane of x (N, C, L) or (N, C, H, W), kept as (N, C, 1[, 1]):
    for floating point, the average pool whose one window covers the whole plane (a vectorised
    sum per plane on the cpu backend; NumPy's mean reduces the short rows of N C planes one by
    one)."""
    if x.ndim not in (3, 4) or x.dtype.kind != "f" or min(x.shape[2:], default=0) < 1 or x.size == 0:
        return np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)
    x2 = _to_2d(x.ndim - 2, x)
    y = _WHOLE_PLANE_POOL((x2,), tuple(x2.shape[2:]))
    return y[:, :, 0, :] if x.ndim == 3 else y


@builder("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node):
    if node.op_type == "GlobalMaxPool":
        return lambda x: np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)
    return global_average
