"""The character-LSTM recipe: a generated corpus with long-range dependencies, bits per character
against a unigram model and a plain RNN."""
from __future__ import annotations

import math
import os

import numpy as np

from .. import data as _data
from .common import LN2, Recipe, _eval_mode


class CharLSTMRecipe(Recipe):
    name = "charlstm"
    description = "character LSTM on a generated corpus with long-range dependencies (bits/char vs unigram and a plain RNN)"
    epochs, batch_size, lr = 16, 16, 3e-3
    default_data = "corpus"
    seq_len = 100
    cue = "speaks "  # in the built-in corpus the next letter needs the country named long before

    def load_data(self, spec, seed=0, limit=None):
        if spec == "corpus":
            text = _data.synthetic_corpus(80_000, seed)
        elif spec.startswith("text:"):
            with open(spec[len("text:"):], encoding="utf-8") as f:
                text = f.read()
        else:
            raise ValueError(f"unknown text data {spec!r} (expected 'corpus' or 'text:FILE')")
        if limit:
            text = text[:limit * self.seq_len]
        cut = int(len(text) * 0.9)
        return {"train_text": text[:cut], "test_text": text[cut:], "vocab": "".join(sorted(set(text))),
                "train": (np.zeros(cut),)}

    def config(self, data):
        return {"vocab": data["vocab"], "num_layers": 2, "hidden_size": 128, "cell": "lstm"}

    def build(self, config):
        from ..models import CharLSTM

        return CharLSTM(**config)

    def train_loader(self, data, batch_size, seed, rank=0, world_size=1):
        model_vocab = {ch: i for i, ch in enumerate(data["vocab"])}
        ids = np.array([model_vocab[ch] for ch in data["train_text"]], np.int64)
        return _data.TextStreams(ids, batch_size, self.seq_len, rank=rank, world_size=world_size)

    def trainer(self, model, lr, **kwargs):
        from ..optim import Adam
        from ..train import Trainer

        carry = {}

        def step(trainer, batch):
            """Truncated BPTT: the state flows on from the previous window, its graph cut."""
            x, y, first = batch
            state = None if first[0] else carry.get("state")
            loss, state = trainer.model.loss(x, y, state)
            carry["state"] = trainer.model.detach_state(state)
            trainer.optimizer.zero_grad()
            loss.backward()
            trainer.optimizer.step()
            return {"bits_per_char": float(loss.item()) / LN2}

        return Trainer(model, Adam(model.parameters(), lr=lr), step_fn=step, **kwargs)

    def epoch_metrics(self, trainer, data, out):
        return {"val_bits_per_char": trainer.model.bits_per_char(trainer.model.encode(data["test_text"]))}

    def cue_accuracy(self, model, text):
        """How often the most likely next character after the cue is the right one."""
        ids = model.encode(text)
        positions = [i + len(self.cue) for i in range(len(text) - len(self.cue))
                     if text.startswith(self.cue, i)]
        if not positions:
            return float("nan")

        def run():
            logits, _ = model(ids[None, :-1])
            return logits.data[0].argmax(axis=1)
        predicted = _eval_mode(model, run)
        return float(np.mean([predicted[p - 1] == ids[p] for p in positions]))

    def summary(self, trainer, data):
        from collections import Counter

        from .. import manual_seed

        model = trainer.model
        test_ids = model.encode(data["test_text"])
        counts = Counter(data["train_text"])
        total = len(data["train_text"]) + len(data["vocab"])
        unigram = -np.mean([math.log2((counts[ch] + 1) / total) for ch in data["test_text"]])
        out = {"test_bits_per_char": model.bits_per_char(test_ids), "unigram_bits_per_char": float(unigram),
               "test_cue_accuracy": self.cue_accuracy(model, data["test_text"])}
        # the same network with plain RNN layers, trained the same way, for comparison
        print(f"charlstm: training the same network with plain RNN layers ({trainer.epoch} epochs) "
              f"for comparison", flush=True)
        config = dict(model.config, cell="rnn")
        manual_seed(0)
        rnn = self.build(config)
        rnn_trainer = self.trainer(rnn, trainer.optimizer.lr, progress=False, distributed=False)
        loader = self.train_loader(data, data["batch_size"], 0)
        rnn_trainer.fit(loader, trainer.epoch)
        out["rnn_test_bits_per_char"] = rnn.bits_per_char(test_ids)
        out["rnn_test_cue_accuracy"] = self.cue_accuracy(rnn, data["test_text"])
        return out

    def pictures(self, trainer, data, out):
        path = os.path.join(out, "samples.txt")
        prefix = data["test_text"][:20]
        with open(path, "w") as f:
            for t in (0.5, 1.0):
                text = trainer.model.sample(prefix, 240, temperature=t, rng=np.random.default_rng(0))
                f.write(f"--- temperature {t}\n{text}\n")
        return [path]

    def sample(self, model, n, label=None, temperature=1.0, rng=None):
        if label is not None:
            raise ValueError("charlstm: the model is not conditional (no --label)")
        rng = rng or np.random.default_rng(0)
        prefix = model.vocab[int(rng.integers(len(model.vocab)))]
        return model.sample(prefix, n, temperature, rng), None
