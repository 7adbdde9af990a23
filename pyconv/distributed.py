"""Data-parallel training over MPI (mpi4py): every rank holds the whole model, trains on its own
shard of each batch, and the ranks average their gradients before every optimiser step, so
all replicas take the same step, the one a single process would take on the concatenated
batch.

    mpiexec -n 2 python train.py            # or: mpiexec -n 2 python -m pyconv train lenet --distributed

    from pyconv import distributed
    distributed.init()                                 # world of size 1 without MPI
    model = distributed.DistributedDataParallel(LeNet5())
    opt = Adam(model.parameters())
    loader = DataLoader(data, 32, shuffle=True, seed=0,
                        rank=distributed.rank(), world_size=distributed.world_size())
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(Tensor(x)), y).backward()  # gradients averaged when it returns
        opt.step()

How gradients are averaged: the parameters are grouped, in reverse order of registration
(roughly the order in which the backward pass finishes them), into a few flat buckets of about
``bucket_cap_mb`` each. A post-accumulate-grad hook on every parameter (see
:meth:`pyconv.Tensor.register_post_accumulate_grad_hook`) copies its gradient into its bucket;
when the last gradient of a bucket is final, a non-blocking allreduce (``Iallreduce``) of the
whole bucket starts while the backward pass goes on with earlier layers. At the end of the
pass (:func:`pyconv.autograd.engine.queue_callback`) the reducer waits for every bucket and
writes the averaged gradients back into ``.grad``. MPICH advances a non-blocking collective only
inside MPI calls, so a helper thread makes one every 0.2 ms while buckets are in flight (the
kernels release the GIL, so it runs beside them). One allreduce per bucket rather than per
parameter: the per-message latency is paid a few times per step, not once per tensor.

Batch normalisation keeps per-rank batch statistics unless the model is built with
:class:`SyncBatchNorm` (``DistributedDataParallel(model, sync_batch_norm=True)``), whose mean
and variance, and the sums its backward pass needs, are those of the whole global batch.

Failures: every wait polls its non-blocking requests against a deadline (``timeout`` of
:func:`init`, 300 s by default), so a vanished or stuck peer raises :class:`DistributedError`
instead of hanging. An exception that escapes on one rank is printed with the rank's number,
announced to the other ranks (each stops at its next wait, naming the failed rank and the
cause) and then ends the whole job through ``MPI_Abort``.

Only NumPy (CPU) arrays are communicated; the GPU backend is not supported here.
"""
from __future__ import annotations

import os
import pickle
import sys
import time

import numpy as np

from . import nn
from .autograd import Function, Tensor, array_module
from .autograd.engine import queue_callback
from .nn.modules.normalization import _BatchNorm

__all__ = [
    "init", "is_initialized", "rank", "world_size", "local_world_size", "is_main", "barrier",
    "broadcast_parameters", "broadcast_optimizer_state", "average_buffers", "broadcast_object",
    "allreduce", "allgather_object", "allreduce_gradients", "GradientReducer",
    "DistributedDataParallel", "SyncBatchNorm", "DistributedError",
]

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the slowest rank
_FAILURE_TAG = 7301  # point-to-point tag of the "this rank failed" notices


class DistributedError(RuntimeError):
    """A collective timed out, or another rank failed."""


class _World:
    comm = None  # our own duplicate of MPI_COMM_WORLD (None: no MPI, a world of one)
    rank, size, local_size = 0, 1, 1
    timeout = DEFAULT_TIMEOUT
    initialized = False
    thread_multiple = False  # whether MPI may be called from a second thread (the progress thread)
    failure_notices: list = []  # keeps the outgoing notices' buffers alive until MPI_Abort


_world = _World()


def _launched_by_mpi() -> bool:
    """Whether an MPI launcher (MPICH's Hydra, Open MPI, a PMIx launcher) started this process."""
    return any(v in os.environ for v in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"))


def init(threads=None, timeout=DEFAULT_TIMEOUT) -> int:
    """Joins the MPI job this process was launched in (``mpiexec -n N ...``) and returns the
    world size. Without a launcher, or without mpi4py, the world is this process alone (size 1)
    and every collective below is a no-op. Calling it again changes nothing but the timeout.

    threads: CPU threads for this rank's kernels; by default, when several ranks share a
    machine and OMP_NUM_THREADS is not set, the machine's cores divided by the ranks on it, so
    that ranks x threads does not oversubscribe the cores. timeout: seconds any collective
    waits before raising :class:`DistributedError`."""
    if not timeout > 0:
        raise ValueError(f"init: timeout must be > 0 seconds, got {timeout!r}")
    _world.timeout = float(timeout)
    if _world.initialized:
        return _world.size
    _world.initialized = True
    if not _launched_by_mpi():
        return 1
    try:
        from mpi4py import MPI
    except ImportError:
        return 1
    world = MPI.COMM_WORLD
    _world.comm = world.Dup()
    _world.rank, _world.size = world.Get_rank(), world.Get_size()
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    _world.local_size = node.Get_size()
    node.Free()
    if _world.size > 1:
        _install_failure_handler()
    from . import get_num_threads, set_num_threads

    _world.thread_multiple = MPI.Query_thread() == MPI.THREAD_MULTIPLE
    if threads is None and _world.local_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, _available_cores() // _world.local_size)
    if threads is not None and threads != get_num_threads():
        set_num_threads(threads)
    return _world.size


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def is_initialized() -> bool:
    return _world.initialized


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1 (0 without MPI)."""
    return _world.rank


def world_size() -> int:
    """The number of ranks (1 without MPI or before :func:`init`)."""
    return _world.size


def local_world_size() -> int:
    """The number of ranks on this machine."""
    return _world.local_size


def is_main() -> bool:
    """True on rank 0, the rank that prints, writes checkpoints and pictures."""
    return _world.rank == 0


# ---------------------------------------------------------------------------------------------
# Waiting with a deadline, and failing together


def _mpi():
    from mpi4py import MPI

    return MPI


def _check_failure_notices():
    """Raises DistributedError if another rank announced that it failed."""
    MPI = _mpi()
    status = MPI.Status()
    if _world.comm.Iprobe(MPI.ANY_SOURCE, _FAILURE_TAG, status):
        buf = bytearray(status.Get_count(MPI.BYTE))
        _world.comm.Recv([buf, MPI.BYTE], status.Get_source(), _FAILURE_TAG)
        reason = (f"rank {_world.rank}: stopping because rank {status.Get_source()} failed: "
                  f"{buf.decode(errors='replace')}")
        # Said at once: the failed rank aborts the whole job soon, maybe before a traceback of
        # this error could be printed.
        sys.stderr.write(f"pyconv.distributed: {reason}\n")
        sys.stderr.flush()
        raise DistributedError(reason)


def _wait(requests, what):
    """Waits for every request, polling so that a failed or stuck peer ends the wait: raises
    DistributedError after the timeout or when another rank announces a failure. The short
    sleeps between polls leave the cores to the ranks still computing."""
    MPI = _mpi()
    deadline = time.monotonic() + _world.timeout
    pause = 0.0
    while not MPI.Request.Testall(requests):
        _check_failure_notices()
        if time.monotonic() > deadline:
            raise DistributedError(
                f"rank {_world.rank}: {what} did not complete within {_world.timeout:g} s "
                "(another rank is stuck, or has gone without reporting an error)")
        time.sleep(pause)
        pause = min(2 * pause or 1e-5, 1e-3)


def _install_failure_handler():
    """An exception that escapes on this rank is printed, announced to every other rank and
    then aborts the job: the other ranks must not wait for this one for ever."""
    previous = sys.excepthook

    def abort_job(exc_type, exc, tb):
        MPI = _mpi()
        if not isinstance(exc, DistributedError):  # a peer's failure is announced by the peer
            message = f"{exc_type.__name__}: {exc}".encode()
            for other in range(_world.size):
                if other != _world.rank:
                    _world.failure_notices.append(
                        _world.comm.Isend([message, MPI.BYTE], other, _FAILURE_TAG))
        # The one-line cause first: MPI_Abort may cut the traceback short on a loaded machine.
        sys.stderr.write(f"pyconv.distributed: rank {_world.rank} of {_world.size} failed "
                         f"({exc_type.__name__}: {exc}); aborting the job\n")
        sys.stderr.flush()
        previous(exc_type, exc, tb)
        sys.stderr.flush()
        if _world.failure_notices:
            time.sleep(2.0)  # lets the others, waiting in a collective, report the cause first
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = abort_job


# ---------------------------------------------------------------------------------------------
# Collectives on arrays and objects


def barrier():
    """Waits until every rank has reached this call."""
    if _world.size > 1:
        _wait([_world.comm.Ibarrier()], "barrier")


def allreduce(array, op="sum"):
    """The element-wise sum (op "sum"), mean ("mean") or maximum ("max") of a NumPy array over
    the ranks, as a new array (identical on every rank)."""
    if op not in ("sum", "mean", "max"):
        raise ValueError(f"allreduce: op must be 'sum', 'mean' or 'max', got {op!r}")
    out = np.array(array, copy=True, order="C")
    if _world.size > 1:
        MPI = _mpi()
        _wait([_world.comm.Iallreduce(MPI.IN_PLACE, out, MPI.MAX if op == "max" else MPI.SUM)],
              "allreduce")
    if op == "mean":
        out /= _world.size
    return out


def _broadcast_bytes(data: bytes | None, root) -> bytes:
    MPI = _mpi()
    size = np.array([len(data) if _world.rank == root else 0], np.int64)
    _wait([_world.comm.Ibcast(size, root)], "broadcast")
    buf = bytearray(data) if _world.rank == root else bytearray(int(size[0]))
    _wait([_world.comm.Ibcast([buf, MPI.BYTE], root)], "broadcast")
    return bytes(buf)


def broadcast_object(obj, root=0):
    """`obj` from rank `root` (any picklable value), returned on every rank."""
    _check_root(root)
    if _world.size == 1:
        return obj
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if _world.rank == root else None
    return pickle.loads(_broadcast_bytes(data, root))


def allgather_object(obj) -> list:
    """Every rank's `obj`, as a list indexed by rank, on every rank."""
    if _world.size == 1:
        return [obj]
    return [broadcast_object(obj, r) for r in range(_world.size)]


def _check_root(root):
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < _world.size:
        raise ValueError(f"root must be a rank in 0..{_world.size - 1}, got {root!r}")


def broadcast_parameters(model, root=0):
    """Copies rank `root`'s parameters and buffers (running statistics) into every other rank's
    model, so that the replicas start equal."""
    _check_root(root)
    if _world.size == 1:
        return model
    state = broadcast_object(model.state_dict() if _world.rank == root else None, root)
    if _world.rank != root:
        model.load_state_dict(state)
    return model


def average_buffers(model):
    """Replaces every floating-point buffer of `model` (BatchNorm's running mean and variance,
    which each rank updates from its own batches) by its mean over the ranks, so that the
    replicas evaluate, and checkpoint, alike."""
    if _world.size == 1:
        return model
    for module in model.modules():
        for name in module._buffers:
            value = getattr(module, name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                value[...] = allreduce(value, "mean")
    return model


def broadcast_optimizer_state(optimizer, root=0):
    """Copies rank `root`'s optimiser state (learning rate, momentum buffers, Adam moments and
    step counts) into every other rank's optimiser."""
    _check_root(root)
    if _world.size == 1:
        return optimizer
    state = broadcast_object(optimizer.state_dict() if _world.rank == root else None, root)
    if _world.rank != root:
        optimizer.load_state_dict(state)
    return optimizer


# ---------------------------------------------------------------------------------------------
# Gradient averaging in buckets


class _Bucket:
    """Parameters whose gradients travel together in one flat buffer."""

    def __init__(self, params):
        self.params = params
        self.offsets = np.cumsum([0] + [p.size for p in params]).tolist()
        self.buffer = np.zeros(self.offsets[-1], params[0].dtype)
        self.request = None
        self.pending = 0  # gradients of this backward pass not final yet

    def pack(self):
        for p, start, stop in zip(self.params, self.offsets, self.offsets[1:]):
            if p.grad is None:
                self.buffer[start:stop] = 0
            else:
                self.buffer[start:stop] = p.grad.reshape(-1)

    def unpack(self, scale):
        for p, start, stop in zip(self.params, self.offsets, self.offsets[1:]):
            if p.grad is not None:  # a parameter no rank differentiated keeps no gradient
                p.grad = (self.buffer[start:stop] * scale).reshape(p.shape)


def _make_buckets(params, bucket_cap_mb):
    """Parameters (reversed: the backward pass finishes the last layers first) in consecutive
    groups of one dtype of about bucket_cap_mb each; a larger parameter gets a bucket of its own."""
    cap = bucket_cap_mb * 2 ** 20
    buckets, current, size = [], [], 0
    for p in reversed(params):
        if not isinstance(p.data, np.ndarray):
            raise NotImplementedError("pyconv.distributed: only CPU (NumPy) parameters can be "
                                      "averaged; the GPU backend is not supported here")
        if current and (size + p.data.nbytes > cap or p.dtype != current[0].dtype):
            buckets.append(_Bucket(current))
            current, size = [], 0
        current.append(p)
        size += p.data.nbytes
    if current:
        buckets.append(_Bucket(current))
    return buckets


def _unique(params):
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class GradientReducer:
    """Averages the gradients of `params` over the ranks during every backward pass that
    reaches them, bucket by bucket, overlapping each bucket's allreduce with the rest of the
    backward pass (see the module's docstring). When ``backward()`` returns, every one of these
    parameters that has a gradient holds the mean of the ranks' gradients.

    Every rank must use the same parameters in each pass (a parameter that no rank
    differentiates keeps ``grad`` None; one that only some ranks differentiate counts as a
    zero gradient on the others). Frozen parameters (``requires_grad`` False) are skipped.
    progress_thread: while buckets are in flight, a helper thread makes an MPI call every
    0.2 ms so that their transfers advance during the backward's kernels (see
    :class:`_ProgressThread`); without it they advance only when a gradient becomes final.
    ``remove()`` takes the hooks off again."""

    def __init__(self, params, bucket_cap_mb=1.0, progress_thread=True):
        if not bucket_cap_mb > 0:
            raise ValueError(f"GradientReducer: bucket_cap_mb must be > 0, got {bucket_cap_mb!r}")
        params = _unique(params)
        if not params:
            raise ValueError("GradientReducer: got no parameters")
        self.buckets = _make_buckets(params, bucket_cap_mb)
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self._in_pass = False
        self.progress_thread = progress_thread
        self._progress = None  # the _ProgressThread of the pass in progress
        # measurements: seconds spent waiting at the end of backward passes (all passes), and
        # the buckets whose allreduce the last pass started before its end (overlapped)
        self.communication_seconds = 0.0
        self.buckets_started_early = 0
        self._handles = [] if _world.size == 1 else [
            p.register_post_accumulate_grad_hook(self._gradient_ready) for p in params]

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _gradient_ready(self, p):
        if not self._in_pass:  # the first final gradient of this backward pass
            self._in_pass = True
            for b in self.buckets:
                b.pending = sum(q.requires_grad for q in b.params)
            self.buckets_started_early = 0
            queue_callback(self._finish)
        bucket = self._bucket_of[id(p)]
        bucket.pending -= 1
        if bucket.pending == 0:
            self._start(bucket)
            self.buckets_started_early += 1
            if self.progress_thread and _world.thread_multiple and self._progress is None:
                self._progress = _ProgressThread()
        if self._progress is None:
            self._poke()

    def _start(self, bucket):
        MPI = _mpi()
        bucket.pack()
        bucket.request = _world.comm.Iallreduce(MPI.IN_PLACE, bucket.buffer, MPI.SUM)

    def _poke(self):
        """Lets MPI move the allreduces in flight on (MPICH advances a non-blocking collective
        only inside MPI calls): once per final gradient, between the backward's kernels."""
        for b in self.buckets:
            if b.request is not None:
                b.request.Test()

    def _finish(self):
        self._in_pass = False
        start = time.perf_counter()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        for b in self.buckets:
            if b.request is None:  # some parameter of it got no gradient in this pass
                self._start(b)
        _wait([b.request for b in self.buckets], "gradient allreduce")
        self.communication_seconds += time.perf_counter() - start
        for b in self.buckets:
            b.request = None
            b.unpack(1.0 / _world.size)


class _ProgressThread:
    """Moves the allreduces in flight on while the backward pass computes. MPICH advances a
    non-blocking collective only inside MPI calls, and the kernels of the backward pass make
    none (they release the GIL, so this thread runs beside them): without it, a large
    bucket's transfer would mostly wait for the end of the pass."""

    interval = 2e-4  # seconds between MPI progress calls: negligible CPU, sub-millisecond delay

    def __init__(self):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyconv-mpi-progress", daemon=True)
        self._thread.start()

    def _run(self):
        comm = _world.comm
        while not self._stop.wait(self.interval):
            comm.Iprobe(tag=_FAILURE_TAG)  # any MPI call drives MPICH's progress engine

    def stop(self):
        self._stop.set()
        self._thread.join()


def allreduce_gradients(model, bucket_cap_mb=25.0):
    """Averages the gradients of `model`'s parameters (a Module or a list of parameters) over
    the ranks now, after the backward pass: one flat allreduce per bucket of about
    bucket_cap_mb, all buckets in flight at once. :class:`DistributedDataParallel` does the
    same during the backward pass instead."""
    if _world.size == 1:
        return
    params = model.parameters() if hasattr(model, "parameters") else list(model)
    params = [p for p in _unique(params) if p.requires_grad]
    if not params:
        return
    MPI = _mpi()
    buckets = _make_buckets(params, bucket_cap_mb)
    requests = []
    for b in buckets:
        b.pack()
        requests.append(_world.comm.Iallreduce(MPI.IN_PLACE, b.buffer, MPI.SUM))
    _wait(requests, "gradient allreduce")
    for b in buckets:
        b.unpack(1.0 / _world.size)


class DistributedDataParallel(nn.Module):
    """Wraps `module` for data-parallel training: broadcasts rank 0's parameters and buffers
    to every rank, then averages the gradients during every backward pass (a
    :class:`GradientReducer` over its parameters). Calling the wrapper calls `module`;
    ``state_dict()`` names carry the ``module.`` prefix, as PyTorch's wrapper does.

    sync_batch_norm: replace the BatchNorm layers by :class:`SyncBatchNorm` (statistics of the
    global batch) first; otherwise each rank normalises with its own batch statistics.
    bucket_cap_mb: the size of the gradient buckets."""

    def __init__(self, module, bucket_cap_mb=1.0, sync_batch_norm=False):
        super().__init__()
        init()
        if sync_batch_norm:
            module = SyncBatchNorm.convert(module)
        self.module = module
        broadcast_parameters(module)
        object.__setattr__(self, "reducer", GradientReducer(module.parameters(), bucket_cap_mb))

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Synchronised batch normalisation


def _global_moments(x, axes):
    """(mean, biased variance, count) per channel over every rank's x, combined from each
    rank's count, mean and sum of squared deviations (Chan et al.'s parallel formula, in the
    same order on every rank, so every rank gets the same numbers)."""
    n = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    m2 = ((x - mean.reshape(_channel_shape(x.ndim, x.shape[1]))) ** 2).sum(axis=axes)
    if _world.size == 1:
        return mean, m2 / n, n
    C = x.shape[1]
    mine = np.concatenate([[n], mean, m2]).astype(np.float64)
    every = np.empty((_world.size, 1 + 2 * C))
    _wait([_world.comm.Iallgather(mine, every)], "SyncBatchNorm statistics")
    total, mean_all, m2_all = every[0, 0], every[0, 1:1 + C], every[0, 1 + C:]
    for row in every[1:]:
        count, mean_r, m2_r = row[0], row[1:1 + C], row[1 + C:]
        delta = mean_r - mean_all
        combined = total + count
        mean_all = mean_all + delta * (count / combined)
        m2_all = m2_all + m2_r + delta ** 2 * (total * count / combined)
        total = combined
    return mean_all.astype(x.dtype), (m2_all / total).astype(x.dtype), int(total)


def _channel_shape(ndim, C):
    return (1, C) + (1,) * (ndim - 2)


class _SyncBatchNormFunction(Function):
    """Batch norm with the global batch's statistics. The gradient of x needs two sums over the
    global batch (of g and of g * xhat): one allreduce in the backward pass."""

    def __init__(self, mean, invstd, count):
        self.mean, self.invstd, self.count = mean, invstd, count

    def forward(self, x, w, b):
        shape = _channel_shape(x.ndim, x.shape[1])
        self.axes = (0,) + tuple(range(2, x.ndim))
        self.xhat = (x - self.mean.reshape(shape)) * self.invstd.reshape(shape)
        self.scale = self.invstd.reshape(shape) if w is None else (w * self.invstd).reshape(shape)
        y = self.xhat if w is None else self.xhat * w.reshape(shape)
        return y if b is None else y + b.reshape(shape)

    def backward(self, g):
        nx, nw, nb = self.needs_input_grad
        axes, xhat = self.axes, self.xhat
        sum_g = g.sum(axis=axes)
        sum_gx = (g * xhat).sum(axis=axes)
        gx = None
        if nx:
            # every rank runs this collective in the same order: the graphs are the same
            sums = allreduce(np.concatenate([sum_g, sum_gx]))
            C = g.shape[1]
            shape = _channel_shape(g.ndim, C)
            all_g, all_gx = sums[:C].reshape(shape), sums[C:].reshape(shape)
            gx = self.scale * (g - (all_g + xhat * all_gx) / self.count)
        return gx, (sum_gx if nw else None), (sum_g if nb else None)


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation whose training statistics are those of the global batch (every
    rank's samples), for (N, C), (N, C, L) or (N, C, H, W) inputs; in eval mode it is a plain
    BatchNorm. Trained on p ranks with batches of B it computes what one BatchNorm computes on
    the concatenated batch of p*B, forward and backward. Use :meth:`convert` on a built model."""

    ndims = (2, 3, 4)

    def forward(self, x):
        if not (self.training or not self.track_running_stats) or _world.size == 1:
            return super().forward(x)
        xd = x.data if isinstance(x, Tensor) else np.asarray(x)
        if xd.ndim not in self.ndims:
            raise ValueError(f"SyncBatchNorm: expected a 2-D, 3-D or 4-D input, got shape {xd.shape}")
        axes = (0,) + tuple(range(2, xd.ndim))
        mean, var, count = _global_moments(xd, axes)
        if count < 2:
            raise ValueError(f"SyncBatchNorm: training needs more than one value per channel, "
                             f"got {count} over all ranks")
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean *= 1 - momentum
            self.running_mean += momentum * mean
            self.running_var *= 1 - momentum
            self.running_var += momentum * var * (count / (count - 1))
        invstd = (1.0 / array_module(var).sqrt(var + self.eps)).astype(xd.dtype)
        x = x if isinstance(x, Tensor) else Tensor(xd)
        return _SyncBatchNormFunction(mean, invstd, count)(x, self.weight, self.bias)

    @classmethod
    def convert(cls, module):
        """`module` with every BatchNorm1d/BatchNorm2d inside it replaced, in place, by a
        SyncBatchNorm holding the same parameters and running statistics (a BatchNorm
        `module` itself comes back converted)."""
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            sync = cls.__new__(cls)
            nn.Module.__init__(sync)
            for key, value in vars(module).items():
                if key not in ("_parameters", "_buffers", "_modules"):
                    object.__setattr__(sync, key, value)
            sync._parameters.update(module._parameters)
            sync._buffers.update(module._buffers)
            return sync
        for name, child in list(module._modules.items()):
            if child is not None:
                converted = cls.convert(child)
                if converted is not child:
                    module.add_module(name, converted)
        return module
