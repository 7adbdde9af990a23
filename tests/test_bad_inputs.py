"""Malformed calls: each must raise ValueError or TypeError whose message names the argument.
Run through pyconv.ops on the reference backend and on the default backend (validation happens
before dispatch, so a backend never sees a malformed call)."""
import numpy as np
import pytest

from pyconv import ops


def f32(*shape):
    return np.ones(shape, np.float32)


def f64(*shape):
    return np.ones(shape, np.float64)


def i64(*shape):
    return np.zeros(shape, np.int64)


X, W, B = f32(2, 3, 8, 8), f32(4, 3, 3, 3), f32(4)
X1, W1 = f32(2, 3, 10), f32(4, 3, 3)
GO = f32(2, 4, 6, 6)  # grad_out of conv2d(X, W)
XT, WT = f32(2, 3, 4, 4), f32(3, 2, 3, 3)  # conv_transpose2d: output (2, 2, 6, 6)
P = f32(1, 2, 4, 4)  # pooling input; 2x2 pooling gives (1, 2, 2, 2)
PG, PI = f32(1, 2, 2, 2), i64(1, 2, 2, 2)
LX, LH, LC, WIH, WHH, BIH = f32(3, 4), f32(3, 5), f32(3, 5), f32(20, 4), f32(20, 5), f32(20)
SX = f32(6, 3, 4)  # lstm sequence
BOXES, SCORES = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32), np.array([1, 2], np.float32)
ROTATED = np.array([[0, 0, 1, 1, 0], [0, 0, 2, 2, 30]], np.float32)

# op, case id, args, kwargs, exception, substring the message must contain
CASES = [
    # conv2d
    ("conv2d", "x_list", (X.tolist(), W), {}, TypeError, "x"),
    ("conv2d", "w_none", (X, None), {}, TypeError, "w"),
    ("conv2d", "x_rank2", (f32(8, 8), W), {}, ValueError, "conv2d: x must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape (8, 8)"),
    ("conv2d", "x_rank5", (f32(1, 2, 3, 8, 8), W), {}, ValueError, "x must be 3-D (C, H, W) or 4-D"),
    ("conv2d", "unbatched_channel_mismatch", (f32(2, 8, 8), W), {}, ValueError, "x.shape=(2, 8, 8)"),
    ("conv2d", "w_rank5", (X, f32(4, 3, 3, 3, 1)), {}, ValueError, "w must be 4-D"),
    ("conv2d", "channel_mismatch", (X, f32(4, 2, 3, 3)), {}, ValueError, "w.shape"),
    ("conv2d", "groups_not_dividing", (X, f32(4, 1, 3, 3)), dict(groups=2), ValueError, "groups"),
    ("conv2d", "groups_not_dividing_K", (f32(1, 4, 5, 5), f32(3, 2, 3, 3)), dict(groups=2), ValueError, "groups"),
    ("conv2d", "groups_zero", (X, W), dict(groups=0), ValueError, "groups"),
    ("conv2d", "groups_float", (X, W), dict(groups=1.0), TypeError, "groups"),
    ("conv2d", "bias_shape", (X, W, f32(3)), {}, ValueError, "b must have shape"),
    ("conv2d", "bias_rank", (X, W, f32(4, 1)), {}, ValueError, "b must be 1-D"),
    ("conv2d", "bias_list", (X, W, [0.0] * 4), {}, TypeError, "b"),
    ("conv2d", "stride_zero", (X, W), dict(stride=0), ValueError, "stride"),
    ("conv2d", "stride_negative", (X, W), dict(stride=(1, -1)), ValueError, "stride"),
    ("conv2d", "stride_float", (X, W), dict(stride=1.5), TypeError, "stride"),
    ("conv2d", "stride_bool", (X, W), dict(stride=True), TypeError, "stride"),
    ("conv2d", "stride_triple", (X, W), dict(stride=(1, 1, 1)), ValueError, "stride"),
    ("conv2d", "padding_negative", (X, W), dict(padding=-1), ValueError, "padding"),
    ("conv2d", "padding_string", (X, W), dict(padding="full"), ValueError, "padding"),
    ("conv2d", "padding_none", (X, W), dict(padding=None), TypeError, "padding"),
    ("conv2d", "same_with_stride", (X, W), dict(padding="same", stride=2), ValueError, "padding='same'"),
    ("conv2d", "dilation_zero", (X, W), dict(dilation=0), ValueError, "dilation"),
    ("conv2d", "kernel_larger_than_input", (f32(1, 3, 2, 2), W), {}, ValueError, "empty"),
    ("conv2d", "dilated_kernel_too_large", (X, W), dict(dilation=4), ValueError, "dilated kernel"),
    ("conv2d", "empty_batch", (f32(0, 3, 8, 8), W), {}, ValueError, "empty"),
    ("conv2d", "empty_kernel", (X, f32(4, 3, 0, 3)), {}, ValueError, "empty"),
    ("conv2d", "int_dtype", (X.astype(np.int32), W), {}, TypeError, "x must be float32 or float64"),
    ("conv2d", "float16", (X, W.astype(np.float16)), {}, TypeError, "w must be float32 or float64"),
    ("conv2d", "mixed_dtypes", (X, W.astype(np.float64)), {}, TypeError, "dtypes differ"),
    ("conv2d", "mixed_bias_dtype", (X, W, B.astype(np.float64)), {}, TypeError, "dtypes differ"),
    # conv1d
    ("conv1d", "x_rank4", (X, W1), {}, ValueError, "conv1d: x must be 2-D (C, L) or 3-D (N, C, L)"),
    ("conv1d", "x_rank1", (f32(10), W1), {}, ValueError, "x must be 2-D (C, L) or 3-D"),
    ("conv1d", "w_rank4", (X1, W), {}, ValueError, "w must be 3-D"),
    ("conv1d", "stride_pair", (X1, W1), dict(stride=(1, 1)), ValueError, "stride"),
    ("conv1d", "too_short", (f32(1, 3, 2), W1), {}, ValueError, "empty"),
    ("conv1d", "groups", (X1, W1), dict(groups=2), ValueError, "groups"),
    # conv2d_backward / conv1d_backward
    ("conv2d_backward", "grad_out_shape", (f32(2, 4, 5, 6), X, W), {}, ValueError, "grad_out"),
    ("conv2d_backward", "grad_out_dtype", (GO.astype(np.float64), X, W), {}, TypeError, "grad_out"),
    ("conv2d_backward", "grad_out_list", (GO.tolist(), X, W), {}, TypeError, "grad_out"),
    ("conv2d_backward", "grad_out_rank", (f32(4, 6, 6), X, W), {}, ValueError, "grad_out"),
    ("conv2d_backward", "needs_length", (GO, X, W), dict(needs=(True, True)), ValueError, "needs"),
    ("conv2d_backward", "needs_string", (GO, X, W), dict(needs="xwb"), ValueError, "needs"),
    ("conv2d_backward", "needs_not_bools", (GO, X, W), dict(needs=(True, "yes", 1.0)), TypeError, "needs"),
    ("conv2d_backward", "stride_zero", (GO, X, W), dict(stride=0), ValueError, "stride"),
    ("conv2d_backward", "mixed_dtypes", (GO, X, W.astype(np.float64)), {}, TypeError, "dtypes differ"),
    ("conv1d_backward", "grad_out_shape", (f32(2, 4, 9), X1, W1), {}, ValueError, "grad_out"),
    ("conv1d_backward", "x_rank", (f32(2, 4, 8), X, W1), {}, ValueError, "x must be 2-D (C, L) or 3-D"),
    ("conv1d_backward", "batched_grad_out_unbatched_x", (f32(1, 4, 8), X1[0], W1), {}, ValueError, "grad_out must be 2-D"),
    ("conv2d_backward", "batched_grad_out_unbatched_x", (GO, X[0], W), {}, ValueError, "grad_out must be 3-D"),
    ("conv2d_backward", "unbatched_grad_out_batched_x", (GO[0], X, W), {}, ValueError, "grad_out must be 4-D"),
    # conv_transpose2d(_backward)
    ("conv_transpose2d", "w_channels", (XT, f32(2, 2, 3, 3)), {}, ValueError, "w must have x's"),
    ("conv_transpose2d", "groups_not_dividing", (XT, WT), dict(groups=2), ValueError, "groups"),
    ("conv_transpose2d", "output_padding_too_large", (XT, WT), dict(stride=2, output_padding=2), ValueError, "output_padding"),
    ("conv_transpose2d", "output_padding_stride1", (XT, WT), dict(output_padding=1), ValueError, "output_padding"),
    ("conv_transpose2d", "output_padding_negative", (XT, WT), dict(output_padding=-1), ValueError, "output_padding"),
    ("conv_transpose2d", "padding_too_large", (XT, WT), dict(padding=3), ValueError, "padding"),
    ("conv_transpose2d", "padding_same", (XT, WT), dict(padding="same"), ValueError, "padding"),
    ("conv_transpose2d", "bias_shape", (XT, WT, f32(3)), {}, ValueError, "b must have shape"),
    ("conv_transpose2d", "x_rank", (f32(4, 4), WT), {}, ValueError, "conv_transpose2d: x must be 3-D (C, H, W) or 4-D"),
    ("conv_transpose2d", "dilation_zero", (XT, WT), dict(dilation=0), ValueError, "dilation"),
    ("conv_transpose2d", "mixed_dtypes", (XT.astype(np.float64), WT), {}, TypeError, "dtypes differ"),
    ("conv_transpose2d", "int_dtype", (XT.astype(np.int64), WT.astype(np.int64)), {}, TypeError, "x must be float32"),
    ("conv_transpose2d_backward", "grad_out_shape", (f32(2, 2, 5, 6), XT, WT), {}, ValueError, "grad_out"),
    ("conv_transpose2d_backward", "batched_grad_out_unbatched_x", (f32(2, 2, 6, 6), XT[0], WT), {}, ValueError, "grad_out must be 3-D"),
    ("conv_transpose2d_backward", "needs", (f32(2, 2, 6, 6), XT, WT), dict(needs=(True,)), ValueError, "needs"),
    # max_pool2d
    ("max_pool2d", "x_list", (P.tolist(), 2), {}, TypeError, "x"),
    ("max_pool2d", "x_rank2", (f32(4, 4), 2), {}, ValueError, "max_pool2d: x must be 3-D (C, H, W) or 4-D (N, C, H, W)"),
    ("max_pool2d", "kernel_zero", (P, 0), {}, ValueError, "kernel_size"),
    ("max_pool2d", "kernel_none", (P, None), {}, TypeError, "kernel_size"),
    ("max_pool2d", "kernel_float", (P, 2.0), {}, TypeError, "kernel_size"),
    ("max_pool2d", "kernel_triple", (P, (2, 2, 2)), {}, ValueError, "kernel_size"),
    ("max_pool2d", "stride_zero", (P, 2), dict(stride=0), ValueError, "stride"),
    ("max_pool2d", "padding_over_half", (P, 2), dict(padding=2), ValueError, "padding"),
    ("max_pool2d", "padding_negative", (P, 2), dict(padding=-1), ValueError, "padding"),
    ("max_pool2d", "dilation_zero", (P, 2), dict(dilation=0), ValueError, "dilation"),
    ("max_pool2d", "kernel_too_large", (P, 5), {}, ValueError, "too small"),
    ("max_pool2d", "dilated_too_large", (P, 2), dict(dilation=4), ValueError, "too small"),
    ("max_pool2d", "empty", (f32(1, 0, 4, 4), 2), {}, ValueError, "empty"),
    ("max_pool2d", "int_dtype", (P.astype(np.int32), 2), {}, TypeError, "x must be float32"),
    # max_pool2d_backward
    ("max_pool2d_backward", "indices_float", (PG, PG, P.shape), {}, TypeError, "indices"),
    ("max_pool2d_backward", "indices_bool", (PG, PI.astype(bool), P.shape), {}, TypeError, "indices"),
    ("max_pool2d_backward", "indices_shape", (PG, i64(1, 2, 2, 1), P.shape), {}, ValueError, "indices"),
    ("max_pool2d_backward", "indices_out_of_range", (PG, PI + 16, P.shape), {}, ValueError, "indices"),
    ("max_pool2d_backward", "indices_negative", (PG, PI - 1, P.shape), {}, ValueError, "indices"),
    ("max_pool2d_backward", "indices_list", (PG, PI.tolist(), P.shape), {}, TypeError, "indices"),
    ("max_pool2d_backward", "input_shape_length", (PG, PI, (4, 4)), {}, ValueError, "input_shape must be a 3-tuple or 4-tuple"),
    ("max_pool2d_backward", "batched_grad_out_unbatched_shape", (PG, PI, (2, 4, 4)), {}, ValueError, "grad_out must be 3-D"),
    ("max_pool2d_backward", "batched_indices_unbatched_shape", (PG[0], PI, (2, 4, 4)), {}, ValueError, "indices must be 3-D"),
    ("max_pool2d_backward", "input_shape_zero", (PG, PI, (1, 2, 0, 4)), {}, ValueError, "input_shape"),
    ("max_pool2d_backward", "input_shape_float", (PG, PI, (1, 2, 4.0, 4)), {}, TypeError, "input_shape"),
    ("max_pool2d_backward", "input_shape_channels", (PG, PI, (1, 3, 4, 4)), {}, ValueError, "input_shape"),
    ("max_pool2d_backward", "grad_out_int", (PI, PI, P.shape), {}, TypeError, "grad_out"),
    ("max_pool2d_backward", "grad_out_rank", (f32(2, 2, 2), PI, P.shape), {}, ValueError, "grad_out"),
    # avg_pool2d(_backward)
    ("avg_pool2d", "kernel_zero", (P, 0), {}, ValueError, "kernel_size"),
    ("avg_pool2d", "padding_over_half", (P, 3), dict(padding=2), ValueError, "padding"),
    ("avg_pool2d", "divisor_zero", (P, 2), dict(divisor_override=0), ValueError, "divisor_override"),
    ("avg_pool2d", "divisor_float", (P, 2), dict(divisor_override=2.5), TypeError, "divisor_override"),
    ("avg_pool2d", "divisor_bool", (P, 2), dict(divisor_override=True), TypeError, "divisor_override"),
    ("avg_pool2d", "too_small", (f32(1, 1, 2, 2), 3), {}, ValueError, "too small"),
    ("avg_pool2d", "mixed_int", (P.astype(np.int16), 2), {}, TypeError, "x must be float32"),
    ("avg_pool2d_backward", "grad_out_shape", (f32(1, 2, 3, 3), P.shape, 2), {}, ValueError, "grad_out"),
    ("avg_pool2d_backward", "input_shape_length", (PG, (4, 4), 2), {}, ValueError, "input_shape"),
    ("avg_pool2d_backward", "batched_grad_out_unbatched_shape", (PG, (2, 4, 4), 2), {}, ValueError, "grad_out must be 3-D"),
    ("avg_pool2d_backward", "input_shape_array", (PG, np.array(P.shape), 2), {}, ValueError, "input_shape"),
    ("avg_pool2d_backward", "divisor_zero", (PG, P.shape, 2), dict(divisor_override=0), ValueError, "divisor_override"),
    ("avg_pool2d_backward", "grad_out_float16", (PG.astype(np.float16), P.shape, 2), {}, TypeError, "grad_out"),
    # max_unpool2d
    ("max_unpool2d", "indices_shape", (PG, i64(1, 2, 1, 2), 2), {}, ValueError, "indices"),
    ("max_unpool2d", "indices_out_of_range", (PG, PI + 16, 2), {}, ValueError, "indices"),
    ("max_unpool2d", "indices_negative", (PG, PI - 1, 2), {}, ValueError, "indices"),
    ("max_unpool2d", "indices_float", (PG, PG, 2), {}, TypeError, "indices"),
    ("max_unpool2d", "output_size_too_large", (PG, PI, 2), dict(output_size=(6, 6)), ValueError, "output_size"),
    ("max_unpool2d", "output_size_too_small", (PG, PI, 2), dict(output_size=(2, 4)), ValueError, "output_size"),
    ("max_unpool2d", "output_size_length", (PG, PI, 2), dict(output_size=(4,)), ValueError, "output_size"),
    ("max_unpool2d", "output_size_float", (PG, PI, 2), dict(output_size=(4.0, 4)), TypeError, "output_size"),
    ("max_unpool2d", "output_size_int", (PG, PI, 2), dict(output_size=4), ValueError, "output_size"),
    ("max_unpool2d", "kernel_zero", (PG, PI, 0), {}, ValueError, "kernel_size"),
    ("max_unpool2d", "stride_zero", (PG, PI, 2), dict(stride=0), ValueError, "stride"),
    ("max_unpool2d", "x_rank", (f32(2, 2), i64(2, 2), 2), {}, ValueError, "max_unpool2d: x must be 3-D (C, H, W) or 4-D"),
    ("max_unpool2d", "batched_indices_unbatched_x", (PG[0], PI, 2), {}, ValueError, "indices must be 3-D"),
    ("max_unpool2d", "x_int", (PI, PI, 2), {}, TypeError, "x must be float32"),
    # lstm_cell(_backward)
    ("lstm_cell", "x_rank", (f32(1, 3, 4), LH, LC, WIH, WHH), {}, ValueError, "lstm_cell: x must be 1-D (I,) or 2-D (B, I)"),
    ("lstm_cell", "unbatched_x_batched_h", (f32(4), LH, LC, WIH, WHH), {}, ValueError, "h must be 1-D (H,) for an unbatched x"),
    ("lstm_cell", "unbatched_x_batched_c", (f32(4), f32(5), LC, WIH, WHH), {}, ValueError, "c must be 1-D"),
    ("lstm_cell", "unbatched_c_size", (f32(4), f32(5), f32(4), WIH, WHH), {}, ValueError, "h and c disagree"),
    ("lstm_cell", "batched_x_unbatched_h", (LX, f32(5), f32(5), WIH, WHH), {}, ValueError, "h must be 2-D (B, H)"),
    ("lstm_cell", "x_list", (LX.tolist(), LH, LC, WIH, WHH), {}, TypeError, "x"),
    ("lstm_cell", "h_batch", (LX, f32(2, 5), LC, WIH, WHH), {}, ValueError, "h must have shape"),
    ("lstm_cell", "c_shape", (LX, LH, f32(3, 4), WIH, WHH), {}, ValueError, "c must have shape"),
    ("lstm_cell", "w_ih_shape", (LX, LH, LC, f32(20, 3), WHH), {}, ValueError, "w_ih must have shape"),
    ("lstm_cell", "w_ih_not_4h", (LX, LH, LC, f32(16, 4), WHH), {}, ValueError, "w_ih must have shape"),
    ("lstm_cell", "w_hh_shape", (LX, LH, LC, WIH, f32(20, 4)), {}, ValueError, "w_hh must have shape"),
    ("lstm_cell", "b_ih_shape", (LX, LH, LC, WIH, WHH, f32(5)), {}, ValueError, "b_ih must have shape"),
    ("lstm_cell", "b_hh_rank", (LX, LH, LC, WIH, WHH, BIH, f32(20, 1)), {}, ValueError, "b_hh must be 1-D"),
    ("lstm_cell", "mixed_dtypes", (LX, LH, LC, WIH.astype(np.float64), WHH), {}, TypeError, "dtypes differ"),
    ("lstm_cell", "empty_batch", (f32(0, 4), f32(0, 5), f32(0, 5), WIH, WHH), {}, ValueError, "empty"),
    ("lstm_cell_backward", "grad_h_shape", (f32(3, 4), LC, LX, LH, LC, WIH, WHH), {}, ValueError, "grad_h"),
    ("lstm_cell_backward", "grad_c_dtype", (LH, f64(3, 5), LX, LH, LC, WIH, WHH), {}, TypeError, "grad_c"),
    ("lstm_cell_backward", "unbatched_grad_h_shape", (f32(1, 5), None, f32(4), f32(5), f32(5), WIH, WHH), {}, ValueError, r"grad_h must have shape (5,)"),
    ("lstm_cell_backward", "grad_h_list", (LH.tolist(), LC, LX, LH, LC, WIH, WHH), {}, TypeError, "grad_h"),
    # lstm(_backward)
    ("lstm", "x_rank", (f32(4), LH, LC, WIH, WHH), {}, ValueError, "lstm: x must be 2-D (T, I) or 3-D (T, B, I)"),
    ("lstm", "unbatched_x_batched_h0", (f32(6, 4), LH, LC, WIH, WHH), {}, ValueError, "h0 must be 1-D (H,) for an unbatched x"),
    ("lstm", "no_steps", (f32(0, 3, 4), LH, LC, WIH, WHH), {}, ValueError, "time step"),
    ("lstm", "h0_rank3", (SX, f32(1, 3, 5), LC, WIH, WHH), {}, ValueError, "h0"),
    ("lstm", "c0_shape", (SX, LH, f32(3, 6), WIH, WHH), {}, ValueError, "c0"),
    ("lstm", "w_ih_shape", (SX, LH, LC, f32(20, 5), WHH), {}, ValueError, "w_ih"),
    ("lstm", "mixed_dtypes", (SX.astype(np.float64), LH, LC, WIH, WHH), {}, TypeError, "dtypes differ"),
    ("lstm_backward", "grad_out_shape", (f32(5, 3, 5), None, None, SX, LH, LC, WIH, WHH), {}, ValueError, "grad_out"),
    ("lstm_backward", "grad_hT_shape", (None, f32(3, 4), None, SX, LH, LC, WIH, WHH), {}, ValueError, "grad_hT"),
    ("lstm_backward", "unbatched_grad_out_shape", (f32(6, 1, 5), None, None, f32(6, 4), f32(5), f32(5), WIH, WHH), {}, ValueError, r"grad_out must have shape (6, 5)"),
    ("lstm_backward", "unbatched_grad_hT_shape", (None, f32(1, 5), None, f32(6, 4), f32(5), f32(5), WIH, WHH), {}, ValueError, r"grad_hT must have shape (5,)"),
    ("lstm_backward", "grad_cT_dtype", (None, None, f64(3, 5), SX, LH, LC, WIH, WHH), {}, TypeError, "grad_cT"),
    # box_iou / nms / batched_nms
    ("box_iou", "five_columns", (f32(3, 5), BOXES), {}, ValueError, "boxes1"),
    ("box_iou", "rank1", (BOXES, f32(4)), {}, ValueError, "boxes2"),
    ("box_iou", "int_dtype", (BOXES.astype(np.int64), BOXES), {}, TypeError, "boxes1"),
    ("box_iou", "mixed_dtypes", (BOXES, BOXES.astype(np.float64)), {}, TypeError, "dtypes differ"),
    ("box_iou", "list", (BOXES.tolist(), BOXES), {}, TypeError, "boxes1"),
    ("nms", "scores_length", (BOXES, f32(3), 0.5), {}, ValueError, "scores"),
    ("nms", "scores_rank", (BOXES, f32(2, 1), 0.5), {}, ValueError, "scores"),
    ("nms", "scores_dtype", (BOXES, SCORES.astype(np.float64), 0.5), {}, TypeError, "dtypes differ"),
    ("nms", "scores_int", (BOXES, np.array([1, 2]), 0.5), {}, TypeError, "scores"),
    ("nms", "threshold_nan", (BOXES, SCORES, float("nan")), {}, TypeError, "iou_threshold"),
    ("nms", "threshold_string", (BOXES, SCORES, "0.5"), {}, TypeError, "iou_threshold"),
    ("nms", "threshold_none", (BOXES, SCORES, None), {}, TypeError, "iou_threshold"),
    ("nms", "threshold_bool", (BOXES, SCORES, True), {}, TypeError, "iou_threshold"),
    ("nms", "threshold_array", (BOXES, SCORES, np.array([0.5, 0.5])), {}, TypeError, "iou_threshold"),
    ("nms", "boxes_shape", (f32(2, 2), SCORES, 0.5), {}, ValueError, "boxes"),
    ("batched_nms", "idxs_float", (BOXES, SCORES, SCORES, 0.5), {}, TypeError, "idxs"),
    ("batched_nms", "idxs_length", (BOXES, SCORES, i64(3), 0.5), {}, ValueError, "idxs"),
    ("batched_nms", "idxs_rank", (BOXES, SCORES, i64(2, 1), 0.5), {}, ValueError, "idxs"),
    ("batched_nms", "idxs_list", (BOXES, SCORES, [0, 1], 0.5), {}, TypeError, "idxs"),
    ("batched_nms", "threshold_nan", (BOXES, SCORES, i64(2), float("nan")), {}, TypeError, "iou_threshold"),
    ("batched_nms", "idxs_none", (BOXES, SCORES, None, 0.5), {}, TypeError, "idxs"),
    ("batched_nms", "class_agnostic_int", (BOXES, SCORES, i64(2), 0.5), {"class_agnostic": 1}, TypeError, "class_agnostic"),
    # the NMS family
    ("soft_nms", "method", (BOXES, SCORES), {"method": "hard"}, ValueError, "soft_nms: method must be one of"),
    ("soft_nms", "method_none", (BOXES, SCORES), {"method": None}, ValueError, "method"),
    ("soft_nms", "sigma_string", (BOXES, SCORES, "0.5"), {}, TypeError, "sigma"),
    ("soft_nms", "sigma_nan", (BOXES, SCORES, float("nan")), {}, TypeError, "sigma"),
    ("soft_nms", "score_threshold_nan", (BOXES, SCORES), {"score_threshold": float("nan")}, TypeError, "score_threshold"),
    ("soft_nms", "scores_length", (BOXES, f32(3)), {}, ValueError, "scores"),
    ("soft_nms", "boxes_shape", (f32(2, 5), SCORES), {}, ValueError, "boxes"),
    ("soft_nms", "mixed_dtypes", (BOXES, SCORES.astype(np.float64)), {}, TypeError, "dtypes differ"),
    ("diou_nms", "threshold_nan", (BOXES, SCORES, float("nan")), {}, TypeError, "iou_threshold"),
    ("diou_nms", "boxes_rank", (f32(4), SCORES, 0.5), {}, ValueError, "boxes"),
    ("diou_nms", "scores_int", (BOXES, np.array([1, 2]), 0.5), {}, TypeError, "scores"),
    ("matrix_nms", "kernel", (BOXES, SCORES, i64(2)), {"kernel": "Gaussian"}, ValueError, "matrix_nms: kernel must be one of"),
    ("matrix_nms", "labels_float", (BOXES, SCORES, SCORES), {}, TypeError, "labels"),
    ("matrix_nms", "labels_length", (BOXES, SCORES, i64(3)), {}, ValueError, "labels"),
    ("matrix_nms", "labels_none", (BOXES, SCORES, None), {}, TypeError, "labels"),
    ("matrix_nms", "sigma_zero", (BOXES, SCORES, i64(2)), {"sigma": 0}, ValueError, "sigma"),
    ("matrix_nms", "scores_shape", (BOXES, f32(2, 1), i64(2)), {}, ValueError, "scores"),
    ("leaky_relu", "int_dtype", (i64(3),), {}, TypeError, "x must be float32 or float64"),
    ("leaky_relu", "list", ([1.0, -1.0],), {}, TypeError, "x"),
    ("leaky_relu", "slope_nan", (P, float("nan")), {}, TypeError, "negative_slope"),
    ("leaky_relu", "slope_string", (P, "0.1"), {}, TypeError, "negative_slope"),
    ("leaky_relu_backward", "grad_shape", (f32(1, 2, 4, 3), P), {}, ValueError, "grad_out"),
    ("leaky_relu_backward", "grad_dtype", (P.astype(np.float64), P), {}, TypeError, "grad_out"),
    ("leaky_relu_backward", "x_int", (P, P.astype(np.int32)), {}, TypeError, "x"),
    # box_iou_rotated / nms_rotated: (N, 5) boxes
    ("box_iou_rotated", "four_columns", (BOXES, ROTATED), {}, ValueError, "boxes1"),
    ("box_iou_rotated", "rank1", (ROTATED, f32(5)), {}, ValueError, "boxes2"),
    ("box_iou_rotated", "int_dtype", (ROTATED.astype(np.int64), ROTATED), {}, TypeError, "boxes1"),
    ("box_iou_rotated", "mixed_dtypes", (ROTATED, ROTATED.astype(np.float64)), {}, TypeError, "dtypes differ"),
    ("box_iou_rotated", "list", (ROTATED.tolist(), ROTATED), {}, TypeError, "boxes1"),
    ("nms_rotated", "scores_length", (ROTATED, f32(3), 0.5), {}, ValueError, "scores"),
    ("nms_rotated", "scores_dtype", (ROTATED, SCORES.astype(np.float64), 0.5), {}, TypeError, "dtypes differ"),
    ("nms_rotated", "threshold_nan", (ROTATED, SCORES, float("nan")), {}, TypeError, "iou_threshold"),
    ("nms_rotated", "threshold_string", (ROTATED, SCORES, "0.5"), {}, TypeError, "iou_threshold"),
    ("nms_rotated", "boxes_shape", (BOXES, SCORES, 0.5), {}, ValueError, "boxes"),

    ("matmul", "inner_mismatch", (f32(2, 3), f32(4, 5)), {}, ValueError, "inner sizes differ"),
    ("matmul", "inner_mismatch_transposed", (f32(2, 3), f32(4, 3)), dict(trans_a=True, trans_b=True), ValueError,
     "a (transposed) of shape (2, 3)"),
    ("matmul", "a_rank3", (f32(1, 2, 3), f32(3, 4)), {}, ValueError, "a must be 2-D"),
    ("matmul", "b_vector", (f32(2, 3), f32(3)), {}, ValueError, "b must be 2-D"),
    ("matmul", "dtypes_differ", (f32(2, 3), f64(3, 4)), {}, TypeError, "dtypes differ"),
    ("matmul", "int_dtype", (i64(2, 3), i64(3, 4)), {}, TypeError, "a must be float32 or float64"),
    ("matmul", "b_list", (f32(2, 3), [[1.0]] * 3), {}, TypeError, "b"),
    ("batch_norm_train", "x_vector", (f32(5),), {}, ValueError, "x must be at least 2-D"),
    ("batch_norm_train", "one_value_per_channel", (f32(1, 3),), {}, ValueError, "more than one value per channel"),
    ("batch_norm_train", "weight_shape", (P, f32(3)), {}, ValueError, "weight must have shape (2,)"),
    ("batch_norm_train", "bias_dtype", (P, None, f64(2)), {}, TypeError, "bias"),
    ("batch_norm_train", "x_int", (i64(2, 3),), {}, TypeError, "x must be float32 or float64"),
    ("batch_norm_train", "eps_negative", (P,), dict(eps=-1e-5), ValueError, "eps"),
    ("batch_norm_train", "eps_string", (P,), dict(eps="1e-5"), TypeError, "eps"),
    ("batch_norm_train_backward", "grad_shape", (f32(1, 2, 4, 3), P, f32(2), f32(2)), {}, ValueError, "grad_out"),
    ("batch_norm_train_backward", "mean_shape", (P, P, f32(3), f32(2)), {}, ValueError, "mean must have shape (2,)"),
    ("batch_norm_train_backward", "invstd_none", (P, P, f32(2), None), {}, TypeError, "invstd"),
    ("batch_norm_train_backward", "weight_dtype", (P, P, f32(2), f32(2), f64(2)), {}, TypeError, "weight"),
    ("matmul", "flag_int", (f32(2, 3), f32(3, 4)), dict(trans_a=0), TypeError, "trans_a must be a bool"),
    ("softmax", "scalar", (f32(),), {}, ValueError, "x must have a class axis"),
    ("softmax", "int_dtype", (i64(2, 3),), {}, TypeError, "x must be float32 or float64"),
    ("softmax", "list", ([1.0, 2.0],), {}, TypeError, "x"),
    ("softmax_backward", "grad_shape", (f32(2, 4), f32(2, 3)), {}, ValueError, "grad_out"),
    ("softmax_backward", "grad_dtype", (f64(2, 3), f32(2, 3)), {}, TypeError, "grad_out"),
    ("log_softmax", "scalar", (f32(),), {}, ValueError, "x must have a class axis"),
    ("log_softmax", "int_dtype", (i64(2, 3),), {}, TypeError, "x must be float32 or float64"),
    ("log_softmax_backward", "grad_shape", (f32(3, 3), f32(2, 3)), {}, ValueError, "grad_out"),
    ("log_softmax_backward", "y_int", (f32(2, 3), i64(2, 3)), {}, TypeError, "y must be float32"),
    ("cross_entropy", "target_float", (f32(2, 3), f32(2)), {}, TypeError, "target must be an integer array"),
    ("cross_entropy", "target_shape", (f32(2, 3), i64(3)), {}, ValueError, "target must have shape (2,)"),
    ("cross_entropy", "target_class_too_big", (f32(2, 3), np.array([0, 3])), {}, ValueError, "target classes must lie in [0, 3)"),
    ("cross_entropy", "target_negative", (f32(2, 3), np.array([-1, 0])), {}, ValueError, "target classes"),
    ("cross_entropy", "no_classes", (f32(2, 0), i64(2)), {}, ValueError, "at least one class"),
    ("cross_entropy", "weight_shape", (f32(2, 3), i64(2), f32(2)), {}, ValueError, "weight must have shape (3,)"),
    ("cross_entropy", "weight_dtype", (f32(2, 3), i64(2), f64(3)), {}, TypeError, "weight"),
    ("cross_entropy", "smoothing_above_one", (f32(2, 3), i64(2)), dict(label_smoothing=1.5), ValueError, "label_smoothing"),
    ("cross_entropy", "smoothing_nan", (f32(2, 3), i64(2)), dict(label_smoothing=float("nan")), TypeError, "label_smoothing"),
    ("cross_entropy", "ignore_index_float", (f32(2, 3), i64(2)), dict(ignore_index=1.5), TypeError, "ignore_index"),
    ("cross_entropy_backward", "lse_shape", (f32(2), f32(2, 3), i64(2), f32(3)), {}, ValueError, "lse must have shape (2,)"),
    ("cross_entropy_backward", "grad_loss_shape", (f32(2, 1), f32(2, 3), i64(2), f32(2)), {}, ValueError, "grad_loss"),
    ("cross_entropy_backward", "lse_dtype", (f32(2), f32(2, 3), i64(2), f64(2)), {}, TypeError, "lse"),
    ("cross_entropy_backward", "target_class_too_big", (f32(2), f32(2, 3), np.array([5, 0]), f32(2)), {}, ValueError, "target classes"),
    ("binary_cross_entropy_with_logits", "target_shape", (f32(2, 3), f32(3, 2)), {}, ValueError, "target must have x's shape"),
    ("binary_cross_entropy_with_logits", "target_int", (f32(2, 3), i64(2, 3)), {}, TypeError, "target must be float32"),
    ("binary_cross_entropy_with_logits", "pos_weight_shape", (f32(2, 3), f32(2, 3), f32(2)), {}, ValueError, "pos_weight must have shape (3,)"),
    ("binary_cross_entropy_with_logits", "scalar", (f32(), f32()), {}, ValueError, "x must have a class axis"),
    ("binary_cross_entropy_with_logits_backward", "grad_shape", (f32(2, 2), f32(2, 3), f32(2, 3)), {}, ValueError, "grad_out"),
    ("binary_cross_entropy_with_logits_backward", "pos_weight_dtype", (f32(2, 3), f32(2, 3), f32(2, 3), f64(3)), {}, TypeError, "pos_weight"),
    ("sgd_step", "params_not_a_list", (f32(3), [f32(3)]), {}, TypeError, "params must be a list"),
    ("sgd_step", "lengths_differ", ([f32(3)], [f32(3), f32(3)]), {}, ValueError, "grads holds 2 arrays"),
    ("sgd_step", "grad_shape", ([f32(3)], [f32(4)]), {}, ValueError, "grads[0] has shape (4,)"),
    ("sgd_step", "grad_dtype", ([f32(3)], [f64(3)]), {}, TypeError, "grads[0]"),
    ("sgd_step", "param_read_only", ([np.broadcast_to(f32(1), (3,))], [f32(3)]), {}, ValueError, "params[0] must be a C-contiguous writable array"),
    ("sgd_step", "param_strided", ([f32(6)[::2]], [f32(3)]), {}, ValueError, "params[0] must be a C-contiguous"),
    ("sgd_step", "momentum_without_buffers", ([f32(3)], [f32(3)]), dict(momentum=0.9), TypeError, "momentum_buffers"),
    ("sgd_step", "negative_lr", ([f32(3)], [f32(3)]), dict(lr=-1.0), ValueError, "lr must be finite and >= 0"),
    ("sgd_step", "nesterov_without_momentum", ([f32(3)], [f32(3)]), dict(nesterov=True), ValueError, "nesterov"),
    ("sgd_step", "param_int", ([i64(3)], [i64(3)]), {}, TypeError, "params[0] must be float32 or float64"),
    ("adam_step", "step_zero", ([f32(3)], [f32(3)], [f32(3)], [f32(3)], 0), {}, ValueError, "step counts from 1"),
    ("adam_step", "step_float", ([f32(3)], [f32(3)], [f32(3)], [f32(3)], 1.5), {}, TypeError, "step must be an integer"),
    ("adam_step", "beta_one", ([f32(3)], [f32(3)], [f32(3)], [f32(3)], 1), dict(beta2=1.0), ValueError, "beta2"),
    ("adam_step", "state_shape", ([f32(3)], [f32(3)], [f32(2)], [f32(3)], 1), {}, ValueError, "exp_avgs[0] has shape (2,)"),
    ("adam_step", "state_dtype", ([f32(3)], [f32(3)], [f32(3)], [f64(3)], 1), {}, TypeError, "exp_avg_sqs[0]"),
    ("adam_step", "eps_negative", ([f32(3)], [f32(3)], [f32(3)], [f32(3)], 1), dict(eps=-1.0), ValueError, "eps"),
]

BACKENDS = ["reference", None]  # None: the default backend ("cpu" where it is built)


@pytest.mark.parametrize("backend", BACKENDS, ids=["reference", "default"])
@pytest.mark.parametrize("op, args, kwargs, error, message",
                         [pytest.param(op, a, k, e, m, id=f"{op}-{cid}") for op, cid, a, k, e, m in CASES])
def test_malformed_call_raises(op, args, kwargs, error, message, backend):
    with pytest.raises(error) as info:
        getattr(ops, op)(*args, **kwargs, backend=backend)
    assert type(info.value) in (ValueError, TypeError)
    assert message in str(info.value)


def test_every_op_has_bad_input_cases():
    assert {op for op, *_ in CASES} == set(ops.__all__)


def test_inputs_are_not_modified():
    """A failed call leaves its arguments alone, and so does a successful one."""
    x, w = X.copy(), W.copy()
    ops.conv2d(x, w, backend="reference")
    with pytest.raises(ValueError):
        ops.conv2d(x, w, stride=0, backend="reference")
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(w, W)
