"""The C++ GEMM's cache blocking chosen at run time (csrc/gemm/blocking.h, pyconv/tuning.py):
cache detection from a sysfs tree, the analytical model's blocks, the environment overrides,
the tuned file, and results under other blockings (right, and the same bytes on any number of
threads for a fixed one)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyconv
from pyconv import ops, tuning

pytestmark = pytest.mark.skipif("cpu" not in pyconv.backends(), reason="the cpu backend is not built")

if "cpu" in pyconv.backends():
    from pyconv import _C

ELEM_SIZE = {"float32": 4, "float64": 8}

# A Xeon-like machine: 48 KiB 12-way L1d, 2 MiB L2 per core, 32 MiB L3 shared by 16 CPUs.
FAKE_CACHES = {
    "index0": {"level": "1", "type": "Data", "size": "48K", "ways_of_associativity": "12",
               "coherency_line_size": "64", "shared_cpu_list": "0"},
    "index1": {"level": "1", "type": "Instruction", "size": "32K", "ways_of_associativity": "8",
               "coherency_line_size": "64", "shared_cpu_list": "0"},
    "index2": {"level": "2", "type": "Unified", "size": "2048K", "ways_of_associativity": "16",
               "coherency_line_size": "64", "shared_cpu_list": "0"},
    "index3": {"level": "3", "type": "Unified", "size": "32768K", "ways_of_associativity": "16",
               "coherency_line_size": "64", "shared_cpu_list": "0-7,16-23"},
}


def fake_sysfs(root, caches=FAKE_CACHES):
    for index, files in caches.items():
        d = root / "cpu0" / "cache" / index
        d.mkdir(parents=True)
        for name, text in files.items():
            (d / name).write_text(text + "\n")
    return str(root)


@pytest.fixture
def restore_blocking():
    """Puts the process's blocking back as the C++ backend set it up at import."""
    yield
    _C.reset_gemm_blocking()
    tuning.apply_tuned_file(warn=False)


def test_detection_reads_a_sysfs_tree(tmp_path):
    c = _C.cpu_caches(fake_sysfs(tmp_path))
    assert c["source"] == "sysfs"
    assert (c["l1d"], c["l1d_ways"], c["line"]) == (48 << 10, 12, 64)
    assert (c["l2"], c["l2_shared_by"]) == (2 << 20, 1)
    assert (c["l3"], c["l3_shared_by"]) == (32 << 20, 16)
    assert c["cpus"] >= 1


def test_detection_without_sysfs_falls_back(tmp_path):
    c = _C.cpu_caches(str(tmp_path / "missing"))
    assert c["source"] in ("cpuid", "compiled-in")
    assert c["l1d"] > 0 and c["l2"] > 0


def test_cache_override_replaces_the_fields_it_names(tmp_path):
    c = _C.cpu_caches(fake_sysfs(tmp_path), "l2=512K, l3=8MiB,l3_shared_by=4")
    assert c["source"] == "sysfs+PYCONV_CACHE_SIZES"
    assert (c["l1d"], c["l2"], c["l3"], c["l3_shared_by"]) == (48 << 10, 512 << 10, 8 << 20, 4)
    for bad in ("l2", "l2=", "l2=big", "l4=1M", "l2=0", "l2=3T"):
        with pytest.raises(ValueError, match="malformed"):
            _C.cpu_caches(fake_sysfs(tmp_path / bad.replace("=", "_")), bad)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_model_blocks_fit_the_caches_in_whole_panels(tmp_path, isa, dtype):
    caches = _C.cpu_caches(fake_sysfs(tmp_path))
    tile = _C.gemm_blocking(isa, dtype)
    mr, nr, S = tile["mr"], tile["nr"], ELEM_SIZE[dtype]
    kc, mc, nc = _C.model_gemm_blocking(isa, dtype, caches)
    assert kc % 8 == 0 and mc % mr == 0 and nc % nr == 0
    # KC: A and B slivers in L1 but one way, yet at least 512 while B's sliver fits half of L2.
    kc_l1 = caches["l1d"] * 11 // 12 // ((mr + nr) * S) // 8 * 8
    assert (mr + nr) * kc_l1 * S <= caches["l1d"] * 11 // 12 < (mr + nr) * (kc_l1 + 8) * S
    assert kc == max(kc_l1, min(512, caches["l2"] // 2 // (nr * S) // 8 * 8))
    # Half of L2 and of this core's L3 share.
    assert mc * kc * S <= caches["l2"] // 2 < (mc + mr) * kc * S
    assert nc * kc * S <= caches["l3"] // 16 // 2 < (nc + nr) * kc * S
    # More cache, larger blocks.
    big = dict(caches, l1d=caches["l1d"] * 2, l2=caches["l2"] * 2, l3=caches["l3"] * 2)
    assert all(b >= a for a, b in zip((kc, mc, nc), _C.model_gemm_blocking(isa, dtype, big)))


def test_model_blocks_of_a_known_machine(tmp_path):
    # AVX-512 float32: MR 8, NR 48. KC = 48K * 11/12 / (56 * 4) = 201 -> 200 in L1, raised to
    # 512 (B's sliver, 512 * 48 * 4 = 96K, fits half of the 2M L2);
    # MC = 1M / (512 * 4) = 512; NC = 1M / (512 * 4) = 512 -> 480.
    caches = _C.cpu_caches(fake_sysfs(tmp_path))
    assert _C.model_gemm_blocking("avx512", "float32", caches) == (512, 512, 480)
    # A small L2 bounds the raise: 128K / 2 / (48 * 4) = 341 -> 336.
    small = dict(caches, l2=128 << 10)
    assert _C.model_gemm_blocking("avx512", "float32", small)[0] == 336


def test_set_blocking_rounds_to_whole_panels(restore_blocking):
    isa = _C.isa()
    mr, nr = _C.gemm_blocking(isa, "float32")["mr"], _C.gemm_blocking(isa, "float32")["nr"]
    kc, mc, nc = _C.set_gemm_blocking(isa, "float32", 5000, mr + 1, 1)
    assert (kc, mc, nc) == (1024, mr, nr)
    b = _C.gemm_blocking(isa, "float32")
    assert (b["kc"], b["mc"], b["nc"], b["source"]) == (1024, mr, nr, "set")
    with pytest.raises(ValueError, match="kc, mc, nc"):
        _C.set_gemm_blocking(isa, "float32", 0, 8, 8)
    with pytest.raises(ValueError, match="source"):
        _C.set_gemm_blocking(isa, "float32", 8, 8, 8, "mine")


def test_blocking_override_is_respected(tmp_path, monkeypatch, restore_blocking):
    monkeypatch.setenv("PYCONV_GEMM_BLOCKING", "100, 50, 500")
    _C.reset_gemm_blocking()
    for isa in _C.compiled_isas():
        for dtype in ELEM_SIZE:
            b = _C.gemm_blocking(isa, dtype)
            assert b["source"] == "PYCONV_GEMM_BLOCKING"
            assert b["kc"] == 100 and b["mc"] % b["mr"] == 0 and b["nc"] % b["nr"] == 0
            assert abs(b["mc"] - 50) <= b["mr"] // 2 and abs(b["nc"] - 500) <= b["nr"] // 2
    # The override wins over a tuned file.
    path = tuning.write_tuned_entry(_C.isa(), {"float32": {"kc": 64, "mc": 64, "nc": 96}},
                                    tmp_path / "tuned.json")
    assert not tuning.apply_tuned_file(path)
    assert _C.gemm_blocking(_C.isa(), "float32")["source"] == "PYCONV_GEMM_BLOCKING"
    monkeypatch.setenv("PYCONV_GEMM_BLOCKING", "100,50")
    _C.reset_gemm_blocking()
    assert "malformed" in _C.gemm_blocking(_C.isa(), "float32")["source"]


def test_cache_override_drives_the_model_in_a_new_process():
    """PYCONV_CACHE_SIZES is read once per process: a child with a small L2 gets a small MC."""
    code = ("import json, pyconv.tuning as t; from pyconv import _C; "
            "print(json.dumps([_C.cpu_caches(), t.blocking('float32'), "
            "_C.model_gemm_blocking(_C.isa(), 'float32', _C.cpu_caches())]))")
    env = dict(os.environ, PYCONV_CACHE_SIZES="l1d=32K,l1d_ways=8,l2=256K,l3=8M,l3_shared_by=4")
    env.pop("PYCONV_GEMM_BLOCKING", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(pyconv.__file__)))
    caches, blocking, model = json.loads(out.stdout)
    assert caches["source"].endswith("+PYCONV_CACHE_SIZES") and caches["l2"] == 256 << 10
    assert blocking["source"] in ("model", "tuned")
    kc, mc, nc = model
    assert mc * kc * 4 <= 128 << 10


@pytest.mark.parametrize("name, value", [("PYCONV_CACHE_SIZES", "l2=lots"), ("PYCONV_GEMM_BLOCKING", "1,2")])
def test_malformed_override_warns_when_the_backend_loads(name, value):
    env = dict(os.environ, **{name: value})
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", "import pyconv.backends.cpu"],
                         env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(pyconv.__file__)))
    assert out.returncode != 0 and f"{name}='{value}' is malformed" in out.stderr


def test_tuned_file_round_trip(tmp_path, monkeypatch, restore_blocking):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("PYCONV_GEMM_BLOCKING", raising=False)
    isa = _C.isa()
    assert tuning.tuned_file() == tmp_path / "pyconv" / "gemm_blocking.json"
    tuning.write_tuned_entry("other-isa", {"float32": {"kc": 64, "mc": 64, "nc": 96}})
    path = tuning.write_tuned_entry(isa, {"float32": {"kc": 128, "mc": 64, "nc": 480}})
    machines = tuning.read_tuned_file()
    assert machines[tuning.machine_key(isa)] == {"float32": {"kc": 128, "mc": 64, "nc": 480}}
    assert tuning.machine_key("other-isa") in machines  # other entries are kept
    _C.reset_gemm_blocking()
    assert tuning.apply_tuned_file(path)
    b = _C.gemm_blocking(isa, "float32")
    assert (b["kc"], b["source"]) == (128, "tuned")
    assert _C.gemm_blocking(isa, "float64")["source"] != "tuned"


def test_tune_times_candidates_and_writes_the_winner(tmp_path, restore_blocking):
    path = tmp_path / "tuned.json"
    winners = tuning.tune(sizes=(48,), dtypes=("float64",), reps=1, path=path, log=None)
    w = winners["float64"]
    entry = tuning.read_tuned_file(path)[tuning.machine_key(_C.isa())]
    assert entry == {"float64": {k: w[k] for k in ("kc", "mc", "nc")}}
    assert _C.gemm_blocking(_C.isa(), "float64")["source"] == "tuned"


@pytest.mark.parametrize("text", ["{not json", json.dumps({"version": 99, "machines": {}}),
                                  json.dumps({"version": 1, "machines": {"x": {"float32": {"kc": -1}}}})])
def test_corrupted_tuned_file_is_ignored_with_a_warning(tmp_path, text, restore_blocking):
    path = tmp_path / "gemm_blocking.json"
    path.write_text(text)
    before = _C.gemm_blocking(_C.isa(), "float32")
    with pytest.warns(RuntimeWarning, match="ignoring the GEMM tuning file"):
        assert not tuning.apply_tuned_file(path)
    assert _C.gemm_blocking(_C.isa(), "float32") == before


# Small, odd blocks (many blocks per dimension, short last ones) and the largest KC.
BLOCKINGS = [(40, 16, 96), (1024, 8, 48)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("blocks", BLOCKINGS, ids=str)
def test_gemm_is_right_under_other_blockings(blocks, dtype, restore_blocking):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 1100)).astype(dtype)
    b = rng.standard_normal((1100, 101)).astype(dtype)
    x = rng.standard_normal((2, 5, 19, 17)).astype(dtype)
    w = rng.standard_normal((7, 5, 3, 3)).astype(dtype)
    gy = rng.standard_normal((2, 7, 19, 17)).astype(dtype)
    with tuning.use_blocking(*blocks, dtype=dtype):
        got = ops.matmul(a, b, backend="cpu")
        got_t = ops.matmul(b, a, trans_a=True, trans_b=True, backend="cpu")
        y = ops.conv2d(x, w, padding=1, backend="cpu")
        grads = ops.conv2d_backward(gy, x, w, padding=1, backend="cpu")
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, **tol)
    np.testing.assert_allclose(got_t, (a.astype(np.float64) @ b).T, **tol)
    np.testing.assert_allclose(y, ops.conv2d(x, w, padding=1, backend="reference"), **tol)
    for g, r in zip(grads, ops.conv2d_backward(gy, x, w, padding=1, backend="reference")):
        np.testing.assert_allclose(g, r, **tol)


def test_fixed_blocking_gives_the_same_bytes_on_any_number_of_threads(restore_blocking):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((96, 700)).astype(np.float32)
    b = rng.standard_normal((700, 200)).astype(np.float32)
    x = rng.standard_normal((8, 16, 24, 24)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((8, 8, 24, 24)).astype(np.float32)
    threads = pyconv.get_num_threads()
    results = []
    try:
        with tuning.use_blocking(72, 24, 96):
            for n in (1, 2, 3):
                pyconv.set_num_threads(n)
                gw = ops.conv2d_backward(gy, x, w, padding=1, needs=(False, True, False), backend="cpu")[1]
                results.append((ops.matmul(a, b, backend="cpu").tobytes(), gw.tobytes()))
    finally:
        pyconv.set_num_threads(threads)
    assert results[0] == results[1] == results[2]


def test_tune_on_first_use_only_when_asked(tmp_path, monkeypatch, restore_blocking):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("PYCONV_GEMM_BLOCKING", raising=False)
    monkeypatch.delenv("PYCONV_CACHE_SIZES", raising=False)
    calls = []
    monkeypatch.setattr(tuning, "tune", lambda **kw: calls.append(kw))
    monkeypatch.delenv("PYCONV_TUNE", raising=False)
    tuning.apply_at_import()
    assert calls == []  # never by default
    monkeypatch.setenv("PYCONV_TUNE", "1")
    tuning.apply_at_import()
    assert len(calls) == 1  # no entry for this machine yet
    tuning.write_tuned_entry(_C.isa(), {"float32": {"kc": 128, "mc": 64, "nc": 480}})
    tuning.apply_at_import()
    assert len(calls) == 1  # the file's entry is used instead


def test_info_and_tune_commands_say_which_blocking_runs(tmp_path, capsys, restore_blocking):
    from pyconv import cli

    cli.main(["info", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["gemm_blocking"]["float32"]["source"] in ("model", "tuned", "PYCONV_GEMM_BLOCKING",
                                                          "compile-time default")
    assert info["cpu_caches"]["l1d"] > 0
    cli.main(["tune", "--sizes", "48", "--reps", "1", "--dry-run"])
    out = capsys.readouterr().out
    assert out.startswith("GEMM blocking [") and "float32: model kc=" in out and "wrote" not in out


def test_use_blocking_restores_every_blocking(restore_blocking):
    isa = _C.isa()
    _C.set_gemm_blocking(isa, "float64", 64, 64, 96, "tuned")
    before = {d: _C.gemm_blocking(isa, d) for d in ELEM_SIZE}
    with tuning.use_blocking(40, 16, 96, dtype="float32") as blocks:
        assert _C.gemm_blocking(isa, "float32")["kc"] == blocks[0] == 40
    assert {d: _C.gemm_blocking(isa, d) for d in ELEM_SIZE} == before
