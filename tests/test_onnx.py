"""pyconv.onnx against ONNX Runtime: single-op graphs (each op and its attribute variants),
graphs exported by PyTorch, models exported from pyconv, and the refusals."""
from __future__ import annotations

import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import pyconv  # noqa: E402
import pyconv.onnx as ponnx  # noqa: E402
from pyconv import Tensor, nn  # noqa: E402

RTOL = ATOL = 1e-4
F32 = TensorProto.FLOAT


def _model(nodes, inputs, initializers=(), outputs=("y",), opset=17):
    """A one-graph model: `inputs` name -> array (graph inputs), `initializers` name -> array."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in dict(initializers).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _ort(model, feeds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _check(nodes, inputs, initializers=(), outputs=("y",), opset=17):
    model = _model(nodes, inputs, initializers, outputs, opset)
    expected = _ort(model, inputs)
    got = ponnx.load(model).run(None, inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape, (g.shape, e.shape)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
    return got


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Convolutions

CONV_CASES = {
    "plain": dict(),
    "stride2_pads": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "asymmetric_pads": dict(pads=[0, 1, 2, 1]),
    "same_upper_stride2": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same_lower_stride2": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    "valid": dict(auto_pad="VALID", strides=[2, 1]),
    "dilated": dict(dilations=[2, 1], pads=[2, 1, 2, 1]),
    "groups": dict(group=2, pads=[1, 1, 1, 1]),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
@pytest.mark.parametrize("bias", [True, False])
def test_conv(case, bias):
    attrs = CONV_CASES[case]
    group = attrs.get("group", 1)
    w = _rand(6, 4 // group, 3, 3, seed=1)
    inits = {"w": w, "b": _rand(6, seed=2)} if bias else {"w": w}
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], **attrs)
    _check([node], {"x": _rand(2, 4, 9, 8)}, inits)


@pytest.mark.parametrize("strides,pads", [([2, 2], [0, 0, 0, 0]), ([2, 3], [0, 0, 0, 0]), ([2, 2], [1, 1, 1, 1]),
                                          ([3], [0, 0])])
def test_strided_1x1_conv_same_bits_as_the_strided_kernel(strides, pads):
    """A strided 1x1 convolution without padding runs on the pixels it reads, unstrided."""
    from pyconv import ops

    nd = len(strides)
    x, w, b = _rand(2, 6, *[9] * nd), _rand(5, 6, *[1] * nd, seed=1), _rand(5, seed=2)
    got = _check([helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=strides, pads=pads)], {"x": x},
                 {"w": w, "b": b})[0]
    conv = ops.conv2d if nd == 2 else ops.conv1d
    np.testing.assert_array_equal(got, conv(x, w, b, tuple(strides) if nd == 2 else strides[0],
                                            pads[0] if nd == 1 else tuple(pads[:2])))


def test_conv_1d_and_weight_as_input():
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2], pads=[1, 2])
    _check([node], {"x": _rand(2, 3, 11), "w": _rand(5, 3, 4, seed=1)})


TRANSPOSE_CASES = {
    "stride2_pads1": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "output_padding": dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0]),
    "output_padding_beyond": dict(strides=[3, 2], output_padding=[2, 1]),
    "asymmetric_pads": dict(strides=[2, 2], pads=[0, 1, 2, 1]),
    "output_shape": dict(strides=[2, 2], output_shape=[12, 13]),
    "same_upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    "dilated": dict(dilations=[2, 2], pads=[1, 1, 1, 1]),
    "groups": dict(group=2, strides=[2, 1]),
    "output_shape_past_full": dict(strides=[2, 2], output_shape=[12, 15], auto_pad="SAME_UPPER"),
    "output_shape_valid": dict(strides=[2, 2], output_shape=[10, 13], auto_pad="VALID"),
}


def test_conv_transpose_same_padding_negative_total():
    """A 1x1 kernel with stride 3: the full output is shorter than input * stride."""
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3, 3], auto_pad="SAME_UPPER")
    _check([node], {"x": _rand(2, 4, 5, 6)}, {"w": _rand(4, 3, 1, 1, seed=1)})


@pytest.mark.parametrize("case", sorted(TRANSPOSE_CASES))
def test_conv_transpose(case):
    attrs = TRANSPOSE_CASES[case]
    group = attrs.get("group", 1)
    inits = {"w": _rand(4, 6 // group, 3, 4, seed=1), "b": _rand(6, seed=2)}
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    _check([node], {"x": _rand(2, 4, 5, 6)}, inits)


def test_conv_transpose_1d():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2], pads=[1, 1])
    _check([node], {"x": _rand(2, 3, 7)}, {"w": _rand(3, 5, 4, seed=1)})


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("group", [1, 2])
def test_batch_norm_folded_into_conv(op, group):
    """A BatchNormalization right after a conv is folded into its weights at load time."""
    w = _rand(4, 4 // group, 3, 3, seed=1)
    bn = {"s": _rand(4, seed=3), "t": _rand(4, seed=4), "m": _rand(4, seed=5),
          "v": np.abs(_rand(4, seed=6)) + 0.5}
    nodes = [helper.make_node(op, ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=group),
             helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["y"], epsilon=1e-3)]
    model = _model(nodes, {"x": _rand(2, 4, 6, 6)}, {"w": w, **bn})
    graph = ponnx.load(model)
    assert [s[-1] for s in graph._steps] == [op]
    np.testing.assert_allclose(graph(x=_rand(2, 4, 6, 6)), _ort(model, {"x": _rand(2, 4, 6, 6)})[0],
                               rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Pooling

MAXPOOL_CASES = {
    "plain": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "default_stride_1": dict(kernel_shape=[3, 2]),
    "pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "ceil_mode": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "ceil_mode_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    "dilations": dict(kernel_shape=[2, 2], dilations=[2, 2]),
    "same_upper": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER"),
    "asymmetric_pads": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
    "asymmetric_pads_ceil": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 2], ceil_mode=1),
}


@pytest.mark.parametrize("case", sorted(MAXPOOL_CASES))
def test_max_pool(case):
    _check([helper.make_node("MaxPool", ["x"], ["y"], **MAXPOOL_CASES[case])], {"x": _rand(2, 3, 9, 10)})


def test_max_pool_indices_and_1d():
    _check([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
           {"x": _rand(2, 3, 7, 8)}, outputs=("y", "i"))
    _check([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[2])], {"x": _rand(2, 3, 9)})


AVGPOOL_CASES = {
    "plain": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "pads_exclude": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "pads_include": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    "ceil_mode": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "asymmetric_exclude": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
    "asymmetric_include": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0], count_include_pad=1),
    "asymmetric_ceil": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 2], ceil_mode=1),
    "same_upper": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
}


@pytest.mark.parametrize("case", sorted(AVGPOOL_CASES))
def test_average_pool(case):
    _check([helper.make_node("AveragePool", ["x"], ["y"], **AVGPOOL_CASES[case])], {"x": _rand(2, 3, 9, 10)})


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op):
    _check([helper.make_node(op, ["x"], ["y"])], {"x": _rand(2, 3, 5, 4)})


# ---------------------------------------------------------------------------------------------
# Dense, elementwise, normalisation

GEMM_CASES = {
    "plain": (dict(), (4, 5), (5, 3), (3,)),
    "transB": (dict(transB=1), (4, 5), (3, 5), (3,)),
    "transA": (dict(transA=1), (5, 4), (5, 3), (1, 3)),
    "alpha_beta": (dict(alpha=0.5, beta=2.0), (4, 5), (5, 3), (4, 3)),
    "no_C": (dict(transA=1, transB=1, alpha=3.0), (5, 4), (3, 5), None),
    # one row (a batch of one): the matrix-vector kernels, past whole vectors and blocks
    "one_row_transB": (dict(transB=1), (1, 37), (300, 37), (300,)),
    "one_row": (dict(beta=0.5), (1, 37), (37, 130), (1, 130)),
    "one_row_transA": (dict(transA=1), (37, 1), (37, 5), None),
}


@pytest.mark.parametrize("case", sorted(GEMM_CASES))
@pytest.mark.parametrize("b_constant", [True, False])
def test_gemm(case, b_constant):
    attrs, a_shape, b_shape, c_shape = GEMM_CASES[case]
    inputs, inits = {"a": _rand(*a_shape)}, {}
    (inits if b_constant else inputs)["b"] = _rand(*b_shape, seed=1)
    if c_shape:
        inits["c"] = _rand(*c_shape, seed=2)
    node = helper.make_node("Gemm", ["a", "b"] + (["c"] if c_shape else []), ["y"], **attrs)
    _check([node], inputs, inits)


def test_matmul_batched_and_broadcast_arithmetic():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["m"]),
             helper.make_node("Add", ["m", "c"], ["s"]),
             helper.make_node("Sub", ["s", "c"], ["d"]),
             helper.make_node("Mul", ["d", "c"], ["p"]),
             helper.make_node("Div", ["p", "e"], ["y"])]
    _check(nodes, {"a": _rand(2, 3, 4, 5), "b": _rand(5, 6, seed=1)},
           {"c": _rand(6, seed=2), "e": np.abs(_rand(3, 1, 1, seed=3)) + 1})


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.2}),
                                      ("Sigmoid", {}), ("Tanh", {}), ("Softmax", {}), ("Softmax", {"axis": 1}),
                                      ("LogSoftmax", {"axis": 2}), ("Elu", {"alpha": 0.5}), ("Exp", {}),
                                      ("Neg", {}), ("Abs", {})])
def test_activations(op, attrs):
    x = _rand(2, 3, 4, 5) * 4
    _check([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x})


def test_in_place_activation_keeps_values_still_needed():
    """Relu may overwrite the conv output it reads, never a value another node reads too."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),        # sole reader of c: in place
             helper.make_node("Sigmoid", ["c2"], ["s"]),
             helper.make_node("Conv", ["x", "w"], ["c2"]),
             helper.make_node("Tanh", ["c2"], ["t"]),        # c2 is also read by Sigmoid
             helper.make_node("Relu", ["x"], ["rx"]),        # x is a graph input
             helper.make_node("Concat", ["r", "s", "t", "rx"], ["y"], axis=1)]
    _check(nodes, {"x": _rand(2, 3, 5, 5)}, {"w": _rand(3, 3, 1, 1, seed=1)})


def test_relu_before_max_pool_runs_after_it_with_the_same_result():
    """Relu -> MaxPool is planned as MaxPool -> Relu (max is monotone: exact), unless the
    Relu's output is read elsewhere too."""
    x, w = {"x": _rand(2, 3, 8, 8)}, {"w": _rand(4, 3, 3, 3, seed=1)}
    swapped = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
               helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    kept = swapped + [helper.make_node("Identity", ["r"], ["r2"])]
    got = _check(swapped, x, w)[0]
    plan = [step[-1] for step in ponnx.load(_model(swapped, x, w))._steps]
    assert plan == ["Conv", "MaxPool+Relu"]
    plan = [step[-1] for step in ponnx.load(_model(kept, x, w, outputs=("y", "r2")))._steps]
    assert plan[:2] == ["Conv+Relu", "MaxPool"]
    np.testing.assert_array_equal(got, ponnx.load(_model(kept, x, w, outputs=("y", "r2"))).run(["y"], x)[0])


@pytest.mark.parametrize("attrs,shape", [
    (dict(kernel_shape=[2, 2], strides=[2, 2]), (2, 4, 10, 10)),                      # 2x2 path
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (2, 4, 9, 11)),    # general
    (dict(kernel_shape=[3], strides=[2], pads=[1, 1]), (2, 4, 9)),                    # 1-D
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0]), (2, 4, 9, 11)),    # padded copy
])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_max_pool_and_relu_in_one_step(attrs, shape, backend):
    """MaxPool+Relu: on the cpu backend the pool kernel clamps as it stores (where the pool is
    one kernel call), elsewhere a Relu pass after the pool; both give ONNX Runtime's result."""
    if backend not in pyconv.backends():
        pytest.skip(f"the {backend} backend is not available")
    x = _rand(*shape)
    x[0, 0] -= 10.0  # a plane whose maxima are all negative
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MaxPool", ["r"], ["y"], **attrs)]
    assert _plan(nodes, {"x": x}) == ["MaxPool+Relu"]
    with pyconv.use_backend(backend):
        got = _check(nodes, {"x": x})[0]
    assert (got[0, 0] == 0).all()


def _plan(nodes, inputs, initializers=(), outputs=("y",)):
    return [step[-1] for step in ponnx.load(_model(nodes, inputs, initializers, outputs))._steps]


_CONV = dict(pads=[1, 1, 1, 1])


@pytest.mark.parametrize("case,plan", [
    ("conv_relu", ["Conv+Relu"]),
    ("conv_add_relu", ["Conv+Add+Relu"]),
    ("conv_add", ["Conv+Add"]),
    ("add_operand_first", ["Conv+Add+Relu"]),
    ("broadcast_operand", ["Conv+Add+Relu"]),
    ("operand_larger_than_conv", ["Conv+Add+Relu"]),
    ("two_convs", ["Conv", "Conv+Add+Relu"]),
    ("residual_after_conv", ["Conv+Relu", "Relu", "Conv+Add+Relu"]),
    ("gemm_relu", ["Gemm+Relu"]),
    ("conv_transpose_relu", ["ConvTranspose+Relu"]),
    ("conv_transpose_bias_relu", ["ConvTranspose+Relu"]),  # the kernel adds the bias, clamps
    ("conv_transpose_cropped_relu", ["ConvTranspose+Relu"]),  # output_padding: a crop, then passes
])
def test_fused_epilogues(case, plan):
    """Add and Relu after a Conv, ConvTranspose, Gemm or pool run in place in its step, with
    ONNX Runtime's results, wherever the Add's other operand comes from."""
    x, w = _rand(2, 3, 6, 6), _rand(3, 3, 3, 3, seed=1)
    inputs, inits = {"x": x}, {"w": w}
    conv = helper.make_node("Conv", ["x", "w"], ["c"], **_CONV)
    relu = helper.make_node("Relu", ["s"], ["y"])
    if case == "conv_relu":
        nodes = [conv, helper.make_node("Relu", ["c"], ["y"])]
    elif case == "conv_add_relu":
        nodes = [conv, helper.make_node("Add", ["c", "x"], ["s"]), relu]
    elif case == "conv_add":
        nodes = [conv, helper.make_node("Add", ["c", "x"], ["y"])]
    elif case == "add_operand_first":
        nodes = [conv, helper.make_node("Add", ["x", "c"], ["s"]), relu]
    elif case == "broadcast_operand":
        inits["b"] = _rand(1, 3, 1, 1, seed=2)
        nodes = [conv, helper.make_node("Add", ["c", "b"], ["s"]), relu]
    elif case == "operand_larger_than_conv":  # the conv's output is the one broadcast
        inputs["z"] = _rand(2, 2, 3, 1, 1, seed=3)
        nodes = [conv, helper.make_node("Add", ["c", "z"], ["s"]), relu]
    elif case == "two_convs":
        inits["v"] = _rand(3, 3, 1, 1, seed=4)
        nodes = [conv, helper.make_node("Conv", ["x", "v"], ["d"]),
                 helper.make_node("Add", ["c", "d"], ["s"]), relu]
    elif case == "residual_after_conv":  # the Add's operand is computed after the conv
        nodes = [conv, helper.make_node("Conv", ["x", "w"], ["e"], **_CONV),
                 helper.make_node("Relu", ["e"], ["f"]), helper.make_node("Relu", ["f"], ["g"]),
                 helper.make_node("Add", ["c", "g"], ["s"]), relu]
    elif case == "gemm_relu":
        inputs, inits = {"x": _rand(4, 5)}, {"w": _rand(5, 3, seed=1), "b": _rand(3, seed=2)}
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    elif case == "conv_transpose_relu":
        inits = {"w": _rand(3, 2, 3, 3, seed=1)}
        nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], strides=[2, 2]),
                 helper.make_node("Relu", ["c"], ["y"])]
    else:
        inits = {"w": _rand(3, 5, 4, 4, seed=1), "b": _rand(5, seed=2)}
        attrs = dict(strides=[2, 2], pads=[1, 1, 1, 1])
        if case == "conv_transpose_cropped_relu":
            attrs.update(output_padding=[1, 0], pads=[0, 1, 2, 0])
        nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], **attrs),
                 helper.make_node("Relu", ["c"], ["y"])]
    assert _plan(nodes, inputs, inits) == plan
    got = _check(nodes, inputs, inits)[0]
    assert got.min() >= 0 or "Relu" not in plan[-1]


def test_epilogues_are_not_fused_where_the_intermediate_is_needed():
    """An Add or Relu stays a step of its own where the producer's output (or the Add's) is a
    graph output or has other readers; the values are those ONNX Runtime gives."""
    x, w = {"x": _rand(2, 3, 6, 6)}, {"w": _rand(3, 3, 3, 3, seed=1)}
    conv = helper.make_node("Conv", ["x", "w"], ["c"], **_CONV)
    add = helper.make_node("Add", ["c", "x"], ["s"])
    relu = helper.make_node("Relu", ["s"], ["y"])
    assert _plan([conv, add, relu], x, w, ("y", "c")) == ["Conv", "Add", "Relu"]
    assert _plan([conv, add, relu], x, w, ("y", "s")) == ["Conv+Add", "Relu"]
    twice = [conv, add, relu, helper.make_node("Sigmoid", ["c"], ["t"])]
    assert _plan(twice, x, w, ("y", "t"))[:3] == ["Conv", "Add", "Relu"]
    _check(twice, x, w, ("y", "t"))
    _check([conv, add, relu], x, w, ("y", "c", "s"))
    square = [conv, helper.make_node("Add", ["c", "c"], ["s"]), relu]
    assert _plan(square, x, w) == ["Conv", "Add", "Relu"]
    _check(square, x, w)


def test_average_pool_over_the_whole_plane():
    _check([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[5, 4])], {"x": _rand(2, 3, 5, 4)})
    _check([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[5, 4], strides=[2, 2], ceil_mode=1)],
           {"x": _rand(2, 3, 5, 4)})


def test_a_graph_runs_at_several_batch_sizes():
    """Nodes check their arguments once per input shape: a new batch size gets its own geometry,
    and the first one's is still right when it comes back."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("ConvTranspose", ["p", "t"], ["u"], strides=[2, 2]),
             helper.make_node("AveragePool", ["u"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = {"w": _rand(4, 3, 3, 3, seed=1), "t": _rand(4, 2, 2, 2, seed=2)}
    model = _model(nodes, {"x": _rand(1, 3, 8, 8)}, inits)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph = ponnx.load(model)
    for n in (2, 5, 2, 1):
        x = _rand(n, 3, 8, 8, seed=n)
        np.testing.assert_allclose(graph(x=x), _ort(model, {"x": x})[0], rtol=RTOL, atol=ATOL)


def test_softmax_before_opset_13_coerces_to_2d():
    _check([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {"x": _rand(2, 3, 4)}, opset=11)


def test_batch_norm_standalone():
    inits = {"s": _rand(3, seed=1), "t": _rand(3, seed=2), "m": _rand(3, seed=3), "v": np.abs(_rand(3, seed=4)) + 0.1}
    _check([helper.make_node("BatchNormalization", ["x", "s", "t", "m", "v"], ["y"], epsilon=1e-2)],
           {"x": _rand(2, 3, 4, 4)}, inits)


# ---------------------------------------------------------------------------------------------
# Shapes, constants and the nodes exporters emit


def test_shape_ops():
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Flatten", ["x"], ["f"], axis=2),
        helper.make_node("Reshape", ["f", "target"], ["r"]),
        helper.make_node("Transpose", ["r"], ["rt"], perm=[1, 0]),
        helper.make_node("Slice", ["rt", "st", "en", "ax", "sp"], ["sl"]),
        helper.make_node("Identity", ["sl"], ["id"]),
        helper.make_node("Dropout", ["id", "ratio"], ["dr", "mask"]),
        helper.make_node("Cast", ["dr"], ["c64"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["c64"], ["c32"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["c32", "zero1"], ["u"]),
        helper.make_node("Squeeze", ["u", "zero1"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float32(2.0))),
        helper.make_node("Mul", ["mean", "k"], ["y"]),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"],
                         value=numpy_helper.from_array(np.array([1.5], np.float32))),
        helper.make_node("Expand", ["k", "shape"], ["big"]),
        helper.make_node("Add", ["zeros", "big"], ["y2"]),
    ]
    _check(nodes, {"x": _rand(2, 3, 4, 5)},
           {"zero": np.array(0, np.int64), "zero1": i64(0), "minus1": i64(-1), "st": i64(1),
            "en": i64(100), "ax": i64(0), "sp": i64(2), "ratio": np.array(0.5, np.float32)},
           outputs=("y", "mask", "y2"))


@pytest.mark.parametrize("mode,pads", [("constant", [0, 0, 1, 2, 0, 0, 2, 1]), ("reflect", [0, 0, 1, 2, 0, 0, 2, 1]),
                                       ("edge", [0, 1, 1, 0, 0, 0, 2, 3]), ("constant", [0, 0, -1, 2, 0, 0, 1, -2])])
def test_pad(mode, pads):
    inits = {"p": np.array(pads, np.int64), "v": np.array(0.5, np.float32)}
    _check([helper.make_node("Pad", ["x", "p"] + (["v"] if mode == "constant" else []), ["y"], mode=mode)],
           {"x": _rand(2, 3, 5, 6)}, inits)


# ---------------------------------------------------------------------------------------------
# LSTM and NMS


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("states", [False, True])
def test_lstm(direction, layout, states):
    T, B, I, H = 5, 3, 4, 6
    D = 2 if direction == "bidirectional" else 1
    inits = {"W": _rand(D, 4 * H, I, seed=1) * 0.5, "R": _rand(D, 4 * H, H, seed=2) * 0.5, "B": _rand(D, 8 * H, seed=3)}
    inputs = {"X": _rand(B, T, I) if layout else _rand(T, B, I)}
    names = ["X", "W", "R", "B"]
    if states:
        shape = (B, D, H) if layout else (D, B, H)
        inputs.update(h0=_rand(*shape, seed=4), c0=_rand(*shape, seed=5))
        names += ["", "h0", "c0"]
    node = helper.make_node("LSTM", names, ["Y", "Yh", "Yc"], hidden_size=H, direction=direction, layout=layout)
    if not layout:
        _check([node], inputs, inits, outputs=("Y", "Yh", "Yc"))
        return
    # ONNX Runtime's CPU LSTM refuses layout=1: compare with its layout-0 run on the same data
    node0 = helper.make_node("LSTM", names, ["Y", "Yh", "Yc"], hidden_size=H, direction=direction)
    time_first = {"X": inputs["X"].transpose(1, 0, 2)}
    time_first.update({k: inputs[k].transpose(1, 0, 2) for k in ("h0", "c0") if k in inputs})
    Y, Yh, Yc = _ort(_model([node0], time_first, inits, ("Y", "Yh", "Yc")), time_first)
    got = ponnx.load(_model([node], inputs, inits, ("Y", "Yh", "Yc"))).run(None, inputs)
    for g, e in zip(got, (Y.transpose(2, 0, 1, 3), Yh.transpose(1, 0, 2), Yc.transpose(1, 0, 2))):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_lstm_without_bias_and_only_last_state():
    T, B, I, H = 4, 2, 3, 5
    node = helper.make_node("LSTM", ["X", "W", "R"], ["", "Yh"], hidden_size=H)
    _check([node], {"X": _rand(T, B, I)}, {"W": _rand(1, 4 * H, I, seed=1), "R": _rand(1, 4 * H, H, seed=2)},
           outputs=("Yh",))


def _boxes(rng, batches, n, center):
    xy = rng.uniform(0, 20, (batches, n, 2))
    wh = rng.uniform(2, 8, (batches, n, 2))
    if center:
        return np.concatenate([xy + wh / 2, wh], axis=2).astype(np.float32)
    corners = np.concatenate([xy, xy + wh], axis=2)
    corners[:, ::3] = corners[:, ::3][:, :, [2, 3, 0, 1]]  # some boxes given by the other diagonal
    return corners.astype(np.float32)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("score_threshold", [None, 0.3])
def test_non_max_suppression(center, score_threshold):
    rng = np.random.default_rng(0)
    boxes = _boxes(rng, 2, 40, center)
    scores = rng.permutation(2 * 3 * 40).reshape(2, 3, 40).astype(np.float32) / 240  # distinct
    inits = {"k": np.array([5], np.int64), "iou": np.array([0.3], np.float32)}
    names = ["boxes", "scores", "k", "iou"]
    if score_threshold is not None:
        inits["st"] = np.array([score_threshold], np.float32)
        names.append("st")
    _check([helper.make_node("NonMaxSuppression", names, ["y"], center_point_box=center)],
           {"boxes": boxes, "scores": scores}, inits)


# ---------------------------------------------------------------------------------------------
# Refusals


def test_unsupported_node_is_named_with_its_opset():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first"),
             helper.make_node("Erf", ["r"], ["e"], name="my_erf"),
             helper.make_node("Einsum", ["e"], ["y"], name="later", equation="ij->ji")]
    with pytest.raises(ponnx.UnsupportedError, match=r"'my_erf' \(op_type Erf, domain 'ai.onnx', opset 17\)"):
        ponnx.load(_model(nodes, {"x": _rand(2, 3)}))


def test_unsupported_domain():
    model = _model([helper.make_node("FusedConv", ["x"], ["y"], name="fc", domain="com.microsoft")],
                   {"x": _rand(2, 3)})
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(ponnx.UnsupportedError, match="'fc' .*domain 'com.microsoft', opset 1"):
        ponnx.load(model)


@pytest.mark.parametrize("node,match", [
    (helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=2, clip=1.0), "clip"),
    (helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=2, activations=["Relu", "Tanh", "Tanh"]), "activations"),
    (helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=2, input_forget=1), "input_forget"),
    (helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[1, 1, 1]), "3-D"),
    (helper.make_node("Conv", ["X", "W"], ["Y"], auto_pad="WRONG"), "auto_pad"),
    (helper.make_node("MaxPool", ["X"], ["Y", "I"], kernel_shape=[2, 2], storage_order=1), "storage_order"),
    (helper.make_node("AveragePool", ["X"], ["Y"], kernel_shape=[2, 2], dilations=[2, 2]), "dilations"),
    (helper.make_node("BatchNormalization", ["X", "W", "W", "W", "W"], ["Y"], training_mode=1), "training_mode"),
    (helper.make_node("Pad", ["X", "W"], ["Y"], mode="mirror"), "mode"),
])
def test_unsupported_attribute_values(node, match):
    model = _model([node], {"X": _rand(1, 2, 4, 4), "W": _rand(8, 2, 1, 1), "R": _rand(1, 8, 2)})
    with pytest.raises(ponnx.UnsupportedError, match=match):
        ponnx.load(model)


def test_malformed_graphs():
    cycle = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["a"], ["y"])]
    with pytest.raises(ValueError, match="cycle"):
        ponnx.load(_model(cycle, {"x": _rand(2)}))
    with pytest.raises(ValueError, match="'nowhere', which no node"):
        ponnx.load(_model([helper.make_node("Add", ["x", "nowhere"], ["y"])], {"x": _rand(2)}))


def test_bad_feeds():
    graph = ponnx.load(_model([helper.make_node("Relu", ["x"], ["y"])], {"x": _rand(2, 3)}))
    with pytest.raises(ValueError, match="'x' is missing"):
        graph.run(None, {})
    with pytest.raises(TypeError, match="float32"):
        graph(x=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shape \[2, 3\]"):
        graph(x=_rand(3, 3))
    with pytest.raises(ValueError, match="not an output"):
        graph.run(["nope"], {"x": _rand(2, 3)})


def test_importing_pyconv_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, pyconv, pyconv.nn, pyconv.models; print('onnx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# Graphs exported by PyTorch

try:
    import torch
except ImportError:  # only the tests below need it
    torch = None


def _torch_lenet():
    tnn = torch.nn
    return tnn.Sequential(tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(6, 16, 5), tnn.ReLU(),
                          tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(),
                          tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10), tnn.Softmax(dim=1))


def _torch_dcgan_generator(z=16):
    tnn = torch.nn

    class Generator(tnn.Module):
        def __init__(self):
            super().__init__()
            self.net = tnn.Sequential(
                tnn.ConvTranspose2d(z, 64, 4, 1, 0, bias=False), tnn.BatchNorm2d(64), tnn.ReLU(),
                tnn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), tnn.BatchNorm2d(32), tnn.ReLU(),
                tnn.ConvTranspose2d(32, 1, 4, 2, 1), tnn.Tanh())

        def forward(self, noise):
            return self.net(noise.reshape(noise.shape[0], -1, 1, 1))
    return Generator()


def _torch_resnet():
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.down = None if stride == 1 and cin == cout else tnn.Sequential(
                tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.down is None else self.down(x)))

    return tnn.Sequential(tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU(),
                          Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
                          tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, 10))


def _randomise_batch_norms(model):
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def torch_onnx(model, example, exporter="torchscript"):
    """The graph PyTorch writes for `model`: its TorchScript-based exporter at opset 17, with
    constants folded ("torchscript") or not ("torchscript_unfolded"), or its default,
    torch.export-based one ("dynamo": opset 18 and later, which writes adaptive average pooling
    as a ReduceMean with its axes as an input)."""
    import warnings

    torch.manual_seed(0)
    _randomise_batch_norms(model)
    model.eval()
    args = (torch.from_numpy(example),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            return torch.onnx.export(model, args, dynamo=True, verbose=False).model_proto
        f = io.BytesIO()
        torch.onnx.export(model, args, f, dynamo=False, opset_version=17, input_names=["x"],
                          do_constant_folding=exporter == "torchscript")
    return onnx.load_from_string(f.getvalue())


@pytest.mark.torch
@pytest.mark.skipif(torch is None, reason="needs PyTorch")
@pytest.mark.parametrize("name,make,shape", [
    ("lenet", _torch_lenet, (4, 1, 32, 32)),
    ("dcgan_generator", _torch_dcgan_generator, (4, 16)),
    ("resnet", _torch_resnet, (2, 3, 32, 32)),
])
@pytest.mark.parametrize("exporter", ["torchscript", "torchscript_unfolded", "dynamo"])
def test_pytorch_exported_graphs(name, make, shape, exporter):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    x = _rand(*shape)
    model = torch_onnx(make(), x, exporter)
    opset = model.opset_import[0].version
    assert opset >= 18 if exporter == "dynamo" else opset == 17
    feeds = {model.graph.input[0].name: x}
    expected = _ort(model, feeds)[0]
    got = ponnx.load(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes,keepdims,shape", [
    ([2, 3], 1, (2, 3, 5, 4)), ([-1, -2], 0, (2, 3, 5, 4)), ([2], 0, (2, 3, 7)),
    ([1], 1, (2, 3, 5, 4)), ([0, 2, 3], 0, (2, 3, 5, 4)),
])
def test_reduce_mean_over_planes(opset, axes, keepdims, shape):
    """ReduceMean over exactly the spatial axes runs as a global average pool (axes as an
    attribute before opset 18, an input from it); other axes as NumPy's mean; ONNX Runtime's
    values and shapes either way."""
    node_inputs, inits = ["x"], {}
    attrs = dict(keepdims=keepdims)
    if opset >= 18:
        node_inputs.append("axes")
        inits["axes"] = np.array(axes, np.int64)
    else:
        attrs["axes"] = axes
    _check([helper.make_node("ReduceMean", node_inputs, ["y"], **attrs)], {"x": _rand(*shape)}, inits,
           opset=opset)


# ---------------------------------------------------------------------------------------------
# pyconv models exported to ONNX, run by ONNX Runtime


def _pyconv_outputs(fn, args):
    with pyconv.no_grad():
        out = fn(*[Tensor(a) if a.dtype.kind == "f" else a for a in args])
    return [t.data for t in ponnx._export._flatten(out)]


def _randomise_pyconv_batch_norms(model, rng):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.standard_normal(m.running_mean.shape) * 0.1
            m.running_var[...] = rng.random(m.running_var.shape) + 0.5


def _pyconv_models():
    from pyconv.models import DCGAN, VAE, CharLSTM, LeNet5, PixelCNN

    rng = np.random.default_rng(0)
    pyconv.manual_seed(0)
    gan = DCGAN(z_dim=16, image_size=16)
    cgan = DCGAN(z_dim=16, image_size=16, conditional=True, num_classes=10)
    vae = VAE(latent_dim=8, image_size=16)
    text = CharLSTM(vocab="abcdefg ", hidden_size=16, num_layers=2)
    resnet = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                           nn.ResidualBlock(8, 8), nn.ResidualBlock(8, 16, stride=2),
                           nn.AvgPool2d(2, padding=1, ceil_mode=True, count_include_pad=False),
                           nn.Flatten(), nn.Linear(16 * 5 * 5, 10), nn.Softmax(dim=1))
    for m in (gan, cgan, resnet):
        _randomise_pyconv_batch_norms(m, rng)
    return {
        "lenet": (LeNet5(), LeNet5(), (_rand(4, 1, 32, 32),)),
        "lenet_tanh_avg": (LeNet5(activation="tanh", pool="avg"), None, (_rand(2, 1, 32, 32),)),
        "dcgan_generator": (gan.generator, None, (_rand(4, 16),)),
        "cgan_generator": (cgan.generator, None, (_rand(4, 16), np.arange(4))),
        "cgan_discriminator": (cgan.discriminator, None, (_rand(4, 1, 16, 16), np.arange(4))),
        "vae_decoder": (vae, vae.decode, (_rand(4, 8),)),
        "vae_encoder": (vae, vae.encode, (_rand(2, 1, 16, 16),)),
        "charlstm": (text, None, (rng.integers(0, 8, (3, 6)),)),
        "resnet": (resnet, None, (_rand(2, 3, 16, 16),)),
        "pixelcnn": (PixelCNN(image_size=8, channels=4, n_layers=2, hidden=8), None,
                     ((_rand(2, 1, 8, 8) > 0).astype(np.float32),)),
        "masked_convs": (nn.Sequential(nn.MaskedConv2d("A", 2, 3, 5, padding=2),
                                       nn.MaskedConv2d("B", 3, 2, (1, 4), padding=(0, 1))),
                         None, (_rand(2, 2, 6, 7),)),
    }


@pytest.mark.parametrize("name", ["lenet", "lenet_tanh_avg", "dcgan_generator", "cgan_generator",
                                  "cgan_discriminator", "vae_decoder", "vae_encoder", "charlstm", "resnet", "pixelcnn",
                                  "masked_convs"])
def test_pyconv_models_exported_run_in_onnxruntime(name, tmp_path):
    model, fn, args = _pyconv_models()[name]
    fn = fn if fn is not None else model
    path = tmp_path / f"{name}.onnx"
    proto = ponnx.export(fn if fn is not model else model, args if len(args) > 1 else args[0], path)
    assert proto.opset_import[0].version == 17 and proto.ir_version == 8
    model.eval()
    expected = _pyconv_outputs(fn, args)
    feeds = {f"input_{k}" if len(args) > 1 else "input": a for k, a in enumerate(args)}
    got = _ort(onnx.load(path), feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
    for g, e in zip(ponnx.load(path).run(None, feeds), expected):  # and back into pyconv
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def _dims(values):
    return [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values]


def _more_samples(a, n, seed):
    rng = np.random.default_rng(seed)
    if a.dtype.kind == "f":
        return rng.standard_normal((n,) + a.shape[1:]).astype(a.dtype)
    return rng.integers(0, int(a.max()) + 1, (n,) + a.shape[1:]).astype(a.dtype)


@pytest.mark.parametrize("name", ["lenet", "cgan_generator", "cgan_discriminator", "vae_encoder", "resnet"])
def test_exported_batch_size_is_symbolic(name):
    """The graph, exported at one batch size, runs in ONNX Runtime and pyconv at others."""
    model, fn, args = _pyconv_models()[name]
    fn = fn if fn is not None else model
    proto = ponnx.export(fn, args if len(args) > 1 else args[0])
    assert all(dims[0] == "batch" for dims in _dims(proto.graph.input) + _dims(proto.graph.output))
    model.eval()
    for n in (1, 5):
        feeds = [_more_samples(a, n, seed=n) for a in args]
        expected = _pyconv_outputs(fn, feeds)
        names = [i.name for i in proto.graph.input]
        for got in (_ort(proto, dict(zip(names, feeds))), ponnx.load(proto).run(None, dict(zip(names, feeds)))):
            for g, e in zip(got, expected):
                np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_export_keeps_the_batch_size_where_the_model_fixes_it():
    model, _, args = _pyconv_models()["charlstm"]  # its default LSTM states are constants (layers, batch, H)
    assert _dims(ponnx.export(model, args[0]).graph.input) == [list(args[0].shape)]
    x = _rand(3, 2, 4)
    merged = ponnx.export(lambda t: t.reshape(-1, 4) * 2.0, x)  # batch and the next axis in one
    assert _dims(merged.graph.input) == [["batch", 2, 4]] and _dims(merged.graph.output) == [[0, 4]]
    np.testing.assert_allclose(_ort(merged, {"input": _rand(5, 2, 4)})[0], _rand(5, 2, 4).reshape(10, 4) * 2)
    fixed = ponnx.export(lambda t: t.reshape(2, 12), x)  # fails at another batch size: fixed
    assert _dims(fixed.graph.input) == [[3, 2, 4]]
    assert _dims(ponnx.export(nn.Linear(4, 2), _rand(3, 4), dynamic_batch=False).graph.input) == [[3, 4]]


def test_export_restores_training_mode_and_refuses_what_it_cannot_map():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2))
    model.train()
    ponnx.export(model, _rand(1, 1, 6, 6))
    assert model.training

    class Unpool(nn.Module):
        def forward(self, x):
            y, idx = nn.functional.max_pool2d(x, 2, return_indices=True)
            return nn.functional.max_unpool2d(y, idx, 2)

    with pytest.raises(ponnx.UnsupportedError, match="_MaxUnpool2d"):
        ponnx.export(Unpool(), _rand(1, 1, 4, 4))
    with pytest.raises(ponnx.UnsupportedError, match="divisor_override"):
        ponnx.export(lambda x: nn.functional.avg_pool2d(x, 2, divisor_override=3), _rand(1, 1, 4, 4))


def test_bench_compare_runs_a_graph_on_both(tmp_path):
    from pyconv.bench import onnx_graphs

    path = str(tmp_path / "lenet.onnx")
    onnx_graphs.built_in_graph("lenet", path)
    r = onnx_graphs.compare(path, reps=2, threads=1)
    assert r["max_abs_diff"] < 1e-4
    assert r["pyconv_s"] > 0 and r["onnxruntime_s"] > 0
    assert "Conv" in r["pyconv_per_op"] and "MaxPool+Relu" in r["pyconv_per_op"]
    assert "| Conv |" in onnx_graphs.format_result(r)


def test_bench_runs_a_built_in_graph_at_a_given_batch(capsys):
    """`pyconv bench --onnx lenet --batch 3`: the graph is written even when the batch size is
    not its own."""
    from pyconv.bench import onnx_graphs

    (r,) = onnx_graphs.main(["lenet"], batch=3, reps=1, threads=1)
    assert r["max_abs_diff"] < 1e-4
    assert "lenet" in capsys.readouterr().out


def test_bench_conv2d_has_an_onnxruntime_anchor(monkeypatch):
    """pyconv bench times conv2d against a one-node ONNX Runtime graph too, computing the same."""
    import pyconv.bench as bench

    case = next(c for c in bench.cases(quick=True) if c.op == "conv2d" and c.name.startswith("LeNet conv2"))
    inputs = case.make(np.random.default_rng(0))
    (y,) = case.baselines["onnxruntime"](inputs)()
    np.testing.assert_allclose(y, case.run(inputs, "cpu"), rtol=RTOL, atol=ATOL)
    monkeypatch.setattr(bench, "cases", lambda quick: [case])
    monkeypatch.setattr(bench, "measure_limits", lambda: bench.Limits(100.0, 10.0))  # not what is tested
    rows, limits, _ = bench.run(quick=True, backends=["cpu"], reps=1, progress=False, threads=1)
    cpu = next(r for r in rows if r.impl == "cpu")
    assert cpu.vs_onnxruntime > 0 and any(r.impl == "onnxruntime" and r.ms > 0 for r in rows)
    assert "| x ort |" in bench.format_table(rows, limits)


def test_reference_backend_runs_the_same_graph():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("Gemm", ["f", "g"], ["y"], transB=1)]
    model = _model(nodes, {"x": _rand(2, 3, 4, 4)}, {"w": _rand(2, 3, 3, 3, seed=1), "g": _rand(5, 32, seed=2)})
    graph = ponnx.load(model)
    with pyconv.use_backend("reference"):
        np.testing.assert_allclose(graph(x=_rand(2, 3, 4, 4)), _ort(model, {"x": _rand(2, 3, 4, 4)})[0],
                                   rtol=RTOL, atol=ATOL)


def test_cli_bench_onnx_file(tmp_path, capsys):
    from pyconv import cli

    path = str(tmp_path / "small.onnx")
    ponnx.export(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2)), _rand(2, 1, 8, 8), path)
    cli.main(["bench", "--onnx", path, "--reps", "2", "--threads", "1", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "small.onnx: pyconv" in out and "| MaxPool |" in out
    with pytest.raises(SystemExit, match="neither a file nor"):
        cli.main(["bench", "--onnx", str(tmp_path / "missing.onnx")])


def test_generated_runner_makes_the_node_loops_calls():
    """A run without per-node timings goes through one generated function (each value a local,
    each step a line): it gives the node loop's results, multi-output nodes included, and its
    source never holds a node's name (text from the file: a name with a line break and code in
    it stays a name)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="c\nimport os; os._exit(3)\n#"),
             helper.make_node("MaxPool", ["c"], ["p", "idx"], kernel_shape=[2, 2], name="\"'\\"),
             helper.make_node("Relu", ["p"], ["y"])]
    model = _model(nodes, {"x": _rand(2, 3, 6, 6)}, {"w": _rand(4, 3, 3, 3, seed=1)}, outputs=("y", "idx"))
    graph = ponnx.load(model)
    assert "import" not in graph._run_data.source and "os." not in graph._run_data.source
    feeds = {"x": _rand(2, 3, 6, 6, seed=2)}
    generated, looped, expected = graph.run(None, feeds), graph.run(None, feeds, timings=[]), _ort(model, feeds)
    for g, l, e in zip(generated, looped, expected):
        np.testing.assert_array_equal(g, l)
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_generated_runner_releases_each_value_after_its_last_use():
    """The generated function drops an intermediate as soon as no later step reads it (a graph's
    peak memory is then its largest live set, not the sum of its values)."""
    import weakref

    from pyconv.onnx._graph import _straight_line
    made = []

    def make(x):
        a = x + 1
        made.append(weakref.ref(a))
        return a

    def probe(b):
        assert made[0]() is None, "a value outlived its last use"
        return b * 2
    # steps as Graph._steps: (fn, input slots, output slot, output slots, slots to drop, name, op)
    steps = [(make, (1,), 2, (2,), (), "make", "Make"),
             (lambda a: a + 1, (2,), 3, (3,), (2,), "add", "Add"),
             (probe, (3,), 4, (4,), (3,), "probe", "Probe")]
    env = _straight_line(steps, [4])([None, np.zeros(3), None, None, None])
    np.testing.assert_array_equal(env[4], [4, 4, 4])
    assert made[0]() is None


@pytest.mark.parametrize("measured", ["x", "x2"])
def test_shape_arithmetic_is_done_once_per_input_shape(measured):
    """x (N, 3, 4) reshaped to (N, 12) through Shape -> Gather -> Unsqueeze -> Concat, as
    exporters write a dynamic Flatten: those nodes run on the first call of each input shape
    only where the Shape is a graph input's (an intermediate value's shape may depend on the
    data: then every call); the results follow every change of shape, and a shape value that
    is also a graph output is the caller's to change."""
    nodes = [helper.make_node("Abs", ["x"], ["x2"]),
             helper.make_node("Shape", [measured], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"]),
             helper.make_node("Shape", ["y"], ["ys"])]
    consts = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "rest": np.array([12], np.int64)}
    model = _model(nodes, {"x": _rand(2, 3, 4)}, consts, outputs=("y", "ys"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph = ponnx.load(model)
    seen = set()
    for n in (2, 5, 2, 5, 1):
        x = _rand(n, 3, 4, seed=n)
        timings = []
        y, ys = graph.run(None, {"x": x}, timings=timings)
        np.testing.assert_array_equal(y, np.maximum(x.reshape(n, 12), 0))
        np.testing.assert_array_equal(ys, [n, 12])
        ys[...] = -1  # the caller's array: the next run must not see it
        ran = [op for _, op, _ in timings]
        assert "Reshape" in ran and "Relu" in ran
        assert ("Concat" in ran) == (n not in seen or measured != "x")
        seen.add(n)
