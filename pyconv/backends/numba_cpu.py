"""The "numba" backend: every kernel as a plain loop nest compiled by Numba.

This is the readable JIT implementation: the loops say what each op computes, ``prange``
spreads independent planes / images / blocks of rows over the threads
(``pyconv.set_num_threads``), and the matrix products of convolution and LSTM go to BLAS
through ``np.dot``. Kernels compile on first use for float32 or float64 and are cached on disk
(``cache=True``).

One thread pool: the BLAS library these kernels call runs on one thread (see
``_one_blas_thread``) and each Numba thread makes its own BLAS calls on its own images or
rows. Letting OpenBLAS start its own threads between Numba's parallel loops makes the two
pools fight over the cores (on 2 shared cores an LSTM step became 100x slower).

Needs SciPy for ``np.dot`` inside ``@njit`` (convolution and LSTM kernels) and, for speed,
threadpoolctl (``pip install 'pyconv[numba]'``).

Layout of the code: the registered functions (bottom of each section) allocate outputs and
reshape arrays; the ``@njit`` functions do the work. Each op family shares its index helpers
between forward and backward passes rather than repeating the arithmetic.
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from . import Backend, LstmSaved

backend = Backend("numba", "numpy", "Numba JIT kernels (parallel loops; GEMMs through BLAS)")

# `kernel`: a function with parallel loops. `driver`: a serial sequence of kernel calls.
# `helper`: a small serial function that LLVM inlines into its callers.
# error_model="numpy": a division by zero gives inf/NaN as in NumPy, instead of a check per
# division that would keep loops from vectorising.
kernel = njit(parallel=True, cache=True, error_model="numpy")
driver = njit(cache=True, error_model="numpy")
helper = njit(cache=True, error_model="numpy")
# `inlined`: a helper that Numba copies into each call site, so that a call with constant
# arguments compiles to code specialised for them (LLVM alone declines for large functions).
inlined = njit(cache=True, error_model="numpy", inline="always")


_blas_limited = False


def _one_blas_thread():
    """Makes the BLAS library that np.dot calls inside @njit (SciPy's OpenBLAS) run on one
    thread, once per process. It stays so: switching its threads back on after every kernel
    wakes threads that then spin against ours. NumPy's own BLAS library is left alone.
    Needs threadpoolctl; without it BLAS keeps its threads (correct, but slower)."""
    global _blas_limited
    if _blas_limited:
        return
    _blas_limited = True
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library Numba calls)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    numpy_dirs = {os.path.dirname(np.__file__), os.path.dirname(np.__file__) + ".libs"}
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and os.path.dirname(lib.filepath) not in numpy_dirs:
            lib.set_num_threads(1)


@helper
def _block(k, blocks, n):
    """Rows [lo, hi) of block k when n rows are cut into `blocks` nearly equal blocks."""
    return k * n // blocks, (k + 1) * n // blocks


def _threads():
    """Numba's thread count, passed to the kernels that cut work into one block per thread
    (reading it inside a kernel would keep the kernel out of the disk cache)."""
    return numba.get_num_threads()


@kernel
def _matmul(a, b, out, threads):
    """out = a @ b, the rows of a cut into one block per thread."""
    blocks = min(a.shape[0], threads)
    for k in prange(blocks):
        lo, hi = _block(k, blocks, a.shape[0])
        np.dot(a[lo:hi], b, out[lo:hi])


@kernel
def _matmul_tn(a, b, out, threads):
    """out = a^T @ b: the shared rows cut into one block per thread, partial products summed."""
    blocks = min(a.shape[0], threads)
    partial = np.empty((blocks,) + out.shape, out.dtype)
    for k in prange(blocks):
        lo, hi = _block(k, blocks, a.shape[0])
        np.dot(a[lo:hi].T, b[lo:hi], partial[k])
    _sum_blocks(partial, out)


@kernel
def _sum_blocks(partial, out):
    """out = partial.sum(axis=0) for partial (blocks, M, N), parallel over the rows M."""
    for m in prange(out.shape[0]):
        out[m] = partial[0, m]
        for k in range(1, partial.shape[0]):
            out[m] += partial[k, m]


# =============================================================================================
# Convolution: per image, an explicit im2col and one GEMM per group; threads take images.
#
# ConvGeom g: output (ho, wo) reads input row ho*sh - ph + r*dh, column wo*sw - pw + s*dw.
# Column matrix of one image: row (c, r, s), column (ho, wo); it holds the input value that
# tap (r, s) of channel c sees at output position (ho, wo), or 0 in the padding.


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
    y (N, K, Ho, Wo). Output channel k reads input channel k // (K/groups)."""
    Kg = g.K // g.groups
    for nk in prange(g.N * g.K):
        n, k = nk // g.K, nk % g.K
        c = k // Kg
        for ho in range(g.Ho):
            for wo in range(g.Wo):
                acc = bias[k]
                for r in range(g.R):
                    ih = ho * g.sh - g.ph + r * g.dh
                    if 0 <= ih < g.H:
                        for s in range(g.S):
                            iw = wo * g.sw - g.pw + s * g.dw
                            if 0 <= iw < g.W:
                                acc += w[k, 0, r, s] * x[n, c, ih, iw]
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


@backend.register
def conv2d(x, w, b, g):
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
    grad_x = np.empty(g.input_shape, grad_out.dtype)
    Kg = g.K // g.groups
    w_t = np.ascontiguousarray(w.reshape(g.groups, Kg, -1).transpose(0, 2, 1))
    _one_blas_thread()
    _conv2d_grad_input(grad_out.reshape(g.N, g.K, -1), w_t, g, grad_x)
    return grad_x


@backend.register
def conv2d_grad_weight(grad_out, x, g):
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


# =============================================================================================
# Pooling. Arrays are viewed as (planes, H, W) = (N*C, H, W); each thread takes whole planes,
# so the scatter-adds of the backward passes never race.


@helper
def _max_window(o, stride, pad, dilation, kernel_size, n):
    """Window of output position o along one axis: its first input coordinate `start` and the
    range [lo, hi) of kernel taps whose input coordinate start + tap*dilation lies in [0, n)."""
    start = o * stride - pad
    lo = 0 if start >= 0 else (-start + dilation - 1) // dilation
    hi = min(kernel_size, (n - start + dilation - 1) // dilation)
    return start, lo, hi


@helper
def _interior(n_out, n, k, stride, pad, dilation):
    """Output positions [lo, hi) along one axis whose windows lie wholly inside the input:
    there the window needs no clipping and has the same shape everywhere."""
    lo = min((pad + stride - 1) // stride, n_out)
    last = n - 1 - (k - 1) * dilation + pad  # o*stride may not pass this
    hi = min(n_out, last // stride + 1) if last >= 0 else 0
    return lo, max(lo, hi)


@helper
def _max_at(xp, h0, r_lo, r_hi, ow, W, kw, sw, pw, dh, dw):
    """Max of the (clipped) window of output column ow over kernel rows [r_lo, r_hi) from
    input row h0 -> (value, flat index)."""
    w0, s_lo, s_hi = _max_window(ow, sw, pw, dw, kw, W)
    best_h, best_w = h0 + r_lo * dh, w0 + s_lo * dw
    best = xp[best_h, best_w]
    for r in range(r_lo, r_hi):
        ih = h0 + r * dh
        for s in range(s_lo, s_hi):
            iw = w0 + s * dw
            v = xp[ih, iw]
            if v > best or np.isnan(v):
                best, best_h, best_w = v, ih, iw
    return best, best_h * W + best_w


@helper
def _u(i):
    """i (known to be >= 0) as an unsigned int. Indexing with unsigned ints skips Numba's
    handling of negative indices, which would keep LLVM from vectorising the loop around."""
    return np.uint64(i)


@helper
def _max_pool_border(xp, yp, ip, oh, ow_from, ow_to, h0, r_lo, r_hi, kw, sw, pw, dh, dw):
    """Output columns [ow_from, ow_to) of row oh, windows clipped to the input one by one."""
    for ow in range(ow_from, ow_to):
        yp[oh, ow], ip[oh, ow] = _max_at(xp, h0, r_lo, r_hi, ow, xp.shape[1], kw, sw, pw, dh, dw)


@inlined
def _max_pool_interior(xp, yp, ip, oh, ow_lo, ow_hi, h0, kh, kw, sw, pw, dh, dw):
    """Output columns [ow_lo, ow_hi) of row oh, whose windows lie wholly inside the input: a
    fixed kernel-sized window (unrolled when the geometry is a compile-time constant) and a
    loop over columns that LLVM vectorises, all indices unsigned."""
    W = _u(xp.shape[1])
    for o in range(ow_lo, ow_hi):
        ow = _u(o)
        w0 = ow * _u(sw) - _u(pw)
        best, best_at = xp[_u(h0), w0], _u(h0) * W + w0
        for r in range(kh):
            ih = _u(h0 + r * dh)
            for s in range(kw):
                iw = w0 + _u(s * dw)
                v = xp[ih, iw]
                # Selects, not branches, so that the loop over ow vectorises.
                take = v > best or v != v  # v != v: v is NaN
                best = v if take else best
                best_at = ih * W + iw if take else best_at
        yp[_u(oh), ow] = best
        ip[_u(oh), ow] = best_at


@inlined
def _max_pool_plane_direct(xp, yp, ip, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """One plane, each window read whole: interior windows by _max_pool_interior, the border
    ones clipped."""
    H, W = xp.shape
    oh_lo, oh_hi = _interior(Ho, H, kh, sh, ph, dh)
    ow_lo, ow_hi = _interior(Wo, W, kw, sw, pw, dw)
    for oh in range(Ho):
        h0, r_lo, r_hi = _max_window(oh, sh, ph, dh, kh, H)
        if oh_lo <= oh < oh_hi:
            _max_pool_interior(xp, yp, ip, oh, ow_lo, ow_hi, h0, kh, kw, sw, pw, dh, dw)
            _max_pool_border(xp, yp, ip, oh, 0, ow_lo, h0, r_lo, r_hi, kw, sw, pw, dh, dw)
            _max_pool_border(xp, yp, ip, oh, ow_hi, Wo, h0, r_lo, r_hi, kw, sw, pw, dh, dw)
        else:
            _max_pool_border(xp, yp, ip, oh, 0, Wo, h0, r_lo, r_hi, kw, sw, pw, dh, dw)


# Overlapping windows (3x3 stride 2, ...) are cheaper taken apart: per output row, the max of
# each input column over the window's rows (contiguous loads, shared by all windows of the
# row), then the max over each window's columns. Candidates then no longer come in row-major
# window order, so ties are settled by flat index, which grows in that order.


@helper
def _wins(v, at, best, best_at):
    """Whether candidate (v, at) replaces (best, best_at) under PyTorch's rule, in any order of
    candidates: the larger value; between equal values the lower flat index (the first in
    row-major window order); NaN over numbers, and between NaNs the higher index (the last).
    Bitwise operators, not `and`/`or`: no branches, so the loops around vectorise."""
    return ((v > best) | ((v == best) & (at < best_at))
            | ((v != v) & ((best == best) | (at > best_at))))


@inlined
def _max_over_rows(xp, h0, r_lo, r_hi, dh, col_best, col_at):
    """col_best[w], col_at[w] = max of input column w over window rows [r_lo, r_hi). Rows come
    in increasing index order, so a tie keeps the earlier row and a NaN replaces."""
    W = _u(xp.shape[1])
    ih = _u(h0 + r_lo * dh)
    for w in range(W):
        col_best[w], col_at[w] = xp[ih, w], ih * W + w
    for r in range(r_lo + 1, r_hi):
        ih = _u(h0 + r * dh)
        for w in range(W):
            v, best = xp[ih, w], col_best[w]
            take = (v > best) | (v != v)
            col_best[w] = v if take else best
            col_at[w] = ih * W + w if take else col_at[w]


@inlined
def _max_over_columns(col_best, col_at, yrow, irow, ow_lo, ow_hi, kw, sw, pw, dw):
    """Outputs [ow_lo, ow_hi) of one row, whose windows lie wholly inside the columns."""
    for o in range(ow_lo, ow_hi):
        ow = _u(o)
        w0 = ow * _u(sw) - _u(pw)
        best, best_at = col_best[w0], col_at[w0]
        for s in range(1, kw):
            v, at = col_best[w0 + _u(s * dw)], col_at[w0 + _u(s * dw)]
            take = _wins(v, at, best, best_at)
            best = v if take else best
            best_at = at if take else best_at
        yrow[ow], irow[ow] = best, best_at


@helper
def _max_over_columns_clipped(col_best, col_at, yrow, irow, ow_from, ow_to, kw, sw, pw, dw):
    """Outputs [ow_from, ow_to) of one row, windows clipped to the columns one by one."""
    for ow in range(ow_from, ow_to):
        w0, s_lo, s_hi = _max_window(ow, sw, pw, dw, kw, col_best.shape[0])
        best, best_at = col_best[w0 + s_lo * dw], col_at[w0 + s_lo * dw]
        for s in range(s_lo + 1, s_hi):
            v, at = col_best[w0 + s * dw], col_at[w0 + s * dw]
            if _wins(v, at, best, best_at):
                best, best_at = v, at
        yrow[ow], irow[ow] = best, best_at


@inlined
def _max_pool_plane_separable(xp, yp, ip, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """One plane, rows first, then columns."""
    H, W = xp.shape
    col_best, col_at = np.empty(W, xp.dtype), np.empty(W, np.int64)
    ow_lo, ow_hi = _interior(Wo, W, kw, sw, pw, dw)
    for oh in range(Ho):
        h0, r_lo, r_hi = _max_window(oh, sh, ph, dh, kh, H)
        _max_over_rows(xp, h0, r_lo, r_hi, dh, col_best, col_at)
        yrow, irow = yp[oh], ip[oh]
        _max_over_columns(col_best, col_at, yrow, irow, ow_lo, ow_hi, kw, sw, pw, dw)
        _max_over_columns_clipped(col_best, col_at, yrow, irow, 0, ow_lo, kw, sw, pw, dw)
        _max_over_columns_clipped(col_best, col_at, yrow, irow, ow_hi, Wo, kw, sw, pw, dw)


@inlined
def _max_pool_plane(xp, yp, ip, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """Windows that do not overlap (2x2 stride 2) share no work: each is read whole."""
    if (kh - 1) * dh < sh and (kw - 1) * dw < sw:
        _max_pool_plane_direct(xp, yp, ip, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw)
    else:
        _max_pool_plane_separable(xp, yp, ip, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw)


@helper
def _is_square(g, k, s, p):
    return g.kh == g.kw == k and g.sh == g.sw == s and g.ph == g.pw == p and g.dh == g.dw == 1


@kernel
def _max_pool2d(x, g, y, indices):
    """PyTorch's rule: the first maximum in row-major window order wins, and any NaN wins
    over numbers (the last NaN is reported). The common geometries get their own compiled
    copy of the plane loop with the window as constants."""
    for p in prange(x.shape[0]):
        if _is_square(g, 2, 2, 0):
            _max_pool_plane(x[p], y[p], indices[p], g.Ho, g.Wo, 2, 2, 2, 2, 0, 0, 1, 1)
        elif _is_square(g, 3, 2, 1):
            _max_pool_plane(x[p], y[p], indices[p], g.Ho, g.Wo, 3, 3, 2, 2, 1, 1, 1, 1)
        else:
            _max_pool_plane(x[p], y[p], indices[p], g.Ho, g.Wo, g.kh, g.kw, g.sh,
                            g.sw, g.ph, g.pw, g.dh, g.dw)


@kernel
def _scatter_add_planes(values, indices, out):
    """out[p, indices[p, j]] += values[p, j] (out zeroed first)."""
    for p in prange(values.shape[0]):
        out[p] = 0
        for j in range(values.shape[1]):
            out[p, indices[p, j]] += values[p, j]


@kernel
def _scatter_planes(values, indices, out):
    """out[p, indices[p, j]] = values[p, j] (out zeroed first); a repeated index keeps the
    last value in row-major order, as PyTorch's CPU kernel."""
    for p in prange(values.shape[0]):
        out[p] = 0
        for j in range(values.shape[1]):
            out[p, indices[p, j]] = values[p, j]


@helper
def _avg_window(o, stride, pad, kernel_size, n):
    """Window of output position o along one axis, as PyTorch: the input range [lo, hi) it
    averages and its length counting padding (the window stops at the end of the padding)."""
    start = o * stride - pad
    end = min(start + kernel_size, n + pad)
    return max(start, 0), min(end, n), end - start


@helper
def _avg_divisor(h_lo, h_hi, h_len, w_lo, w_hi, w_len, count_include_pad, divisor_override):
    if divisor_override != 0:
        return divisor_override
    if count_include_pad:
        return h_len * w_len
    return (h_hi - h_lo) * (w_hi - w_lo)


@helper
def _avg_pool_border(xp, yp, oh, ow_from, ow_to, h_lo, h_hi, h_len, kw, sw, pw,
                     count_include_pad, divisor_override):
    """Output columns [ow_from, ow_to) of row oh, windows clipped to the input one by one."""
    W = xp.shape[1]
    for ow in range(ow_from, ow_to):
        w_lo, w_hi, w_len = _avg_window(ow, sw, pw, kw, W)
        acc = xp.dtype.type(0)
        for ih in range(h_lo, h_hi):
            for iw in range(w_lo, w_hi):
                acc += xp[ih, iw]
        yp[oh, ow] = acc / xp.dtype.type(_avg_divisor(h_lo, h_hi, h_len, w_lo, w_hi, w_len,
                                                      count_include_pad, divisor_override))


@inlined
def _avg_pool_interior(xp, yp, oh, ow_lo, ow_hi, h0, kh, kw, sw, pw, divisor):
    """Output columns [ow_lo, ow_hi) of row oh, windows wholly inside (see _max_pool_interior)."""
    for o in range(ow_lo, ow_hi):
        ow = _u(o)
        w0 = ow * _u(sw) - _u(pw)
        acc = xp.dtype.type(0)
        for r in range(kh):
            for s in range(kw):
                acc += xp[_u(h0 + r), w0 + _u(s)]
        yp[_u(oh), ow] = acc / divisor


@inlined
def _avg_pool_plane(xp, yp, count_include_pad, divisor_override, Ho, Wo, kh, kw, sh, sw, ph, pw):
    """One plane; interior windows as in _max_pool_plane (there the divisor is kh*kw or the
    override), the others clipped one by one."""
    H, W = xp.shape
    oh_lo, oh_hi = _interior(Ho, H, kh, sh, ph, 1)
    ow_lo, ow_hi = _interior(Wo, W, kw, sw, pw, 1)
    # Divisors in the data's precision: float32 / int would compute in float64.
    inner_divisor = xp.dtype.type(divisor_override if divisor_override != 0 else kh * kw)
    for oh in range(Ho):
        h_lo, h_hi, h_len = _avg_window(oh, sh, ph, kh, H)
        border = (kw, sw, pw, count_include_pad, divisor_override)
        if oh_lo <= oh < oh_hi:
            _avg_pool_interior(xp, yp, oh, ow_lo, ow_hi, h_lo, kh, kw, sw, pw, inner_divisor)
            _avg_pool_border(xp, yp, oh, 0, ow_lo, h_lo, h_hi, h_len, *border)
            _avg_pool_border(xp, yp, oh, ow_hi, Wo, h_lo, h_hi, h_len, *border)
        else:
            _avg_pool_border(xp, yp, oh, 0, Wo, h_lo, h_hi, h_len, *border)


@kernel
def _avg_pool2d(x, g, count_include_pad, divisor_override, y):
    """The common geometry 2x2 stride 2 gets its own compiled copy (see _max_pool2d)."""
    for p in prange(x.shape[0]):
        if _is_square(g, 2, 2, 0):
            _avg_pool_plane(x[p], y[p], count_include_pad, divisor_override, g.Ho, g.Wo,
                            2, 2, 2, 2, 0, 0)
        else:
            _avg_pool_plane(x[p], y[p], count_include_pad, divisor_override, g.Ho, g.Wo,
                            g.kh, g.kw, g.sh, g.sw, g.ph, g.pw)


@kernel
def _avg_pool2d_backward(grad_out, g, count_include_pad, divisor_override, grad_x):
    for p in prange(grad_out.shape[0]):
        grad_x[p] = 0
        for oh in range(g.Ho):
            h_lo, h_hi, h_len = _avg_window(oh, g.sh, g.ph, g.kh, g.H)
            for ow in range(g.Wo):
                w_lo, w_hi, w_len = _avg_window(ow, g.sw, g.pw, g.kw, g.W)
                d = _avg_divisor(h_lo, h_hi, h_len, w_lo, w_hi, w_len, count_include_pad,
                                 divisor_override)
                share = grad_out[p, oh, ow] / grad_out.dtype.type(d)
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        grad_x[p, ih, iw] += share


def _planes(a):
    """(N, C, H, W) -> (N*C, H, W) view."""
    return a.reshape(-1, a.shape[2], a.shape[3])


@backend.register
def max_pool2d(x, g, with_indices):
    y = np.empty(g.output_shape, x.dtype)
    # Computed even when not asked for: a select per tap costs little next to the loads, and
    # one loop for both cases keeps the code and the compiled copies down.
    indices = np.empty(g.output_shape, np.int64)
    _max_pool2d(_planes(x), g, _planes(y), _planes(indices))
    return y, (indices if with_indices else None)


@backend.register
def max_pool2d_backward(grad_out, indices, input_shape):
    N, C, H, W = input_shape
    grad_x = np.empty(input_shape, grad_out.dtype)
    _scatter_add_planes(grad_out.reshape(N * C, -1), indices.reshape(N * C, -1),
                        grad_x.reshape(N * C, H * W))
    return grad_x


@backend.register
def avg_pool2d(x, g, count_include_pad, divisor_override):
    y = np.empty(g.output_shape, x.dtype)
    _avg_pool2d(_planes(x), g, count_include_pad, divisor_override, _planes(y))
    return y


@backend.register
def avg_pool2d_backward(grad_out, g, count_include_pad, divisor_override):
    grad_x = np.empty(g.input_shape, grad_out.dtype)
    _avg_pool2d_backward(_planes(grad_out), g, count_include_pad, divisor_override,
                         _planes(grad_x))
    return grad_x


@backend.register
def max_unpool2d(x, indices, output_shape):
    N, C, H, W = output_shape
    y = np.empty(output_shape, x.dtype)
    _scatter_planes(x.reshape(N * C, -1), indices.reshape(N * C, -1), y.reshape(N * C, H * W))
    return y


# =============================================================================================
# LSTM. Gate rows i, f, g, o as PyTorch:  gates = x @ w_ih^T + h @ w_hh^T + b_ih + b_hh,
# i, f, o = sigmoid, g = tanh,  c' = f*c + i*g,  h' = o*tanh(c').
# The GEMMs go to BLAS; everything elementwise of one step is one fused pass over the rows of
# the GEMM that produced them, in the same parallel region.


# Activations in the precision of their argument. LLVM cannot vectorise calls to libm's
# tanhf/expf (Numba has no vector math library here), which would leave the float32 pass
# 10x slower than the C++ one; so float32 uses a rational approximation of tanh made only of
# multiplies, adds, one divide and clamps (max error 3.3e-7, about 6 float32 ulp of 1), and
# float64 keeps libm's functions for full precision.
_TANH_CLAMP = 9.0  # tanh(9) rounds to 1 in float32
# tanh(x) ~ x * P(x^2) / Q(x^2) on [-9, 9]: weighted least-squares fit of the relative error.
_TANH_P = (0.9999999832268885, 0.1339243766664803, 0.0035091402134343587,
           2.0832047111265118e-05, 1.3663552261844458e-08)
_TANH_Q = (1.0, 0.4672575631642944, 0.02592854323951201, 0.0003307795649461926,
           7.902993797263835e-07)


@helper
def _clamp(v, lo, hi):
    # Written so that NaN passes through (every comparison with NaN is False).
    return hi if v > hi else (lo if v < lo else v)


@helper
def _tanh_float32(v):
    f = np.float32
    x = _clamp(v, f(-_TANH_CLAMP), f(_TANH_CLAMP))
    z = x * x
    p = (((f(_TANH_P[4]) * z + f(_TANH_P[3])) * z + f(_TANH_P[2])) * z + f(_TANH_P[1])) * z + f(_TANH_P[0])
    q = (((f(_TANH_Q[4]) * z + f(_TANH_Q[3])) * z + f(_TANH_Q[2])) * z + f(_TANH_Q[1])) * z + f(_TANH_Q[0])
    return _clamp(x * p / q, f(-1), f(1))


def _tanh(v):
    return np.tanh(v)


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


@overload(_tanh)
def _tanh_by_type(v):
    if v == types.float32:
        return lambda v: _tanh_float32(v)
    return lambda v: np.tanh(v)


@overload(_sigmoid)
def _sigmoid_by_type(v):
    if v == types.float32:
        half = np.float32(0.5)
        return lambda v: half + half * _tanh_float32(half * v)  # sigmoid(v) = (1 + tanh(v/2)) / 2
    return lambda v: 1.0 / (1.0 + np.exp(-v))


# The elementwise passes are short loops over one row (H values) each, with unsigned indices
# (see _u) and few arrays per loop. LLVM vectorises a loop only after checking at run time
# that its arrays do not overlap, and gives up when there are too many pairs to check; most
# likely for that reason, one loop doing a whole step's elementwise work stayed scalar
# (float32, one thread: 17.9 ns per hidden unit forward, 5.7 ns backward; now 1.7 and 1.3).


@helper
def _sigmoid_row(pre_x, pre_h, bias, out):
    for col in range(out.shape[0]):
        j = _u(col)
        out[j] = _sigmoid(pre_x[j] + pre_h[j] + bias[j])


@helper
def _tanh_row(pre_x, pre_h, bias, out):
    for col in range(out.shape[0]):
        j = _u(col)
        out[j] = _tanh(pre_x[j] + pre_h[j] + bias[j])


@helper
def _cell_row(i, f, g, c, c_new):
    for col in range(c.shape[0]):
        j = _u(col)
        c_new[j] = f[j] * c[j] + i[j] * g[j]


@helper
def _hidden_row(o, c_new, h_new):
    for col in range(o.shape[0]):
        j = _u(col)
        h_new[j] = o[j] * _tanh(c_new[j])


@helper
def _gates(a, H):
    """The four gate blocks i, f, g, o of one row of a (., 4H) array."""
    return a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]


@helper
def _lstm_pointwise(gx, gh, bias, c, acts, c_new, h_new):
    """Pre-activations gx + gh + bias (rows, 4H) -> activated gates `acts`, c_new, h_new."""
    H = c.shape[1]
    bi, bf, bg, bo = _gates(bias, H)
    for b in range(c.shape[0]):
        xi, xf, xg, xo = _gates(gx[b], H)
        hi, hf, hg, ho = _gates(gh[b], H)
        i, f, g, o = _gates(acts[b], H)
        _sigmoid_row(xi, hi, bi, i)
        _sigmoid_row(xf, hf, bf, f)
        _tanh_row(xg, hg, bg, g)
        _sigmoid_row(xo, ho, bo, o)
        _cell_row(i, f, g, c[b], c_new[b])
        _hidden_row(o, c_new[b], h_new[b])


@helper
def _tanh_of_row(a, out):
    for col in range(a.shape[0]):
        j = _u(col)
        out[j] = _tanh(a[j])


@helper
def _grad_cell_row(grad_c, grad_h, o, tanh_c, out):
    """d c' in full: the incoming cell gradient plus the path through h' = o*tanh(c')."""
    one = out.dtype.type(1)
    for col in range(out.shape[0]):
        j = _u(col)
        out[j] = grad_c[j] + grad_h[j] * o[j] * (one - tanh_c[j] * tanh_c[j])


@helper
def _grad_sigmoid_gate_row(d, other, gate, out):
    """out = d * other * gate'(pre-activation) for a sigmoid gate (gate' = gate*(1-gate))."""
    one = out.dtype.type(1)
    for col in range(out.shape[0]):
        j = _u(col)
        out[j] = d[j] * other[j] * gate[j] * (one - gate[j])


@helper
def _grad_tanh_gate_row(d, other, gate, out):
    """out = d * other * (1 - gate^2), gate = tanh(pre-activation)."""
    one = out.dtype.type(1)
    for col in range(out.shape[0]):
        j = _u(col)
        out[j] = d[j] * other[j] * (one - gate[j] * gate[j])


@helper
def _scale_row(a, factor):
    for col in range(a.shape[0]):
        j = _u(col)
        a[j] *= factor[j]


@helper
def _lstm_pointwise_backward(acts, c, c_new, grad_h, grad_c, grad_gates, grad_c_prev):
    """Gradients of one step's elementwise part: from d h', d c' to the gate pre-activations
    (rows, 4H) and to the previous cell state."""
    H = c.shape[1]
    for b in range(c.shape[0]):
        i, f, g, o = _gates(acts[b], H)
        di, df, dg, do = _gates(grad_gates[b], H)
        tanh_c, dc = do, grad_c_prev[b]  # scratch rows, overwritten last
        _tanh_of_row(c_new[b], tanh_c)
        _grad_cell_row(grad_c[b], grad_h[b], o, tanh_c, dc)
        _grad_sigmoid_gate_row(grad_h[b], tanh_c, o, do)
        _grad_sigmoid_gate_row(dc, g, i, di)
        _grad_sigmoid_gate_row(dc, c[b], f, df)
        _grad_tanh_gate_row(dc, i, g, dg)
        _scale_row(dc, f)  # d c = d c' * f


@kernel
def _lstm_step(gx, h, c, w_hh, bias, gh, acts, c_new, h_new, threads):
    """One step; each thread takes a block of the batch: gh = h @ w_hh^T for its rows, then
    the fused elementwise pass on the same rows (one parallel region per step)."""
    blocks = min(h.shape[0], threads)
    for k in prange(blocks):
        lo, hi = _block(k, blocks, h.shape[0])
        np.dot(h[lo:hi], w_hh.T, gh[lo:hi])
        _lstm_pointwise(gx[lo:hi], gh[lo:hi], bias, c[lo:hi], acts[lo:hi], c_new[lo:hi],
                        h_new[lo:hi])


@kernel
def _lstm_step_backward(acts, c, c_new, grad_h, grad_c, w_hh, grad_gates, grad_c_prev,
                        grad_h_prev, threads):
    """Backward of one step, a block of the batch per thread: the elementwise gradients, then
    grad_h_prev = grad_gates @ w_hh for the same rows."""
    blocks = min(c.shape[0], threads)
    for k in prange(blocks):
        lo, hi = _block(k, blocks, c.shape[0])
        _lstm_pointwise_backward(acts[lo:hi], c[lo:hi], c_new[lo:hi], grad_h[lo:hi],
                                 grad_c[lo:hi], grad_gates[lo:hi], grad_c_prev[lo:hi])
        np.dot(grad_gates[lo:hi], w_hh, grad_h_prev[lo:hi])


@driver
def _lstm_forward(x, h0, c0, w_ih, w_hh, bias, out, cells, acts, threads):
    """x (T, B, I) -> out (T, B, H). cells and acts hold the c and activated gates of every
    step when they have T rows (for the backward pass), else step t reuses row t % rows."""
    T, B, I = x.shape
    x_proj = np.empty((T * B, w_ih.shape[0]), x.dtype)
    _matmul(x.reshape(T * B, I), w_ih.T, x_proj, threads)  # the input projection of all steps at once
    x_proj = x_proj.reshape(T, B, -1)
    gh = np.empty((B, w_ih.shape[0]), x.dtype)
    h, c = h0, c0
    for t in range(T):
        at = t % cells.shape[0]
        _lstm_step(x_proj[t], h, c, w_hh, bias, gh, acts[at], cells[at], out[t], threads)
        h, c = out[t], cells[at]


@driver
def _lstm_backward(grad_out, grad_hT, grad_cT, h0, c0, w_hh, cells, acts, grad_gates, threads):
    """Backpropagation through time -> (grad_h0, grad_c0); grad_gates (T, B, 4H) receives the
    gate gradients of every step for the weight gradients."""
    grad_h, grad_c = grad_hT.copy(), grad_cT.copy()
    grad_h_prev, grad_c_prev = np.empty_like(grad_h), np.empty_like(grad_c)
    for t in range(grad_out.shape[0] - 1, -1, -1):
        grad_h += grad_out[t]
        c_prev = c0 if t == 0 else cells[t - 1]
        _lstm_step_backward(acts[t], c_prev, cells[t], grad_h, grad_c, w_hh, grad_gates[t],
                            grad_c_prev, grad_h_prev, threads)
        grad_h, grad_h_prev = grad_h_prev, grad_h
        grad_c, grad_c_prev = grad_c_prev, grad_c
    return grad_h, grad_c


@helper
def _add_rows(a, out):
    """out += the sum of the rows of a, row by row (contiguous, vectorised)."""
    for row in range(a.shape[0]):
        for col in range(a.shape[1]):
            out[_u(col)] += a[_u(row), _u(col)]


@kernel
def _column_sums(a, out, threads):
    """out = a.sum(axis=0): each thread sums a block of rows, then the blocks are added.
    (A loop down each column would read a whole cache line per element.)"""
    blocks = min(a.shape[0], threads)
    partial = np.zeros((blocks, a.shape[1]), a.dtype)
    for k in prange(blocks):
        lo, hi = _block(k, blocks, a.shape[0])
        _add_rows(a[lo:hi], partial[k])
    _sum_blocks(partial, out)


def _lstm_bias(b_ih, b_hh, w_ih):
    bias = np.zeros(w_ih.shape[0], w_ih.dtype)
    for b in (b_ih, b_hh):
        if b is not None:
            bias += b
    return bias


def _lstm_gradients(grad_gates, x, h_prev, w_ih, w_hh, b_ih, b_hh):
    """(grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh) from the gate gradients of all
    rows (B, or T*B for a sequence) at once; x and h_prev are 2-D with the same rows."""
    grad_x, grad_w_ih, grad_w_hh = np.empty_like(x), np.empty_like(w_ih), np.empty_like(w_hh)
    grad_b = np.empty(w_ih.shape[0], x.dtype)
    _matmul(grad_gates, w_ih, grad_x, _threads())
    _matmul_tn(grad_gates, x, grad_w_ih, _threads())
    _matmul_tn(grad_gates, h_prev, grad_w_hh, _threads())
    _column_sums(grad_gates, grad_b, _threads())
    return (grad_x, grad_w_ih, grad_w_hh,
            None if b_ih is None else grad_b, None if b_hh is None else grad_b.copy())


def _cell_forward(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """-> (acts, c_new, h_new) of one step."""
    B, H = h.shape
    gx, gh, acts = (np.empty((B, 4 * H), h.dtype) for _ in range(3))
    h_new, c_new = np.empty_like(h), np.empty_like(c)
    _matmul(x, w_ih.T, gx, _threads())
    _lstm_step(gx, h, c, w_hh, _lstm_bias(b_ih, b_hh, w_ih), gh, acts, c_new, h_new, _threads())
    return acts, c_new, h_new


@backend.register
def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    _one_blas_thread()
    _, c_new, h_new = _cell_forward(x, h, c, w_ih, w_hh, b_ih, b_hh)
    return h_new, c_new


@backend.register
def lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh):
    _one_blas_thread()
    acts, c_new, _ = _cell_forward(x, h, c, w_ih, w_hh, b_ih, b_hh)
    grad_gates, grad_c_prev, grad_h_prev = np.empty_like(acts), np.empty_like(c), np.empty_like(h)
    _lstm_step_backward(acts, c, c_new, grad_h, grad_c, w_hh, grad_gates, grad_c_prev,
                        grad_h_prev, _threads())
    grads = _lstm_gradients(grad_gates, x, h, w_ih, w_hh, b_ih, b_hh)
    grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = grads
    return grad_x, grad_h_prev, grad_c_prev, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def _run_lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save):
    """-> (out, c_T, the LstmSaved of the run if save else None). Saving keeps the cells and
    gates of every step (else one row of each is reused), and out is then hs[1:] of the record."""
    T, B, _ = x.shape
    H = h0.shape[1]
    rows = T if save else 1
    hs = np.empty((T + 1, B, H), x.dtype) if save else None
    out = hs[1:] if save else np.empty((T, B, H), x.dtype)
    cs = np.empty((rows + 1, B, H), x.dtype)
    gates = np.empty((rows, B, 4 * H), x.dtype)
    cs[0] = c0
    _lstm_forward(x, h0, c0, w_ih, w_hh, _lstm_bias(b_ih, b_hh, w_ih), out, cs[1:], gates,
                  _threads())
    if not save:
        return out, cs[-1], None
    hs[0] = h0
    return out, cs[-1], LstmSaved(backend.name, gates, hs, cs)


@backend.register
def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save):
    _one_blas_thread()
    out, c_T, saved = _run_lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save)
    return out, (out[-1].copy(), c_T.copy()), saved


@backend.register
def lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, saved):
    T, B, I = x.shape
    H = h0.shape[1]
    _one_blas_thread()
    if saved is None:
        _, _, saved = _run_lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save=True)
    grad_gates = np.empty((T, B, 4 * H), x.dtype)
    grad_h0, grad_c0 = _lstm_backward(grad_out, grad_hT, grad_cT, h0, c0, w_hh, saved.cs[1:],
                                      saved.gates, grad_gates, _threads())
    h_prev = saved.hs[:-1].reshape(T * B, H)  # h_{t-1} of each step
    grads = _lstm_gradients(grad_gates.reshape(T * B, 4 * H), x.reshape(T * B, I), h_prev,
                            w_ih, w_hh, b_ih, b_hh)
    grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = grads
    return (grad_x.reshape(T, B, I), grad_h0, grad_c0, grad_w_ih, grad_w_hh,
            grad_b_ih, grad_b_hh)


# =============================================================================================
# Boxes (x1, y1, x2, y2). Widths and heights are clamped at 0, so a box with x2 < x1 or
# y2 < y1 is empty; the IoU of two boxes whose union is empty is 0. IoUs are computed in the
# boxes' dtype and compared with the threshold in float64, as torchvision.


# `zero` is 0 in the boxes' precision, so float32 math stays float32.


@helper
def _area(x1, y1, x2, y2, zero):
    return max(x2 - x1, zero) * max(y2 - y1, zero)


@helper
def _iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, zero):
    inter = _area(max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2), zero)
    union = area_a + area_b - inter
    # A NaN coordinate gives a NaN IoU, which never suppresses (NaN > threshold is False).
    return zero if union == zero else inter / union


@kernel
def _box_iou(a, b, out):
    zero = a.dtype.type(0)
    for i in prange(a.shape[0]):
        area_a = _area(a[i, 0], a[i, 1], a[i, 2], a[i, 3], zero)
        for j in range(b.shape[0]):
            area_b = _area(b[j, 0], b[j, 1], b[j, 2], b[j, 3], zero)
            out[i, j] = _iou(a[i, 0], a[i, 1], a[i, 2], a[i, 3], area_a,
                             b[j, 0], b[j, 1], b[j, 2], b[j, 3], area_b, zero)


@driver
def _greedy_nms(boxes, scores, categories, iou_threshold):
    """Greedy NMS within categories -> kept indices by decreasing score.

    Visiting order: a stable sort of -scores (ties keep the lower index; NaN sorts last).
    Boxes of different categories never interact, so the boxes are grouped by category
    (a stable sort again, which keeps the visiting order inside each group), gathered into one
    array per coordinate, and each group runs its own greedy NMS (_nms_group). The kept boxes
    of all groups are then listed in the visiting order. It runs on one thread: each sweep
    depends on the ones before, and one sweep is too short to share."""
    order = np.argsort(-scores, kind="mergesort")  # rank -> box
    grouped = np.argsort(categories[order], kind="mergesort")  # position -> rank
    n = order.shape[0]
    zero = boxes.dtype.type(0)
    x1, y1 = np.empty(n, boxes.dtype), np.empty(n, boxes.dtype)
    x2, y2 = np.empty(n, boxes.dtype), np.empty(n, boxes.dtype)
    area = np.empty(n, boxes.dtype)
    for i in range(n):
        k = order[grouped[i]]
        x1[i], y1[i], x2[i], y2[i] = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        area[i] = _area(x1[i], y1[i], x2[i], y2[i], zero)
    suppressed = np.zeros(n, np.bool_)
    start = 0
    while start < n:
        category = categories[order[grouped[start]]]
        end = start + 1
        while end < n and categories[order[grouped[end]]] == category:
            end += 1
        group = slice(start, end)
        _nms_group(x1[group], y1[group], x2[group], y2[group], area[group], iou_threshold,
                   suppressed[group])
        start = end
    kept_by_rank = np.zeros(n, np.bool_)
    for i in range(n):
        kept_by_rank[grouped[i]] = not suppressed[i]
    return order[kept_by_rank]


@helper
def _nms_group(x1, y1, x2, y2, area, iou_threshold, suppressed):
    """Greedy NMS of boxes given in visiting order: each kept box sweeps the boxes after it and
    marks those it suppresses. The sweep runs over views that start at 0 and has no branch but
    a masked store, so LLVM vectorises it; suppressed boxes never sweep, so the work is
    (kept boxes) x N, not N^2, when few boxes survive."""
    zero = x1.dtype.type(0)
    n = x1.shape[0]
    for i in range(n):
        if suppressed[i]:
            continue
        rest = slice(i + 1, n)
        _suppress(x1[i], y1[i], x2[i], y2[i], area[i], x1[rest], y1[rest], x2[rest], y2[rest],
                  area[rest], iou_threshold, suppressed[rest], zero)


@helper
def _suppress(kx1, ky1, kx2, ky2, k_area, x1, y1, x2, y2, area, iou_threshold, suppressed, zero):
    """Marks the boxes whose IoU with the kept box k exceeds the threshold."""
    for j in range(x1.shape[0]):
        iou = _iou(kx1, ky1, kx2, ky2, k_area, x1[j], y1[j], x2[j], y2[j], area[j], zero)
        if iou > iou_threshold:
            suppressed[j] = True


@backend.register
def box_iou(boxes1, boxes2):
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), boxes1.dtype)
    _box_iou(boxes1, boxes2, out)
    return out


@backend.register
def nms(boxes, scores, iou_threshold):
    one_category = np.zeros(boxes.shape[0], np.int64)
    return _greedy_nms(boxes, scores, one_category, float(iou_threshold))


@backend.register
def batched_nms(boxes, scores, idxs, iou_threshold):
    return _greedy_nms(boxes, scores, idxs, float(iou_threshold))
