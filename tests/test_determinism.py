"""The cpu backend's results do not depend on how many threads computed them: every op gives
the same bits at 1, 2, 3 and 4 threads, and so does a short training run.

Inputs: every case of the conformance table (tests/test_conformance.py) plus larger shapes
that split their work between threads in every way the C++ kernels do (reductions long
enough to be split, images and channels shared out, the algorithm rules that look at the
batch). Each case runs at every thread count in this process (pyconv.set_num_threads), under
each ISA variant this CPU runs, and the results must be identical byte for byte, in float32
and float64.
"""
import zlib

import numpy as np
import pytest
from test_conformance import (CASES, conv, conv_backward, conv_transpose, conv_transpose_backward,
                              lstm, lstm_backward, lstm_cell_backward, matmul, own_copy,
                              rnn_cell, rnn_cell_backward, runnable_isas, cross_entropy,
                              cross_entropy_backward)

import pyconv
from pyconv import ops

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

THREADS = (1, 2, 3, 4)

# Shapes big enough that each thread count splits the work differently.
LARGE_CASES = {
    "conv2d_backward": {
        # Weight gradients: the reduction over (n, ho, wo) is long and C small, so it is cut
        # into pieces (the im2col GEMM, the dot-product form on the phase grid, by channels).
        "grad_w_pointwise_long_reduction": conv_backward((8, 32, 24, 24), (24, 32, 1, 1)),
        # 1x1 on small images: one GEMM over (image, pixel), its reduction cut in chunks.
        "grad_w_pointwise_small_images": conv_backward((64, 138, 4, 4), (128, 138, 1, 1)),
        "grad_w_pointwise_strided_wide": conv_backward((8, 64, 28, 28), (96, 64, 1, 1), stride=2),
        "grad_w_few_output_channels": conv_backward((6, 16, 30, 30), (8, 16, 3, 3), padding=1),
        "grad_w_first_layer": conv_backward((16, 1, 32, 32), (6, 1, 5, 5)),
        "grad_w_by_channels": conv_backward((4, 32, 20, 20), (32, 32, 3, 3), padding=1),
        # By channels: tap tiles x pixel chunks shared out, a thread's run of tiles starting
        # and ending inside a chunk.
        "grad_w_by_channels_strided_chunks": conv_backward((16, 32, 24, 24), (64, 32, 4, 4), stride=2, padding=1),
        # Winograd (243 tiles, 36 positions shared out, 2 chunks of tiles in float32, 3 in float64).
        "grad_w_winograd_chunks": conv_backward((3, 40, 36, 36), (39, 40, 3, 3), padding=1),
        # First layers by channels: tap tiles x pixel chunks shared out.
        "grad_w_by_channels_one_channel": conv_backward((16, 1, 28, 28), (64, 1, 4, 4), stride=2, padding=1),
        "grad_w_by_channels_rgb": conv_backward((8, 3, 32, 32), (64, 3, 3, 3), padding=1),
        # Under 64 output channels and 64 taps: the phase grid, strided and not.
        "grad_w_grid_three_channels": conv_backward((16, 3, 32, 32), (32, 3, 4, 4), stride=2, padding=1),
        "grad_w_grid_small_image": conv_backward((16, 1, 14, 14), (16, 1, 3, 3), padding=1),
        # Few channels, stride 1, many pixels: blocks of rows in chunks (conv/weight_grad_rows.h).
        "grad_w_along_pixels": conv_backward((16, 16, 32, 32), (16, 16, 3, 3), padding=1),
        "grad_w_along_pixels_rgb": conv_backward((16, 3, 32, 32), (64, 3, 3, 3), padding=1),
        "grad_w_along_pixels_odd_width": conv_backward((16, 5, 20, 19), (7, 5, 3, 2), padding=(1, 0), dilation=2),
        # Strided first layers along pixels (a DCGAN discriminator's 1 -> 64, 4x4 stride 2).
        "grad_w_along_pixels_strided": conv_backward((16, 1, 28, 28), (64, 1, 4, 4), stride=2, padding=1),
        # Input gradients through col2im: batches smaller and larger than the team, channels
        # shared out when the batch is small.
        "grad_x_col2im_one_image": conv_backward((1, 32, 20, 20), (64, 32, 3, 3), stride=2, padding=1),
        "grad_x_col2im_batch5": conv_backward((5, 24, 17, 15), (40, 24, 3, 3), stride=2, padding=1),
        "grad_x_col2im_long_reduction": conv_backward((3, 8, 12, 12), (600, 8, 3, 3), stride=2, padding=1),
        # 64+ channels, strided: the channels-last input gradient, batch 3 (smaller than some
        # of the thread counts).
        "grad_x_channels_last_batch3": conv_backward((3, 64, 10, 10), (32, 64, 3, 3), stride=2, padding=1),
        "grad_x_channels_last_batch1": conv_backward((1, 130, 8, 8), (16, 130, 4, 4), stride=2, padding=1),
        "grad_x_channels_last_32_channels": conv_backward((3, 32, 10, 10), (64, 32, 4, 4), stride=2, padding=1),
    },
    "conv_transpose2d": {
        "generator_batch3": conv_transpose((3, 64, 8, 8), (64, 32, 4, 4), stride=2, padding=1),
        "generator_wide_batch2": conv_transpose((2, 100, 4, 4), (100, 128, 4, 4), stride=2, padding=1),
        "few_channels_batch1": conv_transpose((1, 40, 9, 9), (40, 8, 3, 3), stride=2),
        # One image: each panel's vectors of channels cut into parts for the threads.
        "generator_one_image": conv_transpose((1, 64, 4, 4), (64, 32, 4, 4), stride=2, padding=1),
        "generator_one_image_two_panels": conv_transpose((1, 48, 5, 5), (48, 80, 4, 4), stride=2, padding=1),
    },
    "conv_transpose2d_backward": {
        "generator_batch3": conv_transpose_backward((3, 64, 8, 8), (64, 32, 4, 4), stride=2, padding=1),
    },
    "conv2d": {
        "im2col_batch3": conv((3, 16, 23, 21), (70, 16, 3, 3), padding=1),
        "by_channels_batch2": conv((2, 32, 14, 14), (64, 32, 3, 3), padding=1),
        # A VAE encoder's strided layer: blocks of pixels shared out, each stored transposed.
        "by_channels_strided_batch3": conv((3, 32, 16, 16), (72, 32, 4, 4), stride=2, padding=1),
        # Winograd: 192 tiles in 4 blocks shared by the threads.
        "winograd_blocks": conv((3, 32, 30, 29), (40, 32, 3, 3), padding=1),
        # Few tiles (54) cut into equal blocks of whole vectors: 32 and 22.
        "winograd_few_tiles": conv((6, 33, 9, 9), (35, 33, 3, 3), padding=1),
        # By position: the 36 GEMMs shared out.
        "winograd_by_position": conv((1, 256, 13, 13), (256, 256, 3, 3), padding=1, algorithm="winograd"),
        # One image: one block of tiles, so from 2 threads by position, the transforms cut by
        # channels.
        "winograd_one_image": conv((1, 33, 16, 18), (35, 33, 3, 3), padding=1, algorithm="winograd"),
        # One image: its pixels cut into a block per thread.
        "by_channels_one_image": conv((1, 64, 8, 8), (70, 64, 3, 3), padding=1),
        "by_channels_strided_one_image": conv((1, 16, 32, 32), (32, 16, 3, 3), stride=2, padding=1),
    },
    "lstm_backward": {
        # Weight gradients over T * B = 2048 rows: a split reduction. The batch rows shared out
        # (grad_x in the recurrence's product).
        "long_sequence": lstm_backward(64, 32, 24, 40),
        "wide_hidden": lstm_backward(16, 32, 16, 130),
        # Fewer row panels than threads (AVX-512 from 2 threads, AVX2 from 3): the recurrence
        # alone, grad_x by chunks of steps on the other threads.
        "small_batch": lstm_backward(40, 12, 24, 40),
    },
    # The batch rows shared out, and (12 rows) each step's gate columns.
    "lstm": {"wide_hidden": lstm(8, 16, 32, 130), "small_batch": lstm(8, 12, 32, 130)},
    # Matrix-vector and outer products large enough to run on the team (rows or column blocks
    # shared out).
    "matmul": {
        "one_column_long": matmul(256, 6272, 1, trans_b=True),
        "one_row_wide": matmul(1, 256, 6272, trans_a=True),
        "outer_product_wide": matmul(300, 1, 6272),
        # Few rows, B read in place (dense/matmul.h), columns shared out between the threads.
        "few_rows_wide": matmul(64, 700, 1000),
        # A reduction shorter than a vector: blocks of columns and rows shared out.
        "short_reduction": matmul(300, 8, 600, trans_b=True),
        # Dot products of rows, a narrow B copied into rows, the reduction in chunks.
        "dot_rows_narrow_b": matmul(64, 6000, 8),
        # A long reduction in chunks, whichever thread takes each (a dense layer's weight
        # gradient over a batch of 3200).
        "long_reduction": matmul(35, 3200, 128, trans_a=True),
    },
    "lstm_cell_backward": {"batch_512": lstm_cell_backward(512, 64, 48)},
    # Classes on axis 1: blocks of pixels within each image, and rows of 80 classes gathered
    # one by one, both shared out between the threads.
    "cross_entropy": {"axis_1_blocks": cross_entropy((4, 6, 40, 40), weight=True, label_smoothing=0.1, class_axis=1),
                      "axis_1_gathered": cross_entropy((4, 80, 16, 16), class_axis=1)},
    "cross_entropy_backward": {
        "axis_1_blocks": cross_entropy_backward((4, 6, 40, 40), label_smoothing=0.1, class_axis=1),
        "axis_1_gathered": cross_entropy_backward((4, 80, 16, 16), weight=True, class_axis=1)},
    # Products large enough to be shared out between the threads (from 2^23 multiply-adds).
    "rnn_cell": {"wide": rnn_cell(128, 256, 320)},
    "rnn_cell_backward": {"wide": rnn_cell_backward(128, 256, 320, nonlinearity="relu")},
}


def _all_cases(op):
    return {**CASES[op], **LARGE_CASES.get(op, {})}


def _flatten(result):
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in _flatten(r)]
    if isinstance(result, np.ndarray):
        return [result]
    return [] if result is None else [np.asarray(result)]


def differences(results, where):
    """What differs between the first result (1 thread) and the others, as messages."""
    found = []
    first = _flatten(results[0])
    for threads, result in zip(THREADS[1:], results[1:]):
        other = _flatten(result)
        assert len(other) == len(first), where
        for i, (a, b) in enumerate(zip(first, other)):
            assert a.dtype == b.dtype and a.shape == b.shape, f"{where}[{i}]"
            if not np.array_equal(np.atleast_1d(a).view(np.uint8), np.atleast_1d(b).view(np.uint8)):
                diff = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
                found.append(f"{where}, output {i}: 1 thread and {threads} threads differ "
                             f"(largest difference {diff:.3g})")
    return found


@pytest.fixture
def restore_threads():
    saved_threads, saved_isa = pyconv.get_num_threads(), pyconv._C.isa()
    yield
    pyconv.set_num_threads(saved_threads)
    pyconv._C.set_isa(saved_isa)


@pytest.mark.parametrize("isa", runnable_isas())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("op", list(CASES))
def test_same_bits_at_every_thread_count(op, dtype, isa, restore_threads):
    """Each ISA variant on its own: the variants differ among themselves (README)."""
    pyconv._C.set_isa(isa)
    found = []
    for case_id, build in _all_cases(op).items():
        rng = np.random.default_rng(zlib.crc32(f"{op}/{case_id}".encode()))
        args, kwargs = build(rng, dtype)
        results = []
        for threads in THREADS:
            pyconv.set_num_threads(threads)
            results.append(getattr(ops, op)(*map(own_copy, args), **kwargs, backend="cpu"))
        found += differences(results, f"{op}/{case_id}")
    assert not found, "\n".join(found)


def _train_lenet(threads):
    """Three SGD steps of a Trainer on LeNet-5 and random 32x32 images; the parameters after."""
    from pyconv import data
    from pyconv.models import LeNet5
    from pyconv.optim import SGD
    from pyconv.train import Trainer

    pyconv.set_num_threads(threads)
    pyconv.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((96, 1, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 96)
    with pyconv.use_backend("cpu"):
        model = LeNet5()
        trainer = Trainer(model, SGD(model.parameters(), lr=0.05, momentum=0.9), progress=False)
        trainer.fit(data.DataLoader((x, y), batch_size=32, shuffle=True, seed=0), epochs=1)
    return {name: p.data.copy() for name, p in model.named_parameters()}


def test_training_gives_the_same_parameters_at_1_and_2_threads(restore_threads):
    one, two = _train_lenet(1), _train_lenet(2)
    assert one.keys() == two.keys()
    for name in one:
        assert np.array_equal(one[name].view(np.uint8), two[name].view(np.uint8)), (
            f"{name}: differs between 1 and 2 threads "
            f"(largest difference {np.max(np.abs(one[name] - two[name])):.3g})")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gemm_tiles_taken_in_any_order_give_the_same_bits(dtype, restore_threads):
    """The packed GEMM hands its tiles of C to whichever thread asks next, so which thread
    computes which tile changes from call to call (all the more with more threads than cores).
    Each tile runs the whole reduction on one thread in the same blocks, so every call must give
    the bytes of the 1-thread call. The shapes have partial tiles in both directions, K spans
    several reduction blocks, and A is read plain and transposed."""
    rng = np.random.default_rng(11)
    # Large enough to run on the team (kGemmParallelMacs in gemm/driver.h); K = 650 is cut into
    # blocks that a split of the reduction in halves would not reproduce.
    for (m, n, k), trans_a in (((203, 517, 650), False), ((96, 600, 650), True), ((520, 72, 900), False)):
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        pyconv.set_num_threads(1)
        expected = ops.matmul(a, b, trans_a=trans_a, backend="cpu")
        for threads in (2, 3, 4):
            pyconv.set_num_threads(threads)
            for call in range(4):
                got = ops.matmul(a, b, trans_a=trans_a, backend="cpu")
                assert np.array_equal(got.view(np.uint8), expected.view(np.uint8)), (
                    f"{m}x{n}x{k}, call {call} at {threads} threads differs from 1 thread "
                    f"(largest difference {np.max(np.abs(got - expected)):.3g})")
