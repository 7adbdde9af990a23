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


def test_machine_limit_runs_every_gemm_on_pyconvs_thread_count(monkeypatch):
    """The "% limit" columns divide by the best GEMM of the process: on one thread it must not be
    NumPy's BLAS on every core, nor PyTorch on its own count."""
    import pyconv
    import torch
    from threadpoolctl import threadpool_info

    from pyconv.bench import measure

    seen = {}

    def impls(n):
        def blas_threads():
            seen["numpy"] = {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

        return {"numpy": blas_threads, "torch": lambda: seen.__setitem__("torch", torch.get_num_threads())}

    monkeypatch.setattr(measure, "gemm_impls", impls)
    torch_before = torch.get_num_threads()
    threads_before = pyconv.get_num_threads()
    pyconv.set_num_threads(1)
    try:
        limits = measure.measure_limits()
    finally:
        pyconv.set_num_threads(threads_before)
    assert seen == {"numpy": {1}, "torch": 1}
    assert "on 1 thread(s)" in limits.source["gemm"]
    assert torch.get_num_threads() == torch_before
