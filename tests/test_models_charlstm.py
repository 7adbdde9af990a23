"""CharLSTM: shapes, the state carried across windows (truncated BPTT), temperature sampling,
the plain-RNN variant, and the generated corpus's long-range structure."""
import re

import numpy as np
import pytest

import pyconv
from pyconv import data
from pyconv.models import CharLSTM
from pyconv.optim import Adam

VOCAB = "ab ."


def small(cell="lstm"):
    pyconv.manual_seed(0)
    return CharLSTM(VOCAB, embed_dim=4, hidden_size=12, num_layers=2, cell=cell)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_shapes_and_state(cell):
    model = small(cell)
    ids = np.array([[0, 1, 2], [3, 2, 1]])
    logits, state = model(ids)
    assert logits.shape == (2, 3, 4)
    # carrying the state: two windows give what one long window gives
    long_logits, _ = model(np.concatenate([ids, ids], axis=1))
    second, _ = model(ids, state)
    np.testing.assert_allclose(second.data, long_logits.data[:, 3:], rtol=1e-5, atol=1e-6)
    assert not np.allclose(second.data, logits.data)
    detached = model.detach_state(state)
    assert all(not s.requires_grad for s in detached)


def test_text_streams_continue_window_after_window():
    ids = np.arange(101)
    windows = list(data.TextStreams(ids, batch_size=4, seq_len=10))
    assert [bool(w[2][0]) for w in windows] == [True, False, False]
    x0, y0, _ = windows[0]
    x1 = windows[1][0]
    assert x0.shape == (4, 10) and windows[-1][0].shape == (4, 5)
    np.testing.assert_array_equal(y0, x0 + 1)
    np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # each stream goes on


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_loss_falls_with_truncated_bptt(cell):
    model = small(cell)
    ids = model.encode("ab. " * 200)
    opt = Adam(model.parameters(), lr=2e-2)
    losses = []
    for epoch in range(4):
        state = None
        for x, y, first in data.TextStreams(ids, 4, 16):
            loss, state = model.loss(x, y, None if first[0] else state)
            state = model.detach_state(state)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.3 * losses[0], losses
    assert model.bits_per_char(ids, batch_size=2, seq_len=32) < 0.5


def test_temperature_sampling():
    model = small()
    text = model.sample("a", 30, temperature=1.0, rng=np.random.default_rng(0))
    assert len(text) == 31 and text[0] == "a" and set(text) <= set(VOCAB)
    cold = [model.sample("ab", 20, temperature=1e-4, rng=np.random.default_rng(s)) for s in (1, 2)]
    assert cold[0] == cold[1]  # almost greedy: the draw no longer matters
    with pytest.raises(ValueError, match="'x'"):
        model.encode("x")


def test_corpus_long_range_structure():
    text = data.synthetic_corpus(5000, seed=1)
    assert len(text) == 5000
    languages = dict(data._COUNTRIES)
    sentences = re.findall(r"grew up in (\w+) \(([^()]*)\) so speaks (\w+)\.", text)
    assert len(sentences) > 60
    for country, aside, language in sentences:
        assert languages[country] == language
        assert aside.count("[") == aside.count("]") <= 1
    gaps = [len(f"{country} ({aside}) so speaks ") for country, aside, _ in sentences]
    assert min(gaps) >= 15 and np.mean(gaps) > 25
