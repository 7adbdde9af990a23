"""pyconv.data: DNA encoding (IUPAC codes as base fractions), digits, MNIST IDX files, DataLoader,
split."""
import gzip
import struct

import numpy as np
import pytest

from pyconv import data


def test_one_hot_dna_table():
    enc = data.one_hot_dna("ACGTWSMKRYBDHVNZ")
    expected = np.array([
        [1, 0, 0, 0, 1 / 2, 0, 1 / 2, 0, 1 / 2, 0, 0, 1 / 3, 1 / 3, 1 / 3, 1 / 4, 0],
        [0, 1, 0, 0, 0, 1 / 2, 1 / 2, 0, 0, 1 / 2, 1 / 3, 0, 1 / 3, 1 / 3, 1 / 4, 0],
        [0, 0, 1, 0, 0, 1 / 2, 0, 1 / 2, 1 / 2, 0, 1 / 3, 1 / 3, 0, 1 / 3, 1 / 4, 0],
        [0, 0, 0, 1, 1 / 2, 0, 0, 1 / 2, 0, 1 / 2, 1 / 3, 1 / 3, 1 / 3, 0, 1 / 4, 0],
    ], np.float32)
    assert enc.shape == (4, 16) and enc.dtype == np.float32
    np.testing.assert_allclose(enc, expected, rtol=1e-7)
    np.testing.assert_array_equal(data.one_hot_dna("acgt"), np.eye(4))


def test_one_hot_dna_unknown_symbol():
    with pytest.raises(ValueError, match=r"unknown symbol 'X' at position 2"):
        data.one_hot_dna("ACXT")
    with pytest.raises(TypeError, match="str"):
        data.one_hot_dna(b"ACGT")


def test_load_digits():
    x, y = data.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 1 and set(np.unique(y)) == set(range(10))


def _write_idx(path, array, code, compress):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_from_idx(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 5).astype(np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, 0x08, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, 0x08, compress)
    x, y = data.load_mnist(tmp_path, kind="test")
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0] * 255, images, atol=1e-4)
    np.testing.assert_array_equal(y, labels)


def test_read_idx_other_dtypes(tmp_path):
    a = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    _write_idx(tmp_path / "a", a, 0x0C, False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"), a)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        data.load_mnist(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)
    images = np.zeros((3, 28, 28), np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images, 0x08, False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8), 0x08, False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        data.load_mnist(tmp_path)
    path.write_bytes(b"\x00\x00\x42\x03" + bytes(20))
    with pytest.raises(ValueError, match="bad magic"):
        data.load_mnist(tmp_path)
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(bytes(100))[:15])
    with pytest.raises(ValueError, match="gzip"):
        data.read_idx(gz)


def test_dataloader_batches_and_seeded_shuffle():
    x, y = np.arange(10), np.arange(10) * 2
    batches = list(data.DataLoader((x, y), batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert len(data.DataLoader((x, y), 4)) == 3 and len(data.DataLoader((x, y), 4, drop_last=True)) == 2
    a = [b[0].tolist() for b in data.DataLoader((x, y), 3, shuffle=True, seed=5)]
    b = [b[0].tolist() for b in data.DataLoader((x, y), 3, shuffle=True, seed=5)]
    assert a == b and sorted(sum(a, [])) == list(range(10)) and sum(a, []) != list(range(10))
    loader = data.DataLoader((x, y), 3, shuffle=True, seed=5)
    epoch1, epoch2 = [b[0].tolist() for b in loader], [b[0].tolist() for b in loader]
    assert epoch1 != epoch2  # a new permutation each epoch
    for xb, yb in loader:
        np.testing.assert_array_equal(yb, xb * 2)  # rows stay paired


def test_dataloader_state_restores_the_shuffle():
    loader = data.DataLoader((np.arange(20),), 5, shuffle=True, seed=1)
    list(loader)
    state = loader.state_dict()
    expected = [b[0].tolist() for b in loader]
    other = data.DataLoader((np.arange(20),), 5, shuffle=True, seed=99)
    other.load_state_dict(state)
    assert [b[0].tolist() for b in other] == expected


def test_dataloader_errors():
    with pytest.raises(ValueError, match="batch_size"):
        data.DataLoader((np.arange(3),), 0)
    with pytest.raises(ValueError, match=r"different lengths \[3, 4\]"):
        data.DataLoader((np.arange(3), np.arange(4)))


def test_train_test_split():
    x, y = np.arange(10), np.arange(10) + 100
    xtr, xte, ytr, yte = data.train_test_split(x, y, test_size=0.3, seed=0)
    assert len(xte) == 3 and len(xtr) == 7
    np.testing.assert_array_equal(ytr, xtr + 100)
    assert sorted(np.concatenate([xtr, xte]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="empty split"):
        data.train_test_split(x, test_size=0.0)


def test_synthetic_sets():
    x, y = data.synthetic_classification(50, 3, 4, seed=1)
    assert x.shape == (50, 3) and set(y) <= set(range(4))
    imgs, labels = data.synthetic_images(10, 6)
    assert imgs.shape == (10, 1, 6, 6) and set(labels) <= {0, 1}


@pytest.mark.parametrize("n, world_size", [(12, 3), (10, 3), (7, 2), (2, 4)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_dataloader_shards_cover_the_epoch(n, world_size, drop_last):
    """The ranks' shards are disjoint and cover the epoch once; when world_size does not divide
    n, padding repeats the epoch's first samples, drop_last leaves its last ones out."""
    for epoch_seed in (0, 1):
        order = np.random.default_rng(epoch_seed).permutation(n)
        shards = []
        for rank in range(world_size):
            loader = data.DataLoader(np.arange(n), 2, shuffle=True, seed=epoch_seed, drop_last=drop_last,
                                     rank=rank, world_size=world_size)
            batches = list(loader)
            assert len(batches) == len(loader)
            shards.append(np.concatenate(batches) if batches else np.array([], int))
        if drop_last:
            per_rank = (n // world_size) // 2 * 2  # then each rank's last partial batch goes
            assert all(len(s) == per_rank for s in shards)
            seen = np.concatenate(shards)
            assert len(set(seen.tolist())) == len(seen)  # no sample twice
            assert set(seen.tolist()) <= set(order[:n // world_size * world_size].tolist())
        else:
            per_rank = -(-n // world_size)
            assert all(len(s) == per_rank for s in shards)
            seen = np.concatenate(shards)
            assert sorted(seen.tolist()) == sorted(np.resize(order, per_rank * world_size).tolist())
            assert set(seen.tolist()) == set(range(n))  # every sample at least once


def test_dataloader_shards_follow_the_shared_seed_and_check_their_arguments():
    a = [list(b) for b in data.DataLoader(np.arange(20), 5, shuffle=True, seed=3, rank=0, world_size=2)]
    b = [list(b) for b in data.DataLoader(np.arange(20), 5, shuffle=True, seed=3, rank=1, world_size=2)]
    order = np.random.default_rng(3).permutation(20)
    assert sum(a, []) == order[0::2].tolist() and sum(b, []) == order[1::2].tolist()
    with pytest.raises(ValueError, match="rank"):
        data.DataLoader(np.arange(4), 2, rank=2, world_size=2)
    with pytest.raises(TypeError, match="world_size"):
        data.DataLoader(np.arange(4), 2, rank=0)


def test_text_streams_shards_are_disjoint_streams():
    ids = np.arange(101)
    whole = data.TextStreams(ids, batch_size=4, seq_len=5)
    parts = [data.TextStreams(ids, batch_size=2, seq_len=5, rank=r, world_size=2) for r in range(2)]
    for (x, y, first), (x0, y0, f0), (x1, y1, f1) in zip(whole, *parts):
        np.testing.assert_array_equal(x, np.concatenate([x0, x1]))
        np.testing.assert_array_equal(y, np.concatenate([y0, y1]))
        assert first[0] == f0[0] == f1[0]
