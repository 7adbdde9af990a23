"""Dense products on the GPU: CuPy's matmul (cuBLAS), which takes a transposed view as a
transpose flag rather than copying it. Embedding lookups: the forward one thread per output
element; the backward one thread per element of the table, which adds the gradient rows of
its row's indices, found as a run of the indices stably sorted, in the order of the indices
(no atomics: the same sums as every other backend, on every run)."""
from __future__ import annotations

from numba import cuda

from . import backend
from ._kernel_util import Kernels, per_dtype
from ._runtime import SIMULATOR, THREADS, blocks_for, flat, launch, xp


@per_dtype
def kernels(dtype):
    dt = dtype.type
    ks = Kernels(dtype)

    @ks.add("flnnf")
    def embedding_kernel(weight, index, dim, n, out):
        for t in range(cuda.grid(1), n, cuda.gridsize(1)):
            i = t // dim
            out[t] = weight[index[i] * dim + (t - i * dim)]

    @ks.add("fllnnnf")
    def embedding_backward_kernel(grad, order, starts, padding_idx, dim, n, grad_weight):
        for t in range(cuda.grid(1), n, cuda.gridsize(1)):
            row = t // dim
            column = t - row * dim
            total = dt(0)
            if row != padding_idx:
                for p in range(starts[row], starts[row + 1]):
                    total += grad[order[p] * dim + column]
            grad_weight[t] = total

    return ks


@backend.register
def matmul(a, b, trans_a, trans_b):
    return xp.ascontiguousarray((a.T if trans_a else a) @ (b.T if trans_b else b))


@backend.register
def embedding(weight, indices):
    out = xp.empty(indices.shape + (weight.shape[1],), weight.dtype)
    if out.size:
        launch(kernels(weight.dtype).embedding_kernel, blocks_for(out.size), THREADS,
               flat(weight), flat(indices), weight.shape[1], out.size, flat(out))
    return out


@backend.register
def embedding_backward(grad_out, indices, num_embeddings, padding_idx):
    dim = grad_out.shape[-1]
    grad_weight = xp.empty((num_embeddings, dim), grad_out.dtype)
    if grad_weight.size:
        index = flat(indices)
        # CuPy's argsort is always stable (and takes no kind); NumPy's (the simulator's) is asked.
        order = xp.argsort(index, kind="stable") if SIMULATOR else xp.argsort(index)
        # Row r's indices are order[starts[r]:starts[r + 1]].
        starts = xp.searchsorted(index[order], xp.arange(num_embeddings + 1))
        launch(kernels(grad_out.dtype).embedding_backward_kernel, blocks_for(grad_weight.size), THREADS,
               flat(grad_out), order.astype(xp.int64, copy=False), starts.astype(xp.int64, copy=False),
               padding_idx, dim, grad_weight.size, flat(grad_weight))
    return grad_weight
