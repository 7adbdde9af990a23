"""Every backend against the reference, through the public API (pyconv.ops with backend=...).

One table of cases per op; each case builds its inputs from a seeded RNG for a dtype. Besides
the edge cases of each op's semantics, the table holds shapes that reach each algorithm branch
of the C++ kernels (GEMM panels and blocks, the channel-vectorised paths, the direct kernels,
wide pooling rows). The suite is parametrised over op x case x dtype x every available
non-reference backend that registers the kernels the op needs, the cpu backend once per ISA
variant this CPU can run (cpu/avx512, cpu/avx2, cpu/generic); test_kernel_coverage makes sure
no backend lacks a kernel silently; the op -> kernels map comes from the op catalogue
(pyconv/backends/_contract.py). One file on purpose: the table is the list a contributor
extends, and reads best in one place with its builders.
"""
import importlib
import zlib

import numpy as np
import pytest
from conftest import assert_close, on_backend, to_numpy

import pyconv
from pyconv import _spec, ops

registry = importlib.import_module("pyconv.backends")

# The op catalogue: public op -> the kernels it runs.
OP_KERNELS = {op: set(kernels) for op, kernels in registry.OPS.items()}

REF = dict(backend="reference")
DTYPES = [np.float32, np.float64]


# --------------------------------------------------------------------------------------------
# Input builders: each returns build(rng, dtype) -> (positional args, keyword args).


def array(rng, shape, dtype, noncontiguous=False):
    a = rng.standard_normal(shape).astype(dtype)
    if noncontiguous:  # the same values, every other element of a wider array
        wide = np.repeat(a, 2, axis=-1)
        a = wide[..., ::2]
        assert not a.flags.c_contiguous
    return a


def conv(x, w, bias=True, noncontiguous=False, nd=2, **params):
    def build(rng, dtype):
        b = array(rng, w[0], dtype) if bias else None
        return (array(rng, x, dtype, noncontiguous), array(rng, w, dtype), b), params
    return build


def conv_backward(x, w, needs=(True, True, True), noncontiguous=False, nd=2, **params):
    forward = ops.conv1d if nd == 1 else ops.conv2d

    def build(rng, dtype):
        xs, ws = array(rng, x, dtype, noncontiguous), array(rng, w, dtype)
        grad_out = array(rng, forward(xs, ws, **params, **REF).shape, dtype, noncontiguous)
        return (grad_out, xs, ws), dict(params, needs=needs)
    return build


def conv_transpose(x, w, bias=True, noncontiguous=False, **params):
    def build(rng, dtype):
        b = array(rng, w[1] * params.get("groups", 1), dtype) if bias else None
        return (array(rng, x, dtype, noncontiguous), array(rng, w, dtype), b), params
    return build


def conv_transpose_backward(x, w, needs=(True, True, True), **params):
    def build(rng, dtype):
        xs, ws = array(rng, x, dtype), array(rng, w, dtype)
        grad_out = array(rng, ops.conv_transpose2d(xs, ws, **params, **REF).shape, dtype)
        return (grad_out, xs, ws), dict(params, needs=needs)
    return build


def pool_input(rng, shape, dtype, ties=False, specials=False, noncontiguous=False):
    x = array(rng, shape, dtype, noncontiguous)
    if ties:  # small integers: windows hold equal maxima
        x[...] = rng.integers(0, 3, shape)
    if specials:
        x.flat[rng.integers(0, x.size, 3)] = [np.nan, -np.inf, np.inf]
    return x


def max_pool(shape, ties=False, specials=False, noncontiguous=False, **params):
    def build(rng, dtype):
        return (pool_input(rng, shape, dtype, ties, specials, noncontiguous),), params
    return build


def max_pool_backward(shape, ties=False, **params):
    def build(rng, dtype):
        x = pool_input(rng, shape, dtype, ties)
        y, idx = ops.max_pool2d(x, return_indices=True, **params, **REF)
        return (array(rng, y.shape, dtype), idx, shape), {}
    return build


def avg_pool(shape, noncontiguous=False, **params):
    def build(rng, dtype):
        return (array(rng, shape, dtype, noncontiguous),), params
    return build


def avg_pool_backward(shape, **params):
    def build(rng, dtype):
        y = ops.avg_pool2d(np.zeros(shape, dtype), **params, **REF)
        return (array(rng, y.shape, dtype), shape), params
    return build


def max_unpool(shape, kernel_size, stride=None, padding=0, with_output_size=False):
    def build(rng, dtype):
        x = pool_input(rng, shape, dtype, ties=True)
        y, idx = ops.max_pool2d(x, kernel_size, stride, padding, return_indices=True, **REF)
        output_size = shape[-2:] if with_output_size else None
        return (y, idx, kernel_size, stride, padding, output_size), {}
    return build


def batch(B):
    """The batch axis of the LSTM builders' shapes: B=None builds an unbatched call."""
    return () if B is None else (B,)

def matmul(m, k, n, trans_a=False, trans_b=False, noncontiguous=False):
    def build(rng, dtype):
        a = array(rng, (k, m) if trans_a else (m, k), dtype, noncontiguous)
        b = array(rng, (n, k) if trans_b else (k, n), dtype)
        return (a, b, trans_a, trans_b), {}
    return build


def embedding(rows, dim, index_shape, noncontiguous=False, index_dtype=np.int64):
    def build(rng, dtype):
        w = array(rng, (rows, dim), dtype, noncontiguous)
        return (w, rng.integers(0, rows, index_shape).astype(index_dtype)), {}
    return build


def embedding_backward(rows, dim, index_shape, padding_idx=None, index_dtype=np.int64):
    def build(rng, dtype):
        indices = rng.integers(0, rows, index_shape).astype(index_dtype)
        return (array(rng, tuple(index_shape) + (dim,), dtype), indices, rows), dict(padding_idx=padding_idx)
    return build


def batch_norm_train(shape, affine=True, offset=0.0, noncontiguous=False, **activation):
    def build(rng, dtype):
        C = shape[1]
        x = array(rng, shape, dtype, noncontiguous) * 3 + offset
        w, b = (array(rng, C, dtype), array(rng, C, dtype)) if affine else (None, None)
        return (x, w, b), dict(eps=1e-3, **activation)
    return build


def batch_norm_train_backward(shape, affine=True, **activation):
    """With an activation, y is the fused forward's output (about half of it at or below 0)."""
    def build(rng, dtype):
        C = shape[1]
        x = array(rng, shape, dtype) * 2 + 1
        w = array(rng, C, dtype) if affine else None
        y, mean, var = ops.batch_norm_train(x, w, None, **activation, **REF)
        invstd = (1 / np.sqrt(var + 1e-5)).astype(dtype)
        extra = dict(y=y, **activation) if activation else {}
        return (array(rng, shape, dtype), x, mean, invstd, w), extra
    return build


def lstm_cell_args(rng, dtype, B, I, H, bias):
    w = [0.5 * array(rng, s, dtype) for s in ((4 * H, I), (4 * H, H))]
    b = [0.5 * array(rng, 4 * H, dtype) if bias else None for _ in range(2)]
    return (array(rng, (*batch(B), H), dtype), array(rng, (*batch(B), H), dtype), *w, *b)


def lstm_cell(B, I, H, bias=True):
    def build(rng, dtype):
        return (array(rng, (*batch(B), I), dtype), *lstm_cell_args(rng, dtype, B, I, H, bias)), {}
    return build


def lstm_cell_backward(B, I, H, bias=True, grads=(True, True)):
    def build(rng, dtype):
        gh, gc = (array(rng, (*batch(B), H), dtype) if g else None for g in grads)
        x = array(rng, (*batch(B), I), dtype)
        return (gh, gc, x, *lstm_cell_args(rng, dtype, B, I, H, bias)), {}
    return build


def lstm(T, B, I, H, bias=True, noncontiguous=False):
    def build(rng, dtype):
        x = array(rng, (T, *batch(B), I), dtype, noncontiguous)
        return (x, *lstm_cell_args(rng, dtype, B, I, H, bias)), {}
    return build


def lstm_backward(T, B, I, H, bias=True, grads=(True, True, True)):
    def build(rng, dtype):
        shapes = ((T, *batch(B), H), (*batch(B), H), (*batch(B), H))
        upstream = [array(rng, s, dtype) if g else None for s, g in zip(shapes, grads)]
        x = array(rng, (T, *batch(B), I), dtype)
        return (*upstream, x, *lstm_cell_args(rng, dtype, B, I, H, bias)), {}
    return build


def rnn_cell(B, I, H, bias=(True, True), nonlinearity="tanh", with_h=True):
    def build(rng, dtype):
        x = array(rng, (*batch(B), I), dtype)
        h = array(rng, (*batch(B), H), dtype) if with_h else None
        w = [0.5 * array(rng, s, dtype) for s in ((H, I), (H, H))]
        b = [0.5 * array(rng, H, dtype) if given else None for given in bias]
        return (x, h, *w, *b, nonlinearity), {}
    return build


def rnn_cell_backward(B, I, H, bias=(True, True), nonlinearity="tanh", with_h=True):
    def build(rng, dtype):
        (x, h, w_ih, w_hh, b_ih, b_hh, _), _ = rnn_cell(B, I, H, bias, nonlinearity, with_h)(rng, dtype)
        h_new = ops.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, backend="reference")
        grad_h = array(rng, h_new.shape, dtype)
        return (grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity), {}
    return build


def boxes(rng, n, dtype):
    """Integer-grid boxes (overlapping, some degenerate, a duplicate), plus a random fraction."""
    corner = rng.integers(0, 10, (n, 2))
    b = np.concatenate([corner, corner + rng.integers(-1, 8, (n, 2))], axis=1).astype(dtype)
    if n > 1:
        b[-1] = b[0]
    return b + (rng.random((n, 4)) * 0.5).astype(dtype)


def scores(rng, n, dtype, ties=False, nan=False):
    s = (rng.integers(0, 4, n) if ties else rng.random(n)).astype(dtype)
    if nan and n:
        s[rng.integers(0, n, 2)] = np.nan
    return s


def box_iou(n, m):
    def build(rng, dtype):
        return (boxes(rng, n, dtype), boxes(rng, m, dtype)), {}
    return build


def nms(n, threshold, ties=False, nan=False):
    def build(rng, dtype):
        return (boxes(rng, n, dtype), scores(rng, n, dtype, ties, nan), threshold), {}
    return build


def batched_nms(n, threshold, categories, ties=False, nan=False):
    def build(rng, dtype):
        idxs = rng.integers(0, categories, n)
        return (boxes(rng, n, dtype), scores(rng, n, dtype, ties, nan), idxs, threshold), {}
    return build


def adversarial_boxes(rng, n, dtype, specials=False):
    """Boxes that test tie-breaking and edge arithmetic: identical copies, nested boxes,
    translated copies (equal IoUs with a common neighbour), zero-area boxes, and with
    `specials` NaN and +-inf coordinates."""
    b = boxes(rng, n, dtype)
    for i in range(0, n - 4, 5):
        b[i + 1] = b[i]                                       # an identical copy
        b[i + 2] = b[i] + np.array([0.25, 0.25, -0.25, -0.25], dtype)  # nested inside it
        b[i + 3] = b[i] + np.array([2, 0, 2, 0], dtype)       # translated copy
        b[i + 4, 2:] = b[i + 4, :2]                           # zero area
    if specials and n >= 4:
        b[rng.integers(0, n, 4), rng.integers(0, 4, 4)] = [np.nan, np.inf, -np.inf, np.nan]
    return b


def tied_scores(rng, n, dtype):
    """Few distinct values, and some one ulp above another (near-ties)."""
    s = (rng.integers(1, 4, n) / 4).astype(dtype)
    near = rng.random(n) < 0.3
    s[near] = np.nextafter(s[near], dtype(1))
    return s


def nms_family_input(rng, n, dtype, ties, nan, adversarial, specials):
    b = adversarial_boxes(rng, n, dtype, specials) if adversarial else boxes(rng, n, dtype)
    s = tied_scores(rng, n, dtype) if ties else scores(rng, n, dtype, nan=nan)
    if ties and nan and n:
        s[rng.integers(0, n, 2)] = np.nan
    return b, s


def soft_nms(n, method="gaussian", sigma=0.5, iou_threshold=0.3, score_threshold=0.001, ties=False,
             nan=False, adversarial=False, specials=False, identical=False, shift=0.0):
    """`shift` is subtracted from the scores: negative scores grow as they decay."""
    def build(rng, dtype):
        b, s = nms_family_input(rng, n, dtype, ties, nan, adversarial, specials)
        s -= dtype(shift)
        if identical:
            b[:] = b[:1]
        return (b, s, sigma, iou_threshold, score_threshold, method), {}
    return build


def diou_nms(n, threshold, ties=False, nan=False, adversarial=False, specials=False, identical=False):
    def build(rng, dtype):
        b, s = nms_family_input(rng, n, dtype, ties, nan, adversarial, specials)
        if identical:
            b[:] = b[:1]
        return (b, s, threshold), {}
    return build


def matrix_nms(n, labels, kernel="gaussian", sigma=2.0, ties=False, nan=False, adversarial=False,
               specials=False, identical=False):
    def build(rng, dtype):
        b, s = nms_family_input(rng, n, dtype, ties, nan, adversarial, specials)
        if identical:
            b[:] = b[:1]
        return (b, s, rng.integers(0, labels, n), kernel, sigma), {}
    return build


def batched_nms_class_agnostic(n, threshold):
    def build(rng, dtype):
        return (boxes(rng, n, dtype), scores(rng, n, dtype), None, threshold), {"class_agnostic": True}
    return build


def activation_input(rng, shape, dtype, noncontiguous=False):
    """Normal values with exact zeros (where the gradient's slope switches) and NaN/+-inf."""
    x = pool_input(rng, shape, dtype, specials=x_size(shape) >= 8, noncontiguous=noncontiguous)
    x.flat[: min(3, x.size)] = 0
    return x


def x_size(shape):
    return int(np.prod(shape))


def rotated_boxes(rng, n, dtype, nan=False):
    """(cx, cy, w, h, angle): grid centres and sizes, angles at and between quarter turns (and
    past a full turn), an empty box, a duplicate, a contained box; NaN/inf boxes if asked."""
    centres = rng.integers(0, 8, (n, 2)) + (rng.random((n, 2)) * 0.5)
    sizes = rng.integers(1, 6, (n, 2)) + (rng.random((n, 2)) * 0.5)
    angles = np.where(rng.random(n) < 0.5, rng.choice([0, 90, -90, 180, 45, 450], n),
                      rng.uniform(-400, 400, n))
    b = np.concatenate([centres, sizes, angles[:, None]], axis=1)
    if n > 3:
        b[1, 2] = 0
        b[-1] = b[0]
        b[-2] = b[0] * [1, 1, 0.5, 0.5, 1] + [0, 0, 0, 0, 30]
    if nan and n > 5:
        b[3, 0], b[4, 4] = np.nan, np.inf
    return b.astype(dtype)


def box_iou_rotated(n, m, nan=False):
    def build(rng, dtype):
        return (rotated_boxes(rng, n, dtype, nan), rotated_boxes(rng, m, dtype, nan)), {}
    return build


def nms_rotated(n, threshold, ties=False, nan=False):
    def build(rng, dtype):
        return (rotated_boxes(rng, n, dtype, nan), scores(rng, n, dtype, ties, nan), threshold), {}
    return build


def leaky_relu(shape, slope, noncontiguous=False):
    def build(rng, dtype):
        return (activation_input(rng, shape, dtype, noncontiguous), slope), {}
    return build


def leaky_relu_backward(shape, slope):
    def build(rng, dtype):
        return (array(rng, shape, dtype), activation_input(rng, shape, dtype), slope), {}
    return build


def unary_activation(shape, noncontiguous=False):
    def build(rng, dtype):
        return (activation_input(rng, shape, dtype, noncontiguous),), {}
    return build


def relu_edge_values(dtype):
    """The values where ReLU's cases meet: signed zeros, subnormals of both signs, the
    smallest normals, infinities and NaN, one of each per vector lane (37 values: a partial
    last vector on every ISA build)."""
    tiny, sub = np.finfo(dtype).tiny, np.finfo(dtype).smallest_subnormal
    edges = [0.0, -0.0, sub, -sub, tiny, -tiny, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan]
    return np.array(edges * 3 + [np.nan], dtype)


def relu_edges():
    def build(rng, dtype):
        return (relu_edge_values(dtype),), {}
    return build


def relu_backward(shape, from_input=False):
    """grad_out and the forward's output (from the reference), or its input."""
    def build(rng, dtype):
        x = activation_input(rng, shape, dtype)
        return (array(rng, shape, dtype), x if from_input else ops.relu(x, **REF)), {}
    return build


def relu_backward_edges():
    def build(rng, dtype):
        y = relu_edge_values(dtype)
        return (array(rng, y.shape, dtype), y), {}
    return build


def class_rows(rng, shape, dtype, noncontiguous=False, offset=0.0, specials=False):
    """Logits (..., C): normal values times 3 around `offset`; with specials, -inf entries in
    the first row (classes that cannot occur), a NaN in the second row and +inf in the third."""
    x = array(rng, shape, dtype, noncontiguous) * 3 + dtype(offset)
    if specials:
        rows = x.reshape(-1, shape[-1])
        rows[0, ::2] = -np.inf
        rows[1, 1] = np.nan
        rows[2, 0] = np.inf
    return x


def softmax(shape, noncontiguous=False, offset=0.0, specials=False):
    def build(rng, dtype):
        return (class_rows(rng, shape, dtype, noncontiguous, offset, specials),), {}
    return build


def softmax_backward(shape, log=False):
    def build(rng, dtype):
        x = class_rows(rng, shape, dtype)
        y = (ops.log_softmax if log else ops.softmax)(x, **REF)
        return (array(rng, shape, dtype), y), {}
    return build


def class_targets(rng, shape, C, ignore_index=None):
    t = rng.integers(0, C, shape)
    if ignore_index is not None and t.size:
        t.reshape(-1)[::3] = ignore_index
    return t


def without_class_axis(shape, class_axis):
    return shape[:-1] if class_axis == -1 else shape[:1] + shape[2:]


def cross_entropy(shape, weight=False, label_smoothing=0.0, ignore_index=None, offset=0.0,
                  specials=False, target_dtype=np.int64, class_axis=-1):
    """Logits of `shape` with the classes on `class_axis` (-1, or 1 as PyTorch's (N, C, ...))."""
    def build(rng, dtype):
        C = shape[class_axis]
        x = class_rows(rng, shape, dtype, offset=offset, specials=specials)
        t = class_targets(rng, without_class_axis(shape, class_axis), C, ignore_index).astype(target_dtype)
        if specials:  # the -inf classes of the first row are not its target
            t.reshape(-1)[0] = 1
        kwargs = dict(label_smoothing=label_smoothing)
        if ignore_index is not None:
            kwargs["ignore_index"] = ignore_index
        if class_axis != -1:
            kwargs["class_axis"] = class_axis
        w = (rng.random(C) + 0.25).astype(dtype) if weight else None
        if weight and C > 2:
            w[2] = 0  # a class that counts for nothing
        return (x, t, w), kwargs
    return build


def cross_entropy_backward(shape, weight=False, label_smoothing=0.0, ignore_index=None, offset=0.0,
                           class_axis=-1):
    def build(rng, dtype):
        (x, t, w), kwargs = cross_entropy(shape, weight, label_smoothing, ignore_index, offset,
                                          class_axis=class_axis)(rng, dtype)
        _, lse = ops.cross_entropy(x, t, w, **kwargs, **REF)
        return (array(rng, without_class_axis(shape, class_axis), dtype), x, t, lse, w), kwargs
    return build


def logits_and_targets(rng, shape, dtype, binary):
    """Logits over a wide range (exp(-|x|) from 1 down to underflow) with exact zeros, targets
    in {0, 1} or soft in [0, 1]."""
    x = (array(rng, shape, dtype) * 8).astype(dtype)
    flat = x.reshape(-1)
    flat[: min(3, flat.size)] = 0
    if flat.size > 8:
        flat[3:8] = [40, -40, 120, -120, 1e-3]
    t = (rng.random(shape) < 0.5) if binary else rng.random(shape)
    return x, t.astype(dtype)


def bce_with_logits(shape, pos_weight=False, binary=True):
    def build(rng, dtype):
        x, t = logits_and_targets(rng, shape, dtype, binary)
        pw = (rng.random(shape[-1]) * 3).astype(dtype) if pos_weight else None
        return (x, t, pw), {}
    return build


def bce_with_logits_backward(shape, pos_weight=False, binary=True):
    def build(rng, dtype):
        (x, t, pw), _ = bce_with_logits(shape, pos_weight, binary)(rng, dtype)
        return (array(rng, shape, dtype), x, t, pw), {}
    return build


PARAMETER_SHAPES = [(6, 1, 5, 5), (6,), (16, 150), (10,), (3, 7)]  # a small network's


def parameters_and_grads(rng, dtype, shapes):
    params = [array(rng, s, dtype) for s in shapes]
    grads = [array(rng, s, dtype) for s in shapes]
    return params, grads


def sgd_step(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, first_step=False,
             shapes=PARAMETER_SHAPES):
    def build(rng, dtype):
        params, grads = parameters_and_grads(rng, dtype, shapes)
        bufs = [array(rng, s, dtype) for s in shapes] if momentum else None
        return (params, grads, bufs), dict(lr=0.05, momentum=momentum, dampening=dampening,
                                           nesterov=nesterov, weight_decay=weight_decay,
                                           first_step=first_step)
    return build


def adam_step(step=3, weight_decay=0.0, decoupled=False, shapes=PARAMETER_SHAPES):
    def build(rng, dtype):
        params, grads = parameters_and_grads(rng, dtype, shapes)
        m = [array(rng, s, dtype) * 0.1 for s in shapes]
        v = [np.abs(array(rng, s, dtype)) * 0.01 for s in shapes]
        return (params, grads, m, v, step), dict(lr=1e-2, weight_decay=weight_decay,
                                                 decoupled_weight_decay=decoupled)
    return build


def smooth_input(rng, shape, dtype, spread, noncontiguous=False):
    """activation_input times `spread` (past the overflow point of exp at 100), with -0 and
    values near 0 where e^x - 1 must keep its relative accuracy."""
    x = activation_input(rng, shape, dtype, noncontiguous) * dtype(spread)
    x.flat[3: min(7, x.size)] = np.array([-0.0, 1e-7, -3e-5, 0.2], dtype)[: max(0, min(7, x.size) - 3)]
    return x


def elu(shape, alpha, spread=3.0, noncontiguous=False):
    def build(rng, dtype):
        return (smooth_input(rng, shape, dtype, spread, noncontiguous), alpha), {}
    return build


def elu_backward(shape, alpha, spread=3.0):
    def build(rng, dtype):
        return (array(rng, shape, dtype), smooth_input(rng, shape, dtype, spread), alpha), {}
    return build


def prelu(shape, slopes, noncontiguous=False):
    def build(rng, dtype):
        return (activation_input(rng, shape, dtype, noncontiguous), 0.5 * array(rng, slopes, dtype)), {}
    return build


def prelu_backward(shape, slopes):
    def build(rng, dtype):
        x = activation_input(rng, shape, dtype)
        return (array(rng, shape, dtype), x, 0.5 * array(rng, slopes, dtype)), {}
    return build


def smooth(shape, spread=3.0, noncontiguous=False):
    def build(rng, dtype):
        return (smooth_input(rng, shape, dtype, spread, noncontiguous),), {}
    return build


def smooth_backward(forward, shape, spread=3.0):
    """grad_out and the forward's output (from the reference)."""
    def build(rng, dtype):
        y = getattr(ops, forward)(smooth_input(rng, shape, dtype, spread), **REF)
        return (array(rng, shape, dtype), y), {}
    return build


def dropout(shape, p, seed=12345, noncontiguous=False):
    def build(rng, dtype):
        return (activation_input(rng, shape, dtype, noncontiguous), p, seed), {}
    return build


def dropout_backward(shape, p):
    def build(rng, dtype):
        _, mask = ops.dropout(array(rng, shape, dtype), p, 7, **REF)
        return (activation_input(rng, shape, dtype), mask, p), {}
    return build


def gated_tanh(shape, dim, spread=3.0, noncontiguous=False):
    def build(rng, dtype):
        return (smooth_input(rng, shape, dtype, spread, noncontiguous), dim), {}
    return build


def gated_tanh_backward(shape, dim, spread=3.0):
    def build(rng, dtype):
        x = smooth_input(rng, shape, dtype, spread)
        out_shape = _spec.gated_tanh_output_shape(shape, dim % len(shape))
        return (array(rng, out_shape, dtype), x, dim), {}
    return build


def cpu_path(build):
    """Marks a case whose shape exists to reach a branch of the C++ kernels. The CUDA simulator
    runs every GPU thread in Python, where such shapes take minutes each: it leaves them to the
    other backends and to a real GPU."""
    build.for_simulator = False
    return build


# --------------------------------------------------------------------------------------------
# The case table: op -> {case id: builder}

CASES = {
    "conv2d": {
        "basic": conv((2, 3, 8, 9), (4, 3, 3, 3)),
        "no_bias": conv((2, 3, 8, 9), (4, 3, 3, 3), bias=False),
        "stride2_pad1": conv((2, 3, 9, 8), (5, 3, 3, 3), stride=2, padding=1),
        "stride_pad_tuples": conv((1, 2, 9, 7), (3, 2, 3, 2), stride=(2, 1), padding=(1, 0)),
        "dilation": conv((2, 2, 9, 10), (3, 2, 3, 3), dilation=(2, 3), padding=2),
        "groups2": conv((2, 4, 7, 7), (6, 2, 3, 3), groups=2, padding=1),
        "depthwise": conv((2, 4, 7, 7), (4, 1, 3, 3), groups=4, padding=1),
        "depthwise_multiplier2": conv((1, 3, 6, 6), (6, 1, 3, 3), groups=3, stride=2),
        "same_odd": conv((1, 2, 7, 6), (3, 2, 3, 5), padding="same"),
        "same_even_asymmetric": conv((2, 2, 7, 6), (3, 2, 4, 2), padding="same"),
        "same_even_dilated": conv((1, 2, 8, 8), (2, 2, 2, 4), padding="same", dilation=(3, 1)),
        "valid": conv((1, 2, 7, 9), (3, 2, 3, 4), padding="valid", stride=2),
        "batch1_kernel1x1": conv((1, 5, 4, 4), (3, 5, 1, 1)),
        "spatial1x1": conv((2, 3, 1, 1), (4, 3, 1, 1)),
        "spatial1x1_padded": conv((2, 3, 1, 1), (4, 3, 3, 3), padding=1),
        "kernel_equals_input": conv((2, 3, 5, 4), (2, 3, 5, 4)),
        # The cpu backend's algorithm branches: GEMM panels and blocks, the direct kernels,
        # and the forward vectorised over output channels (64+ per group, kernel > 1x1).
        "gemm_k_over_a_panel_ragged": cpu_path(conv((1, 3, 31, 37), (70, 3, 3, 3), padding=1)),
        "gemm_reduction_over_a_block": cpu_path(conv((1, 40, 5, 7), (3, 40, 3, 3), padding=1)),
        "gemm_reduction_ragged": cpu_path(conv((2, 20, 9, 9), (9, 20, 3, 3), padding=1)),
        "asymmetric_groups": cpu_path(conv((3, 6, 13, 7), (4, 3, 2, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), groups=2)),
        "primes_stride3_dilation2": cpu_path(conv((2, 7, 17, 19), (13, 7, 5, 3), stride=3, padding=2, dilation=2)),
        "pointwise_in_place_groups": cpu_path(conv((3, 16, 7, 7), (16, 8, 1, 1), groups=2)),
        "pointwise_strided": cpu_path(conv((2, 8, 9, 9), (16, 8, 1, 1), stride=2)),
        "grouped_direct": cpu_path(conv((2, 12, 9, 9), (12, 3, 3, 3), groups=4)),
        "depthwise_x2_strided_dilated": cpu_path(conv((2, 8, 12, 12), (16, 1, 3, 3), stride=2, padding=1, dilation=2, groups=8)),
        "padding_as_large_as_kernel": cpu_path(conv((2, 3, 5, 5), (4, 3, 5, 5), padding=4)),
        "channel_panel_strided_dilated": cpu_path(conv((2, 9, 7, 6), (64, 9, 3, 3), stride=2, padding=1, dilation=2)),
        "channel_panel_ragged_groups": cpu_path(conv((2, 6, 5, 5), (130, 3, 2, 2), padding=1, groups=2)),
        # Small images, wide kernels, 16+ output channels: by channels, not on the phase grid.
        "channel_panel_small_image_wide_kernel": cpu_path(conv((3, 6, 14, 14), (16, 6, 5, 5))),
        "channel_panel_one_vector_ragged": cpu_path(conv((2, 10, 9, 11), (20, 10, 5, 5), padding=1)),
        "channel_panel_reduction_blocks": cpu_path(conv((1, 70, 9, 8), (64, 70, 3, 3), padding=1)),
        "channel_panel_unpadded_in_place": cpu_path(conv((2, 5, 10, 9), (64, 5, 3, 2), stride=(2, 1))),
        # The channel panels again with 128+ taps (below that the forward is pixel-vectorised:
        # the rows above with fewer taps run im2col or the phase grid).
        "channel_panel_strided_dilated_many_taps": cpu_path(conv((2, 15, 7, 6), (64, 15, 3, 3), stride=2, padding=1, dilation=2)),
        "channel_panel_ragged_groups_many_taps": cpu_path(conv((2, 66, 5, 5), (130, 33, 2, 2), padding=1, groups=2)),
        "channel_panel_unpadded_in_place_many_taps": cpu_path(conv((2, 22, 10, 9), (64, 22, 3, 2), stride=(2, 1))),
        # Strided, 16-63 output channels, 128+ taps: by channels (ResNet's 16 -> 32 stride 2).
        "strided_channel_panel_odd_width": cpu_path(conv((2, 16, 11, 9), (24, 16, 3, 3), stride=2, padding=1)),
        "strided_channel_panel_unpadded": cpu_path(conv((3, 16, 8, 7), (20, 16, 3, 3), stride=2)),
        "strided_channel_panel_rows_only": cpu_path(conv((2, 16, 9, 6), (20, 16, 3, 3), stride=(2, 1), padding=1)),
        # Column stride 2 with fewer taps: the direct kernel on a grid split by the stride-2 copy
        # (tiny images, odd widths, padding 0 to beyond the input).
        "stride2_grid_odd_width": cpu_path(conv((2, 3, 9, 11), (32, 3, 3, 3), stride=2, padding=1)),
        "stride2_grid_tiny": cpu_path(conv((2, 4, 3, 2), (16, 4, 3, 3), stride=2, padding=1)),
        "stride2_grid_columns_only": cpu_path(conv((2, 5, 7, 10), (8, 5, 3, 3), stride=(1, 2), padding=(1, 2))),
        "stride2_grid_padding_over_input": cpu_path(conv((1, 2, 4, 2), (16, 2, 3, 3), stride=2, padding=3)),
        "stride2_grid_unpadded": cpu_path(conv((2, 3, 8, 9), (16, 3, 3, 3), stride=2)),
        # The direct forward on column copies of x (kernels 4+ columns wide on few channels,
        # where the phase grid would drop columns): three channel blocks on a 10-column output,
        # row and column strides with padding, dilation with groups.
        "direct_column_copies_three_blocks": cpu_path(conv((3, 3, 14, 14), (32, 3, 5, 5))),
        "direct_column_copies_strided": cpu_path(conv((2, 2, 11, 20), (40, 2, 4, 5), stride=(2, 3), padding=(1, 2))),
        "direct_column_copies_dilated_groups": cpu_path(conv((2, 4, 12, 13), (60, 2, 5, 5), padding=2, dilation=(2, 1), groups=2)),
        # The forward's transposed store (a register transpose of lanes pixels x lanes channels):
        # channels past the last whole vector (72 = 4 x 16 + 8), 64-pixel images whose blocks
        # of 96 pixels start mid-image; 25-pixel images, whose blocks of lanes pixels cross
        # an image's end (stored element by element).
        "channel_panel_transposed_store_ragged_channels": cpu_path(conv((2, 32, 16, 16), (72, 32, 4, 4), stride=2, padding=1)),
        "channel_panel_transposed_store_across_images": cpu_path(conv((3, 20, 11, 11), (64, 20, 4, 4), stride=2, padding=1)),
        # Few taps, 64+ output channels: im2col up to 4x4 kernels, the phase grid above.
        "few_taps_im2col_strided": cpu_path(conv((3, 1, 13, 12), (64, 1, 4, 4), stride=2, padding=1)),
        "few_taps_grid_7x7": cpu_path(conv((2, 1, 12, 11), (66, 1, 7, 7), padding=3)),
        # The window covers the whole (padded) input: plain matrix products over the batch.
        "whole_window": cpu_path(conv((5, 20, 7, 6), (70, 20, 7, 6))),
        "whole_window_one_image": cpu_path(conv((1, 20, 7, 6), (70, 20, 7, 6))),
        "whole_window_padded_strided": cpu_path(conv((3, 9, 3, 2), (17, 9, 5, 6), padding=(1, 2), stride=2)),
        # Each algorithm forced (the cpu backend honours algorithm=, the others ignore it), and
        # Winograd picked by the rule (tests/test_winograd.py checks that it is).
        "algorithm_winograd_odd": conv((2, 5, 9, 11), (6, 5, 3, 3), padding=1, algorithm="winograd"),
        "algorithm_winograd_padding3": conv((1, 4, 6, 7), (5, 4, 3, 3), padding=3, algorithm="winograd"),
        "algorithm_gemm": conv((2, 6, 9, 8), (7, 6, 3, 3), padding=1, algorithm="gemm"),
        "algorithm_direct_strided": conv((2, 3, 9, 8), (4, 3, 3, 2), stride=2, padding=1, algorithm="direct"),
        "winograd_by_rule": cpu_path(conv((3, 16, 28, 28), (17, 16, 3, 3), padding=1)),
        "noncontiguous": conv((2, 3, 6, 7), (4, 3, 3, 3), padding=1, noncontiguous=True),
        # Without the batch axis, as PyTorch allows: (C, H, W) -> (K, Ho, Wo).
        "unbatched": conv((3, 8, 9), (4, 3, 3, 3), stride=2, padding=1),
        "unbatched_groups_noncontiguous": conv((4, 7, 7), (6, 2, 3, 3), groups=2, padding="same", noncontiguous=True),
    },
    "conv1d": {
        "basic": conv((2, 3, 12), (4, 3, 3), nd=1),
        "stride_pad_dilation": conv((2, 2, 15), (3, 2, 4), stride=2, padding=3, dilation=2, nd=1),
        "groups": conv((1, 4, 10), (6, 2, 3), groups=2, nd=1),
        "depthwise": conv((2, 4, 9), (4, 1, 5), groups=4, padding="same", nd=1),
        "same_even": conv((2, 2, 9), (3, 2, 4), padding="same", nd=1),
        "valid_length1": conv((1, 3, 1), (2, 3, 1), padding="valid", nd=1),
        "noncontiguous": conv((2, 3, 11), (2, 3, 3), noncontiguous=True, nd=1),
        "unbatched": conv((3, 12), (4, 3, 3), padding=1, dilation=2, nd=1),
        "unbatched_noncontiguous": conv((2, 11), (2, 2, 3), stride=2, noncontiguous=True, nd=1),
    },
    "conv2d_backward": {
        "basic": conv_backward((2, 3, 8, 9), (4, 3, 3, 3)),
        "stride2_pad1": conv_backward((2, 3, 9, 8), (5, 3, 3, 3), stride=2, padding=1),
        "stride_drops_input": conv_backward((1, 2, 8, 9), (3, 2, 2, 2), stride=3),
        "dilation": conv_backward((2, 2, 9, 10), (3, 2, 3, 3), dilation=(2, 3), padding=(1, 2)),
        "groups2": conv_backward((2, 4, 7, 7), (6, 2, 3, 3), groups=2, padding=1),
        "depthwise": conv_backward((2, 4, 7, 7), (4, 1, 3, 3), groups=4, padding=1, stride=2),
        "same_even_asymmetric": conv_backward((2, 2, 7, 6), (3, 2, 4, 2), padding="same"),
        "spatial1x1": conv_backward((2, 3, 1, 1), (4, 3, 1, 1)),
        "needs_x_only": conv_backward((2, 3, 6, 6), (4, 3, 3, 3), needs=(True, False, False)),
        "needs_w_b": conv_backward((2, 3, 6, 6), (4, 3, 3, 3), needs=(False, True, True)),
        # The cpu backend's grad_x branches: as a forward conv (32+ channels), col2im, and
        # vectorised over channels (64+) with a channels-last accumulation.
        "grad_x_as_forward_conv": cpu_path(conv_backward((2, 48, 9, 8), (16, 48, 3, 2), padding=(2, 0), dilation=(1, 2))),
        "asymmetric_groups": cpu_path(conv_backward((3, 6, 13, 7), (4, 3, 2, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1),
                                           groups=2)),
        "primes_stride3_dilation2": cpu_path(conv_backward((2, 7, 17, 19), (13, 7, 5, 3), stride=3, padding=2, dilation=2)),
        "grad_x_as_forward_conv_groups": cpu_path(conv_backward((1, 64, 6, 7), (16, 32, 3, 3), padding=1, groups=2)),
        # 16-31 input channels, up to 32 output channels, images up to 16 wide: also as a
        # forward conv (whose 16-31 output channels take the direct forward on the phase grid).
        "grad_x_as_forward_conv_narrow_image": cpu_path(conv_backward((2, 16, 9, 11), (20, 16, 3, 3), padding=1)),
        "grad_x_as_forward_conv_narrow_image_groups": cpu_path(conv_backward((2, 48, 7, 16), (12, 24, 3, 2), padding=(2, 1),
                                                                             groups=2)),
        "grad_x_col2im_padding_over_kernel": cpu_path(conv_backward((1, 40, 6, 6), (8, 40, 2, 2), padding=2)),
        # Weight gradient on the phase grid from the stride-2 copy (AVX-512: few taps, < 64 channels).
        "stride2_grid_weight_grad": cpu_path(conv_backward((2, 3, 9, 11), (16, 3, 3, 3), stride=2, padding=1)),
        "grad_x_one_output_channel": cpu_path(conv_backward((3, 64, 14, 14), (1, 64, 4, 4), stride=2, padding=1)),
        "channel_panel_strided_dilated": cpu_path(conv_backward((2, 9, 7, 6), (64, 9, 3, 3), stride=2, padding=1, dilation=2)),
        "channel_panel_ragged_groups": cpu_path(conv_backward((2, 6, 5, 5), (130, 3, 2, 2), padding=1, groups=2)),
        "channel_panel_reduction_blocks": cpu_path(conv_backward((1, 70, 9, 8), (64, 70, 3, 3), padding=1)),
        "channel_panel_unpadded_in_place": cpu_path(conv_backward((2, 5, 10, 9), (64, 5, 3, 2), stride=(2, 1))),
        "channels_last_grad_x_strided": cpu_path(conv_backward((2, 66, 9, 8), (8, 66, 3, 3), stride=2, padding=1)),
        # Strided first layers (up to 32 taps, 64 output channels, 64+ output pixels, 16+
        # images): the weight gradient along output pixels on x copied by row phase and column
        # shift (conv/weight_grad_rows.h).
        "grad_w_rows_strided": cpu_path(conv_backward((16, 1, 17, 19), (20, 1, 4, 4), stride=2, padding=1)),
        "grad_w_rows_stride3_groups": cpu_path(conv_backward((16, 2, 26, 25), (40, 1, 5, 5), stride=(3, 2), padding=2,
                                                             groups=2)),
        # The channels-last copy back to NCHW through register transposes: 40 channels (2 x 16
        # + 8), 81 outputs per plane (5 x 16 + 1), the last row and column reached by no tap.
        "channels_last_grad_x_ragged_unreached": cpu_path(conv_backward((2, 40, 9, 9), (64, 40, 4, 4), stride=2)),
        # 1x1, stride 1, no padding: the weight gradient as one GEMM over (image, pixel), images
        # of 15 pixels (runs shorter than a vector; 37 images: reduction blocks that start
        # inside an image) and of 20 (a vector and a tail), groups (not this form) and channel
        # counts that are no whole panel.
        "grad_w_pointwise": cpu_path(conv_backward((37, 24, 3, 5), (50, 24, 1, 1))),
        "grad_w_pointwise_wider": cpu_path(conv_backward((3, 19, 4, 5), (9, 19, 1, 1), dilation=2)),
        "grad_w_pointwise_groups": cpu_path(conv_backward((3, 12, 4, 4), (10, 6, 1, 1), groups=2)),
        "whole_window": cpu_path(conv_backward((5, 20, 7, 6), (70, 20, 7, 6))),
        "whole_window_one_image": cpu_path(conv_backward((1, 20, 7, 6), (70, 20, 7, 6))),
        "whole_window_padded_strided": cpu_path(conv_backward((3, 9, 3, 2), (17, 9, 5, 6), padding=(1, 2), stride=2)),
        "algorithm_winograd": conv_backward((2, 5, 9, 11), (6, 5, 3, 3), padding=1, algorithm="winograd"),
        "algorithm_winograd_padding3": conv_backward((1, 4, 6, 7), (5, 4, 3, 3), padding=3, algorithm="winograd"),
        # Winograd's weight gradient over several chunks of tiles (2 in float32, 4 in float64),
        # channel counts that are not whole vectors.
        "algorithm_winograd_weight_chunks": conv_backward((1, 40, 52, 52), (39, 40, 3, 3), padding=1,
                                                          algorithm="winograd"),
        "algorithm_gemm": conv_backward((2, 6, 9, 8), (7, 6, 3, 3), padding=1, algorithm="gemm"),
        "algorithm_direct": conv_backward((2, 3, 9, 8), (4, 3, 3, 2), stride=2, padding=1, algorithm="direct"),
        "winograd_by_rule": cpu_path(conv_backward((3, 16, 28, 28), (17, 16, 3, 3), padding=1)),
        "noncontiguous": conv_backward((2, 3, 6, 7), (4, 3, 3, 3), padding=1, noncontiguous=True),
        "unbatched": conv_backward((3, 8, 9), (4, 3, 3, 3), stride=2, padding=1),
        "unbatched_needs_x_noncontiguous": conv_backward((2, 6, 7), (4, 2, 3, 3), padding=1, needs=(True, False, False),
                                                         noncontiguous=True),
    },
    "conv1d_backward": {
        "stride_pad_dilation": conv_backward((2, 2, 15), (3, 2, 4), stride=2, padding=3, dilation=2, nd=1),
        "groups_same": conv_backward((2, 4, 9), (4, 2, 4), groups=2, padding="same", nd=1),
        "unbatched": conv_backward((4, 9), (4, 2, 4), groups=2, padding="same", nd=1),
    },
    "conv_transpose2d": {
        "ones_stride1": conv_transpose((1, 2, 4, 4), (2, 3, 3, 3)),
        "stride2": conv_transpose((2, 3, 4, 5), (3, 2, 3, 3), stride=2, padding=1),
        "output_padding": conv_transpose((2, 2, 3, 4), (2, 3, 3, 2), stride=(2, 3), padding=1, output_padding=(1, 2)),
        "dilation_output_padding": conv_transpose((1, 2, 4, 3), (2, 2, 2, 3), stride=1, dilation=2, output_padding=1),
        "groups": conv_transpose((2, 4, 3, 3), (4, 3, 3, 3), groups=2, stride=2),
        "depthwise": conv_transpose((2, 3, 4, 4), (3, 1, 3, 3), groups=3, padding=1),
        "no_bias": conv_transpose((1, 2, 3, 3), (2, 2, 2, 2), bias=False, stride=2),
        "spatial1x1": conv_transpose((2, 3, 1, 1), (3, 2, 1, 1)),
        "stride_over_kernel": cpu_path(conv_transpose((2, 3, 4, 4), (3, 5, 2, 2), stride=3, output_padding=2)),
        "one_output_channel": cpu_path(conv_transpose((2, 8, 7, 7), (8, 1, 4, 4), stride=2, padding=1)),
        "asymmetric_stride3_dilation": cpu_path(conv_transpose(
            (1, 3, 4, 5), (3, 2, 3, 2), stride=(3, 2), padding=(1, 0), output_padding=(2, 1), dilation=(1, 2))),
        "depthwise_output_padding_below_dilation": cpu_path(conv_transpose(
            (2, 6, 5, 5), (6, 1, 3, 3), stride=2, output_padding=1, groups=6, dilation=2)),
        # 64+ output channels: vectorised over channels, accumulated channels-last
        "channel_panel_dcgan": cpu_path(conv_transpose((2, 5, 7, 7), (5, 64, 4, 4), stride=2, padding=1)),
        "channel_panel_ragged_output_padding_dilation": cpu_path(conv_transpose(
            (3, 7, 4, 5), (7, 70, 3, 3), stride=2, padding=1, output_padding=1, dilation=2)),
        "channel_panel_reduction_blocks": cpu_path(conv_transpose((2, 130, 3, 3), (130, 65, 4, 4), stride=(2, 3), padding=2)),
        # From 1x1 inputs (a generator's first layer): one matrix product, then the padding cropped.
        "from_1x1_generator": cpu_path(conv_transpose((5, 100, 1, 1), (100, 70, 7, 7))),
        "from_1x1_padding_cropped": cpu_path(conv_transpose((3, 9, 1, 1), (9, 5, 4, 5), padding=(1, 2), stride=2)),
        # One z (batch 1): a matrix-vector product, past whole vectors and blocks of columns.
        "from_1x1_one_image": cpu_path(conv_transpose((1, 16, 1, 1), (16, 37, 4, 4))),
        "from_1x1_one_image_padding_cropped": cpu_path(conv_transpose((1, 9, 1, 1), (9, 5, 4, 5), padding=(1, 2), stride=2)),
        "noncontiguous": conv_transpose((2, 2, 4, 5), (2, 3, 3, 3), stride=2, noncontiguous=True),
        "unbatched": conv_transpose((3, 4, 5), (3, 2, 3, 3), stride=2, padding=1, output_padding=1),
        "unbatched_noncontiguous": conv_transpose((2, 3, 4), (2, 3, 2, 2), bias=False, noncontiguous=True),
    },
    "conv_transpose2d_backward": {
        "stride2": conv_transpose_backward((2, 3, 4, 5), (3, 2, 3, 3), stride=2, padding=1),
        "output_padding_groups": conv_transpose_backward(
            (2, 4, 3, 4), (4, 2, 3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2),
        "dilation": conv_transpose_backward((1, 2, 4, 3), (2, 2, 2, 3), dilation=2, output_padding=1),
        "needs_w_only": conv_transpose_backward((1, 2, 3, 3), (2, 2, 2, 2), stride=2, needs=(False, True, False)),
        "stride_over_kernel": cpu_path(conv_transpose_backward((2, 3, 4, 4), (3, 5, 2, 2), stride=3, output_padding=2)),
        "asymmetric_stride3_dilation": cpu_path(conv_transpose_backward(
            (1, 3, 4, 5), (3, 2, 3, 2), stride=(3, 2), padding=(1, 0), output_padding=(2, 1), dilation=(1, 2))),
        "channel_panel_dcgan": cpu_path(conv_transpose_backward((2, 5, 7, 7), (5, 64, 4, 4), stride=2, padding=1)),
        "channel_panel_ragged_output_padding_dilation": cpu_path(conv_transpose_backward(
            (3, 7, 4, 5), (7, 70, 3, 3), stride=2, padding=1, output_padding=1, dilation=2)),
        "channel_panel_reduction_blocks": cpu_path(conv_transpose_backward(
            (2, 130, 3, 3), (130, 65, 4, 4), stride=(2, 3), padding=2)),
        "from_1x1_generator": cpu_path(conv_transpose_backward((5, 100, 1, 1), (100, 70, 7, 7))),
        "from_1x1_padding_cropped": cpu_path(conv_transpose_backward((3, 9, 1, 1), (9, 5, 4, 5), padding=(1, 2), stride=2)),
        "unbatched": conv_transpose_backward((3, 4, 5), (3, 2, 3, 3), stride=2, padding=1, output_padding=1),
    },
    "max_pool2d": {
        "2x2": max_pool((2, 3, 8, 8), kernel_size=2),
        "3x3_stride2_pad1": max_pool((2, 2, 9, 8), kernel_size=3, stride=2, padding=1, return_indices=True),
        "ties_overlapping": max_pool((2, 2, 7, 7), kernel_size=3, stride=1, ties=True, return_indices=True),
        "ceil_mode": max_pool((1, 2, 7, 8), kernel_size=2, stride=2, ceil_mode=True, return_indices=True),
        "ceil_mode_pad": max_pool((1, 2, 8, 7), kernel_size=3, stride=2, padding=1, ceil_mode=True, return_indices=True),
        "dilation": max_pool((2, 1, 10, 9), kernel_size=(3, 2), stride=(2, 1), dilation=(2, 3), padding=1, return_indices=True),
        "nan_inf": max_pool((2, 2, 6, 6), kernel_size=3, stride=2, padding=1, specials=True, return_indices=True),
        "rectangular": max_pool((1, 3, 5, 9), kernel_size=(1, 3), stride=(1, 2), return_indices=True),
        "spatial1x1": max_pool((3, 2, 1, 1), kernel_size=1, return_indices=True),
        "noncontiguous": max_pool((2, 2, 6, 6), kernel_size=2, noncontiguous=True, return_indices=True),
        # Rows of 40+ columns: whole vectors, the overlapping last vector and scalar borders.
        "wide_rows_overlapping": cpu_path(max_pool((1, 2, 13, 45), kernel_size=3, stride=2, padding=1, ties=True, return_indices=True)),
        "wide_rows_stride1": cpu_path(max_pool((2, 2, 7, 70), kernel_size=3, stride=1, padding=1, ties=True, return_indices=True)),
        "wide_rows_dilated_ceil": cpu_path(max_pool((1, 2, 13, 45), kernel_size=(2, 3), stride=2, padding=1, dilation=(2, 1),
                                           ceil_mode=True, ties=True, return_indices=True)),
        "ceil_clipped_windows": max_pool((1, 2, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True, return_indices=True),
        "unbatched": max_pool((3, 7, 8), kernel_size=3, stride=2, padding=1, ties=True, return_indices=True),
        "unbatched_noncontiguous": max_pool((2, 6, 6), kernel_size=2, noncontiguous=True),
        # Rows shorter than a vector (one partial vector each): stride 2 with more than half a
        # vector of columns (the second load of a strided pair), odd widths with scalar borders,
        # stride 1; NaN, infinities and ties inside them.
        "short_rows_stride2": cpu_path(max_pool((2, 3, 28, 28), kernel_size=2, ties=True, specials=True, return_indices=True)),
        "short_rows_odd_width": cpu_path(max_pool((2, 2, 27, 27), kernel_size=2, ties=True, specials=True, return_indices=True)),
        "short_rows_3x3_stride2_pad1": cpu_path(max_pool((2, 2, 13, 13), kernel_size=3, stride=2, padding=1, ties=True,
                                                specials=True, return_indices=True)),
        "short_rows_stride1": cpu_path(max_pool((2, 2, 9, 11), kernel_size=3, stride=1, ties=True, specials=True, return_indices=True)),
        "short_rows_no_indices": cpu_path(max_pool((2, 2, 10, 10), kernel_size=2, specials=True)),
    },
    "max_pool2d_backward": {
        "2x2": max_pool_backward((2, 3, 8, 8), kernel_size=2),
        "overlapping_ties": max_pool_backward((2, 2, 7, 7), kernel_size=3, stride=1, padding=1, ties=True),
        "ceil_dilation": max_pool_backward((1, 2, 9, 8), kernel_size=2, stride=2, dilation=2, ceil_mode=True),
        "wide_rows_overlapping": cpu_path(max_pool_backward((1, 2, 13, 45), kernel_size=3, stride=2, padding=1, ties=True)),
        "unbatched": max_pool_backward((2, 7, 7), kernel_size=3, stride=1, padding=1, ties=True),
    },
    "avg_pool2d": {
        "2x2": avg_pool((2, 3, 8, 8), kernel_size=2),
        "pad_include": avg_pool((2, 2, 7, 8), kernel_size=3, stride=2, padding=1),
        "pad_exclude": avg_pool((2, 2, 7, 8), kernel_size=3, stride=2, padding=1, count_include_pad=False),
        "ceil_include": avg_pool((1, 2, 7, 7), kernel_size=3, stride=2, padding=1, ceil_mode=True),
        "ceil_exclude": avg_pool((1, 2, 6, 7), kernel_size=(2, 4), stride=(2, 3), padding=(1, 2), ceil_mode=True, count_include_pad=False),
        "divisor_override": avg_pool((2, 2, 6, 6), kernel_size=3, stride=2, padding=1, divisor_override=5),
        "divisor_override_negative": avg_pool((1, 1, 4, 4), kernel_size=2, divisor_override=-3),
        "spatial1x1": avg_pool((2, 3, 1, 1), kernel_size=1),
        "noncontiguous": avg_pool((2, 2, 6, 6), kernel_size=2, noncontiguous=True),
        "wide_rows": cpu_path(avg_pool((2, 2, 7, 70), kernel_size=3, stride=2, padding=1)),
        "wide_rows_ceil_exclude": cpu_path(avg_pool((1, 2, 13, 45), kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                           count_include_pad=False)),
        # Ceil mode with a last window that runs past the padding and is clipped to it (the
        # divisor counts only the part inside the padded input).
        "ceil_clipped_include": avg_pool((1, 2, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True),
        "ceil_clipped_exclude": avg_pool((2, 2, 6, 8), kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                         count_include_pad=False),
        "ceil_clipped_rectangular": avg_pool((1, 2, 6, 7), kernel_size=(3, 4), stride=(3, 2), padding=1, ceil_mode=True),
        "unbatched": avg_pool((2, 7, 8), kernel_size=3, stride=2, padding=1, count_include_pad=False),
        "unbatched_noncontiguous": avg_pool((3, 6, 6), kernel_size=2, noncontiguous=True),
        # Rows shorter than a vector (see max_pool2d's short rows).
        "short_rows_stride2": cpu_path(avg_pool((2, 3, 28, 28), kernel_size=2)),
        "short_rows_odd_width": cpu_path(avg_pool((2, 2, 27, 27), kernel_size=2)),
        "short_rows_3x3_stride2_pad1_exclude": cpu_path(avg_pool((2, 2, 13, 13), kernel_size=3, stride=2, padding=1,
                                                        count_include_pad=False)),
        "short_rows_stride1_pad1": cpu_path(avg_pool((1, 2, 9, 11), kernel_size=3, stride=1, padding=1)),
    },
    "avg_pool2d_backward": {
        "2x2": avg_pool_backward((2, 3, 8, 8), kernel_size=2),
        "overlapping_pad_exclude": avg_pool_backward((2, 2, 7, 8), kernel_size=3, stride=1, padding=1, count_include_pad=False),
        "ceil_include": avg_pool_backward((1, 2, 7, 7), kernel_size=3, stride=2, padding=1, ceil_mode=True),
        "divisor_override": avg_pool_backward((2, 2, 6, 6), kernel_size=3, stride=2, divisor_override=2),
        "ceil_clipped_include": avg_pool_backward((1, 2, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True),
        "ceil_clipped_rectangular": avg_pool_backward((1, 2, 6, 7), kernel_size=(3, 4), stride=(3, 2), padding=1,
                                                      ceil_mode=True, count_include_pad=False),
        "unbatched": avg_pool_backward((2, 7, 7), kernel_size=3, stride=2, padding=1, ceil_mode=True),
    },
    "max_unpool2d": {
        "2x2": max_unpool((2, 3, 8, 8), 2),
        "overlapping_repeats": max_unpool((2, 2, 7, 7), 3, stride=2, padding=1, with_output_size=True),
        "output_size": max_unpool((1, 2, 9, 7), 2, with_output_size=True),
        "unbatched": max_unpool((2, 7, 7), 3, stride=2, padding=1, with_output_size=True),
    },
    "lstm_cell": {
        "basic": lstm_cell(3, 4, 5),
        "no_bias": lstm_cell(2, 3, 2, bias=False),
        "batch1_hidden1": lstm_cell(1, 1, 1),
        "hidden_over_a_gate_block": cpu_path(lstm_cell(5, 3, 33)),
        "batch_over_a_tile": cpu_path(lstm_cell(64, 20, 40)),
        "unbatched": lstm_cell(None, 4, 5),  # x (I,), h and c (H,)
    },
    "lstm_cell_backward": {
        "basic": lstm_cell_backward(3, 4, 5),
        "no_bias": lstm_cell_backward(2, 3, 2, bias=False),
        "grad_c_none": lstm_cell_backward(2, 3, 4, grads=(True, False)),
        "grad_h_none": lstm_cell_backward(2, 3, 4, grads=(False, True)),
        "hidden_over_a_gate_block": cpu_path(lstm_cell_backward(5, 3, 33)),
        "unbatched": lstm_cell_backward(None, 4, 5),
        "unbatched_grad_h_none": lstm_cell_backward(None, 3, 4, grads=(False, True)),
    },
    "lstm": {
        "basic": lstm(5, 3, 4, 6),
        "one_step": lstm(1, 2, 3, 2),
        "no_bias": lstm(4, 1, 2, 3, bias=False),
        "noncontiguous": lstm(3, 2, 4, 3, noncontiguous=True),
        "padded_gate_blocks": cpu_path(lstm(4, 9, 33, 40)),
        "wide_hidden": cpu_path(lstm(2, 10, 17, 70)),
        "unbatched": lstm(5, None, 4, 6),  # x (T, I), h0 and c0 (H,)
        "unbatched_noncontiguous": lstm(3, None, 4, 3, bias=False, noncontiguous=True),
    },
    "lstm_backward": {
        "basic": lstm_backward(5, 3, 4, 6),
        "no_bias": lstm_backward(3, 2, 2, 3, bias=False),
        "only_grad_out": lstm_backward(4, 2, 3, 2, grads=(True, False, False)),
        "only_final_state": lstm_backward(4, 2, 3, 2, grads=(False, True, True)),
        "padded_gate_blocks": cpu_path(lstm_backward(4, 9, 33, 40)),
        "wide_hidden": cpu_path(lstm_backward(2, 10, 17, 70)),
        "unbatched": lstm_backward(5, None, 4, 6),
        "unbatched_only_final_state": lstm_backward(4, None, 3, 2, grads=(False, True, True)),
    },
    "rnn_cell": {
        "basic": rnn_cell(3, 4, 5),
        "relu": rnn_cell(4, 3, 6, nonlinearity="relu"),
        "no_bias": rnn_cell(2, 3, 2, bias=(False, False)),
        "only_b_hh": rnn_cell(2, 3, 4, bias=(False, True)),
        "h_none": rnn_cell(3, 2, 4, with_h=False),
        "batch1_hidden1": rnn_cell(1, 1, 1),
        "unbatched": rnn_cell(None, 4, 5),  # x (I,), h (H,)
        "unbatched_relu_h_none": rnn_cell(None, 3, 2, nonlinearity="relu", with_h=False),
        "over_gemm_tiles": cpu_path(rnn_cell(37, 70, 130)),
        "char_rnn_step": cpu_path(rnn_cell(32, 128, 128, nonlinearity="relu")),
    },
    "rnn_cell_backward": {
        "basic": rnn_cell_backward(3, 4, 5),
        "relu": rnn_cell_backward(4, 3, 6, nonlinearity="relu"),
        "no_bias": rnn_cell_backward(2, 3, 2, bias=(False, False)),
        "only_b_ih": rnn_cell_backward(2, 3, 4, bias=(True, False)),
        "h_none": rnn_cell_backward(3, 2, 4, with_h=False),
        "batch1_hidden1": rnn_cell_backward(1, 1, 1),
        "unbatched": rnn_cell_backward(None, 4, 5),
        "over_gemm_tiles": cpu_path(rnn_cell_backward(37, 70, 130)),
        "char_rnn_step": cpu_path(rnn_cell_backward(32, 128, 128)),
    },
    "box_iou": {
        "basic": box_iou(7, 5),
        "empty": box_iou(0, 4),
    },
    "nms": {
        "basic": nms(30, 0.5),
        "ties_nan": nms(30, 0.3, ties=True, nan=True),
        "threshold0": nms(20, 0.0, ties=True),
        "threshold1": nms(20, 1.0),
        "empty": nms(0, 0.5),
        "one": nms(1, 0.5),
    },
    "batched_nms": {
        "basic": batched_nms(30, 0.5, 3),
        "ties_nan": batched_nms(30, 0.3, 4, ties=True, nan=True),
        "one_category": batched_nms(20, 0.4, 1),
        "empty": batched_nms(0, 0.5, 2),
        "class_agnostic": batched_nms_class_agnostic(20, 0.4),
        "many_categories": cpu_path(batched_nms(500, 0.5, 40, ties=True)),
    },
    "soft_nms": {
        "gaussian": soft_nms(30),
        "linear": soft_nms(30, "linear"),
        "ties_nan": soft_nms(25, ties=True, nan=True, adversarial=True),
        "linear_ties": soft_nms(25, "linear", ties=True, adversarial=True),
        "nan_inf_boxes": soft_nms(20, specials=True, adversarial=True),
        "identical": soft_nms(8, "linear", 0.5, 0.5, 0.0, ties=True, identical=True),
        "thresholds": soft_nms(25, "linear", 0.5, -0.5, 0.4),
        "narrow_sigma": soft_nms(25, sigma=0.05, score_threshold=0.2),
        "negative_scores": soft_nms(30, score_threshold=-0.6, ties=True, adversarial=True, shift=0.8),
        "empty": soft_nms(0),
        "one": soft_nms(1),
        "many": cpu_path(soft_nms(700, ties=True, adversarial=True)),  # vectors, compaction
    },
    "diou_nms": {
        "basic": diou_nms(30, 0.5),
        "ties_nan": diou_nms(30, 0.3, ties=True, nan=True, adversarial=True),
        "negative_threshold": diou_nms(20, -0.3, adversarial=True),
        "nan_inf_boxes": diou_nms(20, 0.3, specials=True, adversarial=True),
        "identical": diou_nms(6, 0.5, ties=True, identical=True),
        "empty": diou_nms(0, 0.5),
        "one": diou_nms(1, 0.5),
    },
    "matrix_nms": {
        "gaussian": matrix_nms(30, 3),
        "linear": matrix_nms(30, 3, "linear"),
        "ties_nan": matrix_nms(25, 2, ties=True, nan=True, adversarial=True),
        "linear_ties": matrix_nms(25, 1, "linear", ties=True, adversarial=True),
        "nan_inf_boxes": matrix_nms(20, 2, "linear", specials=True, adversarial=True),
        "identical": matrix_nms(6, 1, "linear", ties=True, identical=True),
        "wide_sigma": matrix_nms(20, 1, sigma=30.0, adversarial=True),
        "empty": matrix_nms(0, 2),
        "one": matrix_nms(1, 2),
        "many": cpu_path(matrix_nms(300, 3, ties=True, adversarial=True)),  # vectors and tails
    },
    "relu": {
        "normal": unary_activation((2, 3, 5, 7)),
        "noncontiguous": unary_activation((4, 9), noncontiguous=True),
        "edges": relu_edges(),
        "threads_split": cpu_path(unary_activation((3, 70001))),  # past the C++ parallel threshold
        "empty": unary_activation((0, 3)),
    },
    "relu_backward": {
        "normal": relu_backward((2, 3, 5, 7)),
        "from_input": relu_backward((4, 9), from_input=True),  # x in place of y: the same gradient
        "edges": relu_backward_edges(),
        "threads_split": cpu_path(relu_backward((3, 70001))),
        "empty": relu_backward((0, 3)),
    },
    "leaky_relu": {
        "relu": leaky_relu((2, 3, 5, 7), 0.0),
        "slope": leaky_relu((4, 9), 0.2, noncontiguous=True),
        "negative_slope_above_one": leaky_relu((3, 11), 1.5),
        "threads_split": cpu_path(leaky_relu((3, 70001), 0.01)),  # past the C++ parallel threshold
        "empty": leaky_relu((0, 3), 0.1),
    },
    "leaky_relu_backward": {
        "relu": leaky_relu_backward((2, 3, 5, 7), 0.0),
        "slope": leaky_relu_backward((4, 9), 0.2),
        "threads_split": cpu_path(leaky_relu_backward((3, 70001), 0.01)),
        "empty": leaky_relu_backward((0, 3), 0.1),
    },
    "elu": {
        "alpha_one": elu((2, 3, 5, 7), 1.0),
        "alpha": elu((4, 9), 0.3, noncontiguous=True),
        "overflow_range": elu((3, 33), 1.5, spread=300.0),  # e^x underflows, +x overflows
        "threads_split": cpu_path(elu((3, 70001), 1.0)),  # past the C++ parallel threshold
        "empty": elu((0, 3), 1.0),
    },
    "elu_backward": {
        "alpha_one": elu_backward((2, 3, 5, 7), 1.0),
        "overflow_range": elu_backward((3, 33), 0.7, spread=300.0),
        "threads_split": cpu_path(elu_backward((3, 70001), 1.0)),
        "empty": elu_backward((0, 3), 1.0),
    },
    "prelu": {
        "per_channel": prelu((2, 3, 5, 7), 3),
        "one_slope": prelu((2, 3, 5, 7), 1),
        "features": prelu((6, 4), 4, noncontiguous=True),  # (N, C): one element per row
        "vector": prelu((19,), 1),
        "threads_split": cpu_path(prelu((4, 8, 70, 70), 8)),
        "empty": prelu((0, 3, 2), 3),
    },
    "prelu_backward": {
        "per_channel": prelu_backward((2, 3, 5, 7), 3),
        "one_slope": prelu_backward((2, 3, 5, 7), 1),
        "features": prelu_backward((6, 4), 4),
        "vector": prelu_backward((19,), 1),
        "threads_split": cpu_path(prelu_backward((4, 8, 70, 70), 8)),
        "empty": prelu_backward((0, 3, 2), 3),
    },
    "sigmoid": {
        "normal": smooth((2, 3, 5, 7)),
        "overflow_range": smooth((3, 33), spread=300.0, noncontiguous=True),
        "threads_split": cpu_path(smooth((3, 70001))),
        "empty": smooth((0, 3)),
    },
    "sigmoid_backward": {
        "normal": smooth_backward("sigmoid", (2, 3, 5, 7)),
        "saturated": smooth_backward("sigmoid", (3, 33), spread=300.0),
        "threads_split": cpu_path(smooth_backward("sigmoid", (3, 70001))),
        "empty": smooth_backward("sigmoid", (0, 3)),
    },
    "tanh": {
        "normal": smooth((2, 3, 5, 7)),
        "overflow_range": smooth((3, 33), spread=300.0, noncontiguous=True),
        "threads_split": cpu_path(smooth((3, 70001))),
        "empty": smooth((0, 3)),
    },
    "tanh_backward": {
        "normal": smooth_backward("tanh", (2, 3, 5, 7)),
        "saturated": smooth_backward("tanh", (3, 33), spread=300.0),
        "threads_split": cpu_path(smooth_backward("tanh", (3, 70001))),
        "empty": smooth_backward("tanh", (0, 3)),
    },
    "gated_tanh": {
        # Rows of odd lengths (a partial vector at every row's end), the split on any axis.
        "channels": gated_tanh((2, 6, 5, 7), 1),
        "last_axis_noncontiguous": gated_tanh((3, 5, 34), -1, spread=300.0, noncontiguous=True),
        "first_axis": gated_tanh((4, 3, 3), 0),
        "vector": gated_tanh((38,), 0),
        "threads_split": cpu_path(gated_tanh((2, 8, 64, 70), 1)),
        "empty": gated_tanh((0, 4, 3), 1),
    },
    "gated_tanh_backward": {
        "channels": gated_tanh_backward((2, 6, 5, 7), 1),
        "saturated_last_axis": gated_tanh_backward((3, 5, 34), 2, spread=300.0),
        "first_axis": gated_tanh_backward((4, 3, 3), 0),
        "threads_split": cpu_path(gated_tanh_backward((2, 8, 64, 70), 1)),
        "empty": gated_tanh_backward((0, 4, 3), 1),
    },
    "dropout": {
        "half": dropout((2, 3, 5, 7), 0.5),
        "partial_chunk": dropout((3, 43), 0.2, seed=2**64 - 1, noncontiguous=True),  # not whole blocks
        "keep_all": dropout((4, 9), 0.0),
        "drop_all": dropout((4, 9), 1.0),
        "threads_split": cpu_path(dropout((3, 70001), 0.3, seed=2**40 + 5)),
        "empty": dropout((0, 3), 0.5),
    },
    "dropout_backward": {
        "half": dropout_backward((2, 3, 5, 7), 0.5),
        "drop_all": dropout_backward((4, 9), 1.0),
        "threads_split": cpu_path(dropout_backward((3, 70001), 0.3)),
        "empty": dropout_backward((0, 3), 0.5),
    },
    "box_iou_rotated": {
        "basic": box_iou_rotated(9, 7),
        "nan_inf": box_iou_rotated(8, 8, nan=True),
        "empty": box_iou_rotated(0, 4),
    },
    "nms_rotated": {
        "basic": nms_rotated(30, 0.5),
        "ties_nan": nms_rotated(30, 0.3, ties=True, nan=True),
        "threshold0": nms_rotated(20, 0.0, ties=True),
        "threshold1": nms_rotated(20, 1.0),
        "negative_threshold": nms_rotated(12, -0.5, nan=True),
        "empty": nms_rotated(0, 0.5),
        "one": nms_rotated(1, 0.5),
    },
    "embedding": {
        "plain": embedding(10, 4, (7,)),
        "sequences": embedding(65, 35, (5, 9)),  # rows past whole vectors
        "int32_indices": embedding(12, 16, (3, 4), index_dtype=np.int32),
        "noncontiguous_table": embedding(9, 6, (11,), noncontiguous=True),
        "one_index": embedding(5, 3, ()),
        "threads_split": cpu_path(embedding(100, 64, (3200,))),
        "empty": embedding(5, 3, (0, 4)),
        "zero_width": embedding(5, 0, (6,)),
    },
    "embedding_backward": {
        "plain": embedding_backward(10, 4, (30,)),
        "sequences": embedding_backward(65, 35, (5, 9)),
        "padding": embedding_backward(6, 5, (40,), padding_idx=2),
        "padding_from_the_end": embedding_backward(6, 5, (40,), padding_idx=-1),
        "int32_indices": embedding_backward(12, 16, (3, 4), index_dtype=np.int32),
        "many_repeats": embedding_backward(2, 17, (500,)),
        "many_indices": cpu_path(embedding_backward(65, 64, (3200,))),
        "empty": embedding_backward(4, 3, (0,)),
        "no_rows": embedding_backward(0, 3, (0, 2)),
    },
    "matmul": {
        "plain": matmul(5, 7, 3),
        "trans_a": matmul(6, 4, 9, trans_a=True),
        "trans_b": matmul(6, 11, 5, trans_b=True),
        "both_transposed": matmul(3, 5, 4, trans_a=True, trans_b=True),
        "noncontiguous": matmul(4, 6, 5, noncontiguous=True),
        "one_column": matmul(64, 50, 1, trans_b=True),
        # Matrix-vector and outer products (the cpu backend's dot, weighted-row-sum and outer
        # product paths): every storage of the vector and the matrix, lengths past whole
        # vectors and blocks.
        "one_column_plain": matmul(37, 300, 1),
        "one_column_trans_a": matmul(300, 37, 1, trans_a=True),
        "one_row": matmul(1, 37, 300),
        "one_row_narrow": matmul(1, 37, 5),
        "one_row_whole_vectors": matmul(1, 9, 48),
        "one_row_trans_a": matmul(1, 37, 300, trans_a=True),
        "one_row_trans_b": matmul(1, 300, 37, trans_b=True),
        "one_by_one": matmul(1, 50, 1, trans_a=True, trans_b=True),
        "one_column_empty_reduction": matmul(5, 0, 1),
        "one_row_empty_reduction": matmul(1, 0, 5),
        "outer_product": matmul(37, 1, 300),
        "outer_product_transposed": matmul(37, 1, 300, trans_a=True, trans_b=True),
        "empty_reduction": matmul(3, 0, 4, trans_a=True),
        "empty_rows": matmul(0, 3, 4, trans_b=True),
        # Past one register tile and one reduction block, each transpose packed by its source
        # (plain: A's rows transposed into panels through registers, 2 x lanes columns at a
        # time, then lanes, then one; a last panel of fewer rows element by element).
        "blocks_plain": cpu_path(matmul(70, 600, 100)),
        "blocks_trans_a": cpu_path(matmul(70, 600, 100, trans_a=True)),
        "blocks_trans_b": cpu_path(matmul(70, 600, 100, trans_b=True)),
        "blocks_both_transposed": cpu_path(matmul(70, 600, 100, trans_a=True, trans_b=True)),
        # A reduction long against C, cut into chunks (a dense layer's weight gradient); B's
        # last panel partly used, packed by masked loads.
        "long_reduction_trans_a": cpu_path(matmul(35, 1200, 40, trans_a=True)),
        "long_reduction_trans_b": cpu_path(matmul(16, 1300, 10, trans_b=True)),
        # x W^T with a long reduction as dot products of rows in place: partial row tiles
        # of A and B, the last vector of each row masked.
        "dot_rows": cpu_path(matmul(18, 1300, 7, trans_b=True)),
        # The same with B stored (K, N), N short of a vector: B copied into rows first.
        "dot_rows_narrow_b": cpu_path(matmul(20, 1300, 7)),
        # Fewer columns than a vector's lanes against many rows: computed transposed.
        "few_columns": cpu_path(matmul(40, 50, 8)),
        "few_columns_trans_a": cpu_path(matmul(100, 64, 8, trans_a=True)),
        "few_columns_trans_b": cpu_path(matmul(64, 30, 10, trans_b=True)),
        # A reduction shorter than a vector (rank-K updates): rows past one job, columns past
        # one register block and a partial last vector, op(B) stored transposed.
        "short_reduction": cpu_path(matmul(70, 7, 300)),
        "short_reduction_trans_a": cpu_path(matmul(130, 3, 150, trans_a=True)),
        "short_reduction_trans_b": cpu_path(matmul(70, 7, 300, trans_b=True)),
        "short_reduction_both": cpu_path(matmul(70, 5, 260, trans_a=True, trans_b=True)),
    },
    "batch_norm_train": {
        "nchw": batch_norm_train((4, 3, 5, 6)),
        "no_affine": batch_norm_train((3, 4, 2, 3), affine=False),
        "vectors": batch_norm_train((7, 5)),
        "nc_l": batch_norm_train((2, 3, 9)),
        "far_from_zero": batch_norm_train((4, 2, 6, 6), offset=1000.0),  # variance from deviations
        "noncontiguous": batch_norm_train((2, 3, 4, 4), noncontiguous=True),
        # Rows past whole vectors with a tail, channels over both threads.
        "dcgan_rows": cpu_path(batch_norm_train((8, 16, 14, 14))),
        # Short rows: tasks of several channels (3-10 by the thread count), each pass image
        # by image over a block's channels; 40 channels leave a partial last block.
        "channel_blocks": cpu_path(batch_norm_train((8, 40, 3, 3))),
        "relu": batch_norm_train((4, 6, 5, 5), activation="relu"),
        "leaky_relu": batch_norm_train((4, 6, 5, 5), activation="leaky_relu", negative_slope=0.2),
        "leaky_relu_blocks": cpu_path(batch_norm_train((8, 40, 3, 3), activation="leaky_relu", negative_slope=0.3)),
    },
    "batch_norm_train_backward": {
        "nchw": batch_norm_train_backward((4, 3, 5, 6)),
        "no_affine": batch_norm_train_backward((3, 4, 2, 3), affine=False),
        "vectors": batch_norm_train_backward((7, 5)),
        "dcgan_rows": cpu_path(batch_norm_train_backward((8, 16, 14, 14))),
        "channel_blocks": cpu_path(batch_norm_train_backward((8, 40, 3, 3))),
        "relu": batch_norm_train_backward((4, 6, 5, 5), activation="relu"),
        "leaky_relu": batch_norm_train_backward((4, 6, 5, 5), activation="leaky_relu", negative_slope=0.2),
        "relu_blocks": cpu_path(batch_norm_train_backward((8, 40, 3, 3), activation="relu")),
    },
    "softmax": {
        "rows": softmax((5, 7)),
        "batched": softmax((2, 3, 10)),
        "vector": softmax((9,)),
        "noncontiguous": softmax((4, 6), noncontiguous=True),
        "far_from_zero": softmax((3, 8), offset=1000.0),  # the maximum is subtracted first
        "inf_nan": softmax((4, 9), specials=True),
        "one_class": softmax((4, 1)),
        "no_rows": softmax((0, 5)),
        "no_classes": softmax((3, 0)),
        "threads_split": cpu_path(softmax((300, 65))),  # past the C++ parallel threshold
        "long_rows": cpu_path(softmax((3, 5001))),  # whole vectors and a tail
    },
    "softmax_backward": {
        "rows": softmax_backward((5, 7)),
        "batched": softmax_backward((2, 3, 10)),
        "no_rows": softmax_backward((0, 5)),
        "threads_split": cpu_path(softmax_backward((300, 65))),
    },
    "log_softmax": {
        "rows": softmax((5, 7)),
        "batched": softmax((2, 3, 10)),
        "vector": softmax((9,)),
        "noncontiguous": softmax((4, 6), noncontiguous=True),
        "far_from_zero": softmax((3, 8), offset=-1000.0),
        "inf_nan": softmax((4, 9), specials=True),
        "one_class": softmax((4, 1)),
        "no_rows": softmax((0, 5)),
        "no_classes": softmax((3, 0)),
        "threads_split": cpu_path(softmax((300, 65))),
        "long_rows": cpu_path(softmax((3, 5001))),
    },
    "log_softmax_backward": {
        "rows": softmax_backward((5, 7), log=True),
        "batched": softmax_backward((2, 3, 10), log=True),
        "no_rows": softmax_backward((0, 5), log=True),
        "threads_split": cpu_path(softmax_backward((300, 65), log=True)),
    },
    "cross_entropy": {
        "plain": cross_entropy((8, 5)),
        "weights": cross_entropy((8, 5), weight=True),
        "ignore_index": cross_entropy((9, 4), ignore_index=-100),
        "ignore_a_class": cross_entropy((9, 4), weight=True, ignore_index=1),
        "label_smoothing": cross_entropy((7, 6), label_smoothing=0.1),
        "smoothing_weights_ignore": cross_entropy((9, 6), weight=True, label_smoothing=0.3, ignore_index=-1),
        "far_from_zero": cross_entropy((6, 5), label_smoothing=0.2, offset=500.0),
        "minus_inf_classes": cross_entropy((5, 6), specials=True),
        "batched": cross_entropy((2, 3, 4)),
        "one_row": cross_entropy((7,)),
        "int32_targets": cross_entropy((6, 3), target_dtype=np.int32),
        "one_class": cross_entropy((4, 1)),
        "no_rows": cross_entropy((0, 3)),
        "threads_split": cpu_path(cross_entropy((3200, 65), weight=True, label_smoothing=0.1)),
        # rows of <= 64 classes go in blocks of 64 rows along vectors (csrc/elementwise/loss.h):
        # several blocks, the last one partial, split between threads
        "narrow_blocks": cpu_path(cross_entropy((4133, 4), weight=True, label_smoothing=0.1, ignore_index=3)),
        "narrow_widest": cross_entropy((70, 64), label_smoothing=0.2, ignore_index=-100),
        "narrow_specials": cross_entropy((130, 6), specials=True),
        # classes on axis 1, rows (n, p) along each class's plane
        "classes_on_axis_1": cross_entropy((2, 5, 3, 4), class_axis=1),
        "axis_1_of_a_matrix": cross_entropy((6, 4), class_axis=1),
        "axis_1_narrow_blocks": cpu_path(cross_entropy((3, 4, 23, 30), weight=True, label_smoothing=0.1,
                                                       ignore_index=3, class_axis=1)),
        "axis_1_wide": cross_entropy((2, 70, 3, 5), weight=True, label_smoothing=0.2, class_axis=1),
    },
    "cross_entropy_backward": {
        "plain": cross_entropy_backward((8, 5)),
        "weights": cross_entropy_backward((8, 5), weight=True),
        "ignore_index": cross_entropy_backward((9, 4), ignore_index=-100),
        "smoothing_weights_ignore": cross_entropy_backward((9, 6), weight=True, label_smoothing=0.3, ignore_index=2),
        "far_from_zero": cross_entropy_backward((6, 5), label_smoothing=0.2, offset=-500.0),
        "batched": cross_entropy_backward((2, 3, 4)),
        "no_rows": cross_entropy_backward((0, 3)),
        "threads_split": cpu_path(cross_entropy_backward((3200, 65), label_smoothing=0.1)),
        "narrow_blocks": cpu_path(cross_entropy_backward((4133, 4), weight=True, label_smoothing=0.1, ignore_index=3)),
        "narrow_widest": cross_entropy_backward((70, 15), label_smoothing=0.2, ignore_index=-100),
        "rows_past_narrow": cross_entropy_backward((70, 16), weight=True, ignore_index=-100),
        "classes_on_axis_1": cross_entropy_backward((2, 5, 3, 4), class_axis=1),
        "axis_1_narrow_blocks": cpu_path(cross_entropy_backward((3, 4, 23, 30), weight=True, label_smoothing=0.1,
                                                                ignore_index=3, class_axis=1)),
        "axis_1_past_grad_narrow": cross_entropy_backward((2, 40, 9, 10), weight=True, ignore_index=-100,
                                                          class_axis=1),
        "axis_1_wide": cross_entropy_backward((2, 70, 3, 5), weight=True, label_smoothing=0.2, class_axis=1),
    },
    "binary_cross_entropy_with_logits": {
        "column": bce_with_logits((64, 1)),
        "rows": bce_with_logits((5, 7), binary=False),
        "pos_weight": bce_with_logits((6, 4), pos_weight=True),
        "soft_pos_weight": bce_with_logits((3, 2, 5), pos_weight=True, binary=False),
        "vector": bce_with_logits((9,)),
        "empty": bce_with_logits((0, 3)),
        "threads_split": cpu_path(bce_with_logits((5, 9001), pos_weight=True)),  # column blocks
        "wide_rows": bce_with_logits((4, 75)),  # whole vectors without a pos_weight, and a tail
    },
    "binary_cross_entropy_with_logits_backward": {
        "column": bce_with_logits_backward((64, 1)),
        "pos_weight": bce_with_logits_backward((6, 4), pos_weight=True, binary=False),
        "empty": bce_with_logits_backward((0, 3)),
        "threads_split": cpu_path(bce_with_logits_backward((5, 9001), pos_weight=True)),
        "wide_rows": bce_with_logits_backward((4, 75)),
    },
    "sgd_step": {
        "plain": sgd_step(),
        "weight_decay": sgd_step(weight_decay=1e-2),
        "momentum_first_step": sgd_step(momentum=0.9, first_step=True),
        "momentum": sgd_step(momentum=0.9, weight_decay=1e-3),
        "dampening": sgd_step(momentum=0.8, dampening=0.3),
        "nesterov": sgd_step(momentum=0.9, nesterov=True, weight_decay=1e-2),
        "empty_list": sgd_step(shapes=[]),
        "empty_tensor": sgd_step(momentum=0.5, shapes=[(0, 3), (4,)]),
        "threads_split": cpu_path(sgd_step(momentum=0.9, shapes=[(50, 1000), (7,), (20001,)])),
    },
    "adam_step": {
        "first_step": adam_step(step=1),
        "later_step": adam_step(step=7),
        "weight_decay": adam_step(weight_decay=1e-2),
        "decoupled_weight_decay": adam_step(weight_decay=1e-2, decoupled=True),
        "empty_list": adam_step(shapes=[]),
        "threads_split": cpu_path(adam_step(shapes=[(50, 1000), (7,), (20001,)])),
    },
}


def backends_for(op):
    """The available non-reference backends that register every kernel `op` runs."""
    return [name for name in pyconv.backends()
            if name != "reference" and OP_KERNELS[op] <= set(registry.get(name).kernels)]


def runnable_isas():
    """The C++ ISA variants this CPU can run, best first (the cpu backend's dispatch targets)."""
    if "cpu" not in pyconv.backends():
        return []
    order = ["avx512", "avx2", "generic"]
    best = order.index(pyconv._C.best_isa())
    return [isa for isa in order[best:] if isa in pyconv._C.compiled_isas()]


def variants(backend):
    """The backend under each of its code paths: 'cpu/<isa>' for every runnable ISA variant."""
    return [f"cpu/{isa}" for isa in runnable_isas()] if backend == "cpu" else [backend]


def parameters():
    return [
        pytest.param(op, case_id, variant, dtype, id=f"{op}-{case_id}-{variant}-{np.dtype(dtype).name}")
        for op, table in CASES.items()
        for case_id in table
        for backend in backends_for(op)
        if not (backend == "cuda" and registry.cuda_simulator() and not getattr(table[case_id], "for_simulator", True))
        for variant in variants(backend)
        for dtype in DTYPES
    ]


@pytest.fixture
def on_variant():
    """on_variant('cpu/avx2') selects that ISA variant and returns 'cpu'; other names pass
    through. The ISA selected before the test is restored after it."""
    saved = pyconv._C.isa() if runnable_isas() else None

    def select(variant):
        backend, _, isa = variant.partition("/")
        if isa:
            pyconv._C.set_isa(isa)
            assert pyconv._C.isa() == isa
        return backend

    yield select
    if saved is not None:
        pyconv._C.set_isa(saved)


def own_copy(arg):
    """A list of arrays (the tensors an optimiser step updates in place) copied, so that each
    backend starts from the same values; other arguments as they are."""
    return [a.copy() for a in arg] if isinstance(arg, list) else arg


def assert_same_result(actual, expected, dtype):
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same_result(a, e, dtype)
    elif expected is None:
        assert actual is None
    else:
        actual = to_numpy(actual)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert actual.flags.c_contiguous
        if expected.dtype.kind in "iu":
            np.testing.assert_array_equal(actual, expected)
        else:
            assert_close(actual, expected, dtype)


@pytest.mark.parametrize("op, case_id, variant, dtype", parameters())
def test_matches_reference(op, case_id, variant, dtype, on_variant):
    backend = on_variant(variant)
    rng = np.random.default_rng(zlib.crc32(f"{op}/{case_id}".encode()))
    args, kwargs = CASES[op][case_id](rng, dtype)
    expected = getattr(ops, op)(*map(own_copy, args), **kwargs, backend="reference")
    moved = [on_backend(backend, a) if isinstance(a, np.ndarray)
             else [on_backend(backend, x) for x in a] if isinstance(a, list) else a
             for a in map(own_copy, args)]
    actual = getattr(ops, op)(*moved, **kwargs, backend=backend)
    assert_same_result(actual, expected, dtype)


def test_case_table_covers_every_op():
    assert set(CASES) == set(OP_KERNELS) == set(ops.__all__)


def test_reference_cases_run():
    """Every case of the table is valid input (the reference accepts it)."""
    for op, table in CASES.items():
        for case_id, build in table.items():
            args, kwargs = build(np.random.default_rng(0), np.float64)
            getattr(ops, op)(*args, **kwargs, backend="reference")


@pytest.mark.parametrize("backend", pyconv.backends())
def test_kernel_coverage(backend):
    """Every usable backend runs every op of the catalogue (registration already refuses
    kernels that are not in it)."""
    missing = [op for op, ok in registry.get(backend).coverage().items() if not ok]
    assert missing == [], f"the {backend!r} backend lacks {missing}"


# --------------------------------------------------------------------------------------------
# lstm(..., save_for_backward=True) and lstm_backward(..., saved=): the backward from the
# saved forward gives what the recomputing backward gives, on every backend.

SAVED_CASES = ("basic", "no_bias", "only_grad_out", "unbatched")


def _numpy_results(results):
    return tuple(tuple(_numpy_results(r)) if isinstance(r, tuple) else to_numpy(r) for r in results)


@pytest.mark.parametrize("case_id, backend, dtype", [
    pytest.param(case_id, backend, dtype, id=f"lstm_saved-{case_id}-{backend}-{np.dtype(dtype).name}")
    for case_id in SAVED_CASES for backend in pyconv.backends() for dtype in DTYPES
])
def test_lstm_backward_from_the_saved_forward(case_id, backend, dtype):
    rng = np.random.default_rng(zlib.crc32(f"lstm_saved/{case_id}".encode()))
    args, _ = CASES["lstm_backward"][case_id](rng, dtype)
    upstream = on_backend(backend, *args[:3])
    inputs = on_backend(backend, *args[3:])
    plain = ops.lstm(*inputs, backend=backend)
    out, state, saved = ops.lstm(*inputs, backend=backend, save_for_backward=True)
    assert_same_result((out, state), _numpy_results(plain), dtype)

    recomputed = _numpy_results(ops.lstm_backward(*upstream, *inputs, backend=backend))
    from_saved = ops.lstm_backward(*upstream, *inputs, backend=backend, saved=saved)
    assert_same_result(from_saved, recomputed, dtype)
    assert_same_result(from_saved, ops.lstm_backward(*args, backend="reference"), dtype)
    # The backward only reads the record: a second backward from it gives the same again.
    again = ops.lstm_backward(*upstream, *inputs, backend=backend, saved=saved)
    assert_same_result(again, _numpy_results(from_saved), dtype)


def _lstm_inputs(T, dtype=np.float64, B=2, I=3, H=6):
    rng = np.random.default_rng(T)
    return (array(rng, (T, B, I), dtype), *lstm_cell_args(rng, dtype, B, I, H, True))


def _saved(inputs, backend):
    return ops.lstm(*inputs, backend=backend, save_for_backward=True)[2]


def _record_with(backend, **arrays):
    saved = _saved(_lstm_inputs(3), "reference")
    fields = {"gates": saved.gates, "hs": saved.hs, "cs": saved.cs, **arrays}
    return registry.LstmSaved(backend, **fields)


NUMPY_BACKENDS = [b for b in pyconv.backends() if registry.get(b).array_kind == "numpy"]
BAD_SAVED = {
    "not_a_record": (lambda be: (1, 2, 3), "saved must be the third value"),
    "other_backend": (lambda be: _record_with("elsewhere"), "comes from the 'elsewhere' backend"),
    "other_dtype": (lambda be: _saved(_lstm_inputs(3, np.float32), be), "saved.gates is float32"),
    "other_length": (lambda be: _saved(_lstm_inputs(4), be), r"saved.gates has shape \(4,"),
    "other_batch": (lambda be: _saved(_lstm_inputs(3, B=3), be), r"saved.gates has shape \(3, 3,"),
    "states_shape": (lambda be: _record_with(be, hs=np.zeros((3, 2, 6))), r"saved.hs has shape \(3, 2, 6\)"),
}


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
@pytest.mark.parametrize("case_id", BAD_SAVED)
def test_lstm_backward_rejects_a_saved_record_that_does_not_fit(case_id, backend):
    make, message = BAD_SAVED[case_id]
    inputs = _lstm_inputs(3)
    with pytest.raises(ValueError, match=message):
        ops.lstm_backward(np.ones((3, 2, 6)), None, None, *inputs, backend=backend, saved=make(backend))


@pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")
def test_cpu_lstm_backward_rejects_gates_of_another_layout():
    """The C++ kernels save gates in their own padded layout: the reference's (T, B, 4H) gates
    have the right leading dimensions but not the width the kernels would read."""
    with pytest.raises(ValueError, match="saved_gates: expected shape"):
        ops.lstm_backward(np.ones((3, 2, 6)), None, None, *_lstm_inputs(3), backend="cpu",
                          saved=_record_with("cpu"))
