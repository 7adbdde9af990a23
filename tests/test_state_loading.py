"""Loading state is all or nothing: a state dict or checkpoint that does not fit raises and
leaves the module, the optimiser and the trainer exactly as they were."""
import numpy as np
import pytest

import pyconv
import pyconv.nn as nn
from pyconv import Tensor
from pyconv.optim import SGD, Adam
from pyconv.train import Trainer


def model():
    pyconv.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def snapshot(m):
    return {k: v.copy() for k, v in m.state_dict().items()}


def assert_same(before, after):
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)


def trained(opt_cls):
    m = model()
    opt = opt_cls(m.parameters(), lr=0.1, **({"momentum": 0.9} if opt_cls is SGD else {}))
    x = Tensor(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
    for _ in range(2):
        opt.zero_grad()
        (m(x) ** 2).mean().backward()
        opt.step()
    return m, opt


def test_module_load_with_one_bad_entry_changes_nothing():
    a, b = model(), model()
    for p in a.parameters():
        p.data += 1
    state = a.state_dict()
    state["2.weight"] = np.zeros((5, 4), np.float32)  # the last entry does not fit
    before = snapshot(b)
    with pytest.raises(ValueError, match="2.weight"):
        b.load_state_dict(state)
    assert_same(before, b.state_dict())


def test_module_load_of_an_uncastable_value_changes_nothing():
    a, b = model(), model()
    state = a.state_dict()
    state["1.running_mean"] = np.array(["a", "b", "c", "d"])
    before = snapshot(b)
    with pytest.raises(ValueError, match="running_mean"):
        b.load_state_dict(state)
    assert_same(before, b.state_dict())


@pytest.mark.parametrize("opt_cls", [SGD, Adam])
def test_optimizer_load_with_one_bad_entry_changes_nothing(opt_cls):
    _, source = trained(opt_cls)
    _, target = trained(opt_cls)
    for s in target.state:
        for v in s.values():
            if isinstance(v, np.ndarray):
                v += 1  # differs from the source's state
    state = source.state_dict()
    state["lr"] = 0.5
    last = str(len(source.params) - 1)
    state["state"][last] = {k: (np.zeros(7) if isinstance(v, np.ndarray) else v)
                            for k, v in state["state"][last].items()}
    before = [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()} for s in target.state]
    with pytest.raises(ValueError, match=f"parameter {last}"):
        target.load_state_dict(state)
    assert target.lr == 0.1
    for b, s in zip(before, target.state):
        assert b.keys() == s.keys()
        for k in b:
            np.testing.assert_array_equal(b[k], s[k])


def test_optimizer_state_round_trips_through_itself():
    _, opt = trained(Adam)
    state = opt.state_dict()
    opt.load_state_dict(state)  # counters are plain ints here, 0-d arrays from a file
    assert all(isinstance(s["step"], int) for s in opt.state)


def test_trainer_checkpoint_whose_optimizer_does_not_fit_changes_nothing(tmp_path):
    m, opt = trained(Adam)
    Trainer(m, opt).save_checkpoint(tmp_path / "ck.npz")

    other = model()  # another model whose optimiser has one parameter fewer
    other_opt = Adam(list(other.parameters())[:-1], lr=0.1)
    trainer = Trainer(other, other_opt)
    before = snapshot(other)
    with pytest.raises(pyconv.CheckpointError, match="does not fit"):
        trainer.load_checkpoint(tmp_path / "ck.npz")
    assert_same(before, other.state_dict())  # the model was loaded, then put back
    assert trainer.epoch == 0 and other_opt.state[0] == {}
