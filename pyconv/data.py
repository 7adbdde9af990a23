"""Data: DNA one-hot encoding, the digits and MNIST loaders, a DataLoader with seeded
shuffling, a train/test split and small synthetic sets for tests and examples.

Images come back as float32 arrays (N, 1, H, W) scaled to [0, 1], labels as int64 (N,).
"""
from __future__ import annotations

import gzip
import json
import os

import numpy as np

__all__ = [
    "one_hot_dna", "load_digits", "load_mnist", "DataLoader", "train_test_split",
    "synthetic_classification", "synthetic_images", "resize_images", "synthetic_corpus",
    "TextStreams", "synthetic_shapes", "SHAPE_CLASSES", "synthetic_dna", "random_shift",
    "random_affine",
]

# ---------------------------------------------------------------------------------------------
# DNA: each IUPAC nucleotide code's fractional membership of A, C, G, T (W = A or T, N = any, ...)

_H, _T, _Q = 1 / 2, 1 / 3, 1 / 4
_IUPAC = {
    "A": (1, 0, 0, 0), "C": (0, 1, 0, 0), "G": (0, 0, 1, 0), "T": (0, 0, 0, 1),
    "W": (_H, 0, 0, _H), "S": (0, _H, _H, 0), "M": (_H, _H, 0, 0), "K": (0, 0, _H, _H),
    "R": (_H, 0, _H, 0), "Y": (0, _H, 0, _H),
    "B": (0, _T, _T, _T), "D": (_T, 0, _T, _T), "H": (_T, _T, 0, _T), "V": (_T, _T, _T, 0),
    "N": (_Q, _Q, _Q, _Q), "Z": (0, 0, 0, 0),
}


def one_hot_dna(seq: str, dtype=np.float32) -> np.ndarray:
    """(4, L) encoding of a DNA string over rows A, C, G, T; ambiguous IUPAC symbols get
    fractional memberships (W = A or T -> 1/2, 0, 0, 1/2; N -> 1/4 each; Z -> 0). Lower case
    is accepted. An unknown symbol raises ValueError naming it and its position."""
    if not isinstance(seq, str):
        raise TypeError(f"one_hot_dna: seq must be a str, got {type(seq).__name__}")
    out = np.empty((4, len(seq)), dtype)
    for i, symbol in enumerate(seq.upper()):
        try:
            out[:, i] = _IUPAC[symbol]
        except KeyError:
            raise ValueError(f"one_hot_dna: unknown symbol {seq[i]!r} at position {i} "
                             f"(expected one of {''.join(_IUPAC)})") from None
    return out


_MEMBERS = {symbol: "".join(b for b, w in zip("ACGT", weights) if w) for symbol, weights in _IUPAC.items()}


def synthetic_dna(n=1000, length=80, motifs=("TGASTCA", "GGGRNTTYCC"), seed=0, dtype=np.float32):
    """DNA sequences for a motif-finding CNN: class 0 is uniform random background; class k
    (1 .. len(motifs)) has one instance of IUPAC motif k planted at a random position, each
    ambiguous symbol drawn from the bases it stands for (S -> C or G, N -> any, ...).
    -> (x (n, 4, length) one-hot via :func:`one_hot_dna`, labels (n,) int64, sequences)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(motifs) + 1, n)
    sequences = []
    for label in labels:
        seq = list(rng.choice(list("ACGT"), length))
        if label:
            motif = motifs[label - 1]
            start = rng.integers(0, length - len(motif) + 1)
            for i, symbol in enumerate(motif):
                seq[start + i] = rng.choice(list(_MEMBERS[symbol]))
        sequences.append("".join(seq))
    x = np.stack([one_hot_dna(s, dtype) for s in sequences])
    return x, labels.astype(np.int64), sequences


# ---------------------------------------------------------------------------------------------
# Image data sets


def load_digits(dtype=np.float32):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, offline) ->
    (images (1797, 1, 8, 8) in [0, 1], labels (1797,) int64)."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = (bunch.images / 16.0).astype(dtype)[:, None]
    return images, bunch.target.astype(np.int64)


def _interpolation_matrix(n_out, n_in):
    """(n_out, n_in) weights of linear interpolation with aligned pixel centres."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def resize_images(images, size) -> np.ndarray:
    """Bilinear resize of images (N, C, H, W) to (N, C, size, size) (size an int or a pair),
    e.g. the 8x8 digits to 16x16 for a generative model or 32x32 for LeNet-5."""
    images = np.asarray(images)
    out_h, out_w = (size, size) if np.isscalar(size) else size
    rows = _interpolation_matrix(out_h, images.shape[2])
    cols = _interpolation_matrix(out_w, images.shape[3])
    out = np.einsum("ih,nchw,jw->ncij", rows, images.astype(np.float64), cols, optimize=True)
    return out.astype(images.dtype)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Reads one IDX file (gzipped or not): magic 0 0 <dtype code> <ndim>, then ndim big-endian
    uint32 sizes, then the data."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"read_idx: no file {path!r}")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"read_idx: {path!r} is a corrupt or truncated gzip file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"read_idx: {path!r} is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"read_idx: {path!r} is truncated inside its header")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"read_idx: {path!r} holds {len(raw) - header} data bytes but its header "
                         f"announces shape {shape} ({expected} bytes): truncated or corrupt")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"load_mnist: no {stem} (or {stem}.gz) in {folder!r}")


def load_mnist(path, kind="train", dtype=np.float32):
    """MNIST (or Fashion-MNIST) from the standard IDX files in folder `path`:
    ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with or without ``.gz``.
    kind "train" or "test" -> (images (N, 1, 28, 28) in [0, 1], labels (N,) int64)."""
    if kind not in ("train", "test"):
        raise ValueError(f"load_mnist: kind must be 'train' or 'test', got {kind!r}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_mnist: {path!r} is not a folder")
    prefix = "train" if kind == "train" else "t10k"
    images = read_idx(_find(path, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(path, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"load_mnist: images {images.shape} and labels {labels.shape} do not match")
    return (images.astype(dtype) / 255)[:, None], labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Batching


class DataLoader:
    """Iterates over a data set in batches.

    `dataset` is a tuple/list of arrays with the same first dimension (e.g. (images, labels)),
    or a single array, or any object with ``__len__`` and ``__getitem__`` taking an index array
    and returning a tuple of arrays. Each iteration yields tuples of arrays (a single array for
    a single-array dataset). With shuffle, each epoch draws a new permutation from a generator
    seeded with `seed`; ``state_dict()`` / ``load_state_dict()`` save and restore it, so a
    resumed training run sees the same batches. transform(batch, rng) -> batch, if given,
    changes each batch (data augmentation, e.g. :func:`random_shift`) with random draws from
    that same generator, so augmented runs resume exactly too.

    Data-parallel training: with ``world_size`` > 1 this loader yields only shard `rank` of
    each epoch (batches of `batch_size` samples per rank). Every rank draws the same
    permutation from `seed` and takes every world_size-th sample of it, starting at `rank`, so
    that the ranks' shards are disjoint and together cover the epoch. When world_size does not
    divide the number of samples, the permutation is padded by repeating its first samples
    (each rank gets ceil(n / world_size) samples; a few samples are seen twice in that epoch),
    or, with drop_last, cut to a multiple of world_size (a few samples are not seen in that
    epoch, different ones each epoch when shuffling); drop_last also drops each rank's last
    partial batch. The shards have equal sizes, so every rank runs the same number of steps
    and the generators of all ranks stay equal. For evaluation, where the ranks make no
    collective call per batch, ``even_shards=False`` gives every sample to exactly one rank
    instead (the shards' sizes then differ by up to one sample), so that sums over the ranks'
    shards are sums over the data set.
    """

    def __init__(self, dataset, batch_size=32, shuffle=False, seed=None, drop_last=False,
                 transform=None, rank=None, world_size=None, even_shards=True):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        self.rank, self.world_size = _check_shard("DataLoader", rank, world_size)
        if isinstance(dataset, (tuple, list)):
            lengths = {len(a) for a in dataset}
            if len(lengths) != 1:
                raise ValueError(f"DataLoader: arrays have different lengths "
                                 f"{[len(a) for a in dataset]}")
        self.dataset = dataset
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.even_shards = bool(even_shards)
        self.transform = transform
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _shard_size(self):
        n, ws = self._num_samples(), self.world_size
        if not self.even_shards:
            return len(range(self.rank, n, ws))
        return n // ws if self.drop_last else -(-n // ws)

    def _num_samples(self):
        return len(self.dataset[0]) if isinstance(self.dataset, (tuple, list)) else len(self.dataset)

    def _take(self, idx):
        if isinstance(self.dataset, (tuple, list)):
            return tuple(a[idx] for a in self.dataset)
        return self.dataset[idx]

    def __iter__(self):
        n = self._num_samples()
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        if self.world_size > 1:
            if self.even_shards:
                order = np.resize(order, self._shard_size() * self.world_size)
            order = order[self.rank::self.world_size]
            n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            batch = self._take(order[start:start + self.batch_size])
            yield batch if self.transform is None else self.transform(batch, self.rng)

    def state_dict(self) -> dict:
        return {"rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state):
        value = state["rng"]
        self.rng.bit_generator.state = json.loads(value.item() if hasattr(value, "item") else value)


def _check_shard(owner, rank, world_size):
    """(rank, world_size) checked; (0, 1) when both are None (no sharding)."""
    if rank is None and world_size is None:
        return 0, 1
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{owner}: {name} must be an int (give both rank and world_size), got {value!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"{owner}: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


def random_shift(max_shift):
    """A DataLoader transform: each image of the batch's first array (N, C, H, W) moves by
    up to `max_shift` pixels in each direction, the uncovered border filled with zeros."""
    def transform(batch, rng):
        images, *rest = batch if isinstance(batch, tuple) else (batch,)
        n, _, h, w = images.shape
        m = max_shift
        padded = np.pad(images, ((0, 0), (0, 0), (m, m), (m, m)))
        dy, dx = rng.integers(0, 2 * m + 1, (2, n))
        out = np.stack([padded[k, :, dy[k]:dy[k] + h, dx[k]:dx[k] + w] for k in range(n)])
        return (out, *rest) if rest or isinstance(batch, tuple) else out
    return transform


def random_affine(degrees=10.0, scale=0.1, shift=2.0):
    """A DataLoader transform: each image of the batch's first array (N, C, H, W) is rotated
    about its centre by up to `degrees`, scaled by a factor in [1 - scale, 1 + scale] and moved
    by up to `shift` pixels in each direction (all drawn uniformly, per image), with bilinear
    interpolation; what comes from outside the image is zero."""
    def transform(batch, rng):
        images, *rest = batch if isinstance(batch, tuple) else (batch,)
        n, _, h, w = images.shape
        angle = np.deg2rad(rng.uniform(-degrees, degrees, n))[:, None, None]
        factor = rng.uniform(1 - scale, 1 + scale, n)[:, None, None]
        ty, tx = (rng.uniform(-shift, shift, (2, n))[:, :, None, None])
        # each output pixel reads the input where the inverse transform takes it
        cy, cx = (h - 1) / 2, (w - 1) / 2
        yy, xx = np.mgrid[0:h, 0:w]
        dy, dx = yy - cy - ty, xx - cx - tx
        cos, sin = np.cos(angle), np.sin(angle)
        sy = (cos * dy - sin * dx) / factor + cy
        sx = (sin * dy + cos * dx) / factor + cx
        # a border of zeros around the image: clipped reads outside it land there
        padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
        y0, x0 = np.floor(sy), np.floor(sx)
        wy, wx = (sy - y0)[:, None], (sx - x0)[:, None]
        batch_index = np.arange(n)[:, None, None]

        def at(y, x):
            y = np.clip(y.astype(np.int64) + 1, 0, h + 1)
            x = np.clip(x.astype(np.int64) + 1, 0, w + 1)
            return padded[batch_index, :, y, x].transpose(0, 3, 1, 2)

        out = ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x0 + 1))
               + wy * ((1 - wx) * at(y0 + 1, x0) + wx * at(y0 + 1, x0 + 1)))
        out = out.astype(images.dtype)
        return (out, *rest) if rest or isinstance(batch, tuple) else out
    return transform


def train_test_split(*arrays, test_size=0.2, seed=0, shuffle=True):
    """Splits arrays of equal length -> (a_train, a_test, b_train, b_test, ...), as
    scikit-learn's function. test_size is a fraction in (0, 1) or a count."""
    if not arrays:
        raise ValueError("train_test_split: needs at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"train_test_split: arrays have different lengths {[len(a) for a in arrays]}")
    n_test = int(round(test_size * n)) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"train_test_split: test_size={test_size} leaves an empty split of {n} samples")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    test, train = order[:n_test], order[n_test:]
    out = []
    for a in arrays:
        out += [a[train], a[test]]
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Synthetic sets


def synthetic_classification(n=200, n_features=2, n_classes=3, seed=0, dtype=np.float32):
    """Gaussian blobs, one per class, with centres on a circle -> (x (n, n_features), y (n,))."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    angles = 2 * np.pi * np.arange(n_classes) / n_classes
    centres = np.zeros((n_classes, n_features))
    centres[:, 0], centres[:, min(1, n_features - 1)] = 3 * np.cos(angles), 3 * np.sin(angles)
    x = centres[y] + rng.standard_normal((n, n_features))
    return x.astype(dtype), y.astype(np.int64)


def synthetic_images(n=64, size=8, seed=0, dtype=np.float32):
    """Noisy images (n, 1, size, size) of a horizontal (label 0) or vertical (label 1) bar at a
    random position: a small task a conv net solves in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = 0.1 * rng.standard_normal((n, 1, size, size))
    pos = rng.integers(1, size - 1, n)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, pos[i], :] += 1
        else:
            x[i, 0, :, pos[i]] += 1
    return x.astype(dtype), y.astype(np.int64)


SHAPE_CLASSES = ("background", "square", "disc", "triangle")


def synthetic_shapes(n=500, size=32, seed=0, dtype=np.float32):
    """Grey images (n, 1, size, size) of one to three shapes (squares, discs, triangles) of
    random size, position and brightness on a noisy background, with per-pixel class masks
    (n, size, size) int64 (indices into SHAPE_CLASSES; a later shape covers an earlier one).
    Brightness does not tell the classes apart: a segmenter must look at the shape."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    images = np.empty((n, 1, size, size), dtype)
    masks = np.zeros((n, size, size), np.int64)
    for k in range(n):
        image = rng.uniform(0.0, 0.3) + 0.08 * rng.standard_normal((size, size))
        for _ in range(rng.integers(1, 4)):
            cls = int(rng.integers(1, 4))
            half = rng.uniform(size * 0.1, size * 0.22)
            cy, cx = rng.uniform(half, size - half, 2)
            if cls == 1:
                inside = (np.abs(rows - cy) <= half) & (np.abs(cols - cx) <= half)
            elif cls == 2:
                inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= half ** 2
            else:  # apex up: the width grows linearly from the top row to the base
                top = cy - half
                inside = (rows >= top) & (rows <= cy + half) & \
                    (np.abs(cols - cx) <= (rows - top) / 2)
            image[inside] = rng.uniform(0.5, 1.0) + 0.08 * rng.standard_normal(inside.sum())
            masks[k][inside] = cls
        images[k, 0] = image
    return images, masks


# ---------------------------------------------------------------------------------------------
# Text

# (country, language): the languages' first letters all differ, so predicting the letter after
# "speaks " needs the country, named dozens of characters earlier.
_COUNTRIES = [("france", "french"), ("spain", "spanish"), ("germany", "german"),
              ("italy", "italian"), ("japan", "japanese"), ("korea", "korean"),
              ("brazil", "portuguese"), ("russia", "russian"), ("holland", "dutch"),
              ("turkey", "turkish")]
_WORDS = ["the", "old", "house", "by", "a", "river", "with", "green", "doors", "and", "many",
          "cats", "near", "small", "town", "where", "people", "sing", "at", "night", "over",
          "hills", "under", "blue", "sky", "every", "summer", "long", "ago"]


def synthetic_corpus(n_chars=100_000, seed=0, aside_words=(0, 4)) -> str:
    """A generated English-like text with long-range dependencies, for character models:

        grew up in japan (near small [town] at night) so speaks japanese.

    The language follows from the country named 15 to 40 characters before it, and each
    bracket closes characters after it opens (the round brackets may hold a square pair): a
    model with a short memory cannot predict either. aside_words: the smallest and largest
    number of words in the bracketed aside."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < n_chars:
        country, language = _COUNTRIES[rng.integers(len(_COUNTRIES))]
        count = rng.integers(aside_words[0], aside_words[1] + 1)
        words = [_WORDS[k] for k in rng.integers(len(_WORDS), size=count)]
        if words and rng.random() < 0.5:
            a = rng.integers(len(words))
            b = rng.integers(a, len(words))
            words[a] = "[" + words[a]
            words[b] = words[b] + "]"
        sentence = f"grew up in {country} ({' '.join(words)}) so speaks {language}. "
        parts.append(sentence)
        total += len(sentence)
    return "".join(parts)[:n_chars]


class TextStreams:
    """Batches for truncated backpropagation through time over one long sequence of token
    ids: the sequence is cut into `batch_size` contiguous streams, read side by side in
    windows of `seq_len`; window k of every stream continues window k - 1, so a model can
    carry its hidden state from one batch to the next (detached: gradients stop at the
    window's start). Yields ``(x, y, first)``: inputs (B, T), the next tokens (B, T), and
    whether this is the epoch's first window (time to reset the state).

    Data-parallel training: with ``world_size`` > 1 the sequence is cut into
    ``batch_size * world_size`` streams and rank `rank` reads streams
    ``rank * batch_size .. (rank + 1) * batch_size - 1``; the tail that does not fill a whole
    stream is left out, as with one rank."""

    def __init__(self, ids, batch_size=32, seq_len=64, rank=None, world_size=None):
        rank, world_size = _check_shard("TextStreams", rank, world_size)
        ids = np.asarray(ids, np.int64)
        streams = batch_size * world_size
        per_stream = (len(ids) - 1) // streams
        if per_stream < 2:
            raise ValueError(f"TextStreams: {len(ids)} tokens are too few for {streams} streams")
        mine = slice(rank * batch_size, (rank + 1) * batch_size)
        self.x = ids[:per_stream * streams].reshape(streams, per_stream)[mine]
        self.y = ids[1:per_stream * streams + 1].reshape(streams, per_stream)[mine]
        self.seq_len = seq_len

    def __len__(self):
        return -(-self.x.shape[1] // self.seq_len)

    def __iter__(self):
        for k, start in enumerate(range(0, self.x.shape[1], self.seq_len)):
            stop = start + self.seq_len
            yield self.x[:, start:stop], self.y[:, start:stop], np.array([k == 0])
