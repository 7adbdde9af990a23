"""Convolution on the "numba" backend: per image, an explicit im2col and one BLAS GEMM per
group; threads take images (the weight gradient: blocks of images, summed at the end).
Depthwise convolutions (one input channel per group) run as a direct loop instead.

ConvGeom g: output (ho, wo) reads input row ho*sh - ph + r*dh, column wo*sw - pw + s*dw.
Column matrix of one image: row (c, r, s), column (ho, wo); it holds the input value that
tap (r, s) of channel c sees at output position (ho, wo), or 0 in the padding.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from . import backend
from ._jit import _block, _one_blas_thread, _sum_blocks, _threads, check_shapes, helper, kernel


@helper
def _tap_row(g, row):
    """(channel, kernel row, kernel column) of row `row` of the column matrix."""
    taps = g.R * g.S
    return row // taps, (row % taps) // g.S, row % g.S


@helper
def _im2col(x, g, cols):
    """x (C, H, W) of one image -> cols (C*R*S, Ho*Wo)."""
    zero = x.dtype.type(0)
    for row in range(cols.shape[0]):
        c, r, s = _tap_row(g, row)
        for ho in range(g.Ho):
            ih = ho * g.sh - g.ph + r * g.dh
            for wo in range(g.Wo):
                iw = wo * g.sw - g.pw + s * g.dw
                inside = 0 <= ih < g.H and 0 <= iw < g.W
                cols[row, ho * g.Wo + wo] = x[c, ih, iw] if inside else zero


@helper
def _col2im(cols, g, x):
    """Adjoint of _im2col: x (C, H, W) of one image = the sum of the column-matrix entries
    that came from each input element."""
    x[:] = 0
    for row in range(cols.shape[0]):
        c, r, s = _tap_row(g, row)
        for ho in range(g.Ho):
            ih = ho * g.sh - g.ph + r * g.dh
            if ih < 0 or ih >= g.H:
                continue
            for wo in range(g.Wo):
                iw = wo * g.sw - g.pw + s * g.dw
                if 0 <= iw < g.W:
                    x[c, ih, iw] += cols[row, ho * g.Wo + wo]


@kernel
def _conv2d_gemm(x, w, bias, g, y):
    """x (N, C, H, W), w (K, C/groups*R*S), bias (K,) -> y (N, K, Ho*Wo)."""
    Kg, CgRS = g.K // g.groups, w.shape[1]
    for n in prange(g.N):
        cols = np.empty((g.C * g.R * g.S, g.Ho * g.Wo), x.dtype)
        _im2col(x[n], g, cols)
        for grp in range(g.groups):
            k0, c0 = grp * Kg, grp * CgRS
            np.dot(w[k0:k0 + Kg], cols[c0:c0 + CgRS], y[n, k0:k0 + Kg])
        for k in range(g.K):
            y[n, k] += bias[k]


@kernel
def _conv2d_depthwise(x, w, bias, g, y):
    """Direct loop for one input channel per group: x (N, C, H, W), w (K, 1, R, S) ->
    y (N, K, Ho, Wo). Output channel k reads input channel k // (K/groups). The padding enters
    the sum as zeros, as in the GEMM path: a NaN or infinite weight over it gives NaN."""
    Kg = g.K // g.groups
    zero = x.dtype.type(0)
    for nk in prange(g.N * g.K):
        n, k = nk // g.K, nk % g.K
        c = k // Kg
        for ho in range(g.Ho):
            for wo in range(g.Wo):
                acc = bias[k]
                for r in range(g.R):
                    ih = ho * g.sh - g.ph + r * g.dh
                    row_inside = 0 <= ih < g.H
                    for s in range(g.S):
                        iw = wo * g.sw - g.pw + s * g.dw
                        inside = row_inside and 0 <= iw < g.W
                        acc += w[k, 0, r, s] * (x[n, c, ih, iw] if inside else zero)
                y[n, k, ho, wo] = acc


@kernel
def _conv2d_grad_input(grad_out, w_t, g, grad_x):
    """grad_out (N, K, Ho*Wo), w_t (groups, C/groups*R*S, K/groups) -> grad_x (N, C, H, W):
    per image and group, cols = w^T @ grad_out, then col2im."""
    Kg, CgRS = g.K // g.groups, w_t.shape[1]
    for n in prange(g.N):
        cols = np.empty((g.C * g.R * g.S, g.Ho * g.Wo), grad_out.dtype)
        for grp in range(g.groups):
            k0, c0 = grp * Kg, grp * CgRS
            np.dot(w_t[grp], grad_out[n, k0:k0 + Kg], cols[c0:c0 + CgRS])
        _col2im(cols, g, grad_x[n])


@kernel
def _conv2d_grad_weight(grad_out, x, g, grad_w, threads):
    """grad_out (N, K, Ho*Wo), x (N, C, H, W) -> grad_w (K, C/groups*R*S): the sum over
    images of grad_out @ cols^T per group; each thread sums a block of images."""
    Kg, CgRS = g.K // g.groups, grad_w.shape[1]
    blocks = min(g.N, threads)
    partial = np.zeros((blocks,) + grad_w.shape, grad_w.dtype)
    for k in prange(blocks):
        cols = np.empty((g.C * g.R * g.S, g.Ho * g.Wo), x.dtype)
        lo, hi = _block(k, blocks, g.N)
        for n in range(lo, hi):
            _im2col(x[n], g, cols)
            for grp in range(g.groups):
                k0, c0 = grp * Kg, grp * CgRS
                partial[k, k0:k0 + Kg] += np.dot(grad_out[n, k0:k0 + Kg], cols[c0:c0 + CgRS].T)
    _sum_blocks(partial, grad_w)


@kernel
def _sum_over_batch_and_plane(a, out):
    """a (N, K, P) -> out (K,) = sum over N and P."""
    for k in prange(a.shape[1]):
        acc = a.dtype.type(0)
        for n in range(a.shape[0]):
            for p in range(a.shape[2]):
                acc += a[n, k, p]
        out[k] = acc


def _check_groups(op, g):
    if g.groups < 1 or g.C % g.groups or g.K % g.groups:
        raise ValueError(f"{op}: groups={g.groups} must divide C={g.C} and K={g.K}")


@backend.register
def conv2d(x, w, b, g):
    _check_groups("conv2d", g)
    check_shapes("conv2d", x=(x, g.input_shape), w=(w, g.weight_shape), b=(b, (g.K,)))
    y = np.empty(g.output_shape, x.dtype)
    bias = np.zeros(g.K, x.dtype) if b is None else b
    if w.shape[1] == 1:
        _conv2d_depthwise(x, w, bias, g, y)
    else:
        _one_blas_thread()
        _conv2d_gemm(x, w.reshape(g.K, -1), bias, g, y.reshape(g.N, g.K, -1))
    return y


@backend.register
def conv2d_grad_input(grad_out, w, g):
    _check_groups("conv2d_grad_input", g)
    check_shapes("conv2d_grad_input", grad_out=(grad_out, g.output_shape), w=(w, g.weight_shape))
    grad_x = np.empty(g.input_shape, grad_out.dtype)
    Kg = g.K // g.groups
    w_t = np.ascontiguousarray(w.reshape(g.groups, Kg, -1).transpose(0, 2, 1))
    _one_blas_thread()
    _conv2d_grad_input(grad_out.reshape(g.N, g.K, -1), w_t, g, grad_x)
    return grad_x


@backend.register
def conv2d_grad_weight(grad_out, x, g):
    _check_groups("conv2d_grad_weight", g)
    check_shapes("conv2d_grad_weight", grad_out=(grad_out, g.output_shape), x=(x, g.input_shape))
    grad_w = np.empty(g.weight_shape, x.dtype)
    _one_blas_thread()
    _conv2d_grad_weight(grad_out.reshape(g.N, g.K, -1), x, g, grad_w.reshape(g.K, -1),
                        _threads())
    return grad_w


@backend.register
def conv2d_grad_bias(grad_out):
    N, K = grad_out.shape[:2]
    out = np.empty(K, grad_out.dtype)
    _sum_over_batch_and_plane(grad_out.reshape(N, K, -1), out)
    return out
