"""One place per op: argument normalisation, validation and output-shape rules, one module
per op family (conv, pool, lstm, boxes, elementwise,
dense, norm, loss, optim) over a shared vocabulary (core).

Every public op in :mod:`pyconv.ops` calls its spec first; backends receive the checked
arguments (and the geometry computed here) and never validate again. Error messages name the
op, the argument and the shapes involved, so a user can see at once what was wrong.

The rules read only the shapes and dtypes of their array arguments, so each also accepts a
:class:`ShapeDtype` (a shape and a dtype, no data) in place of an array: layers and benchmarks
compute output shapes and geometries that way without allocating anything. Real arrays are
still checked to be NumPy or CuPy arrays, and index arrays for their values.

Geometry conventions shared by every backend:

* ``ConvGeom`` describes a *direct* convolution: input (N, C, H, W), weight (K, C/groups, R, S),
  output (N, K, Ho, Wo). Only the top/left padding (``ph``, ``pw``) enters index arithmetic:
  output (ho, wo) reads input row ``ho*sh - ph + r*dh`` and column ``wo*sw - pw + s*dw``; the
  bottom/right padding is implied by Ho/Wo (so PyTorch's asymmetric ``"same"`` fits).
  conv1d is the conv2d with H = R = 1. A transpose convolution is described by the geometry of
  the direct convolution whose input gradient it is: its output is that convolution's input.
* ``PoolGeom`` describes a pooling window: input (N, C, H, W) -> output (N, C, Ho, Wo).
* An unbatched call (one sample without its batch axis, as PyTorch allows: (C, H, W), (C, L),
  an LSTM's (I,) or (T, I) with (H,) states) is checked as such, so that its errors show the
  shapes given, and described as a batch of one (N = 1 in the geometry).

Ranges. Kernels compute indices and byte offsets in signed 64-bit integers. So every integer
argument lies in (-2**62, 2**62), and every quantity derived from the arguments that a kernel
may compute (padded extent ``H + 2*padding``, dilated kernel span ``dilation*(kernel - 1) + 1``,
the reach of the windows ``(Ho - 1)*stride + span``, output sizes, the window area of average
pooling, and each output's size in bytes) must be below ``2**62``: then a sum of two of them
still fits in an int64. NMS takes at most 2**31 - 1 boxes. Anything beyond is a ValueError
naming the op and the argument, the same on every backend. Large but consistent values stay
valid (a stride of 2**40 with one output position, as PyTorch allows).
"""
from .boxes import (batched_nms, box_iou, box_iou_rotated, diou_nms, matrix_nms, nms, nms_rotated,
                    soft_nms)
from .conv import (_conv_geom, conv1d, conv2d, conv_algorithm, conv_backward, conv_transpose2d,
                   conv_transpose2d_backward)
from .core import (CONV_ALGORITHMS, FLOAT_DTYPES, MAX_BOXES, SIZE_LIMIT, ConvGeom, PoolGeom, ShapeDtype, array_kind,
                   check_array, check_batch_optional, check_float_dtypes, from_dlpack,
                   is_foreign_array, shape_of, without_batch)
from .dense import embedding, embedding_backward, matmul
from .elementwise import leaky_relu, leaky_relu_backward, relu, relu_backward
from .elementwise import (DROPOUT_RESOLUTION, DropoutDraw, dropout, dropout_backward, dropout_draw, elu,
                          elu_backward, gated_tanh, gated_tanh_backward, gated_tanh_output_shape,
                          prelu, prelu_backward, sigmoid, sigmoid_backward, tanh, tanh_backward)
from .norm import batch_norm_train, batch_norm_train_backward
from .lstm import (RNN_NONLINEARITIES, lstm, lstm_backward, lstm_cell, lstm_cell_backward, rnn_cell,
                   rnn_cell_backward)
from .loss import (binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_backward,
                   cross_entropy, cross_entropy_backward, softmax, softmax_backward)
from .optim import adam_step, sgd_step
from .pool import (avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward, max_unpool2d,
                   pool_geom, pool_output_size, windows_touch_input)

__all__ = [
    "FLOAT_DTYPES", "SIZE_LIMIT", "MAX_BOXES", "ConvGeom", "PoolGeom", "ShapeDtype", "array_kind",
    "check_array", "check_batch_optional", "check_float_dtypes", "shape_of", "without_batch",
    "from_dlpack", "is_foreign_array",
    "conv1d", "conv2d", "conv_backward", "conv_transpose2d", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "max_unpool2d",
    "pool_geom", "pool_output_size", "windows_touch_input",
    "lstm_cell", "lstm_cell_backward", "lstm", "lstm_backward", "rnn_cell", "rnn_cell_backward",
    "RNN_NONLINEARITIES", "box_iou", "nms", "batched_nms", "soft_nms", "diou_nms", "matrix_nms", "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "matmul", "embedding", "embedding_backward", "batch_norm_train", "batch_norm_train_backward", "_conv_geom",
    "elu", "elu_backward", "prelu", "prelu_backward", "sigmoid", "sigmoid_backward", "tanh",
    "tanh_backward", "gated_tanh", "gated_tanh_backward", "gated_tanh_output_shape",
    "dropout", "dropout_backward", "dropout_draw", "DropoutDraw", "DROPOUT_RESOLUTION",
    "softmax", "softmax_backward", "cross_entropy", "cross_entropy_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "sgd_step", "adam_step",
]
