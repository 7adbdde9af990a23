"""pyconv.optim against torch.optim: identical parameter trajectories from identical gradients;
state save/restore; argument errors."""
import numpy as np
import pytest

import pyconv
import pyconv.nn as nn
import pyconv.nn.functional as F
from pyconv import Tensor
from pyconv import ops
from pyconv.optim import SGD, Adam, AdamW

try:
    import torch
except ImportError:
    torch = None

def needs_torch(test):
    """Marks a PyTorch comparison (`-m "not torch"` deselects it); skips it without PyTorch."""
    return pytest.mark.torch(pytest.mark.skipif(torch is None, reason="PyTorch not installed")(test))

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.5, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.003, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.003, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1)),
]


@needs_torch
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{'-'.join(k)}" for n, k in CONFIGS])
def test_steps_match_torch(name, kwargs):
    rng = np.random.default_rng(0)
    w0 = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    mine = [Tensor(w.copy(), requires_grad=True) for w in w0]
    theirs = [torch.tensor(w.copy(), requires_grad=True) for w in w0]
    opt = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name](mine, **kwargs)
    topt = getattr(torch.optim, name)(theirs, **kwargs)
    for step in range(6):
        opt.zero_grad()
        topt.zero_grad()
        grads = [rng.standard_normal(w.shape) for w in w0]
        for p, tp, g in zip(mine, theirs, grads):
            if step == 2 and p.ndim == 1:
                continue  # a step without a gradient for this parameter: it must not move
            p.grad, tp.grad = g.copy(), torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(mine, theirs):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@needs_torch
def test_training_a_model_matches_torch_step_by_step():
    """A small MLP trained with Adam from the same weights on the same batches stays equal."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    mine = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    mine.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    opt, topt = Adam(mine.parameters(), lr=0.05), torch.optim.Adam(theirs.parameters(), lr=0.05)
    for i in range(0, 16, 4):
        loss = F.cross_entropy(mine(Tensor(x[i:i + 4])), y[i:i + 4])
        tloss = torch.nn.functional.cross_entropy(theirs(torch.tensor(x[i:i + 4])), torch.tensor(y[i:i + 4]))
        opt.zero_grad(); loss.backward(); opt.step()
        topt.zero_grad(); tloss.backward(); topt.step()
        np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-10)
    for (k, v), tv in zip(mine.state_dict().items(), theirs.state_dict().values()):
        np.testing.assert_allclose(v, tv.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("cls,kwargs", [(SGD, dict(lr=0.1, momentum=0.9)), (Adam, dict(lr=0.01))])
def test_state_dict_roundtrip_continues_identically(tmp_path, cls, kwargs):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(3) for _ in range(4)]
    a = Tensor(np.ones(3), requires_grad=True)
    opt = cls([a], **kwargs)
    for g in grads[:2]:
        a.grad = g
        opt.step()
    pyconv.save(opt.state_dict(), tmp_path / "opt.npz")
    b = Tensor(a.data.copy(), requires_grad=True)
    opt_b = cls([b], **kwargs).load_state_dict(pyconv.load(tmp_path / "opt.npz"))
    for g in grads[2:]:
        a.grad, b.grad = g, g
        opt.step()
        opt_b.step()
    assert np.array_equal(a.data, b.data)


def test_errors():
    p = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        SGD([p], lr=0)
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam([p], betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="parameter 0 is a ndarray"):
        SGD([np.ones(2)], lr=0.1)
    with pytest.raises(ValueError, match="state is for 2 parameters"):
        SGD([p], lr=0.1).load_state_dict({"lr": 0.1, "state": {"0": {}, "1": {}}})


def test_weight_decay_equals_l2_penalty_gradient():
    """SGD's weight_decay=wd is the gradient of the penalty (wd / 2) * sum w^2."""
    w0 = np.random.default_rng(3).standard_normal(4)
    a, b = Tensor(w0.copy(), requires_grad=True), Tensor(w0.copy(), requires_grad=True)
    SGD_a, SGD_b = SGD([a], lr=0.1, weight_decay=0.2), SGD([b], lr=0.1)
    (a * 1.0).sum().backward()
    ((b * 1.0).sum() + nn.l2_penalty([b], 0.1)).backward()
    SGD_a.step()
    SGD_b.step()
    np.testing.assert_allclose(a.data, b.data, rtol=1e-14)


# --------------------------------------------------------------------------------------------
# Every backend's step kernels against the reference's NumPy arithmetic, bit for bit: each
# element goes through the same roundings (scalars rounded to the dtype first, no fused
# multiply-adds). Values stay in the normal range (the C++ kernels flush subnormals to zero).

STEP_CASES = {
    "sgd": dict(lr=0.05),
    "sgd_momentum_decay": dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd_dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "sgd_nesterov": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": dict(lr=1e-2),
    "adam_decay": dict(lr=1e-2, weight_decay=1e-2),
    "adamw": dict(lr=1e-2, weight_decay=1e-2, decoupled_weight_decay=True),
}
# Numba and C++ on NumPy arrays; the cpu backend under every ISA variant it can run.
BIT_BACKENDS = [b for b in ("cpu", "numba") if b in pyconv.backends()]


def _isas():
    if "cpu" not in pyconv.backends():
        return []
    order = ["avx512", "avx2", "generic"]
    return order[order.index(pyconv._C.best_isa()):]


def _run_steps(backend, case, dtype, steps=4):
    rng = np.random.default_rng(7)
    shapes = [(6, 1, 5, 5), (6,), (120, 400), (3, 7), (0,), (20001,)]  # past the split threshold
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    kwargs = dict(STEP_CASES[case])
    adam = case.startswith("adam")
    state = [[np.zeros_like(p) for p in params] for _ in range(2 if adam else 1)]
    for t in range(1, steps + 1):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        if adam:
            ops.adam_step(params, grads, *state, t, **kwargs, backend=backend)
        else:
            ops.sgd_step(params, grads, state[0] if kwargs.get("momentum") else None,
                         first_step=t == 1, **kwargs, backend=backend)
    return params + [a for arrays in state for a in arrays]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", STEP_CASES)
@pytest.mark.parametrize("backend", BIT_BACKENDS)
def test_step_kernels_are_bitwise_the_reference(backend, case, dtype):
    expected = _run_steps("reference", case, dtype)
    variants = [None] if backend != "cpu" else _isas()
    saved = pyconv._C.isa() if backend == "cpu" else None
    try:
        for isa in variants:
            if isa is not None:
                pyconv._C.set_isa(isa)
            for got, want in zip(_run_steps(backend, case, dtype), expected):
                np.testing.assert_array_equal(got, want, err_msg=f"{backend}/{isa}")
    finally:
        if saved is not None:
            pyconv._C.set_isa(saved)


def test_adam_step_counts_are_per_parameter():
    """A parameter that got no gradient for a step keeps its own count (as torch.optim)."""
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    opt = Adam([a, b], lr=0.1)
    a.grad, b.grad = np.ones(3), None
    opt.step()
    a.grad, b.grad = np.ones(3), np.ones(2)
    opt.step()
    assert [s["step"] for s in opt.state] == [2, 1]
    # Adam's first step moves every element by lr (m/sqrt(v) = 1 after bias correction).
    np.testing.assert_allclose(b.data, 1 - 0.1, rtol=1e-7)
