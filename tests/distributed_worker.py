"""Scenarios of tests/test_distributed.py, run on every rank of ``mpiexec -n 2 python
tests/distributed_worker.py SCENARIO [ARGS]``. Each rank checks what it can see; an assertion
that fails on any rank fails the job (non-zero exit). Rank 0 prints "ok SCENARIO" at the end.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import pyconv  # noqa: E402
from pyconv import Tensor, distributed as dist, nn  # noqa: E402
import pyconv.nn.functional as F  # noqa: E402
from pyconv.optim import SGD, Adam  # noqa: E402


def small_cnn(dtype=np.float64):
    """Conv, batch norm, pooling and two linear layers: every kind of gradient a model has."""
    pyconv.manual_seed(0)
    return nn.Sequential(
        # no conv bias: before batch norm its gradient is zero up to round-off, which Adam
        # would blow up into steps of size lr that differ between any two summation orders
        nn.Conv2d(1, 4, 3, padding=1, bias=False, dtype=dtype), nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 16, dtype=dtype), nn.ReLU(),
        nn.Linear(16, 3, dtype=dtype))


def batches(steps, per_rank, ranks, dtype=np.float64):
    """The same global batches on every rank: steps x (x (ranks*per_rank, 1, 8, 8), y)."""
    rng = np.random.default_rng(42)
    return [(rng.standard_normal((ranks * per_rank, 1, 8, 8)).astype(dtype),
             rng.integers(0, 3, ranks * per_rank)) for _ in range(steps)]


def communicator(kind):
    """None (the default: MPI for these NumPy models), or "nccl": the NCCL communicator driven
    by the fake NCCL module of tests/fake_nccl.py."""
    if kind in (None, "mpi"):
        return None
    import fake_nccl

    fake_nccl.log.clear()
    return dist.NcclCommunicator(nccl=fake_nccl, cuda=fake_nccl.cuda)


def check_stream_order(comm, collectives):
    """Every fake NCCL collective was queued as: an event recorded on the compute stream, the
    communication stream made to wait for it, the collective on the communication stream, an
    event recorded after it there; and `collectives` of them were."""
    import fake_nccl

    log, compute, stream = fake_nccl.log, 0, comm.stream.ptr
    assert len(log) == 4 * collectives, (len(log), collectives)
    for i in range(0, len(log), 4):
        (r, ready, on), (w, waiter, awaited), (_, runs_on, _), (d, _, done_on) = log[i:i + 4]
        assert (r, on, w, waiter, awaited) == ("record", compute, "wait", stream, ready)
        assert (runs_on, d, done_on) == (stream, "record", stream)


def gather_params(model):
    return dist.allgather_object([p.data.copy() for p in model.parameters()])


def equivalence(kind=None, steps=4, per_rank=6):
    """K steps on 2 ranks (SyncBatchNorm, averaged gradients) against one process on the
    concatenated batches, from the same seed."""
    r, p = dist.rank(), dist.world_size()
    data = batches(steps, per_rank, p)
    comm = communicator(kind)
    ddp = dist.DistributedDataParallel(small_cnn(), bucket_cap_mb=0.004, sync_batch_norm=True,
                                       communicator=comm)
    assert len(ddp.reducer.buckets) > 1
    opt = Adam(ddp.parameters(), lr=0.01)
    single = small_cnn()
    opt_single = Adam(single.parameters(), lr=0.01)
    for x, y in data:
        mine = slice(r * per_rank, (r + 1) * per_rank)
        opt.zero_grad()
        F.cross_entropy(ddp(Tensor(x[mine])), y[mine]).backward()
        opt.step()
        opt_single.zero_grad()
        F.cross_entropy(single(Tensor(x)), y).backward()
        opt_single.step()
    everyone = gather_params(ddp)
    for other in everyone[1:]:  # every replica identical, bit for bit
        for a, b in zip(everyone[0], other):
            assert np.array_equal(a, b)
    worst = max(float(np.max(np.abs(a.data - b.data))) for a, b in zip(ddp.parameters(), single.parameters()))
    assert worst <= 1e-12, f"largest difference from one process: {worst}"
    for name in ("running_mean", "running_var"):
        a, b = getattr(ddp.module[1], name), getattr(single[1], name)
        assert np.max(np.abs(a - b)) <= 1e-12, name
    if comm is not None:  # the broadcasts; per step two SyncBatchNorm collectives and the buckets
        check_stream_order(comm, len(dist._model_arrays(ddp)) + steps * (2 + len(ddp.reducer.buckets)))
    if r == 0:
        print(f"largest parameter difference from one process after {steps} steps: {worst:.3g}")


def buckets(kind=None):
    """Gradients averaged in overlapped buckets == gradients averaged one parameter at a time
    after the backward pass == allreduce_gradients."""
    from mpi4py import MPI

    r = dist.rank()
    x, y = batches(1, 6, dist.world_size())[0]
    x, y = x[r::2], y[r::2]  # different data on each rank

    def local_grads(model):
        model.zero_grad()
        F.cross_entropy(model(Tensor(x)), y).backward()
        return [p.grad.copy() for p in model.parameters()]

    plain = small_cnn()
    expected = []
    for g in local_grads(plain):
        total = np.empty_like(g)
        MPI.COMM_WORLD.Allreduce(g, total, MPI.SUM)
        expected.append(total * (1.0 / dist.world_size()))
    comm = communicator(kind)
    ddp = dist.DistributedDataParallel(small_cnn(), bucket_cap_mb=0.002, communicator=comm)
    got = local_grads(ddp)
    assert len(ddp.reducer.buckets) >= 3
    assert ddp.reducer.buckets_started_early == len(ddp.reducer.buckets)  # all overlapped
    for a, b in zip(got, expected):
        assert np.array_equal(a, b)
    local_grads(plain)
    dist.allreduce_gradients(plain, communicator=comm)
    for p, b in zip(plain.parameters(), expected):
        assert np.array_equal(p.grad, b)
    if comm is not None:  # the broadcasts, then the buckets of the reducer and allreduce_gradients
        check_stream_order(comm, len(dist._model_arrays(ddp)) + len(ddp.reducer.buckets)
                           + len(dist._make_buckets(plain.parameters(), 25.0)))


def sync_batch_norm(kind=None):
    """SyncBatchNorm on 2 ranks == BatchNorm on the concatenated batch: output, running
    statistics and the gradients of x, weight and bias (float64)."""
    r, p = dist.rank(), dist.world_size()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((p * 5, 3, 4, 2)) * 3 + 1
    g = rng.standard_normal(x.shape)
    mine = slice(r * 5, (r + 1) * 5)

    def run(layer, xs, gs):
        xt = Tensor(xs, requires_grad=True)
        out = layer(xt)
        out.backward(gs)
        return out.data, xt.grad, layer.weight.grad, layer.bias.grad

    def bn():
        layer = nn.BatchNorm2d(3, dtype=np.float64)
        layer.weight.data[:] = [0.5, 2.0, -1.0]
        layer.bias.data[:] = [0.1, 0.2, 0.3]
        return layer

    sync = dist.SyncBatchNorm.convert(bn(), communicator(kind))
    assert isinstance(sync, dist.SyncBatchNorm)
    y, gx, gw, gb = run(sync, x[mine], g[mine])
    y1, gx1, gw1, gb1 = run(single := bn(), x, g)
    np.testing.assert_allclose(y, y1[mine], rtol=0, atol=1e-12)
    np.testing.assert_allclose(gx, gx1[mine], rtol=0, atol=1e-12)
    # the weight and bias gradients of the global batch are the sums of the ranks' gradients
    np.testing.assert_allclose(dist.allreduce(gw), gw1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dist.allreduce(gb), gb1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.running_var, single.running_var, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.running_mean, single.running_mean, rtol=0, atol=1e-12)


class _Interrupt(pyconv.autograd.Function):
    """The identity, whose backward raises while `armed`."""

    armed = False

    def forward(self, x):
        return x

    def backward(self, g):
        if _Interrupt.armed:
            raise FloatingPointError("planted failure in the backward pass")
        return g


class Interrupt(nn.Module):
    def forward(self, x):
        return _Interrupt()(x)


def interrupted_backward(kind=None):
    """An exception caught in the middle of a backward pass, after some buckets' allreduces
    started, on every rank: the next passes average their gradients as if it had not happened."""
    from mpi4py import MPI

    r = dist.rank()
    x, y = batches(1, 6, dist.world_size())[0]
    x, y = x[r::2], y[r::2]

    def cnn_with_interrupt():
        layers = list(small_cnn())
        return nn.Sequential(*layers[:3], Interrupt(), *layers[3:])  # after the convolution block

    def local_grads(model):
        model.zero_grad()
        F.cross_entropy(model(Tensor(x)), y).backward()
        return [p.grad.copy() for p in model.parameters()]

    expected = []
    for g in local_grads(cnn_with_interrupt()):
        total = np.empty_like(g)
        MPI.COMM_WORLD.Allreduce(g, total, MPI.SUM)
        expected.append(total * (1.0 / dist.world_size()))
    ddp = dist.DistributedDataParallel(cnn_with_interrupt(), bucket_cap_mb=0.002,
                                       communicator=communicator(kind))
    _Interrupt.armed = True
    try:
        local_grads(ddp)
        raise AssertionError("the planted failure did not happen")
    except FloatingPointError:
        pass
    _Interrupt.armed = False
    started = [b.handle is not None for b in ddp.reducer.buckets]
    assert any(started) and not all(started), started  # interrupted with buckets in flight
    for _ in range(2):
        got = local_grads(ddp)
        assert ddp.reducer.buckets_started_early == len(ddp.reducer.buckets)
        for a, b in zip(got, expected):
            assert np.array_equal(a, b)


def sharded_validation():
    """Trainer.evaluate with each rank on its own part of the data (shards of unequal sizes,
    one of them empty) == one process evaluating the whole data set."""
    from pyconv.data import DataLoader
    from pyconv.train import Trainer, accuracy

    model = small_cnn()
    x, y = batches(1, 23, 1)[0]
    for n in (23, 1):  # shards of 12 and 11 samples; of 1 and 0
        def trainer(distributed):
            return Trainer(model, SGD(model.parameters(), lr=0.1), metrics={"accuracy": accuracy},
                           progress=False, distributed=distributed)

        sharded = DataLoader((x[:n], y[:n]), 5, rank=dist.rank(), world_size=dist.world_size(),
                             even_shards=False)
        assert sum(dist.allgather_object(sum(len(b[0]) for b in sharded))) == n
        got = trainer(True).evaluate(sharded)
        expected = trainer(False).evaluate(DataLoader((x[:n], y[:n]), 7))
        assert got.keys() == expected.keys() == {"loss", "accuracy"}
        for key in got:
            assert abs(got[key] - expected[key]) <= 1e-12 * abs(expected[key]), (key, got, expected)


def fail():
    """Rank 1 raises in the middle of training; rank 0 waits in the gradient allreduce."""
    ddp = dist.DistributedDataParallel(small_cnn())
    opt = SGD(ddp.parameters(), lr=0.01)
    x, y = batches(1, 6, 1)[0]
    for step in range(1000):
        if step == 3 and dist.rank() == 1:
            raise RuntimeError("planted failure in step 3")
        opt.zero_grad()
        F.cross_entropy(ddp(Tensor(x)), y).backward()
        opt.step()


def stuck():
    """Rank 1 hangs (without failing); rank 0 gives up on its collective after the timeout."""
    dist.init(timeout=2)
    if dist.rank() == 1:
        import time

        time.sleep(120)
    dist.barrier()


def trainer(folder):
    """Trainer(distributed) for 2 epochs, then resumed for a third: the replicas stay equal
    (weights and running statistics), the logged loss is the same on every rank, rank 0
    alone writes."""
    from pyconv.data import DataLoader
    from pyconv.train import Trainer

    x, y = batches(1, 20, 2, np.float32)[0]
    path = os.path.join(folder, "last.npz")

    def run(epochs, resume):
        model = small_cnn(np.float32)
        pyconv.manual_seed(dist.rank())  # diverging generators: the Trainer's broadcast fixes this
        for p in model.parameters():
            p.data += pyconv.random.generator().standard_normal(p.shape).astype(p.dtype) * 0.1
        t = Trainer(model, Adam(model.parameters(), lr=0.01), progress=False, checkpoint_path=path)
        assert t.distributed
        loader = DataLoader((x, y), 8, shuffle=True, seed=0, rank=dist.rank(), world_size=dist.world_size())
        history = t.fit(loader, epochs, resume=resume)
        # parameters and the batch norm's running statistics (averaged after each epoch)
        everyone = dist.allgather_object(model.state_dict())
        for key, value in everyone[0].items():
            assert np.array_equal(value, everyone[1][key]), key
        return history, model
    history, _ = run(2, False)
    assert dist.broadcast_object(history) == history  # the same averaged logs on every rank
    resumed, _ = run(3, True)
    assert resumed[:2] == history and len(resumed) == 3
    files = dist.allgather_object(sorted(os.listdir(folder)))
    assert files[0] == files[1] == ["last.npz"]


if __name__ == "__main__":
    dist.init(threads=1)
    assert dist.world_size() == 2, "run under mpiexec -n 2"
    assert (dist.local_rank(), dist.local_world_size()) == (dist.rank(), 2)  # one machine
    scenario, args = sys.argv[1], sys.argv[2:]
    {"equivalence": equivalence, "buckets": buckets, "sync_batch_norm": sync_batch_norm,
     "fail": fail, "stuck": stuck, "trainer": trainer, "interrupted_backward": interrupted_backward,
     "sharded_validation": sharded_validation}[scenario](*args)
    dist.barrier()
    if dist.is_main():
        print(f"ok {scenario}")
