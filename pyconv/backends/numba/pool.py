"""Pooling on the "numba" backend: max/avg pooling forward and backward, and max-unpooling.

Arrays are viewed as (planes, H, W) = (N*C, H, W); each thread takes whole planes, so the
scatter-adds of the backward passes never race. The forward passes split each plane into
interior windows (wholly inside the input: a fixed window, unsigned indices, selects instead
of branches, so that LLVM vectorises the loop over output columns) and border windows
(clipped one by one); the common geometries compile their own copy with the window as
constants.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ... import _spec
from . import backend
from ._jit import _u, check_shapes, helper, inlined, kernel


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
    """out[p, indices[p, j]] += values[p, j] (out zeroed first). Indices outside
    [0, out.shape[1]) are skipped and counted -> the count."""
    skipped = 0
    for p in prange(values.shape[0]):
        out[p] = 0
        for j in range(values.shape[1]):
            i = indices[p, j]
            if _u(i) < _u(out.shape[1]):  # unsigned: a negative index is out of range too
                out[p, i] += values[p, j]
            else:
                skipped += 1
    return skipped


@kernel
def _scatter_planes(values, indices, out):
    """out[p, indices[p, j]] = values[p, j] (out zeroed first); a repeated index keeps the
    last value in row-major order, as PyTorch's CPU kernel. Indices outside [0, out.shape[1])
    are skipped and counted -> the count."""
    skipped = 0
    for p in prange(values.shape[0]):
        out[p] = 0
        for j in range(values.shape[1]):
            i = indices[p, j]
            if _u(i) < _u(out.shape[1]):
                out[p, i] = values[p, j]
            else:
                skipped += 1
    return skipped


def _scatter(op, scatter, values, indices, output_shape, dtype):
    """Runs a plane scatter of values (N, C, h, w) at indices (same shape) into a new array of
    output_shape (N, C, H, W), after checking the shapes it relies on; raises ValueError
    naming the op for indices outside [0, H*W) (the public ops reject them before)."""
    N, C, H, W = output_shape
    if (values.ndim != 4 or tuple(indices.shape) != tuple(values.shape)
            or tuple(values.shape[:2]) != (N, C) or indices.dtype != np.int64):
        raise ValueError(f"{op}: values {values.shape} and int64 indices {indices.shape} must "
                         f"have one shape, with batch and channels of {tuple(output_shape)}"
                         f" (indices are {indices.dtype})")
    out = np.empty(output_shape, dtype)
    skipped = scatter(values.reshape(N * C, -1), indices.reshape(N * C, -1),
                      out.reshape(N * C, H * W))
    if skipped:
        raise ValueError(f"{op}: {skipped} indices lie outside [0, {H * W}) (H*W) and were "
                         "skipped")
    return out


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


def _check_windows(op, g):
    """Every window must hold an input pixel: the loops start from a window's first tap
    inside the input without checking that there is one. The spec's rule, checked again."""
    for n, out, k, s, p, d in ((g.H, g.Ho, g.kh, g.sh, g.ph, g.dh),
                               (g.W, g.Wo, g.kw, g.sw, g.pw, g.dw)):
        if (min(k, s, d) < 1 or p < 0 or p > k // 2 or (out - 1) * s - p >= n
                or not _spec.windows_touch_input(n, out, k, s, p, d)):
            raise ValueError(f"{op}: {g} has a window that lies entirely in the padding")


@backend.register
def max_pool2d(x, g, with_indices):
    _check_windows("max_pool2d", g)
    check_shapes("max_pool2d", x=(x, g.input_shape))
    y = np.empty(g.output_shape, x.dtype)
    # Computed even when not asked for: a select per tap costs little next to the loads, and
    # one loop for both cases keeps the code and the compiled copies down.
    indices = np.empty(g.output_shape, np.int64)
    _max_pool2d(_planes(x), g, _planes(y), _planes(indices))
    return y, (indices if with_indices else None)


@backend.register
def max_pool2d_backward(grad_out, indices, input_shape):
    return _scatter("max_pool2d_backward", _scatter_add_planes, grad_out, indices, input_shape,
                    grad_out.dtype)


@backend.register
def avg_pool2d(x, g, count_include_pad, divisor_override):
    _check_windows("avg_pool2d", g)
    if g.dh != 1 or g.dw != 1:  # the loops below assume it
        raise ValueError(f"avg_pool2d: dilation must be 1, got {(g.dh, g.dw)}")
    check_shapes("avg_pool2d", x=(x, g.input_shape))
    y = np.empty(g.output_shape, x.dtype)
    _avg_pool2d(_planes(x), g, count_include_pad, divisor_override, _planes(y))
    return y


@backend.register
def avg_pool2d_backward(grad_out, g, count_include_pad, divisor_override):
    _check_windows("avg_pool2d_backward", g)
    if g.dh != 1 or g.dw != 1:  # the loops below assume it
        raise ValueError(f"avg_pool2d_backward: dilation must be 1, got {(g.dh, g.dw)}")
    check_shapes("avg_pool2d_backward", grad_out=(grad_out, g.output_shape))
    grad_x = np.empty(g.input_shape, grad_out.dtype)
    _avg_pool2d_backward(_planes(grad_out), g, count_include_pad, divisor_override,
                         _planes(grad_x))
    return grad_x


@backend.register
def max_unpool2d(x, indices, output_shape):
    return _scatter("max_unpool2d", _scatter_planes, x, indices, output_shape, x.dtype)
