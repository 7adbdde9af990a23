"""The `pyconv` command line: info and a minimal bench run."""
import json

from child_python import run_python

from pyconv import bench, cli


def test_info_json(capsys):
    cli.main(["info", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["isa"] in ("avx512", "avx2", "generic")
    assert "reference" in info["backends"] and "cpu" in info["backends"]


def test_bench_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cli.main(["bench", "--quick", "--ops", "max_pool2d", "--reps", "1", "--json", str(out)])
    table = capsys.readouterr().out
    assert "| max_pool2d |" in table and "GB/s" in table
    rows = json.loads(out.read_text())["rows"]
    timed = {r["impl"] for r in rows if r["ms"] is not None}
    assert "cpu" in timed and "reference" in timed
    assert all(r["ms"] > 0 for r in rows if r["ms"] is not None)


def test_numpy_greedy_nms_baseline_matches_reference():
    import numpy as np

    from pyconv import ops

    boxes, scores = bench.clustered_boxes(np.random.default_rng(1), 300)
    expected = ops.nms(boxes, scores, 0.5, backend="reference")
    np.testing.assert_array_equal(bench.numpy_greedy_nms(boxes, scores, 0.5), expected)


def test_module_entry_point_help():
    r = run_python("-m", "pyconv", "--help")
    assert r.returncode == 0 and "bench" in r.stdout and "info" in r.stdout


def test_every_catalogue_kernel_has_a_benchmark_case():
    assert bench.untimed_kernels() == []
