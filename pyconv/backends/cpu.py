"""The "cpu" backend: hand-written C++ kernels (csrc/, module pyconv._C).

Run on a thread pool of their own (csrc/common/thread_pool.h), compiled for AVX-512, AVX2+FMA and a generic baseline in one build; the
variant is chosen at run time (``pyconv.info()["isa"]``). This module allocates the outputs
and hands the C++ side contiguous buffers and the geometry from ``pyconv._spec``.
"""
import inspect

import numpy as np

from .. import _C, _spec, tuning
from . import Backend, LstmSaved
from ._contract import KERNELS

tuning.apply_at_import()

backend = Backend("cpu", "numpy", "C++ kernels (pybind11, thread pool, run-time ISA dispatch)")

# Most elementwise kernels only allocate an output and hand it to their _C function after
# their own arguments: they are registered from the _C functions by the helpers below.


def _register(c_function, body):
    """Registers `body` (taking its arguments positionally) as the kernel named like
    `c_function`, with that kernel's parameters in the catalogue."""
    name = c_function.__name__
    body.__name__ = body.__qualname__ = name
    body.__signature__ = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_ONLY) for p in KERNELS[name].params])
    backend.register(body)


def _output_like(argument, c_function):
    """<kernel>(*arguments) of _C.<kernel>: allocates one output like its argument named
    `argument`, fills it with _C.<kernel>(*arguments, output) and returns it."""
    at = KERNELS[c_function.__name__].params.index(argument)

    def kernel(*arguments):
        output = np.empty_like(arguments[at])
        c_function(*arguments, output)
        return output

    return kernel


def _register_output_like(argument, *c_functions):
    for c_function in c_functions:
        _register(c_function, _output_like(argument, c_function))


def _in_place(c_function):
    """<kernel>(*arguments) of _C.<kernel>: _C.<kernel>(*arguments), which updates arrays among
    its arguments in place."""
    def kernel(*arguments):
        c_function(*arguments)

    return kernel


def _register_in_place(*c_functions):
    for c_function in c_functions:
        _register(c_function, _in_place(c_function))


@backend.register
def max_pool2d(x, g, with_indices):
    y = np.empty(g.output_shape, x.dtype)
    idx = np.empty(g.output_shape, np.int64) if with_indices else None
    _C.max_pool2d(x, y, idx, g)
    return y, idx


@backend.register
def conv2d(x, w, b, g):
    y = np.empty(g.output_shape, x.dtype)
    _C.conv2d(x, w, b, y, g)
    return y


@backend.register
def conv2d_grad_input(grad_out, w, g):
    grad_x = np.empty(g.input_shape, grad_out.dtype)
    _C.conv2d_grad_input(grad_out, w, grad_x, g)
    return grad_x


@backend.register
def conv2d_grad_weight(grad_out, x, g):
    grad_w = np.empty(g.weight_shape, x.dtype)
    _C.conv2d_grad_weight(grad_out, x, grad_w, g)
    return grad_w


@backend.register
def conv2d_grad_bias(grad_out):
    grad_b = np.empty(grad_out.shape[1], grad_out.dtype)
    _C.conv2d_grad_bias(grad_out, grad_b)
    return grad_b


@backend.register
def max_pool2d_backward(grad_out, indices, input_shape):
    grad_x = np.empty(input_shape, grad_out.dtype)
    _C.max_pool2d_backward(grad_out, indices, grad_x)
    return grad_x


@backend.register
def avg_pool2d(x, g, count_include_pad, divisor_override):
    y = np.empty(g.output_shape, x.dtype)
    _C.avg_pool2d(x, y, count_include_pad, divisor_override, g)
    return y


@backend.register
def avg_pool2d_backward(grad_out, g, count_include_pad, divisor_override):
    grad_x = np.empty(g.input_shape, grad_out.dtype)
    _C.avg_pool2d_backward(grad_out, grad_x, count_include_pad, divisor_override, g)
    return grad_x


@backend.register
def max_unpool2d(x, indices, output_shape):
    y = np.empty(output_shape, x.dtype)
    _C.max_unpool2d(x, indices, y)
    return y


# The C++ side has the sequence kernels only: a cell is a sequence of one step.


@backend.register
def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save):
    T, B, _ = x.shape
    H = h0.shape[1]
    h_T, c_T = np.empty((B, H), x.dtype), np.empty((B, H), x.dtype)
    if not save:
        out = np.empty((T, B, H), x.dtype)
        _C.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, out, h_T, c_T)
        return out, (h_T, c_T), None
    # The kernel writes h_1..h_T (out) and c_1..c_T straight into the saved states.
    gates = np.empty((T, B, _C.lstm_gate_columns(H, x.dtype)), x.dtype)
    hs, cs = np.empty((T + 1, B, H), x.dtype), np.empty((T + 1, B, H), x.dtype)
    hs[0], cs[0] = h0, c0
    _C.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, hs[1:], h_T, c_T, gates, cs[1:])
    return hs[1:], (h_T, c_T), LstmSaved(backend.name, gates, hs, cs)


@backend.register
def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    out = np.empty((1,) + h.shape, x.dtype)
    c_new = np.empty_like(c)
    _C.lstm(x[None], h, c, w_ih, w_hh, b_ih, b_hh, out, None, c_new)
    return out[0], c_new


def _lstm_grads(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, saved=None):
    grads = [np.empty_like(a) for a in (x, h0, c0, w_ih, w_hh)]
    grad_b = np.empty(w_ih.shape[0], x.dtype) if (b_ih is not None or b_hh is not None) else None
    kept = (saved.gates, saved.hs, saved.cs) if saved is not None else (None, None, None)
    # The gate gradients go over the saved gates where the record's last use allows it.
    lend = saved is not None and saved.last_use and saved.gates.flags.writeable
    _C.lstm_backward(x, grad_out, grad_hT, grad_cT, h0, c0, w_ih, w_hh, b_ih, b_hh, *grads, grad_b,
                     *kept, overwrite_saved_gates=lend)
    return (*grads, *_bias_grads(grad_b, b_ih, b_hh))


def _bias_grads(grad_b, b_ih, b_hh):
    """(grad_b_ih, grad_b_hh) of a cell whose two biases enter the same sum, so they get the
    same gradient: None for a bias that is None, and two arrays where both exist (an in-place
    update of one must not change the other)."""
    grad_b_ih = None if b_ih is None else grad_b
    grad_b_hh = None if b_hh is None else (grad_b if b_ih is None else grad_b.copy())
    return grad_b_ih, grad_b_hh


@backend.register
def lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, saved):
    return _lstm_grads(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, saved)


@backend.register
def lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh):
    gx, *rest = _lstm_grads(grad_h[None], None, grad_c, x[None], h, c, w_ih, w_hh, b_ih, b_hh)
    return (gx[0], *rest)


@backend.register
def rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    y = np.empty(h.shape, x.dtype)
    _C.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity == "tanh", y)
    return y


@backend.register
def rnn_cell_backward(grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    grads = [np.empty_like(a) for a in (x, h, w_ih, w_hh)]
    grad_b = np.empty(w_ih.shape[0], x.dtype) if (b_ih is not None or b_hh is not None) else None
    _C.rnn_cell_backward(grad_h, x, h, h_new, w_ih, w_hh, nonlinearity == "tanh", *grads, grad_b)
    return (*grads, *_bias_grads(grad_b, b_ih, b_hh))


@backend.register
def box_iou(boxes1, boxes2):
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), boxes1.dtype)
    _C.box_iou(boxes1, boxes2, out)
    return out


@backend.register
def nms(boxes, scores, iou_threshold):
    keep = np.empty(boxes.shape[0], np.int64)
    return keep[: _C.nms(boxes, scores, None, iou_threshold, keep)].copy()


@backend.register
def batched_nms(boxes, scores, idxs, iou_threshold):
    keep = np.empty(boxes.shape[0], np.int64)
    return keep[: _C.nms(boxes, scores, idxs, iou_threshold, keep)].copy()


@backend.register
def soft_nms(boxes, scores, sigma, iou_threshold, score_threshold, method):
    keep = np.empty(boxes.shape[0], np.int64)
    kept_scores = np.empty(boxes.shape[0], scores.dtype)
    count = _C.soft_nms(boxes, scores, sigma, iou_threshold, score_threshold,
                        method == "gaussian", keep, kept_scores)
    return keep[:count].copy(), kept_scores[:count].copy()


@backend.register
def diou_nms(boxes, scores, iou_threshold):
    keep = np.empty(boxes.shape[0], np.int64)
    return keep[: _C.diou_nms(boxes, scores, iou_threshold, keep)].copy()


@backend.register
def matrix_nms(boxes, scores, labels, kernel, sigma):
    out = np.empty_like(scores)
    _C.matrix_nms(boxes, scores, labels, kernel == "gaussian", sigma, out)
    return out


@backend.register
def box_iou_rotated(boxes1, boxes2):
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), boxes1.dtype)
    _C.box_iou_rotated(boxes1, boxes2, out)
    return out


@backend.register
def nms_rotated(boxes, scores, iou_threshold):
    keep = np.empty(boxes.shape[0], np.int64)
    return keep[: _C.nms_rotated(boxes, scores, iou_threshold, keep)].copy()


@backend.register
def matmul(a, b, trans_a, trans_b):
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    k = a.shape[0] if trans_a else a.shape[1]
    if k == 0:  # an empty sum: the GEMM would leave its output unwritten
        return np.zeros((m, n), a.dtype)
    y = np.empty((m, n), a.dtype)
    _C.matmul(a, trans_a, b, trans_b, y)
    return y


_NORM_ACTIVATION_CODES = {None: 0, "relu": 1, "leaky_relu": 2}


@backend.register
def batch_norm_train(x, weight, bias, eps, activation, negative_slope):
    y = np.empty_like(x)
    mean, var = np.empty(x.shape[1], x.dtype), np.empty(x.shape[1], x.dtype)
    _C.batch_norm_forward(x, weight, bias, eps, y, mean, var, _NORM_ACTIVATION_CODES[activation], negative_slope)
    return y, mean, var


@backend.register
def batch_norm_train_backward(grad_out, x, mean, invstd, weight, y, activation, negative_slope):
    grad_x = np.empty_like(x)
    grad_weight, grad_bias = np.empty(x.shape[1], x.dtype), np.empty(x.shape[1], x.dtype)
    _C.batch_norm_backward(grad_out, x, mean, invstd, weight, grad_x, grad_weight, grad_bias, y,
                           _NORM_ACTIVATION_CODES[activation], negative_slope)
    return grad_x, grad_weight, grad_bias


@backend.register
def embedding(weight, indices):
    out = np.empty(indices.shape + (weight.shape[1],), weight.dtype)
    _C.embedding(weight, indices, out.reshape(indices.size, weight.shape[1]))
    return out


@backend.register
def embedding_backward(grad_out, indices, num_embeddings, padding_idx):
    dim = grad_out.shape[-1]
    grad_weight = np.empty((num_embeddings, dim), grad_out.dtype)
    _C.embedding_backward(grad_out.reshape(indices.size, dim), indices, padding_idx, grad_weight)
    return grad_weight


# Activations, dropout, softmax, losses and optimiser steps (csrc/elementwise).


@backend.register
def prelu_backward(grad_out, x, weight):
    grad_x, grad_weight = np.empty_like(x), np.empty_like(weight)
    _C.prelu_backward(grad_out, x, weight, grad_x, grad_weight)
    return grad_x, grad_weight


@backend.register
def gated_tanh(x, dim):
    y = np.empty(_spec.gated_tanh_output_shape(x.shape, dim), x.dtype)
    _C.gated_tanh(x, dim, y)
    return y


@backend.register
def gated_tanh_backward(grad_out, x, dim):
    grad_x = np.empty_like(x)
    _C.gated_tanh_backward(grad_out, x, dim, grad_x)
    return grad_x


@backend.register
def dropout(x, keep_threshold, scale, seed):
    y, mask = np.empty_like(x), np.empty(x.shape, np.uint8)
    _C.dropout(x, seed, keep_threshold, scale, y, mask)
    return y, mask


@backend.register
def cross_entropy(x, target, weight, ignore_index, label_smoothing):
    loss, lse = np.empty(target.shape, x.dtype), np.empty(target.shape, x.dtype)
    _C.cross_entropy(x, target, weight, ignore_index, label_smoothing, loss, lse)
    return loss, lse


# Each _C function named here is <kernel>(*arguments, output): the kernel returns an output
# allocated like its argument "x", "y" or "grad_out".
_register_output_like(
    "x", _C.relu, _C.leaky_relu, _C.leaky_relu_backward, _C.elu, _C.elu_backward, _C.prelu,
    _C.sigmoid, _C.tanh, _C.softmax, _C.log_softmax, _C.cross_entropy_backward,
    _C.binary_cross_entropy_with_logits, _C.binary_cross_entropy_with_logits_backward)
_register_output_like(
    "y", _C.relu_backward, _C.sigmoid_backward, _C.tanh_backward, _C.softmax_backward,
    _C.log_softmax_backward)
_register_output_like("grad_out", _C.dropout_backward)
# Optimiser steps: the kernel is the _C function.
_register_in_place(_C.sgd_step, _C.adam_step)
