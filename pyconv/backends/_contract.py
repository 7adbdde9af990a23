"""The op catalogue: every kernel a backend may implement, with its signature, and the kernels
each public op of :mod:`pyconv.ops` runs. Declared here once; everything else reads it:
``Backend.register`` refuses a kernel whose name or parameters differ from its entry, the
conformance suite parametrises over ``OPS``, ``pyconv bench`` and ``pyconv info`` compute a
backend's coverage from it.

Kernels receive arguments already checked by :mod:`pyconv._spec`, arrays C-contiguous and on
the backend's device. ``g`` is the typed geometry of the call (``ConvGeom`` or ``PoolGeom``
from ``pyconv._spec``); optional arrays are None; index arrays are int64.
"""
from __future__ import annotations

import inspect
from typing import NamedTuple


class KernelSpec(NamedTuple):
    name: str
    params: tuple      # parameter names, in order, as every backend spells them
    returns: str       # what the kernel returns (shapes in the geometry's names)


def _kernels(*specs):
    return {s.name: s for s in specs}


KERNELS: dict[str, KernelSpec] = _kernels(
    # Convolution: one direct-convolution geometry drives all four passes. The transpose
    # convolution is conv2d_grad_input of the direct convolution it inverts.
    KernelSpec("conv2d", ("x", "w", "b", "g"), "y (N, K, Ho, Wo)"),
    KernelSpec("conv2d_grad_input", ("grad_out", "w", "g"), "grad_x (N, C, H, W)"),
    KernelSpec("conv2d_grad_weight", ("grad_out", "x", "g"), "grad_w (K, C/groups, R, S)"),
    KernelSpec("conv2d_grad_bias", ("grad_out",), "grad_b (K,): the sum over N, H, W"),
    # Pooling. divisor_override 0 means none.
    KernelSpec("max_pool2d", ("x", "g", "with_indices"), "(y, indices or None)"),
    KernelSpec("max_pool2d_backward", ("grad_out", "indices", "input_shape"), "grad_x"),
    KernelSpec("avg_pool2d", ("x", "g", "count_include_pad", "divisor_override"), "y"),
    KernelSpec("avg_pool2d_backward", ("grad_out", "g", "count_include_pad", "divisor_override"),
               "grad_x"),
    KernelSpec("max_unpool2d", ("x", "indices", "output_shape"), "y (N, C, H, W)"),
    # LSTM, gate rows i, f, g, o. `saved` is None (the backward recomputes the forward) or the
    # LstmSaved that this backend's lstm made for the same inputs, already checked.
    KernelSpec("lstm_cell", ("x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh"), "(h_new, c_new)"),
    KernelSpec("lstm_cell_backward",
               ("grad_h", "grad_c", "x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh"),
               "(grad_x, grad_h, grad_c, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)"),
    KernelSpec("lstm", ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "save"),
               "(out (T, B, H), (h_T, c_T), LstmSaved if save else None)"),
    KernelSpec("lstm_backward",
               ("grad_out", "grad_hT", "grad_cT", "x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh",
                "saved"),
               "(grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)"),
    # Elman RNN step, h_new = act(x w_ih^T + b_ih + h w_hh^T + b_hh); nonlinearity is "tanh"
    # or "relu". The backward takes h_new, from which either activation's derivative follows.
    KernelSpec("rnn_cell", ("x", "h", "w_ih", "w_hh", "b_ih", "b_hh", "nonlinearity"), "h_new (B, H)"),
    KernelSpec("rnn_cell_backward",
               ("grad_h", "x", "h", "h_new", "w_ih", "w_hh", "b_ih", "b_hh", "nonlinearity"),
               "(grad_x, grad_h, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)"),
    # Boxes (x1, y1, x2, y2).
    KernelSpec("box_iou", ("boxes1", "boxes2"), "(N, M)"),
    KernelSpec("nms", ("boxes", "scores", "iou_threshold"), "kept indices (int64)"),
    KernelSpec("batched_nms", ("boxes", "scores", "idxs", "iou_threshold"),
               "kept indices (int64)"),
    # The NMS family. method and kernel are "gaussian" or "linear"; labels are int64.
    KernelSpec("soft_nms",
               ("boxes", "scores", "sigma", "iou_threshold", "score_threshold", "method"),
               "(kept indices (int64), their decayed scores), in the order picked"),
    KernelSpec("diou_nms", ("boxes", "scores", "iou_threshold"), "kept indices (int64)"),
    KernelSpec("matrix_nms", ("boxes", "scores", "labels", "kernel", "sigma"),
               "decayed scores (N,), input order"),
    # Elementwise activations, any shape. relu_backward takes the forward's output y (its input
    # x gives the same gradient).
    KernelSpec("relu", ("x",), "y, x's shape"),
    KernelSpec("relu_backward", ("grad_out", "y"), "grad_x, y's shape"),
    KernelSpec("leaky_relu", ("x", "negative_slope"), "y, x's shape"),
    KernelSpec("leaky_relu_backward", ("grad_out", "x", "negative_slope"), "grad_x, x's shape"),
    # Fused activations. prelu's weight is (C,) or (1,) (C = x.shape[1]); sigmoid and tanh
    # backward take the forward's output y.
    KernelSpec("elu", ("x", "alpha"), "y, x's shape"),
    KernelSpec("elu_backward", ("grad_out", "x", "alpha"), "grad_x, x's shape"),
    KernelSpec("prelu", ("x", "weight"), "y, x's shape"),
    KernelSpec("prelu_backward", ("grad_out", "x", "weight"), "(grad_x, grad_weight)"),
    KernelSpec("sigmoid", ("x",), "y, x's shape"),
    KernelSpec("sigmoid_backward", ("grad_out", "y"), "grad_x, y's shape"),
    KernelSpec("tanh", ("x",), "y, x's shape"),
    KernelSpec("tanh_backward", ("grad_out", "y"), "grad_x, y's shape"),
    # The gated activation tanh(a) * sigmoid(b) of x = [a, b], split in halves along axis dim
    # (an int in [0, x.ndim)); its backward computes both from x again.
    KernelSpec("gated_tanh", ("x", "dim"), "y, x's shape with axis dim halved"),
    KernelSpec("gated_tanh_backward", ("grad_out", "x", "dim"), "grad_x, x's shape"),
    # Dropout: Philox4x32-10 keyed by seed (an int in [0, 2^64)), element i reading word i % 4
    # of block i // 4; kept where the word's top 24 bits are below keep_threshold.
    KernelSpec("dropout", ("x", "keep_threshold", "scale", "seed"),
               "(y, mask (uint8 0 / 1, x's shape))"),
    KernelSpec("dropout_backward", ("grad_out", "mask", "scale"), "grad_x, mask's shape"),
    # Rotated boxes (cx, cy, w, h, angle in degrees, counter-clockwise on an image).
    KernelSpec("box_iou_rotated", ("boxes1", "boxes2"), "(N, M)"),
    KernelSpec("nms_rotated", ("boxes", "scores", "iou_threshold"), "kept indices (int64)"),

    # Dense: op(a) (M, K) @ op(b) (K, N), op(m) = m.T where its flag is set.
    KernelSpec("matmul", ("a", "b", "trans_a", "trans_b"), "(M, N)"),
    # Embedding rows: indices (any shape) in [0, rows of the table); the backward sums grad_out's
    # rows by their index in the order of the indices, row padding_idx (-1: none) zero.
    KernelSpec("embedding", ("weight", "indices"), "out, indices' shape + (dim,)"),
    KernelSpec("embedding_backward", ("grad_out", "indices", "num_embeddings", "padding_idx"),
               "grad_weight (num_embeddings, dim)"),
    # Batch normalisation with batch statistics over every axis but 1 of x (N, C, ...); weight
    # and bias (C,) or None. var is the biased variance; invstd = 1/sqrt(var + eps). activation
    # (None, "relu" or "leaky_relu" with negative_slope >= 0) applies to y; its gradient comes
    # from the forward's output y (None without an activation).
    KernelSpec("batch_norm_train", ("x", "weight", "bias", "eps", "activation", "negative_slope"),
               "(y, mean (C,), var (C,))"),
    KernelSpec("batch_norm_train_backward",
               ("grad_out", "x", "mean", "invstd", "weight", "y", "activation", "negative_slope"),
               "(grad_x, grad_weight (C,), grad_bias (C,))"),

    # Softmax and losses over the class axis of x (M, C): rows of C classes. target (M,) is
    # int64, each in [0, C) or equal to ignore_index; weight (C,) or None. cross_entropy's lse
    # is each row's log-sum-exp, what its backward needs besides x.
    KernelSpec("softmax", ("x",), "y (M, C)"),
    KernelSpec("softmax_backward", ("grad_out", "y"), "grad_x (M, C)"),
    KernelSpec("log_softmax", ("x",), "y (M, C)"),
    KernelSpec("log_softmax_backward", ("grad_out", "y"), "grad_x (M, C)"),
    # The cross-entropy's x is (N, C, P): row (n, p) is x[n, :, p] (classes last: P = 1), and
    # its M = N * P rows (target, loss, lse, grad_loss) go in (n, p) order.
    KernelSpec("cross_entropy", ("x", "target", "weight", "ignore_index", "label_smoothing"),
               "(loss (M,), lse (M,))"),
    KernelSpec("cross_entropy_backward",
               ("grad_loss", "x", "target", "weight", "lse", "ignore_index", "label_smoothing"),
               "grad_x (N, C, P)"),
    # Binary cross-entropy of logits x (M, C) against target (M, C); pos_weight (C,) or None.
    KernelSpec("binary_cross_entropy_with_logits", ("x", "target", "pos_weight"), "loss (M, C)"),
    KernelSpec("binary_cross_entropy_with_logits_backward",
               ("grad_out", "x", "target", "pos_weight"), "grad_x (M, C)"),
    # Optimiser steps over lists of parameters, gradients and state buffers (entry i of every
    # list has parameter i's shape): parameters and state updated in place.
    KernelSpec("sgd_step", ("params", "grads", "momentum_buffers", "lr", "momentum", "dampening",
                            "nesterov", "weight_decay", "first_step"), "None"),
    KernelSpec("adam_step", ("params", "grads", "exp_avgs", "exp_avg_sqs", "step", "lr", "beta1",
                             "beta2", "eps", "weight_decay", "decoupled_weight_decay"), "None"),
)

_CONV_BACKWARD = ("conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias")

# Public op (a function of pyconv.ops) -> the kernels it runs.
OPS: dict[str, tuple[str, ...]] = {
    "conv2d": ("conv2d",),
    "conv1d": ("conv2d",),
    "conv2d_backward": _CONV_BACKWARD,
    "conv1d_backward": _CONV_BACKWARD,
    "conv_transpose2d": ("conv2d_grad_input",),
    "conv_transpose2d_backward": ("conv2d", "conv2d_grad_weight", "conv2d_grad_bias"),
    "max_pool2d": ("max_pool2d",),
    "max_pool2d_backward": ("max_pool2d_backward",),
    "avg_pool2d": ("avg_pool2d",),
    "avg_pool2d_backward": ("avg_pool2d_backward",),
    "max_unpool2d": ("max_unpool2d",),
    "lstm_cell": ("lstm_cell",),
    "lstm_cell_backward": ("lstm_cell_backward",),
    "lstm": ("lstm",),
    "lstm_backward": ("lstm_backward",),
    "rnn_cell": ("rnn_cell",),
    "rnn_cell_backward": ("rnn_cell_backward",),
    "box_iou": ("box_iou",),
    "nms": ("nms",),
    "batched_nms": ("batched_nms", "nms"),
    "soft_nms": ("soft_nms",),
    "diou_nms": ("diou_nms",),
    "matrix_nms": ("matrix_nms",),
    "relu": ("relu",),
    "relu_backward": ("relu_backward",),
    "leaky_relu": ("leaky_relu",),
    "leaky_relu_backward": ("leaky_relu_backward",),
    "elu": ("elu",),
    "elu_backward": ("elu_backward",),
    "prelu": ("prelu",),
    "prelu_backward": ("prelu_backward",),
    "sigmoid": ("sigmoid",),
    "sigmoid_backward": ("sigmoid_backward",),
    "tanh": ("tanh",),
    "tanh_backward": ("tanh_backward",),
    "gated_tanh": ("gated_tanh",),
    "gated_tanh_backward": ("gated_tanh_backward",),
    "dropout": ("dropout",),
    "dropout_backward": ("dropout_backward",),
    "box_iou_rotated": ("box_iou_rotated",),
    "nms_rotated": ("nms_rotated",),
    "matmul": ("matmul",),
    "embedding": ("embedding",),
    "embedding_backward": ("embedding_backward",),
    "batch_norm_train": ("batch_norm_train",),
    "batch_norm_train_backward": ("batch_norm_train_backward",),
    "softmax": ("softmax",),
    "softmax_backward": ("softmax_backward",),
    "log_softmax": ("log_softmax",),
    "log_softmax_backward": ("log_softmax_backward",),
    "cross_entropy": ("cross_entropy",),
    "cross_entropy_backward": ("cross_entropy_backward",),
    "binary_cross_entropy_with_logits": ("binary_cross_entropy_with_logits",),
    "binary_cross_entropy_with_logits_backward": ("binary_cross_entropy_with_logits_backward",),
    "sgd_step": ("sgd_step",),
    "adam_step": ("adam_step",),
}


def check_kernel(backend: str, fn) -> KernelSpec:
    """The catalogue entry of `fn`, after checking that its name and parameters match it."""
    name = getattr(fn, "__name__", repr(fn))
    spec = KERNELS.get(name)
    if spec is None:
        raise TypeError(f"backend {backend!r} registers {name!r}, which is not in the op "
                        f"catalogue (pyconv/backends/_contract.py)")
    params = tuple(inspect.signature(fn).parameters)
    if params != spec.params:
        raise TypeError(f"backend {backend!r}: kernel {name}{params} does not match the "
                        f"catalogue's {name}{spec.params}")
    return spec


def op_coverage(kernels) -> dict[str, bool]:
    """Public op -> whether a backend with these kernels runs it."""
    have = set(kernels)
    return {op: set(needs) <= have for op, needs in OPS.items()}
