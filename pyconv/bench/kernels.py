"""The kernel cases: layers of common networks (LeNet, VGG, DCGAN), LSTMs and detector-like NMS
inputs, each against PyTorch or OpenCV where they have it; --quick takes a small subset."""
from __future__ import annotations

import math

import numpy as np

from pyconv import _spec, ops
from pyconv.backends import KERNELS
from .measure import Case, _onnxruntime, _torch, ort_session


def _f32(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _torch_baseline(make):
    return {"torch": lambda inputs: make(inputs) if _torch() is not None else None}


def _onnxruntime_baseline(make):
    """A single-node ONNX graph run by ONNX Runtime's CPU provider on pyconv's thread count."""
    return {"onnxruntime": lambda inputs: make(inputs) if _onnxruntime() is not None else None}


def _conv_case(name, N, C, H, W, K, R, stride=1, pad=0, groups=1, quick=False, weight_scale=0.1):
    def make(rng):
        return {"x": _f32(rng, N, C, H, W), "w": _f32(rng, K, C // groups, R, R) * weight_scale,
                "b": _f32(rng, K)}

    def run(a, be):
        return ops.conv2d(a["x"], a["w"], a["b"], stride, pad, 1, groups, backend=be)

    def torch_fn(a):
        torch = _torch()
        x, w, b = (torch.from_numpy(a[k]) for k in "xwb")
        return lambda: torch.nn.functional.conv2d(x, w, b, stride, pad, 1, groups)

    def onnxruntime_fn(a):
        from onnx import TensorProto, helper, numpy_helper

        import pyconv

        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=[pad] * 4,
                                group=groups)
        graph = helper.make_graph([node], "conv2d",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, a["x"].shape)],
                                  [helper.make_empty_tensor_value_info("y")],
                                  initializer=[numpy_helper.from_array(a[k], k) for k in "wb"])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        session, feeds = ort_session(model, pyconv.get_num_threads()), {"x": a["x"]}
        return lambda: session.run(None, feeds)

    g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32),
                     _spec.ShapeDtype((K, C // groups, R, R), np.float32),
                     None, stride, pad, 1, groups)
    baselines = {**_torch_baseline(torch_fn), **_onnxruntime_baseline(onnxruntime_fn)}
    return Case("conv2d", name, ("conv2d",), make, run, g.flops, "flop", baselines, quick=quick,
                algorithm=lambda be: _cpu_conv2d_algorithm(be, g))


def _cpu_conv2d_algorithm(backend, g):
    """The algorithm the cpu backend's conv2d runs for g (float32), None for other backends."""
    if backend != "cpu":
        return None
    from pyconv import _C
    return _C.conv2d_algorithm(g, np.dtype(np.float32))


def _conv_backward_case(name, N, C, H, W, K, R, pad, quick=False, stride=1, groups=1):
    Cg = C // groups

    def make(rng):
        g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32),
                         _spec.ShapeDtype((K, Cg, R, R), np.float32), None, stride, pad, 1, groups)
        return {"x": _f32(rng, N, C, H, W), "w": _f32(rng, K, Cg, R, R) * 0.1,
                "gy": _f32(rng, *g.output_shape)}

    def run(a, be):
        return ops.conv2d_backward(a["gy"], a["x"], a["w"], stride, pad, 1, groups, backend=be)

    def torch_fn(a):
        torch = _torch()
        x, w, gy = (torch.from_numpy(a[k]) for k in ("x", "w", "gy"))
        return lambda: torch.ops.aten.convolution_backward(
            gy, x, w, [K], [stride, stride], [pad, pad], [1, 1], False, [0, 0], groups, [True, True, True])

    g = _spec.conv2d(_spec.ShapeDtype((N, C, H, W), np.float32),
                     _spec.ShapeDtype((K, Cg, R, R), np.float32), None, stride, pad, 1, groups)
    kernels = ("conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias")
    return Case("conv2d_backward", name, kernels, make, run, 2 * g.flops, "flop", _torch_baseline(torch_fn), quick=quick)


def _conv_transpose_case(name, N, C, H, W, K, R, stride, pad, quick=False):
    def make(rng):
        return {"x": _f32(rng, N, C, H, W), "w": _f32(rng, C, K, R, R) * 0.1}

    def run(a, be):
        return ops.conv_transpose2d(a["x"], a["w"], None, stride, pad, backend=be)

    def torch_fn(a):
        torch = _torch()
        x, w = torch.from_numpy(a["x"]), torch.from_numpy(a["w"])
        return lambda: torch.nn.functional.conv_transpose2d(x, w, None, stride, pad)

    g = _spec.conv_transpose2d(_spec.ShapeDtype((N, C, H, W), np.float32),
                               _spec.ShapeDtype((C, K, R, R), np.float32),
                               None, stride, pad, 0, 1, 1)
    return Case("conv_transpose2d", name, ("conv2d_grad_input",), make, run, g.flops, "flop",
                _torch_baseline(torch_fn), quick=quick)


def _pool_case(name, kind, k, s, p, shape, quick=False):
    N, C, H, W = shape

    def make(rng):
        return {"x": _f32(rng, *shape)}

    if kind == "max":
        def run(a, be):
            return ops.max_pool2d(a["x"], k, s, p, return_indices=True, backend=be)

        def torch_fn(a):
            torch = _torch()
            x = torch.from_numpy(a["x"])
            return lambda: torch.nn.functional.max_pool2d(x, k, s, p, return_indices=True)
    else:
        def run(a, be):
            return ops.avg_pool2d(a["x"], k, s, p, backend=be)

        def torch_fn(a):
            torch = _torch()
            x = torch.from_numpy(a["x"])
            return lambda: torch.nn.functional.avg_pool2d(x, k, s, p)

    g = _spec.pool_geom("bench", shape, k, s, p, 1, False)
    out = N * C * g.Ho * g.Wo
    moved = 4 * (N * C * H * W + out) + (8 * out if kind == "max" else 0)
    return Case(f"{kind}_pool2d", name, (f"{kind}_pool2d",), make, run, moved, "byte",
                _torch_baseline(torch_fn), quick=quick)


def _leaky_relu_case(name, shape, backward, quick=False):
    """LeakyReLU forward (reads x, writes y) or backward (reads grad and x, writes grad_x)."""
    slope = 0.2

    def make(rng):
        return {"x": _f32(rng, *shape), "g": _f32(rng, *shape)}

    def run(a, be):
        if backward:
            return ops.leaky_relu_backward(a["g"], a["x"], slope, backend=be)
        return ops.leaky_relu(a["x"], slope, backend=be)

    def torch_fn(a):
        torch = _torch()
        x, g = torch.from_numpy(a["x"]), torch.from_numpy(a["g"])
        if backward:
            return lambda: torch.ops.aten.leaky_relu_backward(g, x, slope, False)
        return lambda: torch.nn.functional.leaky_relu(x, slope)

    op = "leaky_relu_backward" if backward else "leaky_relu"
    moved = 4 * math.prod(shape) * (3 if backward else 2)
    return Case(op, name, (op,), make, run, moved, "byte", _torch_baseline(torch_fn), quick=quick)


def _fused_activation_case(op, shape, quick=False):
    """A fused activation or dropout, forward or backward (op ends in "_backward"), at a
    layer's activation size, against PyTorch's kernel for the same pass."""
    channels = shape[1]

    def make(rng):
        x = _f32(rng, *shape)
        _, mask = ops.dropout(x, 0.5, 1, backend="reference")
        return {"x": x, "g": _f32(rng, *shape), "w": np.full(channels, 0.25, np.float32),
                "y": getattr(ops, op.removesuffix("_backward"))(x, backend="reference")
                if op.startswith(("relu", "sigmoid", "tanh")) else x, "mask": mask}

    def run(a, be):
        x, g = a["x"], a["g"]
        return {
            "relu": lambda: ops.relu(x, backend=be),
            "relu_backward": lambda: ops.relu_backward(g, a["y"], backend=be),
            "elu": lambda: ops.elu(x, 1.0, backend=be),
            "elu_backward": lambda: ops.elu_backward(g, x, 1.0, backend=be),
            "prelu": lambda: ops.prelu(x, a["w"], backend=be),
            "prelu_backward": lambda: ops.prelu_backward(g, x, a["w"], backend=be),
            "sigmoid": lambda: ops.sigmoid(x, backend=be),
            "sigmoid_backward": lambda: ops.sigmoid_backward(g, a["y"], backend=be),
            "tanh": lambda: ops.tanh(x, backend=be),
            "tanh_backward": lambda: ops.tanh_backward(g, a["y"], backend=be),
            "dropout": lambda: ops.dropout(x, 0.5, 1, backend=be),
            "dropout_backward": lambda: ops.dropout_backward(g, a["mask"], 0.5, backend=be),
        }[op]()

    def torch_fn(a):
        torch = _torch()
        x, g, y = torch.from_numpy(a["x"]), torch.from_numpy(a["g"]), torch.from_numpy(a["y"])
        w, mask = torch.from_numpy(a["w"]), torch.from_numpy(a["mask"].astype(bool))
        return {
            "relu": lambda: torch.relu(x),
            "relu_backward": lambda: torch.ops.aten.threshold_backward(g, y, 0),
            "elu": lambda: torch.nn.functional.elu(x),
            "elu_backward": lambda: torch.ops.aten.elu_backward(g, 1.0, 1, 1, False, x),
            "prelu": lambda: torch.nn.functional.prelu(x, w),
            "prelu_backward": lambda: torch.ops.aten._prelu_kernel_backward(
                g, x, w.reshape((1, channels) + (1,) * (len(shape) - 2))),
            "sigmoid": lambda: torch.sigmoid(x),
            "sigmoid_backward": lambda: torch.ops.aten.sigmoid_backward(g, y),
            "tanh": lambda: torch.tanh(x),
            "tanh_backward": lambda: torch.ops.aten.tanh_backward(g, y),
            "dropout": lambda: torch.native_dropout(x, 0.5, True),
            "dropout_backward": lambda: torch.ops.aten.native_dropout_backward(g, mask, 2.0),
        }[op]

    arrays_read = 2 if op.endswith("_backward") else 1
    moved = 4 * math.prod(shape) * (arrays_read + 1) + (math.prod(shape) if "dropout" in op else 0)
    name = "x".join(map(str, shape))
    return Case(op, name, (op,), make, run, moved, "byte", _torch_baseline(torch_fn), quick=quick)


_FUSED_OPS = ("relu", "elu", "prelu", "sigmoid", "tanh", "dropout")


def _gated_tanh_case(shape, backward, quick=False):
    """The gated activation tanh(a) * sigmoid(b) of x = [a, b] (channel halves), forward or
    backward, against PyTorch's tanh and sigmoid on the halves and their backward kernels
    (what its autograd runs for the expression)."""
    half = shape[1] // 2

    def make(rng):
        return {"x": _f32(rng, *shape), "g": _f32(rng, shape[0], half, *shape[2:])}

    def run(a, be):
        if backward:
            return ops.gated_tanh_backward(a["g"], a["x"], backend=be)
        return ops.gated_tanh(a["x"], backend=be)

    def torch_fn(a):
        torch = _torch()
        x, g = torch.from_numpy(a["x"]), torch.from_numpy(a["g"])
        t, s = torch.tanh(x[:, :half]), torch.sigmoid(x[:, half:])
        if backward:
            return lambda: torch.cat((torch.ops.aten.tanh_backward(g * s, t),
                                      torch.ops.aten.sigmoid_backward(g * t, s)), 1)
        return lambda: torch.tanh(x[:, :half]) * torch.sigmoid(x[:, half:])

    op = "gated_tanh_backward" if backward else "gated_tanh"
    moved = 4 * math.prod(shape) // 2 * (5 if backward else 3)
    return Case(op, "x".join(map(str, shape)), (op,), make, run, moved, "byte",
                _torch_baseline(torch_fn), quick=quick)


def _matmul_case(name, m, k, n, trans_a=False, trans_b=False, quick=False):
    """op(a) (m, k) @ op(b) (k, n), the transposed operands as stored (a dense layer's x W^T
    is trans_b, its weight gradient g^T x trans_a)."""
    def make(rng):
        return {"a": _f32(rng, *((k, m) if trans_a else (m, k))),
                "b": _f32(rng, *((n, k) if trans_b else (k, n)))}

    def run(a, be):
        return ops.matmul(a["a"], a["b"], trans_a, trans_b, backend=be)

    def torch_fn(a):
        torch = _torch()
        ta, tb = torch.from_numpy(a["a"]), torch.from_numpy(a["b"])
        return lambda: torch.matmul(ta.T if trans_a else ta, tb.T if trans_b else tb)

    return Case("matmul", name, ("matmul",), make, run, 2 * m * k * n, "flop",
                _torch_baseline(torch_fn), quick=quick)


def _embedding_case(name, rows, dim, count, backward, quick=False):
    """An embedding's lookup of `count` indices into a (rows, dim) table, or its backward (the
    gradient rows summed into the table), against PyTorch's embedding and
    embedding_dense_backward."""
    def make(rng):
        return {"w": _f32(rng, rows, dim), "i": rng.integers(0, rows, count), "g": _f32(rng, count, dim)}

    def run(a, be):
        if backward:
            return ops.embedding_backward(a["g"], a["i"], rows, backend=be)
        return ops.embedding(a["w"], a["i"], backend=be)

    def torch_fn(a):
        torch = _torch()
        w, i, g = (torch.from_numpy(a[k]) for k in ("w", "i", "g"))
        if backward:
            return lambda: torch.ops.aten.embedding_dense_backward(g, i, rows, -1, False)
        return lambda: torch.nn.functional.embedding(i, w)

    op = "embedding_backward" if backward else "embedding"
    moved = 4 * count * dim * 2 + 8 * count  # rows read and written, indices read
    return Case(op, name, (op,), make, run, moved, "byte", _torch_baseline(torch_fn), quick=quick)


def _batch_norm_case(name, shape, backward, quick=False, slope=None):
    """Batch normalisation with batch statistics, forward or backward, against PyTorch's
    native_batch_norm (training) and its backward; with `slope`, a LeakyReLU after it (fused in
    pyconv; torch's leaky_relu and its backward run after / before the batch norm's)."""
    C, eps = shape[1], 1e-5
    act = dict(activation="leaky_relu", negative_slope=slope) if slope is not None else {}

    def make(rng):
        x = _f32(rng, *shape)
        w, b = _f32(rng, C), _f32(rng, C)
        y, mean, var = ops.batch_norm_train(x, w, b, eps, **act, backend="reference")
        return {"x": x, "g": _f32(rng, *shape), "w": w, "b": b, "mean": mean, "y": y,
                "invstd": (1 / np.sqrt(var + eps)).astype(np.float32)}

    def run(a, be):
        if backward:
            y = {"y": a["y"]} if act else {}
            return ops.batch_norm_train_backward(a["g"], a["x"], a["mean"], a["invstd"], a["w"], **y, **act,
                                                 backend=be)
        return ops.batch_norm_train(a["x"], a["w"], a["b"], eps, **act, backend=be)

    def torch_fn(a):
        torch = _torch()
        x, g, w, b, y = (torch.from_numpy(a[k]) for k in ("x", "g", "w", "b", "y"))
        mean, invstd = torch.from_numpy(a["mean"]), torch.from_numpy(a["invstd"])
        F = torch.ops.aten
        if backward:
            def through(g):
                return g if slope is None else F.leaky_relu_backward(g, y, slope, False)
            return lambda: F.native_batch_norm_backward(
                through(g), x, w, None, None, mean, invstd, True, eps, [True, True, True])
        if slope is None:
            return lambda: F.native_batch_norm(x, w, b, None, None, True, 0.1, eps)
        return lambda: F.leaky_relu(F.native_batch_norm(x, w, b, None, None, True, 0.1, eps)[0], slope)

    op = "batch_norm_train_backward" if backward else "batch_norm_train"
    if slope is not None:
        name += f" + LeakyReLU({slope})"
    # x (and grad, and y with an activation's backward) read, the result written
    moved = 4 * math.prod(shape) * ((4 if act else 3) if backward else 2)
    return Case(op, name, (op,), make, run, moved, "byte", _torch_baseline(torch_fn), quick=quick)


def _class_rows_case(op, name, shape, quick=False, images=None):
    """A loss-family kernel (softmax, log_softmax, the fused cross-entropy, binary
    cross-entropy of logits, forward or backward) over rows of classes, against the torch
    function or aten backward computing the same thing (reduction="none"). images=(N, H, W):
    the rows are the pixels of N images of H x W, and both libraries' cross-entropies get them
    the way a segmentation network hands them over, classes on axis 1 of an (N, C, H, W)
    array."""
    def make(rng):
        x = _f32(rng, *shape)
        a = {"x": x, "g": _f32(rng, *shape), "g_rows": _f32(rng, shape[0]),
             "t": rng.integers(0, shape[1], shape[0]),
             "t01": (rng.random(shape) < 0.5).astype(np.float32)}
        a["softmax"] = ops.softmax(x)
        a["log_softmax"] = ops.log_softmax(x)
        a["lse"] = ops.cross_entropy(x, a["t"])[1]
        if images is not None:
            n, h, w = images
            a["x_img"] = np.ascontiguousarray(x.reshape(n, h, w, -1).transpose(0, 3, 1, 2))
            a["t_img"], a["g_img"], a["lse_img"] = (a[k].reshape(n, h, w) for k in ("t", "g_rows", "lse"))
        return a

    def run(a, be):
        x, g = a["x"], a["g"]
        if images is not None and op == "cross_entropy":
            return ops.cross_entropy(a["x_img"], a["t_img"], class_axis=1, backend=be)
        if images is not None and op == "cross_entropy_backward":
            return ops.cross_entropy_backward(a["g_img"], a["x_img"], a["t_img"], a["lse_img"],
                                              class_axis=1, backend=be)
        return {
            "softmax": lambda: ops.softmax(x, backend=be),
            "softmax_backward": lambda: ops.softmax_backward(g, a["softmax"], backend=be),
            "log_softmax": lambda: ops.log_softmax(x, backend=be),
            "log_softmax_backward": lambda: ops.log_softmax_backward(g, a["log_softmax"], backend=be),
            "cross_entropy": lambda: ops.cross_entropy(x, a["t"], backend=be),
            "cross_entropy_backward": lambda: ops.cross_entropy_backward(
                a["g_rows"], x, a["t"], a["lse"], backend=be),
            "binary_cross_entropy_with_logits": lambda: ops.binary_cross_entropy_with_logits(
                x, a["t01"], backend=be),
            "binary_cross_entropy_with_logits_backward":
                lambda: ops.binary_cross_entropy_with_logits_backward(g, x, a["t01"], backend=be),
        }[op]()

    def torch_fn(a):
        torch = _torch()
        x, g, t, t01 = (torch.from_numpy(a[k]) for k in ("x", "g", "t", "t01"))
        g_rows, y, log_y = (torch.from_numpy(a[k]) for k in ("g_rows", "softmax", "log_softmax"))
        F = torch.nn.functional
        # PyTorch's cross-entropy backward, as its autograd runs it for reduction="none": the
        # NLL's backward (a zero gradient with -g at each target), then the log-softmax's, from
        # the log-softmax the forward saved. total_weight is unused without a reduction.
        unused_total_weight = torch.tensor(0.0)
        if images is not None and op.startswith("cross_entropy"):
            n, h, w = images
            to_images = lambda rows: rows.reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous()  # noqa: E731
            x_img, log_y_img, t_img = to_images(x), to_images(log_y), t.reshape(n, h, w)
            g_img = g_rows.reshape(n, h, w)
            return {
                "cross_entropy": lambda: F.cross_entropy(x_img, t_img, reduction="none"),
                "cross_entropy_backward": lambda: torch.ops.aten._log_softmax_backward_data(
                    torch.ops.aten.nll_loss2d_backward(g_img, log_y_img, t_img, None, 0, -100,
                                                       unused_total_weight),
                    log_y_img, 1, x.dtype),
            }[op]
        return {
            "softmax": lambda: torch.softmax(x, -1),
            "softmax_backward": lambda: torch.ops.aten._softmax_backward_data(g, y, -1, x.dtype),
            "log_softmax": lambda: torch.log_softmax(x, -1),
            "log_softmax_backward":
                lambda: torch.ops.aten._log_softmax_backward_data(g, log_y, -1, x.dtype),
            "cross_entropy": lambda: F.cross_entropy(x, t, reduction="none"),
            "cross_entropy_backward": lambda: torch.ops.aten._log_softmax_backward_data(
                torch.ops.aten.nll_loss_backward(g_rows, log_y, t, None, 0, -100, unused_total_weight),
                log_y, -1, x.dtype),
            "binary_cross_entropy_with_logits":
                lambda: F.binary_cross_entropy_with_logits(x, t01, reduction="none"),
            "binary_cross_entropy_with_logits_backward": lambda: torch.ops.aten.mul(
                g, torch.sigmoid(x) - t01),
        }[op]

    arrays = 1 if op in ("softmax", "log_softmax", "cross_entropy") else 2
    moved = 4 * math.prod(shape) * (arrays + (0 if op.startswith("cross_entropy") else 1))
    return Case(op, name, (op,), make, run, moved, "byte", _torch_baseline(torch_fn), quick=quick)


def _optimizer_case(op, shapes, name):
    """One sgd_step (momentum 0.9) or adam_step over a network's parameter list, against
    torch.optim's step (its default, for-each implementation) on tensors sharing those arrays."""
    def make(rng):
        params = [_f32(rng, *s) for s in shapes]
        return {"params": params, "grads": [_f32(rng, *s) * 1e-3 for s in shapes],
                "m": [np.zeros(s, np.float32) for s in shapes],
                "v": [np.zeros(s, np.float32) for s in shapes]}

    def run(a, be):
        if op == "sgd_step":
            return ops.sgd_step(a["params"], a["grads"], a["m"], lr=1e-3, momentum=0.9, backend=be)
        return ops.adam_step(a["params"], a["grads"], a["m"], a["v"], 3, backend=be)

    def torch_fn(a):
        torch = _torch()
        params = [torch.from_numpy(p.copy()).requires_grad_() for p in a["params"]]
        for p, g in zip(params, a["grads"]):
            p.grad = torch.from_numpy(g)
        opt = (torch.optim.SGD(params, lr=1e-3, momentum=0.9) if op == "sgd_step"
               else torch.optim.Adam(params))
        opt.step()  # creates the state: the timed steps are steady-state steps
        return opt.step

    n = sum(math.prod(s) for s in shapes)
    moved = 4 * n * (4 if op == "sgd_step" else 5)  # read p, g, state(s); write p, state(s)
    return Case(op, name, (op,), make, run, moved, "byte", _torch_baseline(torch_fn), quick=True)


_LENET_PARAMETERS = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120), (84,),
                     (10, 84), (10,)]


def _lstm_params(rng, I, Hd):
    bound = 1 / math.sqrt(Hd)
    return {k: rng.uniform(-bound, bound, shape).astype(np.float32) for k, shape in
            (("w_ih", (4 * Hd, I)), ("w_hh", (4 * Hd, Hd)), ("b_ih", (4 * Hd,)), ("b_hh", (4 * Hd,)))}


def _torch_lstm(a, cell):
    torch = _torch()
    I, Hd = a["w_ih"].shape[1], a["w_hh"].shape[1]
    m = torch.nn.LSTMCell(I, Hd) if cell else torch.nn.LSTM(I, Hd)
    sfx = "" if cell else "_l0"
    with torch.no_grad():
        for k in ("w_ih", "w_hh", "b_ih", "b_hh"):
            name = {"w": "weight", "b": "bias"}[k[0]] + "_" + k[2:] + sfx
            getattr(m, name).copy_(torch.from_numpy(a[k]))
    return m


def _lstm_case(name, T, B, I, Hd, backward, quick=False):
    def make(rng):
        return {"x": _f32(rng, T, B, I), "h0": _f32(rng, B, Hd), "c0": _f32(rng, B, Hd),
                "gout": _f32(rng, T, B, Hd), **_lstm_params(rng, I, Hd)}

    weights = ("w_ih", "w_hh", "b_ih", "b_hh")

    def run(a, be):
        args = (a["x"], a["h0"], a["c0"], *(a[k] for k in weights))
        if not backward:
            return ops.lstm(*args, backend=be)
        # As the autograd does: the forward keeps its gates and states for the backward.
        *_, saved = ops.lstm(*args, backend=be, save_for_backward=True)
        return ops.lstm_backward(a["gout"], None, None, *args, backend=be, saved=saved)

    def torch_fn(a):
        torch = _torch()
        m = _torch_lstm(a, cell=False)
        x, h0, c0, gout = (torch.from_numpy(a[k]) for k in ("x", "h0", "c0", "gout"))
        hc = (h0[None], c0[None])
        if not backward:
            def fwd():
                with torch.no_grad():
                    return m(x, hc)
            return fwd
        xg = x.clone().requires_grad_(True)

        def fwd_bwd():
            out, _ = m(xg, hc)
            out.backward(gout)
        return fwd_bwd

    flops = 2 * T * B * 4 * Hd * (I + Hd) * (3 if backward else 1)
    kernels = ("lstm", "lstm_backward") if backward else ("lstm",)
    op = "lstm fwd+bwd" if backward else "lstm"
    return Case(op, name, kernels, make, run, flops, "flop", _torch_baseline(torch_fn), quick=quick)


def _lstm_cell_case(name, B, I, Hd, quick=False):
    def make(rng):
        return {"x": _f32(rng, B, I), "h": _f32(rng, B, Hd), "c": _f32(rng, B, Hd),
                **_lstm_params(rng, I, Hd)}

    def run(a, be):
        return ops.lstm_cell(*(a[k] for k in ("x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh")), backend=be)

    def torch_fn(a):
        torch = _torch()
        m = _torch_lstm(a, cell=True)
        x, h, c = (torch.from_numpy(a[k]) for k in "xhc")

        def step():
            with torch.no_grad():
                return m(x, (h, c))
        return step

    return Case("lstm_cell", name, ("lstm_cell",), make, run, 2 * B * 4 * Hd * (I + Hd), "flop",
                _torch_baseline(torch_fn), quick=quick)


def _rnn_cell_case(name, B, I, Hd, backward, quick=False):
    """One Elman step (tanh), forward or forward + backward, against torch.nn.RNNCell."""
    def make(rng):
        bound = 1 / math.sqrt(Hd)
        weights = {k: rng.uniform(-bound, bound, shape).astype(np.float32) for k, shape in
                   (("w_ih", (Hd, I)), ("w_hh", (Hd, Hd)), ("b_ih", (Hd,)), ("b_hh", (Hd,)))}
        return {"x": _f32(rng, B, I), "h": _f32(rng, B, Hd), "g": _f32(rng, B, Hd), **weights}

    weights = ("w_ih", "w_hh", "b_ih", "b_hh")

    def run(a, be):
        h_new = ops.rnn_cell(a["x"], a["h"], *(a[k] for k in weights), backend=be)
        if not backward:
            return h_new
        return ops.rnn_cell_backward(a["g"], a["x"], a["h"], h_new, *(a[k] for k in weights), backend=be)

    def torch_fn(a):
        torch = _torch()
        m = torch.nn.RNNCell(I, Hd)
        with torch.no_grad():
            for k in weights:
                getattr(m, {"w": "weight", "b": "bias"}[k[0]] + "_" + k[2:]).copy_(torch.from_numpy(a[k]))
        x, h, g = (torch.from_numpy(a[k]) for k in "xhg")
        if not backward:
            def fwd():
                with torch.no_grad():
                    return m(x, h)
            return fwd
        xg, hg = x.clone().requires_grad_(True), h.clone().requires_grad_(True)

        def fwd_bwd():
            m(xg, hg).backward(g)
        return fwd_bwd

    flops = 2 * B * Hd * (I + Hd) * (3 if backward else 1)
    kernels = ("rnn_cell", "rnn_cell_backward") if backward else ("rnn_cell",)
    return Case("rnn_cell fwd+bwd" if backward else "rnn_cell", name, kernels, make, run, flops,
                "flop", _torch_baseline(torch_fn), quick=quick)


def clustered_boxes(rng, n, clusters=None):
    """n boxes (x1, y1, x2, y2) scattered around a few centres, as detector outputs are."""
    clusters = clusters or max(1, n // 20)
    centres = rng.uniform(0, 1000, (clusters, 2))
    c = centres[rng.integers(0, clusters, n)] + rng.normal(0, 8, (n, 2))
    wh = rng.uniform(20, 60, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    return boxes, rng.uniform(0, 1, n).astype(np.float32)


def _numpy_greedy(boxes, scores, thr, overlap):
    """Greedy NMS vectorised in NumPy, one row of overlaps per kept box:
    overlap(corners, area, i, rest) -> the overlap of box i with each box of rest."""
    order = np.argsort(-scores, kind="stable")
    corners = boxes.T
    area = (corners[2] - corners[0]) * (corners[3] - corners[1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[overlap(corners, area, i, rest) <= thr]
    return np.array(keep, np.int64)


def _iou_row(corners, area, i, rest):
    x1, y1, x2, y2 = corners
    w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
    h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
    inter = w * h
    return inter / (area[i] + area[rest] - inter)


def _diou_row(corners, area, i, rest):
    x1, y1, x2, y2 = corners
    dx = (x1[i] + x2[i]) - (x1[rest] + x2[rest])
    dy = (y1[i] + y2[i]) - (y1[rest] + y2[rest])
    cw = np.maximum(x2[i], x2[rest]) - np.minimum(x1[i], x1[rest])
    ch = np.maximum(y2[i], y2[rest]) - np.minimum(y1[i], y1[rest])
    return _iou_row(corners, area, i, rest) - 0.25 * (dx * dx + dy * dy) / (cw * cw + ch * ch)


def numpy_greedy_nms(boxes, scores, thr):
    """The usual vectorised NumPy NMS (one IoU row per kept box), a common baseline."""
    return _numpy_greedy(boxes, scores, thr, _iou_row)


def numpy_greedy_diou_nms(boxes, scores, thr):
    """numpy_greedy_nms with the distance-IoU: one DIoU row per kept box."""
    return _numpy_greedy(boxes, scores, thr, _diou_row)


def _boxes_and_scores(n, make_boxes=clustered_boxes):
    """A case's make(rng): n boxes and their scores, from make_boxes(rng, n)."""
    def make(rng):
        boxes, scores = make_boxes(rng, n)
        return {"boxes": boxes, "scores": scores}
    return make


def _opencv_baseline(build):
    """A baseline from build(cv2, inputs) -> the timed callable; none without OpenCV."""
    def baseline(a):
        try:
            import cv2
        except ImportError:
            return None
        return build(cv2, a)
    return baseline


def _nms_case(n, quick=False):
    thr = 0.5

    def run(a, be):
        return ops.nms(a["boxes"], a["scores"], thr, backend=be)

    def opencv_fn(cv2, a):
        b = a["boxes"]
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()
        scores = a["scores"].tolist()
        return lambda: cv2.dnn.NMSBoxes(xywh, scores, 0.0, thr)  # all scores are > 0

    numpy_fn = lambda a: (lambda: numpy_greedy_nms(a["boxes"], a["scores"], thr))  # noqa: E731
    return Case("nms", f"{n} clustered boxes", ("nms",), _boxes_and_scores(n), run,
                baselines={"opencv": _opencv_baseline(opencv_fn), "numpy greedy": numpy_fn}, quick=quick)


def clustered_rotated_boxes(rng, n, clusters=None):
    """n rotated boxes (cx, cy, w, h, angle in degrees) scattered around a few centres, with
    angles spread around a direction per cluster, as a rotated detector's outputs are."""
    clusters = clusters or max(1, n // 20)
    cluster = rng.integers(0, clusters, n)
    centres = rng.uniform(0, 1000, (clusters, 2))[cluster] + rng.normal(0, 8, (n, 2))
    sizes = rng.uniform(20, 60, (n, 2))
    angles = rng.uniform(-90, 90, clusters)[cluster] + rng.normal(0, 10, n)
    boxes = np.concatenate([centres, sizes, angles[:, None]], axis=1).astype(np.float32)
    return boxes, rng.uniform(0, 1, n).astype(np.float32)


def _nms_rotated_case(n, quick=False):
    thr = 0.5

    def run(a, be):
        return ops.nms_rotated(a["boxes"], a["scores"], thr, backend=be)

    def opencv_fn(cv2, a):
        # RotatedRect angles turn the other way (its width runs along (cos a, sin a)).
        rects = [((x, y), (w, h), -t) for x, y, w, h, t in a["boxes"].tolist()]
        scores = a["scores"].tolist()
        return lambda: cv2.dnn.NMSBoxesRotated(rects, scores, 0.0, thr)  # all scores are > 0

    return Case("nms_rotated", f"{n} clustered rotated boxes", ("nms_rotated",),
                _boxes_and_scores(n, clustered_rotated_boxes), run,
                baselines={"opencv": _opencv_baseline(opencv_fn)}, quick=quick)

def cases(quick: bool) -> list[Case]:
    all_cases = [
        _conv_case("LeNet conv1 64x1x28x28 k6 5x5 p2", 64, 1, 28, 28, 6, 5, pad=2, quick=True),
        _conv_case("LeNet conv2 64x6x14x14 k16 5x5", 64, 6, 14, 14, 16, 5, quick=True),
        _conv_case("DCGAN D conv1 64x1x28x28 k64 4x4 s2 p1", 64, 1, 28, 28, 64, 4, stride=2, pad=1),
        _conv_case("RGB input 16x3x32x32 k64 3x3 p1", 16, 3, 32, 32, 64, 3, pad=1),
        _conv_case("PixelCNN 32x1x28x28 k64 7x7 p3", 32, 1, 28, 28, 64, 7, pad=3),
        _conv_case("VGG 8x64x56x56 k64 3x3 p1", 8, 64, 56, 56, 64, 3, pad=1),
        _conv_case("VGG-mid 8x128x28x28 k128 3x3 p1", 8, 128, 28, 28, 128, 3, pad=1),
        _conv_case("VGG-deep 8x256x14x14 k256 3x3 p1", 8, 256, 14, 14, 256, 3, pad=1),
        _conv_case("1x1 8x256x28x28 k64", 8, 256, 28, 28, 64, 1),
        _conv_case("ResNet last stage 8x512x7x7 k512 3x3 p1", 8, 512, 7, 7, 512, 3, pad=1),
        _conv_case("strided 16x32x32x32 k64 3x3 s2 p1", 16, 32, 32, 32, 64, 3, stride=2, pad=1, quick=True),
        _conv_case("depthwise 8x64x56x56 g64 3x3 p1", 8, 64, 56, 56, 64, 3, pad=1, groups=64, quick=True),
        _conv_case("depthwise 8x64x56x56 g64 3x3 s2 p1", 8, 64, 56, 56, 64, 3, stride=2, pad=1, groups=64),
        _conv_case("batch-1 1x64x56x56 k64 3x3 p1", 1, 64, 56, 56, 64, 3, pad=1, quick=True),
        # The same convolution twice: the speed of the second must not depend on its weights
        # being subnormal (x86 handles subnormal operands 10-100x slower unless flushed).
        _conv_case("8x64x28x28 k64 3x3 p1", 8, 64, 28, 28, 64, 3, pad=1),
        _conv_case("8x64x28x28 k64 3x3 p1, subnormal weights", 8, 64, 28, 28, 64, 3, pad=1,
                   weight_scale=1e-39),
        _conv_backward_case("VGG 8x64x56x56 k64 3x3 p1", 8, 64, 56, 56, 64, 3, 1),
        _conv_backward_case("ResNet last stage 8x512x7x7 k512 3x3 p1", 8, 512, 7, 7, 512, 3, 1),
        _conv_backward_case("LeNet conv2 64x6x14x14 k16 5x5", 64, 6, 14, 14, 16, 5, 0, quick=True),
        _conv_backward_case("RGB input 16x3x32x32 k64 3x3 p1", 16, 3, 32, 32, 64, 3, 1),
        _conv_backward_case("depthwise 8x64x56x56 g64 3x3 p1", 8, 64, 56, 56, 64, 3, 1, groups=64),
        _conv_backward_case("depthwise 8x64x56x56 g64 3x3 s2 p1", 8, 64, 56, 56, 64, 3, 1, stride=2, groups=64),
        _conv_transpose_case("DCGAN 64x100x1x1 -> 128 7x7", 64, 100, 1, 1, 128, 7, 1, 0),
        _conv_transpose_case("DCGAN 64x128x7x7 -> 64 4x4 s2 p1", 64, 128, 7, 7, 64, 4, 2, 1, quick=True),
        _conv_transpose_case("DCGAN 64x64x14x14 -> 1 4x4 s2 p1", 64, 64, 14, 14, 1, 4, 2, 1, quick=True),
        _conv_transpose_case("DCGAN 16x256x8x8 -> 128 4x4 s2 p1", 16, 256, 8, 8, 128, 4, 2, 1),
        _pool_case("2x2 s2 + indices 32x64x56x56", "max", 2, 2, 0, (32, 64, 56, 56)),
        _pool_case("2x2 s2 + indices 8x64x56x56", "max", 2, 2, 0, (8, 64, 56, 56), quick=True),
        _pool_case("3x3 s2 p1 + indices 32x64x56x56", "max", 3, 2, 1, (32, 64, 56, 56)),
        _pool_case("2x2 s2 32x64x56x56", "avg", 2, 2, 0, (32, 64, 56, 56)),
        _pool_case("2x2 s2 8x64x56x56", "avg", 2, 2, 0, (8, 64, 56, 56), quick=True),
        _leaky_relu_case("32x64x56x56", (32, 64, 56, 56), backward=False),
        _leaky_relu_case("8x64x56x56", (8, 64, 56, 56), backward=False, quick=True),
        _leaky_relu_case("32x64x56x56", (32, 64, 56, 56), backward=True),
        # The fused activations and dropout at a DCGAN layer's activation sizes.
        *(_fused_activation_case(f"{op}{suffix}", shape, quick=shape[1] == 64)
          for op in _FUSED_OPS for suffix in ("", "_backward")
          for shape in ((64, 64, 14, 14), (64, 128, 7, 7))),
        # A gated PixelCNN's gate (64 channels: 32 tanh, 32 sigmoid).
        _gated_tanh_case((64, 64, 32, 32), backward=False, quick=True),
        _gated_tanh_case((64, 64, 32, 32), backward=True, quick=True),
        _matmul_case("LeNet fc1 x W^T 64x400 -> 120", 64, 400, 120, trans_b=True, quick=True),
        _matmul_case("LeNet fc1 grad_w g^T x 120x64 . 64x400", 120, 64, 400, trans_a=True),
        _matmul_case("1024x1024 . (1024x1024)^T", 1024, 1024, 1024, trans_b=True),
        # The dense layers of the model zoo: few outputs, a long or a short reduction.
        _matmul_case("VGG fc x W^T 16x8192 -> 10", 16, 8192, 10, trans_b=True),
        _matmul_case("VAE from_latent grad_w g^T x 2048x64 . 64x8", 2048, 64, 8, trans_a=True),
        _matmul_case("VAE from_latent x W^T 64x8 -> 2048", 64, 8, 2048, trans_b=True),
        _matmul_case("VAE from_latent grad_x g W 64x2048 . 2048x8", 64, 2048, 8),
        _matmul_case("char-LSTM out x W^T 3200x128 -> 35", 3200, 128, 35, trans_b=True),
        _matmul_case("char-LSTM out grad_w g^T x 35x3200 . 3200x128", 35, 3200, 128, trans_a=True),
        # The char-LSTM's embedding (100 steps x 32 sequences into 65 characters x 32).
        _embedding_case("char-LSTM 3200 into 65x32", 65, 32, 3200, backward=False, quick=True),
        _embedding_case("char-LSTM 3200 into 65x32", 65, 32, 3200, backward=True, quick=True),
        _embedding_case("6400 into 1000x128", 1000, 128, 6400, backward=True),
        _batch_norm_case("DCGAN 64x64x14x14", (64, 64, 14, 14), backward=False, quick=True),
        _batch_norm_case("DCGAN 64x64x14x14", (64, 64, 14, 14), backward=True, quick=True),
        _batch_norm_case("DCGAN 64x128x7x7", (64, 128, 7, 7), backward=False, slope=0.2),
        _batch_norm_case("DCGAN 64x128x7x7", (64, 128, 7, 7), backward=True, slope=0.2),
        _batch_norm_case("32x64x56x56", (32, 64, 56, 56), backward=False),
        *(_class_rows_case(op, "char-LSTM 3200x65", (3200, 65), quick=True) for op in (
            "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
            "cross_entropy", "cross_entropy_backward")),
        *(_class_rows_case(op, "SegNet pixels 64x32x32, 4 classes", (65536, 4), images=(64, 32, 32))
          for op in ("cross_entropy", "cross_entropy_backward")),
        *(_class_rows_case(op, "DCGAN D 64x1", (64, 1), quick=True) for op in (
            "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward")),
        *(_optimizer_case(op, _LENET_PARAMETERS, "LeNet-5 parameters") for op in ("sgd_step", "adam_step")),
        _lstm_case("T=100 B=64 128->256", 100, 64, 128, 256, backward=False),
        _lstm_case("T=20 B=32 64->128", 20, 32, 64, 128, backward=False, quick=True),
        _lstm_case("T=100 B=64 128->256", 100, 64, 128, 256, backward=True),
        _lstm_cell_case("B=64 128->256", 64, 128, 256, quick=True),
        _rnn_cell_case("char-RNN step B=32 128->128", 32, 128, 128, backward=False, quick=True),
        _rnn_cell_case("char-RNN step B=32 128->128", 32, 128, 128, backward=True, quick=True),
        _nms_case(1000, quick=True),
        _nms_case(10000),
        _nms_case(50000),
        _nms_rotated_case(1000, quick=True),
        _nms_rotated_case(10000),
        _soft_nms_case(1000, quick=True),
        _soft_nms_case(10000),
        _diou_nms_case(1000, quick=True),
        _diou_nms_case(10000),
        _matrix_nms_case(1000, 1, quick=True),
        _matrix_nms_case(10000, 4),
    ]
    return [c for c in all_cases if c.quick or not quick]


# One case for each kernel that the cases above do not time on its own.

_POOL_SHAPE = (32, 64, 56, 56)


def _pool_backward_case(kind):
    k, s, p = (3, 2, 1) if kind == "max" else (2, 2, 0)

    def make(rng):
        x = _f32(rng, *_POOL_SHAPE)
        y, idx = ops.max_pool2d(x, k, s, p, return_indices=True, backend="reference")
        return {"x": x, "idx": idx, "gy": _f32(rng, *y.shape)}

    if kind == "max":
        def run(a, be):
            return ops.max_pool2d_backward(a["gy"], a["idx"], _POOL_SHAPE, backend=be)
    else:
        def run(a, be):
            return ops.avg_pool2d_backward(a["gy"], _POOL_SHAPE, k, s, p, backend=be)

    name = f"{k}x{k} s{s} p{p} {'x'.join(map(str, _POOL_SHAPE))}"
    return Case(f"{kind}_pool2d_backward", name, (f"{kind}_pool2d_backward",), make, run)


def _unpool_case():
    def make(rng):
        x = _f32(rng, *_POOL_SHAPE)
        y, idx = ops.max_pool2d(x, 2, 2, return_indices=True, backend="reference")
        return {"y": y, "idx": idx}

    def run(a, be):
        return ops.max_unpool2d(a["y"], a["idx"], 2, 2, backend=be)

    return Case("max_unpool2d", "2x2 s2 -> 32x64x56x56", ("max_unpool2d",), make, run)


def _lstm_cell_backward_case(B, I, Hd):
    def make(rng):
        arrays = {k: _f32(rng, *s) for k, s in
                  (("gh", (B, Hd)), ("gc", (B, Hd)), ("x", (B, I)), ("h", (B, Hd)), ("c", (B, Hd)))}
        return {**arrays, **_lstm_params(rng, I, Hd)}

    def run(a, be):
        keys = ("gh", "gc", "x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh")
        return ops.lstm_cell_backward(*(a[k] for k in keys), backend=be)

    return Case("lstm_cell_backward", f"B={B} {I}->{Hd}", ("lstm_cell_backward",), make, run, quick=True)


def _box_iou_case(n):
    def make(rng):
        return {"boxes": clustered_boxes(rng, n)[0]}

    def run(a, be):
        return ops.box_iou(a["boxes"], a["boxes"], backend=be)

    return Case("box_iou", f"{n}x{n} clustered boxes", ("box_iou",), make, run, quick=True)


def _batched_nms_case(n, categories):
    def make(rng):
        boxes, scores = clustered_boxes(rng, n)
        return {"boxes": boxes, "scores": scores, "idxs": rng.integers(0, categories, n)}

    def run(a, be):
        return ops.batched_nms(a["boxes"], a["scores"], a["idxs"], 0.5, backend=be)

    return Case("batched_nms", f"{n} clustered boxes, {categories} categories", ("batched_nms",), make, run)


def _box_iou_rotated_case(n):
    def make(rng):
        return {"boxes": clustered_rotated_boxes(rng, n)[0]}

    def run(a, be):
        return ops.box_iou_rotated(a["boxes"], a["boxes"], backend=be)

    return Case("box_iou_rotated", f"{n}x{n} clustered rotated boxes", ("box_iou_rotated",), make,
                run, quick=True)

# The NMS family, against OpenCV's soft-NMS and vectorised NumPy versions of the others.


def numpy_matrix_nms(boxes, scores, labels, sigma):
    """Gaussian Matrix NMS as SOLOv2 writes it (upper-triangular IoU matrix, column maxima,
    the min of the decay ratios), vectorised over all pairs of each label."""
    out = np.empty_like(scores)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(-scores[members], kind="stable")]
        b = boxes[members]
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        w = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
        h = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
        inter = w * h
        iou = np.triu(inter / (area[:, None] + area[None, :] - inter), 1)
        comp = iou.max(axis=0)
        decay = np.exp(-sigma * (iou**2 - comp[:, None] ** 2)).min(axis=0)
        out[members] = scores[members] * decay
    return out


def _integer_boxes(rng, n):
    """clustered_boxes with integer corners, so that OpenCV's integer rectangles hold them."""
    boxes, scores = clustered_boxes(rng, n)
    return np.round(boxes), scores


def _soft_nms_case(n, quick=False):
    sigma, score_threshold = 0.5, 0.001

    def run(a, be):
        return ops.soft_nms(a["boxes"], a["scores"], sigma, 0.3, score_threshold, backend=be)

    def opencv_fn(cv2, a):
        b = a["boxes"].astype(np.int64)
        xywh = [tuple(r) for r in np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()]
        scores = a["scores"].tolist()
        return lambda: cv2.dnn.softNMSBoxes(xywh, scores, score_threshold, 0.3, sigma=sigma)

    return Case("soft_nms", f"{n} clustered boxes, gaussian", ("soft_nms",),
                _boxes_and_scores(n, _integer_boxes), run,
                baselines={"opencv": _opencv_baseline(opencv_fn)}, quick=quick)


def _diou_nms_case(n, quick=False):
    def run(a, be):
        return ops.diou_nms(a["boxes"], a["scores"], 0.5, backend=be)

    numpy_fn = lambda a: (lambda: numpy_greedy_diou_nms(a["boxes"], a["scores"], 0.5))  # noqa: E731
    return Case("diou_nms", f"{n} clustered boxes", ("diou_nms",), _boxes_and_scores(n), run,
                baselines={"numpy greedy": numpy_fn}, quick=quick)


def _matrix_nms_case(n, labels, quick=False):
    sigma = 2.0

    def make(rng):
        boxes, scores = clustered_boxes(rng, n)
        return {"boxes": boxes, "scores": scores, "labels": rng.integers(0, labels, n)}

    def run(a, be):
        return ops.matrix_nms(a["boxes"], a["scores"], a["labels"], "gaussian", sigma, backend=be)

    numpy_fn = lambda a: (lambda: numpy_matrix_nms(a["boxes"], a["scores"], a["labels"], sigma))  # noqa: E731
    return Case("matrix_nms", f"{n} clustered boxes, {labels} labels", ("matrix_nms",), make, run,
                baselines={"numpy": numpy_fn}, quick=quick)


def kernel_cases(quick: bool) -> list[Case]:
    """cases() and one case for each kernel they leave out (the pooling backward passes,
    unpooling, the LSTM cell backward, box_iou and batched_nms)."""
    extra = [
        _pool_backward_case("max"),
        _pool_backward_case("avg"),
        _unpool_case(),
        _lstm_cell_backward_case(64, 128, 256),
        _box_iou_case(1000),
        _batched_nms_case(10000, 20),
        _box_iou_rotated_case(1000),
    ]
    return cases(quick) + [c for c in extra if c.quick or not quick]


def untimed_kernels() -> list[str]:
    """Kernels of the op catalogue that no case times (a new kernel needs a case here)."""
    timed = {k for case in kernel_cases(quick=False) for k in case.kernels}
    return sorted(set(KERNELS) - timed)
