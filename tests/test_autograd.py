"""pyconv.autograd: Tensor arithmetic, reductions, shapes and the backward pass, checked with
finite differences (float64) and against PyTorch where it is installed."""
import numpy as np
import pytest

import pyconv
from pyconv import Tensor
from pyconv.autograd import broadcast_to, concatenate, stack
from pyconv.testing import gradcheck

try:
    import torch
except ImportError:  # the PyTorch comparisons skip
    torch = None


def t(shape, seed=0, requires_grad=True, low=-1.0, high=1.0):
    rng = np.random.default_rng(seed)
    return Tensor(rng.uniform(low, high, shape), requires_grad=requires_grad)


# --- gradients of every primitive, by finite differences

GRAD_CASES = {
    "add_broadcast": (lambda a, b: a + b, [(3, 4), (4,)]),
    "sub_broadcast": (lambda a, b: a - b, [(2, 1, 4), (3, 1)]),
    "mul_broadcast": (lambda a, b: a * b, [(3, 4), (3, 1)]),
    "div": (lambda a, b: a / (b * b + 1), [(3, 4), (1, 4)]),
    "scalar_ops": (lambda a: 2 - a * 3 + 1 / (a * a + 2) - (-a) / 4, [(5,)]),
    "pow": (lambda a: (a * a + 1) ** 1.5, [(2, 3)]),
    "sqrt_exp_log_abs": (lambda a: (a * a + 1).sqrt() + a.exp() + (a.abs() + 1).log(), [(4,)]),
    "clip": (lambda a: a.clip(-0.5, 0.3), [(20,)]),
    "matmul_2d": (lambda a, b: a @ b, [(3, 4), (4, 2)]),
    "matmul_batched_broadcast": (lambda a, b: a @ b, [(2, 3, 4), (4, 5)]),
    "matmul_vec_mat": (lambda a, b: a @ b, [(4,), (4, 3)]),
    "matmul_mat_vec": (lambda a, b: a @ b, [(3, 4), (4,)]),
    "matmul_vec_vec": (lambda a, b: a @ b, [(4,), (4,)]),
    "matmul_transposed_views": (lambda a, b: a.T @ b.T, [(4, 3), (2, 4)]),
    "matmul_row_times_matrix": (lambda a, b: a @ b[::2], [(1, 3), (6, 2)]),
    "sum_all": (lambda a: a.sum(), [(3, 4)]),
    "sum_axis": (lambda a: a.sum(axis=(0, 2)), [(2, 3, 4)]),
    "sum_keepdims": (lambda a: a.sum(axis=1, keepdims=True) * a, [(2, 3)]),
    "mean": (lambda a: a.mean(axis=-1), [(2, 5)]),
    "var": (lambda a: a.var(axis=0), [(4, 3)]),
    "max_all": (lambda a: a.max(), [(3, 4)]),
    "max_axis": (lambda a: a.max(axis=1), [(3, 4)]),
    "max_axis_keepdims": (lambda a: a.max(axis=(0, 2), keepdims=True), [(2, 3, 4)]),
    "reshape_transpose": (lambda a: a.reshape(4, 6).T.reshape(2, 3, 4).transpose(2, 0, 1), [(2, 3, 4)]),
    "flatten": (lambda a: a.flatten(1), [(2, 3, 4)]),
    "transpose_negative_axes": (lambda a: a.transpose(1, -1, 0) * np.arange(24.0).reshape(3, 4, 2), [(2, 3, 4)]),
    "getitem_basic": (lambda a: a[1:, ::2, None], [(3, 4)]),
    "getitem_advanced_repeats": (lambda a: a[[0, 2, 0, 0]], [(3, 4)]),
    "getitem_pairs": (lambda a: a[np.array([0, 1, 1]), np.array([3, 0, 0])], [(2, 4)]),
    "concatenate": (lambda a, b: concatenate([a, b, a], axis=1), [(2, 3), (2, 1)]),
    "broadcast_to": (lambda a, b: concatenate([broadcast_to(a, (2, 3, 4, 5)), b], axis=1) * b.sum(),
                     [(3, 1, 1), (2, 1, 4, 5)]),
    "stack": (lambda a, b: stack([a, b * 2], axis=1), [(2, 3), (2, 3)]),
    "astype_roundtrip": (lambda a: a.astype(np.float64) * 2, [(3,)]),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradcheck_primitives(name):
    fn, shapes = GRAD_CASES[name]
    inputs = [t(s, seed=i) for i, s in enumerate(shapes)]
    assert gradcheck(fn, inputs)


def test_matrix_products_run_on_the_matmul_kernel(monkeypatch):
    # Two float matrices go to ops.matmul (pyconv's GEMM on its own threads), a transposed
    # view as its contiguous base with the flag flipped; anything else stays with NumPy.
    import pyconv.ops
    calls, kernel = [], pyconv.ops.matmul
    monkeypatch.setattr(pyconv.ops, "matmul", lambda a, b, ta, tb: calls.append((a, b, ta, tb)) or kernel(a, b, ta, tb))
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    a, b = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    y = a @ b.T
    np.testing.assert_allclose(y.data, x @ w.T, rtol=1e-6)
    (a0, b0, ta, tb), = calls
    assert np.shares_memory(a0, x) and np.shares_memory(b0, w) and (ta, tb) == (False, True)  # no copies
    y.sum().backward()
    assert len(calls) == 3
    np.testing.assert_allclose(a.grad, np.ones((5, 4), np.float32) @ w, rtol=1e-6)
    np.testing.assert_allclose(b.grad, (x.T @ np.ones((5, 4), np.float32)).T, rtol=1e-6)
    Tensor(np.ones((2, 3), np.int64)) @ Tensor(np.ones((3, 2), np.int64))  # integers: NumPy's product
    Tensor(np.ones((2, 5, 3), np.float32)) @ Tensor(w.T.copy())  # batched: NumPy's product
    assert len(calls) == 3


# --- the graph


def test_gradients_accumulate_across_backward_calls():
    a = t((3,))
    (a * 2).sum().backward()
    (a * 3).sum().backward()
    np.testing.assert_allclose(a.grad, np.full(3, 5.0))


def test_shared_subexpression_gets_both_gradients():
    a = t((3,), seed=3)
    b = a * a
    (b + b * a).sum().backward()  # d/da (a^2 + a^3) = 2a + 3a^2
    np.testing.assert_allclose(a.grad, 2 * a.data + 3 * a.data ** 2)


def test_diamond_graph_runs_each_backward_once():
    a = t((2,), seed=1)
    b = a.exp()
    c = b * 2 + b * 3  # two consumers of b
    c.sum().backward()
    np.testing.assert_allclose(a.grad, 5 * np.exp(a.data))


def test_deep_chain_does_not_recurse():
    a = t((1,))
    y = a
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    assert a.grad[0] == 1.0


def test_backward_frees_the_graph_and_a_second_pass_says_retain_graph():
    import weakref

    a = t((3,))
    h = a * 3
    alive = weakref.ref(h)
    y = (h * h).sum()
    del h
    y.backward()
    assert alive() is None  # freed with the graph though y (its consumer's output) lives on
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()
    b = t((3,))
    z = (b * b).sum()
    z.backward(retain_graph=True)
    z.backward()
    np.testing.assert_allclose(b.grad, 4 * b.data)


def test_the_graph_holds_no_intermediate_array_that_no_backward_saved():
    """A sum saves nothing for its backward: once the caller drops its inputs, their arrays
    are freed before the backward pass runs, and the gradients still reach the leaves."""
    import weakref

    a = t((3,))
    h, k = a * 3, a * 2
    alive_h, alive_k = weakref.ref(h.data), weakref.ref(k.data)
    y = (h + k).sum()
    del h, k
    assert alive_h() is None and alive_k() is None
    y.backward()
    np.testing.assert_allclose(a.grad, np.full(3, 5.0))


def test_a_new_graph_on_a_freed_one_cannot_reach_through_it():
    a = t((3,))
    h = a * 2
    h.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        (h * h).sum().backward()


def test_summed_gradients_never_write_into_arrays_seen_elsewhere():
    """Gradients meeting at a tensor are summed in place only into arrays the pass made: the
    caller's seed gradient, the arrays a backward passes through unchanged and a .grad from an
    earlier pass stay as they were."""
    a = t((2, 3))
    seed = np.ones((2, 3))
    y = a.reshape(2, 3)  # backward hands the seed itself to a
    (y + y + y + y).backward(seed)
    np.testing.assert_array_equal(seed, np.ones((2, 3)))
    np.testing.assert_array_equal(a.grad, np.full((2, 3), 4.0))
    earlier = a.grad
    b = a * 1
    (b + b + b).sum().backward()
    np.testing.assert_array_equal(earlier, np.full((2, 3), 4.0))
    np.testing.assert_array_equal(a.grad, np.full((2, 3), 7.0))


def test_a_later_pass_adds_into_a_grad_only_the_leaf_holds():
    """As PyTorch's gradient accumulation: a .grad that nothing else refers to takes the next
    pass's gradient in place (no new array per pass); one the caller kept, a view and the
    caller's own seed array are replaced by a new sum instead."""
    a = t((2, 3))
    (a * 2).sum().backward()
    first = id(a.grad)
    (a * 3).sum().backward()
    assert id(a.grad) == first
    np.testing.assert_array_equal(a.grad, np.full((2, 3), 5.0))

    kept = a.grad
    (a * 1).sum().backward()
    np.testing.assert_array_equal(kept, np.full((2, 3), 5.0))
    np.testing.assert_array_equal(a.grad, np.full((2, 3), 6.0))

    storage = np.zeros((4, 3))
    a.grad = storage[:2]  # a view: its memory is also storage's
    del kept
    (a * 1).sum().backward()
    np.testing.assert_array_equal(storage, np.zeros((4, 3)))
    np.testing.assert_array_equal(a.grad, np.ones((2, 3)))

    b = t((2, 3))
    seed = np.ones((2, 3))
    b.reshape(2, 3).backward(seed)  # b.grad is the seed array itself, which the caller holds
    b.reshape(2, 3).backward(seed)
    np.testing.assert_array_equal(seed, np.ones((2, 3)))
    np.testing.assert_array_equal(b.grad, np.full((2, 3), 2.0))


def test_a_tensor_sliced_step_by_step_gets_the_summed_gradient():
    """Indexing adds its gradient into the input's in place (basic and advanced indices,
    repeated positions included)."""
    x = t((5, 3), seed=4)
    h = x * 2
    w = np.arange(1.0, 6.0)
    parts = [h[i] * w[i] for i in range(5)] + [h[[0, 0, 4]], h[1:3] * 10]
    total = parts[0]
    for p in parts[1:5]:
        total = total + p
    (total.sum() + parts[5].sum() + parts[6].sum()).backward()
    expected = np.broadcast_to(w[:, None], (5, 3)).copy()
    expected[0] += 2
    expected[4] += 1
    expected[1:3] += 10
    np.testing.assert_allclose(x.grad, 2 * expected)


@pytest.mark.parametrize("rows, index, trailing, dtype", [
    (36, (100, 32), (32,), np.float32),  # an embedding's gradient: many repeats per row
    (5, (7,), (3, 4), np.float64),
    (1000, (3,), (2,), np.float32),      # rows never used stay as they were
    (4, (0,), (3,), np.float64),
    (6, (2, 3), (), np.float32),         # a vector target: np.add.at
])
@pytest.mark.parametrize("negative", [False, True])
def test_scatter_add_matches_np_add_at(rows, index, trailing, dtype, negative):
    """scatter_add sums the rows of one integer index by runs of equal indices; -1 and rows-1
    name one row."""
    from pyconv.autograd import scatter_add

    rng = np.random.default_rng(0)
    idx = rng.integers(-rows if negative else 0, rows, index)
    values = rng.standard_normal(index + trailing).astype(dtype)
    target = rng.standard_normal((rows,) + trailing).astype(dtype)
    expected = target.copy()
    np.add.at(expected, idx, values)
    scatter_add(target, idx, values)
    np.testing.assert_allclose(target, expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("bad", [3, -4])
def test_scatter_add_rows_out_of_range_raises(bad):
    from pyconv.autograd import scatter_add

    with pytest.raises(IndexError):
        scatter_add(np.zeros((3, 2)), np.array([0, bad]), np.ones((2, 2)))


def test_no_grad_records_nothing():
    a = t((3,))
    with pyconv.no_grad():
        b = a * 2
    assert not b.requires_grad and b.is_leaf
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        b.sum().backward()


def test_enable_grad_inside_no_grad():
    a = t((3,))
    with pyconv.no_grad():
        with pyconv.enable_grad():
            b = a * 2
    assert b.requires_grad


def test_detach_cuts_the_graph():
    a = t((3,))
    b = (a * 2).detach()
    c = (b * a).sum()
    c.backward()
    np.testing.assert_allclose(a.grad, b.data)


def test_inputs_without_requires_grad_get_no_grad():
    a, b = t((3,)), t((3,), requires_grad=False)
    (a * b).sum().backward()
    assert b.grad is None and a.grad is not None


def test_backward_needs_scalar_or_grad():
    a = t((3,))
    with pytest.raises(ValueError, match="one-element"):
        (a * 2).backward()
    (a * 2).backward(np.ones(3))
    np.testing.assert_allclose(a.grad, 2)
    with pytest.raises(ValueError, match=r"grad has shape \(2,\), expected \(3,\)"):
        (a * 2).backward(np.ones(2))


def test_mixed_precision_is_a_type_error():
    a = Tensor(np.ones(3, np.float32))
    b = Tensor(np.ones(3, np.float64))
    with pytest.raises(TypeError, match="float32 and float64"):
        a + b
    with pytest.raises(TypeError, match="different dtypes"):
        concatenate([a, b])


def test_python_scalars_keep_float32():
    a = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = (a * 0.5 + 1) / 3
    assert y.dtype == np.float32
    y.sum().backward()
    assert a.grad.dtype == np.float32


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)


def test_broadcast_to_is_a_view_and_refuses_what_does_not_broadcast():
    a = t((3, 1))
    y = broadcast_to(a, (2, 3, 4))
    assert y.shape == (2, 3, 4) and np.shares_memory(y.data, a.data)  # nothing copied
    y.sum().backward()
    np.testing.assert_array_equal(a.grad, np.full((3, 1), 8.0))
    for shape in ((2, 1), (4,), (2, 4, 4)):
        with pytest.raises(ValueError, match=r"broadcast_to.*\(3, 1\)"):
            broadcast_to(a, shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_broadcast_gradient_sums_rows_as_numpy(dtype):
    # A bias added to 260 and 300 x 2 rows: its gradient summed on the matmul kernel (sum_rows);
    # a stretched axis beside the added ones still goes to NumPy.
    rng = np.random.default_rng(5)
    for x_shape, b_shape in (((260, 7), (7,)), ((300, 2, 3), (2, 3)), ((300, 4, 3), (1, 3))):
        b = Tensor(rng.standard_normal(b_shape).astype(dtype), requires_grad=True)
        g = rng.standard_normal(x_shape).astype(dtype)
        (Tensor(np.zeros(x_shape, dtype)) + b).backward(g)
        lead = len(x_shape) - len(b_shape)
        expected = g.sum(axis=tuple(range(lead))).sum(axis=tuple(i for i, n in enumerate(b_shape) if n == 1),
                                                       keepdims=True)
        np.testing.assert_allclose(b.grad, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_stack_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        stack([t((2,)), t((3,))])


def test_ndarray_on_the_left_defers_to_tensor():
    a = t((3,))
    y = np.full(3, 2.0) * a
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_allclose(a.grad, 2)


def test_to_cpu_is_identity_and_bad_device_raises():
    a = t((2,))
    assert a.to("cpu") is a
    with pytest.raises(ValueError, match="device"):
        a.to("tpu")


# --- against PyTorch


@pytest.mark.torch
@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_composite_expression_matches_torch():
    rng = np.random.default_rng(5)
    xa, wa, ba = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal(5)
    x, w, b = (Tensor(v, requires_grad=True) for v in (xa, wa, ba))
    tx, tw, tb = (torch.tensor(v, requires_grad=True) for v in (xa, wa, ba))
    y = ((x @ w + b).exp().mean(axis=0) - (x[1:, :2] ** 2).sum()).max()
    ty = ((tx @ tw + tb).exp().mean(dim=0) - (tx[1:, :2] ** 2).sum()).max()
    y.backward()
    ty.backward()
    np.testing.assert_allclose(y.item(), ty.item(), rtol=1e-12)
    for mine, theirs in ((x, tx), (w, tw), (b, tb)):
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


# --- save / load


def test_save_load_roundtrip_nested(tmp_path):
    state = {"w": np.arange(6.0).reshape(2, 3), "n": 3, "s": "hello",
             "inner": {"a": np.float32(1.5), "empty": {}}, "t": Tensor(np.ones(2))}
    path = tmp_path / "ck.npz"
    pyconv.save(state, path)
    back = pyconv.load(path)
    np.testing.assert_array_equal(back["w"], state["w"])
    assert back["n"].item() == 3 and str(back["s"]) == "hello"
    assert back["inner"]["a"].dtype == np.float32 and back["inner"]["empty"] == {}
    np.testing.assert_array_equal(back["t"], np.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]  # no temporary file left


def test_save_is_atomic_when_writing_fails(tmp_path):
    path = tmp_path / "ck.npz"
    pyconv.save({"w": np.ones(3)}, path)
    with pytest.raises(TypeError):
        pyconv.save({"w": np.ones(3), "bad": object()}, path)
    np.testing.assert_array_equal(pyconv.load(path)["w"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]


@pytest.mark.parametrize("keep", [0, 10, 100, -30])
def test_load_truncated_checkpoint_raises_clear_error(tmp_path, keep):
    path = tmp_path / "ck.npz"
    pyconv.save({"w": np.arange(100.0), "v": np.ones(50)}, path)
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(pyconv.CheckpointError, match="truncated or corrupt"):
        pyconv.load(path)


def test_load_missing_file():
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pyconv.load("/nonexistent/ck.npz")


def test_comparisons_give_boolean_tensors_outside_the_graph():
    a = t((4,), seed=2)
    pred = Tensor(np.array([[0.1, 0.9], [0.8, 0.2]])).argmax(axis=1)
    assert (pred == np.array([1, 1])).data.tolist() == [True, False]
    assert (pred == np.array([1, 1])).mean().item() == 0.5
    assert not (a > 0).requires_grad and (a > 0).dtype == bool
    assert ((a >= 0).data == (a.data >= 0)).all() and ((a < a).data == False).all()  # noqa: E712
    assert len({a, a.detach()}) == 2  # hashable by identity


@pytest.mark.parametrize("axis", [None, 1])
def test_max_gradient_keeps_the_dtype_and_splits_ties(axis):
    a = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], np.float32), requires_grad=True)
    a.max(axis=axis).sum().backward()
    expected = [[0, 0.5, 0.5], [0, 0, 0]] if axis is None else [[0, 0.5, 0.5], [1, 0, 0]]
    np.testing.assert_array_equal(a.grad, np.array(expected, np.float32))


def test_max_passes_a_float32_gradient_to_the_kernels_before_it():
    """A max over a conv1d's output (global max pooling): the conv's backward kernel takes
    only gradients of its own dtype."""
    import pyconv.nn.functional as F

    x = Tensor(np.ones((2, 3, 8), np.float32), requires_grad=True)
    w = Tensor(np.full((4, 3, 3), 0.1, np.float32), requires_grad=True)
    F.conv1d(x, w).max(axis=2).sum().backward()
    assert x.grad.dtype == w.grad.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Hooks: post-accumulate-grad hooks and end-of-pass callbacks (what data-parallel training uses)


def test_post_accumulate_grad_hook_runs_once_when_the_gradient_is_final():
    from pyconv.autograd.engine import queue_callback

    x, w = t((3,), 1), t((3,), 2)
    events = []
    w.register_post_accumulate_grad_hook(lambda p: events.append(("w", p.grad.copy())))
    x.register_post_accumulate_grad_hook(lambda p: events.append(("x", p.grad.copy())))
    x.register_post_accumulate_grad_hook(lambda p: queue_callback(lambda: events.append("end")))
    y = (x * w * x).sum() + (w * 3).sum()  # x used twice in one product, w in two branches
    y.backward()
    names = [e if isinstance(e, str) else e[0] for e in events]
    assert sorted(names[:2]) == ["w", "x"] and names[2:] == ["end"]
    grads = dict(e for e in events if not isinstance(e, str))
    np.testing.assert_allclose(grads["x"], 2 * x.data * w.data)  # every contribution is in
    np.testing.assert_allclose(grads["w"], x.data ** 2 + 3)


def test_current_pass_numbers_the_passes_even_one_an_exception_ended():
    from pyconv.autograd.engine import current_pass

    x = t((3,), 1)
    seen = []
    record = x.register_post_accumulate_grad_hook(lambda p: seen.append(current_pass()))
    assert current_pass() is None
    (x * 2).sum().backward()
    fail = x.register_post_accumulate_grad_hook(lambda p: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        (x * 2).sum().backward()
    assert current_pass() is None
    fail.remove()
    (x * 2).sum().backward()
    record.remove()
    assert seen[0] < seen[1] < seen[2]


def test_hooks_of_the_last_layer_run_before_those_of_the_first():
    from pyconv import nn

    pyconv.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    order = []
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, name=name: order.append((name, p.grad is not None)))
    model(Tensor(np.ones((2, 3), np.float32))).sum().backward()
    assert {n for n, _ in order} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(has_grad for _, has_grad in order)
    assert max(order.index(("2.weight", True)), order.index(("2.bias", True))) < \
        min(order.index(("0.weight", True)), order.index(("0.bias", True)))


def test_hook_removal_frozen_tensors_and_misuse():
    from pyconv.autograd.engine import queue_callback

    x, frozen = t((2,), 1), t((2,), 2, requires_grad=False)
    calls = []
    handle = x.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    frozen.register_post_accumulate_grad_hook(lambda p: calls.append("frozen"))
    (x * frozen).sum().backward()
    handle.remove()
    handle.remove()  # a second remove does nothing
    (x * frozen).sum().backward()
    assert calls == [1]
    with pytest.raises(RuntimeError, match="leaf"):
        (x * 2).register_post_accumulate_grad_hook(lambda p: None)
    with pytest.raises(TypeError, match="callable"):
        x.register_post_accumulate_grad_hook(3)
    with pytest.raises(RuntimeError, match="no backward pass"):
        queue_callback(lambda: None)


def test_a_hook_on_a_root_leaf_and_on_an_unused_input():
    x, unused = t((2,), 1), t((2,), 2)
    calls = []
    x.register_post_accumulate_grad_hook(lambda p: calls.append("x"))
    unused.register_post_accumulate_grad_hook(lambda p: calls.append("unused"))
    x.backward(np.ones(2))  # the root is the leaf itself
    assert calls == ["x"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_sums_run_threaded_with_numpys_bits(dtype):
    """Tensor + Tensor and the backward pass's gradient sums add large arrays on pyconv's
    threads: the same bits as NumPy, subnormal sums kept (the kernels elsewhere flush them)."""
    from pyconv.autograd.engine import add_arrays

    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 50001)).astype(dtype)
    b = rng.standard_normal((3, 50001)).astype(dtype)
    tiny = np.finfo(dtype).tiny
    a[0, :4] = [tiny, -tiny, 3 * tiny, 1e-3]
    b[0, :4] = [-tiny / 2, tiny / 4, -2.5 * tiny, -1e-3]  # sums below the normal range
    expected = a + b
    assert np.count_nonzero(np.abs(expected[0, :3]) < tiny) == 3
    got = add_arrays(a, b)
    assert got.dtype == dtype and got.tobytes() == expected.tobytes()
    assert (Tensor(a) + Tensor(b)).data.tobytes() == expected.tobytes()
    total = a.copy()
    assert add_arrays(total, b, in_place=True) is total and total.tobytes() == expected.tobytes()
    # Shapes, dtypes or layouts the kernel does not take: NumPy's operators.
    assert np.array_equal(add_arrays(a, b[:1]), a + b[:1])
    assert np.array_equal(add_arrays(a[:, ::2], b[:, ::2]), a[:, ::2] + b[:, ::2])
    assert np.array_equal(add_arrays(a, b.astype(np.float16)), a + b.astype(np.float16))
