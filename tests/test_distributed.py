"""Data-parallel training (pyconv.distributed): the scenarios of tests/distributed_worker.py run
on two ranks with ``mpiexec -n 2`` (on loopback; skipped without mpi4py or mpiexec), ``pyconv
train --distributed`` end to end, and the single-process behaviour (a world of one)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pyconv
from pyconv import Tensor, distributed as dist, nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")

needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or shutil.which("mpiexec") is None,
    reason="needs mpi4py and an mpiexec (pip install '.[distributed]')")


def mpiexec(args, timeout, ranks=2):
    """Runs `args` (after python) on `ranks` ranks from the repository root; returns the
    completed process (stdout and stderr together)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run(["mpiexec", "-n", str(ranks), sys.executable] + args, cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def run_scenario(name, *args):
    done = mpiexec([WORKER, name, *args], timeout=180)
    assert done.returncode == 0, done.stdout
    assert f"ok {name}" in done.stdout
    return done.stdout


# "mpi": NumPy arrays through MPI; "nccl": the NCCL communicator's logic, driven by the fake
# NCCL module of tests/fake_nccl.py (NumPy arrays for device memory, collectives through MPI,
# the order of the stream and event calls checked). No test here runs real NCCL on GPUs.
communicators = pytest.mark.parametrize("kind", ["mpi", "nccl"])


@needs_mpi
@communicators
def test_two_ranks_train_as_one_process_on_the_concatenated_batches(kind):
    """After 4 Adam steps (float64, SyncBatchNorm, several buckets) both replicas are bit for
    bit equal, and within 1e-12 of one process trained on the concatenated batches."""
    run_scenario("equivalence", kind)


@needs_mpi
@communicators
def test_bucketed_overlapped_allreduce_gives_the_per_parameter_average(kind):
    run_scenario("buckets", kind)


@needs_mpi
@communicators
def test_sync_batch_norm_forward_and_backward_match_the_combined_batch(kind):
    run_scenario("sync_batch_norm", kind)


@needs_mpi
@communicators
def test_an_exception_caught_mid_backward_leaves_the_reducer_usable(kind):
    run_scenario("interrupted_backward", kind)


@needs_mpi
def test_validation_sharded_over_ranks_gives_the_single_process_metrics():
    run_scenario("sharded_validation")


@needs_mpi
def test_trainer_keeps_replicas_equal_averages_logs_and_resumes(tmp_path):
    run_scenario("trainer", str(tmp_path))


@needs_mpi
def test_a_failing_rank_ends_the_job_on_every_rank_naming_it():
    # bounded by the subprocess timeout: a hang raises TimeoutExpired
    done = mpiexec([WORKER, "fail"], timeout=60)
    assert done.returncode != 0
    assert "RuntimeError: planted failure in step 3" in done.stdout
    assert "rank 1 of 2 failed" in done.stdout
    # the other rank, waiting in the gradient allreduce, says why it stops
    assert "rank 0: stopping because rank 1 failed: RuntimeError: planted failure" in done.stdout


@needs_mpi
def test_a_stuck_rank_makes_the_collectives_of_the_others_time_out():
    done = mpiexec([WORKER, "stuck"], timeout=60)
    assert done.returncode != 0
    assert "rank 0: barrier did not complete within 2 s" in done.stdout


@needs_mpi
def test_pyconv_train_lenet_distributed_end_to_end(tmp_path):
    args = ["-m", "pyconv", "train", "lenet", "--distributed", "--epochs", "1", "--limit", "48",
            "--batch-size", "8", "--no-progress", "--out", str(tmp_path)]
    done = mpiexec(args, timeout=300)
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("epoch 1/1") == 1  # rank 0 alone prints
    assert "epochs on 2 ranks x 1 thread\n" in done.stdout  # OMP_NUM_THREADS=1 per rank
    with open(tmp_path / "history.json") as f:
        history = json.load(f)
    assert [h["epoch"] for h in history["history"]] == [1]
    assert 0 <= history["summary"]["test_accuracy"] <= 1
    for name in ("checkpoint.npz", "loss.png", "saliency.png"):
        assert (tmp_path / name).stat().st_size > 0

    done = mpiexec(args + ["--epochs", "2", "--resume"], timeout=300)  # the last --epochs counts
    assert done.returncode == 0, done.stdout
    with open(tmp_path / "history.json") as f:
        resumed = json.load(f)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == history["history"][0]


# ---------------------------------------------------------------------------------------------
# A world of one (no mpiexec): everything works and communicates nothing


def test_without_mpi_the_world_is_this_process():
    assert dist.init() == 1
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    assert (dist.local_rank(), dist.local_world_size()) == (0, 1)
    dist.barrier()
    np.testing.assert_array_equal(dist.allreduce(np.arange(3.0), "mean"), np.arange(3.0))
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.allgather_object(5) == [5]
    with pytest.raises(ValueError, match="root"):
        dist.broadcast_object(1, root=1)
    with pytest.raises(ValueError, match="op"):
        dist.allreduce(np.ones(2), "min")


def test_ddp_in_a_world_of_one_leaves_gradients_alone():
    pyconv.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    pyconv.manual_seed(0)
    wrapped = dist.DistributedDataParallel(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    for m in (model, wrapped):
        m(Tensor(x)).sum().backward()
    for p, q in zip(model.parameters(), wrapped.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    assert list(wrapped.state_dict())[0] == "module.0.weight"


def test_uneven_shards_give_every_sample_to_exactly_one_rank():
    from pyconv.data import DataLoader

    data = np.arange(23)
    loaders = [DataLoader(data, 5, shuffle=True, seed=3, rank=r, world_size=3, even_shards=False)
               for r in range(3)]
    shards = [np.concatenate(list(loader)) for loader in loaders]
    assert [len(s) for s in shards] == [8, 8, 7]
    assert [len(loader) for loader in loaders] == [2, 2, 2]
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), data)
    tiny = [list(DataLoader(data[:1], 5, rank=r, world_size=2, even_shards=False)) for r in range(2)]
    assert [len(batches) for batches in tiny] == [1, 0]


def test_buckets_group_parameters_in_reverse_order_up_to_the_cap():
    params = [nn.Parameter(np.zeros(n, np.float32)) for n in (100, 200, 300, 50)]
    reducer = dist.GradientReducer(params, bucket_cap_mb=1200 / 2 ** 20)  # 1200 bytes
    assert [[p.size for p in b.params] for b in reducer.buckets] == [[50], [300], [200, 100]]
    mixed = dist.GradientReducer([params[0], nn.Parameter(np.zeros(3))], bucket_cap_mb=1)
    assert len(mixed.buckets) == 2  # one dtype per flat buffer
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        dist.GradientReducer(params, bucket_cap_mb=0)


def test_sync_batch_norm_convert_keeps_parameters_and_matches_batch_norm_alone():
    pyconv.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 4), nn.BatchNorm1d(4))
    before = model.state_dict()
    x = np.random.default_rng(1).standard_normal((6, 1, 4, 4)).astype(np.float32)
    expected = model(Tensor(x)).data
    reference_state = model.state_dict()
    model.load_state_dict(before)
    converted = dist.SyncBatchNorm.convert(model)
    assert converted is model
    assert [type(m).__name__ for m in model.modules()].count("SyncBatchNorm") == 2
    assert list(model.state_dict()) == list(before)
    np.testing.assert_array_equal(model(Tensor(x)).data, expected)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, reference_state[key])


@needs_mpi
def test_pyconv_train_a_gan_distributed_wraps_both_networks(tmp_path):
    """Two models, two optimisers: each network averages its own gradients."""
    done = mpiexec(["-m", "pyconv", "train", "dcgan", "--epochs", "1", "--limit", "32", "--batch-size",
                    "8", "--no-progress", "--out", str(tmp_path)], timeout=300)  # distributed by default
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("epoch 1/1") == 1 and "on 2 ranks" in done.stdout
    assert (tmp_path / "samples.png").stat().st_size > 0
