"""Pooling on the GPU: max/avg pooling forward and backward, and max-unpooling.

All of these move far more bytes than they compute (a 2x2 max pool does 4 compares per 16 B
read), so the design goal is memory bandwidth: >= 70% of HBM bandwidth (3.35 TB/s on H100
SXM, 4.8 TB/s on H200). The means:
* one thread per output element (per input element for avg_pool2d's backward), consecutive
  threads on consecutive output columns, so a warp's loads cover contiguous runs of input rows
  (stride-2 windows: the even and odd columns of the same 128 B lines, the second read an L1
  hit) and its stores are fully coalesced: every input byte comes from DRAM once;
* enough bytes in flight (Little's law): 3.35 TB/s x ~600 ns = 2 MB, i.e. ~15 KB per SM (H200:
  ~22 KB). The window is clipped to the input up front and walked as ONE flat loop without
  bounds checks, which the compiler unrolls by 4, so a thread issues up to 4 loads before its
  first compare. ptxas (sm_90): 54 registers -> 4 blocks of 256 = 1024 threads per SM (50%
  occupancy). For 2x2/2 pooling a warp then has 4 loads = 512 B of distinct lines in flight,
  32 warps x 512 B = 16 KB per SM: at the H100 requirement (~100%), ~75% of H200's. Without
  the flattening (two nested loops) only one row's loads were in flight: ~8 KB, ~50%;
* grid-stride loops over flat indices (2 integer divisions per element; NVPTX uses 32-bit
  division when the values fit), no shared memory, no atomics on the forward paths: the
  instruction budget at full bandwidth is ~280 per 2x2 output, the kernel needs ~60.
max_pool2d's backward scatters with atomic adds (the indices may repeat when windows
overlap); avg_pool2d's backward gathers instead (deterministic, no atomics). max_unpool2d is
deterministic for repeated indices: an atomic max of the source position claims each output
position (the last source in row-major order wins), then a gather writes every output.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import backend
from ._kernel_util import Kernels, geometry_args, per_dtype
from ._runtime import THREADS, blocks_for, dummy, flat, launch, xp

P = "n" * 14  # the PoolGeom fields, in their order


@per_dtype
def kernels(dtype):
    dt = dtype.type
    ks = Kernels(dtype)

    @cuda.jit(device=True)
    def inside(start, step, k, n):
        """(first, end) of the window taps t in [0, k) whose position start + t*step lies in
        [0, n); the spec guarantees at least one."""
        first = 0 if start >= 0 else (step - 1 - start) // step
        return first, min(k, (n - start + step - 1) // step)

    @cuda.jit(device=True)
    def window_size(ho, wo, H, W, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
        """avg_pool2d's divisor for window (ho, wo), as PyTorch: the window clipped to the
        padded input, or to the input itself when padding is not counted."""
        if divisor != 0:
            return divisor
        h0 = ho * sh - ph
        w0 = wo * sw - pw
        h1 = min(h0 + kh, H + ph)
        w1 = min(w0 + kw, W + pw)
        if count_include_pad != 0:
            return (h1 - h0) * (w1 - w0)
        return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0))

    @ks.add("ffln" + P)
    def max_pool_fwd(x, y, idx, with_idx, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
        HoWo = Ho * Wo
        for e in range(cuda.grid(1), N * C * HoWo, cuda.gridsize(1)):
            plane = e // HoWo
            ho = (e - plane * HoWo) // Wo
            wo = e - plane * HoWo - ho * Wo
            x_plane = plane * H * W
            # The window clipped to the input up front and walked as ONE loop without bounds
            # checks: the compiler unrolls it (by 4) and issues those loads back to back.
            h0 = ho * sh - ph
            w0 = wo * sw - pw
            r_lo, r_hi = inside(h0, dh, kh, H)
            s_lo, s_hi = inside(w0, dw, kw, W)
            best_at = (h0 + r_lo * dh) * W + w0 + s_lo * dw
            best = x[x_plane + best_at]
            ns = s_hi - s_lo
            for t in range((r_hi - r_lo) * ns):  # one flat loop over the taps, row-major
                r = r_lo + t // ns
                at = (h0 + r * dh) * W + w0 + (s_lo + t - (r - r_lo) * ns) * dw
                v = x[x_plane + at]
                # First maximum in window order; a NaN wins (the last one).
                if v > best or math.isnan(v):
                    best = v
                    best_at = at
            y[e] = best
            if with_idx != 0:
                idx[e] = best_at

    @ks.add("flfnnn")
    def max_pool_bwd(dy, idx, dx, planes, in_plane, out_plane):
        # dx must be zero; overlapping windows may send several gradients to one input.
        for e in range(cuda.grid(1), planes * out_plane, cuda.gridsize(1)):
            cuda.atomic.add(dx, e // out_plane * in_plane + idx[e], dy[e])

    @ks.add("ffnn" + P)
    def avg_pool_fwd(x, y, count_include_pad, divisor, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
        HoWo = Ho * Wo
        for e in range(cuda.grid(1), N * C * HoWo, cuda.gridsize(1)):
            plane = e // HoWo
            ho = (e - plane * HoWo) // Wo
            wo = e - plane * HoWo - ho * Wo
            x_plane = plane * H * W
            h0 = max(ho * sh - ph, 0)
            w0 = max(wo * sw - pw, 0)
            nw = min(wo * sw - pw + kw, W) - w0
            acc = dt(0)
            for t in range((min(ho * sh - ph + kh, H) - h0) * nw):  # flat, as in max_pool_fwd
                r = t // nw
                acc += x[x_plane + (h0 + r) * W + w0 + t - r * nw]
            y[e] = acc / dt(window_size(ho, wo, H, W, kh, kw, sh, sw, ph, pw, count_include_pad, divisor))

    @ks.add("ffnn" + P)
    def avg_pool_bwd(dy, dx, count_include_pad, divisor, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
        # One thread per input element sums the windows that contain it: outputs ho with
        # ho*sh - ph <= hi < ho*sh - ph + kh.
        HW = H * W
        for e in range(cuda.grid(1), N * C * HW, cuda.gridsize(1)):
            plane = e // HW
            hi = (e - plane * HW) // W
            wi = e - plane * HW - hi * W
            y_plane = plane * Ho * Wo
            acc = dt(0)
            for ho in range(max((hi + ph - kh) // sh + 1, 0), min((hi + ph) // sh + 1, Ho)):
                for wo in range(max((wi + pw - kw) // sw + 1, 0), min((wi + pw) // sw + 1, Wo)):
                    n = window_size(ho, wo, H, W, kh, kw, sh, sw, ph, pw, count_include_pad, divisor)
                    acc += dy[y_plane + ho * Wo + wo] / dt(n)
            dx[e] = acc

    @ks.add("llnnn")
    def unpool_claim(idx, winner, planes, in_plane, out_plane):
        # winner (planes * out_plane, filled with -1) <- the largest source position per target.
        for e in range(cuda.grid(1), planes * in_plane, cuda.gridsize(1)):
            plane = e // in_plane
            cuda.atomic.max(winner, plane * out_plane + idx[e], e - plane * in_plane)

    @ks.add("flfnnn")
    def unpool_gather(x, winner, y, planes, in_plane, out_plane):
        for e in range(cuda.grid(1), planes * out_plane, cuda.gridsize(1)):
            src = winner[e]
            v = dt(0)
            if src >= 0:
                v = x[e // out_plane * in_plane + src]
            y[e] = v

    return ks


@backend.register
def max_pool2d(x, g, with_indices):
    y = xp.empty(g.output_shape, x.dtype)
    idx = xp.empty(g.output_shape, np.int64) if with_indices else dummy(np.int64)
    kernel = kernels(x.dtype).max_pool_fwd
    launch(kernel, blocks_for(y.size), THREADS,
           *geometry_args(kernel, g, flat(x), flat(y), flat(idx), int(with_indices)))
    return y, (idx if with_indices else None)


@backend.register
def max_pool2d_backward(grad_out, indices, input_shape):
    N, C, H, W = input_shape
    dx = xp.zeros(input_shape, grad_out.dtype)
    out_plane = math.prod(grad_out.shape[2:])
    launch(kernels(dx.dtype).max_pool_bwd, blocks_for(grad_out.size), THREADS,
           flat(grad_out), flat(indices), flat(dx), N * C, H * W, out_plane)
    return dx


@backend.register
def avg_pool2d(x, g, count_include_pad, divisor_override):
    y = xp.empty(g.output_shape, x.dtype)
    kernel = kernels(x.dtype).avg_pool_fwd
    launch(kernel, blocks_for(y.size), THREADS,
           *geometry_args(kernel, g, flat(x), flat(y), int(count_include_pad), int(divisor_override)))
    return y


@backend.register
def avg_pool2d_backward(grad_out, g, count_include_pad, divisor_override):
    dx = xp.empty(g.input_shape, grad_out.dtype)
    kernel = kernels(dx.dtype).avg_pool_bwd
    launch(kernel, blocks_for(dx.size), THREADS,
           *geometry_args(kernel, g, flat(grad_out), flat(dx), int(count_include_pad), int(divisor_override)))
    return dx


@backend.register
def max_unpool2d(x, indices, output_shape):
    N, C, H, W = output_shape
    planes, in_plane, out_plane = N * C, math.prod(x.shape[2:]), H * W
    winner = xp.full(planes * out_plane, -1, np.int64)
    y = xp.empty(output_shape, x.dtype)
    ks = kernels(x.dtype)
    launch(ks.unpool_claim, blocks_for(x.size), THREADS, flat(indices), winner, planes, in_plane, out_plane)
    launch(ks.unpool_gather, blocks_for(y.size), THREADS, flat(x), winner, flat(y), planes, in_plane, out_plane)
    return y
