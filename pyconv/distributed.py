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

Devices: NumPy (CPU) arrays travel through MPI, CuPy (GPU) arrays through NCCL
(:class:`NcclCommunicator`: one NCCL communicator per world, its unique id broadcast over MPI;
each bucket's allreduce queued on a communication stream after a CUDA event that marks the end
of its packing on the compute stream, so the overlap with the backward pass is the same). Both
offer the same few operations (see :class:`MpiCommunicator`), so bucketing, overlap,
SyncBatchNorm and the broadcasts are written once. The NCCL path is tested only with a fake
NCCL module (NumPy arrays standing in for device memory, the collectives done through MPI):
it has not run on GPUs.
"""
from __future__ import annotations

import os
import pickle
import sys
import time

import numpy as np

from . import nn
from .autograd import Function, Tensor, array_module
from .autograd.engine import current_pass, queue_callback
from .nn.modules.normalization import _BatchNorm

__all__ = [
    "init", "is_initialized", "rank", "world_size", "local_rank", "local_world_size", "is_main",
    "barrier", "broadcast_parameters", "broadcast_optimizer_state", "average_buffers",
    "broadcast_object", "allreduce", "allgather_object", "allreduce_gradients", "GradientReducer",
    "DistributedDataParallel", "SyncBatchNorm", "DistributedError", "MpiCommunicator",
    "NcclCommunicator", "communicator_for",
]

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the slowest rank
_FAILURE_TAG = 7301  # point-to-point tag of the "this rank failed" notices


class DistributedError(RuntimeError):
    """A collective timed out, or another rank failed."""


class _World:
    comm = None  # our own duplicate of MPI_COMM_WORLD (None: no MPI, a world of one)
    rank, size, local_rank, local_size = 0, 1, 0, 1
    timeout = DEFAULT_TIMEOUT
    initialized = False
    thread_multiple = False  # whether MPI may be called from a second thread (the progress thread)
    failure_notices: list = []  # keeps the outgoing notices' buffers alive until MPI_Abort
    mpi = None  # the MpiCommunicator over comm
    nccl = None  # the NcclCommunicator, made when CuPy arrays first need one


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
    _world.mpi = MpiCommunicator(_world.comm)
    _world.rank, _world.size = world.Get_rank(), world.Get_size()
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    _world.local_rank, _world.local_size = node.Get_rank(), node.Get_size()
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


def local_rank() -> int:
    """This process's rank among the ranks on its machine (0 without MPI): the GPU it should
    use, e.g. ``cupy.cuda.Device(local_rank()).use()`` before the model moves to the GPU."""
    return _world.local_rank


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
    """Waits for every MPI request (see :func:`_wait_until`)."""
    MPI = _mpi()
    _wait_until(lambda: MPI.Request.Testall(requests), what)


def _wait_until(done, what):
    """Polls ``done()`` until it is true, so that a failed or stuck peer ends the wait: raises
    DistributedError after the timeout or when another rank announces a failure. The short
    sleeps between polls leave the cores to the ranks still computing."""
    deadline = time.monotonic() + _world.timeout
    pause = 0.0
    while not done():
        if _world.size > 1:
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
        # MPI_Abort ends every rank at once, and mpiexec drops the output its forwarder has not
        # read yet (on a loaded machine, all of it): a moment for the forwarder, or, when the
        # others were told, for them to report the cause first.
        time.sleep(2.0 if _world.failure_notices else 0.5)
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = abort_job


# ---------------------------------------------------------------------------------------------
# Communicators: how arrays of one kind move between the ranks


class MpiCommunicator:
    """Moves NumPy arrays between the ranks with MPI. Every communicator offers the same few
    operations, on arrays of its own kind:

    - ``start_allreduce(buffer, op)``: starts an in-place sum ("sum") or maximum ("max") of a
      contiguous array over the ranks; returns a handle;
    - ``wait(handles, what)``: returns once those operations are complete (raising
      :class:`DistributedError` on a timeout or a peer's failure);
    - ``advance(handles)``: lets operations in flight move on; ``progress_thread()``: a helper
      that does so in the background (an object with ``stop()``), or None;
    - ``allgather(array)``: every rank's array, stacked along a new first axis;
    - ``broadcast(array, root)``: rank `root`'s array copied into `array` on every rank."""

    def __init__(self, comm):
        self.comm = comm

    def start_allreduce(self, buffer, op="sum"):
        MPI = _mpi()
        return self.comm.Iallreduce(MPI.IN_PLACE, buffer, MPI.MAX if op == "max" else MPI.SUM)

    def wait(self, handles, what):
        _wait(handles, what)

    def advance(self, handles):
        # MPICH advances a non-blocking collective only inside MPI calls
        for request in handles:
            request.Test()

    def progress_thread(self):
        return _ProgressThread(self.comm) if _world.thread_multiple else None

    def allgather(self, array):
        out = np.empty((_world.size,) + array.shape, array.dtype)
        self.wait([self.comm.Iallgather(np.ascontiguousarray(array), out)], "allgather")
        return out

    def broadcast(self, array, root):
        self.wait([self.comm.Ibcast(array, root)], "broadcast")


def _device_pointer(array):
    """The address of `array`'s first element: CuPy's device pointer, or the host address of a
    NumPy array (which stands in for device memory when a fake NCCL module is used in tests)."""
    return array.data.ptr if hasattr(array.data, "ptr") else array.ctypes.data


class NcclCommunicator:
    """Moves CuPy arrays between the ranks' GPUs with NCCL (``cupy.cuda.nccl``), with the
    operations of :class:`MpiCommunicator`. One NCCL communicator spans the world: rank 0 makes
    its unique id and MPI broadcasts it. Every operation runs on a communication stream of its
    own, ordered after the work queued so far on the current (compute) stream by a CUDA event,
    so that an allreduce reads a bucket only once its packing kernels are done, while the
    compute stream goes on with the backward pass; an event recorded after the operation tells
    :meth:`wait` when it is complete. The GPU advances NCCL's transfers by itself: no progress
    thread is needed.

    nccl, cuda: the modules to use (``cupy.cuda.nccl`` and ``cupy.cuda`` by default; the tests
    pass fakes). Each rank must use a GPU of its own (see :func:`local_rank`). This path has
    been exercised only through such a fake, never on GPUs."""

    def __init__(self, nccl=None, cuda=None):
        if nccl is None:
            from cupy.cuda import nccl
        if cuda is None:
            from cupy import cuda
        self.nccl, self.cuda = nccl, cuda
        unique_id = broadcast_object(nccl.get_unique_id() if _world.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(_world.size, unique_id, _world.rank)
        self.stream = cuda.Stream(non_blocking=True)

    def _datatype(self, array):
        code = getattr(self.nccl, f"NCCL_{array.dtype.name.upper()}", None)
        if code is None:
            raise TypeError(f"NcclCommunicator: NCCL cannot reduce {array.dtype} arrays")
        return code

    def _enqueue(self, collective):
        """Queues collective(stream pointer) on the communication stream after the compute
        stream's work so far; returns the event recorded after it."""
        ready = self.cuda.Event()
        ready.record(self.cuda.get_current_stream())
        self.stream.wait_event(ready)
        collective(self.stream.ptr)
        done = self.cuda.Event()
        done.record(self.stream)
        return done

    def start_allreduce(self, buffer, op="sum"):
        pointer, code = _device_pointer(buffer), self._datatype(buffer)
        reduction = self.nccl.NCCL_MAX if op == "max" else self.nccl.NCCL_SUM
        return self._enqueue(
            lambda stream: self.comm.allReduce(pointer, pointer, buffer.size, code, reduction, stream))

    def wait(self, handles, what):
        _wait_until(lambda: all(event.done for event in handles), what)

    def advance(self, handles):
        pass

    def progress_thread(self):
        return None

    def allgather(self, array):
        xp = array_module(array)
        array = xp.ascontiguousarray(array)
        out = xp.empty((_world.size,) + array.shape, array.dtype)
        send, receive, code = _device_pointer(array), _device_pointer(out), self._datatype(array)
        self.wait([self._enqueue(lambda stream: self.comm.allGather(send, receive, array.size, code, stream))],
                  "allgather")
        return out

    def broadcast(self, array, root):
        pointer, code = _device_pointer(array), self._datatype(array)
        self.wait([self._enqueue(lambda stream: self.comm.bcast(pointer, array.size, code, root, stream))],
                  "broadcast")


def communicator_for(array):
    """The world's communicator for arrays like `array`: MPI for NumPy arrays, NCCL for CuPy
    arrays (made on first use; every rank must then reach this call)."""
    if array_module(array) is np:
        return _world.mpi
    if _world.nccl is None:
        _world.nccl = NcclCommunicator()
    return _world.nccl


# ---------------------------------------------------------------------------------------------
# Collectives on arrays and objects


def barrier():
    """Waits until every rank has reached this call."""
    if _world.size > 1:
        _wait([_world.comm.Ibarrier()], "barrier")


def _check_op(op):
    if op not in ("sum", "mean", "max"):
        raise ValueError(f"allreduce: op must be 'sum', 'mean' or 'max', got {op!r}")


def allreduce(array, op="sum", communicator=None):
    """The element-wise sum (op "sum"), mean ("mean") or maximum ("max") of a NumPy or CuPy
    array over the ranks, as a new array (identical on every rank)."""
    _check_op(op)
    out = array_module(array).array(array, copy=True, order="C")
    if _world.size > 1:
        comm = communicator or communicator_for(out)
        comm.wait([comm.start_allreduce(out, "max" if op == "max" else "sum")], "allreduce")
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


def _model_arrays(model):
    """Every parameter's and buffer's array of `model`, in the same order on every rank."""
    return [p.data for p in model.parameters()] + list(model.buffers())


def broadcast_parameters(model, root=0, communicator=None):
    """Copies rank `root`'s parameters and buffers (running statistics) into every other rank's
    model, in place, so that the replicas start equal (NumPy arrays through MPI, CuPy arrays
    through NCCL, or all through `communicator`)."""
    _check_root(root)
    if _world.size == 1:
        return model
    for array in _model_arrays(model):
        comm = communicator or communicator_for(array)
        if array.flags.c_contiguous:
            comm.broadcast(array, root)
        else:
            contiguous = array_module(array).ascontiguousarray(array)
            comm.broadcast(contiguous, root)
            array[...] = contiguous
    return model


def average_buffers(model, communicator=None):
    """Replaces every floating-point buffer of `model` (BatchNorm's running mean and variance,
    which each rank updates from its own batches) by its mean over the ranks, so that the
    replicas evaluate, and checkpoint, alike."""
    if _world.size == 1:
        return model
    for value in model.buffers():
        if value.dtype.kind == "f":
            value[...] = allreduce(value, "mean", communicator)
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
        self.buffer = array_module(params[0].data).zeros(self.offsets[-1], params[0].dtype)
        self.handle = None  # the communicator's handle of the allreduce in flight
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
    if len({array_module(p.data).__name__ for p in params}) > 1:
        raise ValueError("pyconv.distributed: the parameters are on different devices "
                         "(NumPy and CuPy arrays); move the model to one device first")
    cap = bucket_cap_mb * 2 ** 20
    buckets, current, size = [], [], 0
    for p in reversed(params):
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
    A backward pass that an exception interrupts leaves its gradients unaveraged; the next
    pass starts afresh, provided every rank met the exception at the same point (a rank that
    fails alone must end the job: the others wait for its buckets).
    progress_thread: while buckets are in flight through MPI, a helper thread makes an MPI
    call every 0.2 ms so that their transfers advance during the backward's kernels (see
    :class:`_ProgressThread`); without it they advance only when a gradient becomes final.
    communicator: how the buckets travel (by default MPI for NumPy parameters, NCCL for CuPy
    ones, see :func:`communicator_for`). ``remove()`` takes the hooks off again."""

    def __init__(self, params, bucket_cap_mb=1.0, progress_thread=True, communicator=None):
        if not bucket_cap_mb > 0:
            raise ValueError(f"GradientReducer: bucket_cap_mb must be > 0, got {bucket_cap_mb!r}")
        params = _unique(params)
        if not params:
            raise ValueError("GradientReducer: got no parameters")
        self.buckets = _make_buckets(params, bucket_cap_mb)
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self._pass = None  # the number of the backward pass whose gradients are being averaged
        self.progress_thread = progress_thread
        self._progress = None  # the progress thread of the pass in progress
        # measurements: seconds spent waiting at the end of backward passes (all passes), and
        # the buckets whose allreduce the last pass started before its end (overlapped)
        self.communication_seconds = 0.0
        self.buckets_started_early = 0
        self._handles = []
        if _world.size > 1:
            self.communicator = communicator or communicator_for(params[0].data)
            self._handles = [p.register_post_accumulate_grad_hook(self._gradient_ready) for p in params]

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _in_flight(self):
        return [b.handle for b in self.buckets if b.handle is not None]

    def _begin_pass(self):
        """Resets the counters for the pass in progress. A pass interrupted by an exception
        may have left allreduces in flight: they complete first (the communicator owns their
        buffers until then) and their results are dropped."""
        self._stop_progress()
        if self._in_flight():
            self.communicator.wait(self._in_flight(), "gradient allreduce of an interrupted pass")
        for b in self.buckets:
            b.handle = None
            b.pending = sum(q.requires_grad for q in b.params)
        self.buckets_started_early = 0
        self._pass = current_pass()
        queue_callback(self._finish)

    def _gradient_ready(self, p):
        if self._pass != current_pass():  # the first final gradient of this backward pass
            self._begin_pass()
        bucket = self._bucket_of[id(p)]
        bucket.pending -= 1
        if bucket.pending == 0:
            self._start(bucket)
            self.buckets_started_early += 1
            if self.progress_thread and self._progress is None:
                self._progress = self.communicator.progress_thread()
        if self._progress is None:
            # moves the allreduces in flight on, once per final gradient
            self.communicator.advance(self._in_flight())

    def _start(self, bucket):
        bucket.pack()
        bucket.handle = self.communicator.start_allreduce(bucket.buffer)

    def _stop_progress(self):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _finish(self):
        start = time.perf_counter()
        self._stop_progress()
        for b in self.buckets:
            if b.handle is None:  # some parameter of it got no gradient in this pass
                self._start(b)
        self.communicator.wait(self._in_flight(), "gradient allreduce")
        self.communication_seconds += time.perf_counter() - start
        for b in self.buckets:
            b.handle = None
            b.unpack(1.0 / _world.size)
        self._pass = None


class _ProgressThread:
    """Moves the MPI allreduces in flight on while the backward pass computes. MPICH advances
    a non-blocking collective only inside MPI calls, and the kernels of the backward pass make
    none (they release the GIL, so this thread runs beside them): without it, a large
    bucket's transfer would mostly wait for the end of the pass."""

    interval = 2e-4  # seconds between MPI progress calls: negligible CPU, sub-millisecond delay

    def __init__(self, comm):
        import threading

        self._comm = comm
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyconv-mpi-progress", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            self._comm.Iprobe(tag=_FAILURE_TAG)  # any MPI call drives MPICH's progress engine

    def stop(self):
        self._stop.set()
        self._thread.join()


def allreduce_gradients(model, bucket_cap_mb=25.0, communicator=None):
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
    buckets = _make_buckets(params, bucket_cap_mb)
    comm = communicator or communicator_for(params[0].data)
    handles = []
    for b in buckets:
        b.pack()
        handles.append(comm.start_allreduce(b.buffer))
    comm.wait(handles, "gradient allreduce")
    for b in buckets:
        b.unpack(1.0 / _world.size)


class DistributedDataParallel(nn.Module):
    """Wraps `module` for data-parallel training: broadcasts rank 0's parameters and buffers
    to every rank, then averages the gradients during every backward pass (a
    :class:`GradientReducer` over its parameters). Calling the wrapper calls `module`;
    ``state_dict()`` names carry the ``module.`` prefix, as PyTorch's wrapper does.

    sync_batch_norm: replace the BatchNorm layers by :class:`SyncBatchNorm` (statistics of the
    global batch) first; otherwise each rank normalises with its own batch statistics.
    bucket_cap_mb: the size of the gradient buckets. communicator: how arrays travel (by
    default MPI for a NumPy model, NCCL for a CuPy one)."""

    def __init__(self, module, bucket_cap_mb=1.0, sync_batch_norm=False, communicator=None):
        super().__init__()
        init()
        if sync_batch_norm:
            module = SyncBatchNorm.convert(module, communicator)
        self.module = module
        broadcast_parameters(module, communicator=communicator)
        object.__setattr__(self, "reducer", GradientReducer(module.parameters(), bucket_cap_mb,
                                                            communicator=communicator))

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Synchronised batch normalisation


def _global_moments(x, axes, comm):
    """(mean, biased variance, count) per channel over every rank's x, combined from each
    rank's count, mean and sum of squared deviations (Chan et al.'s parallel formula, in the
    same order on every rank, so every rank gets the same numbers)."""
    xp = array_module(x)
    n = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    m2 = ((x - mean.reshape(_channel_shape(x.ndim, x.shape[1]))) ** 2).sum(axis=axes)
    if _world.size == 1:
        return mean, m2 / n, n
    C = x.shape[1]
    mine = xp.concatenate([xp.full(1, n, xp.float64), mean.astype(xp.float64), m2.astype(xp.float64)])
    every = comm.allgather(mine)
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

    def __init__(self, mean, invstd, count, comm):
        self.mean, self.invstd, self.count, self.comm = mean, invstd, count, comm

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
            sums = allreduce(array_module(g).concatenate([sum_g, sum_gx]), communicator=self.comm)
            C = g.shape[1]
            shape = _channel_shape(g.ndim, C)
            all_g, all_gx = sums[:C].reshape(shape), sums[C:].reshape(shape)
            gx = self.scale * (g - (all_g + xhat * all_gx) / self.count)
        return gx, (sum_gx if nw else None), (sum_g if nb else None)


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation whose training statistics are those of the global batch (every
    rank's samples), for (N, C), (N, C, L) or (N, C, H, W) inputs; in eval mode it is a plain
    BatchNorm. Trained on p ranks with batches of B it computes what one BatchNorm computes on
    the concatenated batch of p*B, forward and backward. Use :meth:`convert` on a built model.
    ``communicator``: how its statistics travel (None: by the input's kind, see
    :func:`communicator_for`)."""

    ndims = (2, 3, 4)
    communicator = None

    def forward(self, x):
        if not (self.training or not self.track_running_stats) or _world.size == 1:
            return super().forward(x)
        x = x if isinstance(x, Tensor) else Tensor(x)
        xd = x.data
        if xd.ndim not in self.ndims:
            raise ValueError(f"SyncBatchNorm: expected a 2-D, 3-D or 4-D input, got shape {xd.shape}")
        comm = self.communicator or communicator_for(xd)
        axes = (0,) + tuple(range(2, xd.ndim))
        mean, var, count = _global_moments(xd, axes, comm)
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
        return _SyncBatchNormFunction(mean, invstd, count, comm)(x, self.weight, self.bias)

    @classmethod
    def convert(cls, module, communicator=None):
        """`module` with every BatchNorm1d/BatchNorm2d inside it replaced, in place, by a
        SyncBatchNorm holding the same parameters and running statistics (a BatchNorm
        `module` itself comes back converted), whose statistics travel through
        `communicator` (None: chosen by the input's kind)."""
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            sync = cls.__new__(cls)
            nn.Module.__init__(sync)
            for key, value in vars(module).items():
                if key not in ("_parameters", "_buffers", "_modules"):
                    object.__setattr__(sync, key, value)
            sync._parameters.update(module._parameters)
            sync._buffers.update(module._buffers)
            object.__setattr__(sync, "communicator", communicator)
            return sync
        for name, child in list(module._modules.items()):
            if child is not None:
                converted = cls.convert(child, communicator)
                if converted is not child:
                    module.add_module(name, converted)
        return module
