"""A stand-in for ``cupy.cuda.nccl`` and the few parts of ``cupy.cuda`` that
:class:`pyconv.distributed.NcclCommunicator` uses, so that its logic runs without a GPU under
``mpiexec``: NumPy arrays play device memory (a "device pointer" is the array's host address),
every NCCL collective is carried out at once through MPI, and streams and events keep a log of
the order in which work was queued, for the tests to check. It says nothing about real NCCL or
CUDA behaviour beyond that order."""
import ctypes
import itertools
import os

import numpy as np
from mpi4py import MPI

log = []  # ("record", event, stream) / ("wait", stream, event) / (collective, stream, pointer)

NCCL_SUM, NCCL_MAX = 0, 1
NCCL_INT32, NCCL_INT64, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 2, 4, 6, 7, 8
_DTYPES = {NCCL_INT32: np.int32, NCCL_INT64: np.int64, NCCL_FLOAT16: np.float16,
           NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}


def _view(pointer, count, datatype):
    """The NumPy array of `count` elements of `datatype` at address `pointer`."""
    dtype = np.dtype(_DTYPES[datatype])
    buffer = (ctypes.c_char * (count * dtype.itemsize)).from_address(pointer)
    return np.frombuffer(buffer, dtype, count)


def get_unique_id():
    return tuple(os.urandom(128))


class NcclCommunicator:
    def __init__(self, ndev, unique_id, rank):
        self.comm = MPI.COMM_WORLD.Dup()
        assert (ndev, rank) == (self.comm.Get_size(), self.comm.Get_rank())
        # every rank must hold the id rank 0 made
        assert self.comm.allgather(unique_id) == [unique_id] * ndev

    def allReduce(self, send, receive, count, datatype, op, stream):
        log.append(("allReduce", stream, receive))
        source = MPI.IN_PLACE if send == receive else _view(send, count, datatype)
        self.comm.Allreduce(source, _view(receive, count, datatype), MPI.MAX if op == NCCL_MAX else MPI.SUM)

    def allGather(self, send, receive, count, datatype, stream):
        log.append(("allGather", stream, receive))
        self.comm.Allgather(_view(send, count, datatype),
                            _view(receive, count * self.comm.Get_size(), datatype))

    def bcast(self, buffer, count, datatype, root, stream):
        log.append(("bcast", stream, buffer))
        self.comm.Bcast(_view(buffer, count, datatype), root)


class cuda:
    """The stand-in for ``cupy.cuda``: streams and events that only log."""

    _pointers = itertools.count(1)

    class Stream:
        def __init__(self, non_blocking=False):
            self.ptr = next(cuda._pointers)

        def wait_event(self, event):
            log.append(("wait", self.ptr, event))

    class Event:
        done = True  # the fake's collectives finish before they return

        def record(self, stream=None):
            log.append(("record", self, 0 if stream is None else stream.ptr))

    @staticmethod
    def get_current_stream():
        return _compute_stream


class _ComputeStream:
    ptr = 0  # CUDA's default stream


_compute_stream = _ComputeStream()
