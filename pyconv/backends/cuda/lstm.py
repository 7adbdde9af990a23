"""LSTM and the Elman RNN cell on the GPU: the gate products through the array module's GEMM
(cuBLAS on CuPy arrays), everything elementwise in ONE fused kernel per step and direction.

Forward, per step: gh = h @ w_hh^T (a cuBLAS GEMM; the input projection x @ w_ih^T of all T
steps is one GEMM before the loop), then ``lstm_step_fwd`` reads the two gate pre-activations
and the bias, applies sigmoid/tanh, updates the cell and writes h and c (and, when training,
the activated gates for the backward pass). Unfused, those are ~10 elementwise kernels each
reading and writing B x 4H arrays; fused, one kernel reads 2 x 4H + H and writes 2H (+ 4H)
values per batch row: memory-bound, one thread per (batch, hidden unit), fully coalesced.
Backward (BPTT), per step in reverse: ``lstm_step_bwd`` turns (grad h, grad c, the saved gates
and cells) into the pre-activation gate gradients and grad c_prev in one pass; grad h_prev is
one GEMM with w_hh; the weight gradients are one GEMM each over all T steps after the loop.
Gate rows are in PyTorch's order i, f, g, o.
"""
from __future__ import annotations

import math

from numba import cuda

from .. import LstmSaved
from . import backend
from .elementwise import relu_backward, tanh_backward
from ._kernel_util import Kernels, per_dtype
from ._runtime import THREADS, blocks_for, dummy, flat, launch, xp


@per_dtype
def kernels(dtype):
    dt = dtype.type
    ks = Kernels(dtype)

    @cuda.jit(device=True)
    def sigmoid(v):
        return dt(1) / (dt(1) + math.exp(-v))

    @ks.add("fffffffnnn")
    def lstm_step_fwd(gx, gh, bias, c_prev, h, c, acts, store, B, Hd):
        # gx, gh: (B, 4H) gate pre-activations from x and from h; bias (4H,) = b_ih + b_hh.
        for e in range(cuda.grid(1), B * Hd, cuda.gridsize(1)):
            b = e // Hd
            j = e - b * Hd
            r = b * 4 * Hd + j  # gate i of unit j in row b; f, g, o follow at +H, +2H, +3H
            i_ = sigmoid(gx[r] + gh[r] + bias[j])
            f_ = sigmoid(gx[r + Hd] + gh[r + Hd] + bias[j + Hd])
            g_ = math.tanh(gx[r + 2 * Hd] + gh[r + 2 * Hd] + bias[j + 2 * Hd])
            o_ = sigmoid(gx[r + 3 * Hd] + gh[r + 3 * Hd] + bias[j + 3 * Hd])
            c_new = f_ * c_prev[e] + i_ * g_
            c[e] = c_new
            h[e] = o_ * math.tanh(c_new)
            if store != 0:
                acts[r] = i_
                acts[r + Hd] = f_
                acts[r + 2 * Hd] = g_
                acts[r + 3 * Hd] = o_

    @ks.add("ffffffffnn")
    def lstm_step_bwd(acts, c_prev, c, dh_out, dh_next, dc_next, dgates, dc_prev, B, Hd):
        # dh = grad of the step's output + grad flowing back from the next step. dc_prev may
        # be dc_next itself: each thread reads its element before writing it.
        for e in range(cuda.grid(1), B * Hd, cuda.gridsize(1)):
            b = e // Hd
            r = b * 4 * Hd + e - b * Hd
            i_ = acts[r]
            f_ = acts[r + Hd]
            g_ = acts[r + 2 * Hd]
            o_ = acts[r + 3 * Hd]
            tc = math.tanh(c[e])
            dh = dh_out[e] + dh_next[e]
            dc = dc_next[e] + dh * o_ * (dt(1) - tc * tc)
            dgates[r] = dc * g_ * i_ * (dt(1) - i_)
            dgates[r + Hd] = dc * c_prev[e] * f_ * (dt(1) - f_)
            dgates[r + 2 * Hd] = dc * i_ * (dt(1) - g_ * g_)
            dgates[r + 3 * Hd] = dh * tc * o_ * (dt(1) - o_)
            dc_prev[e] = dc * f_

    @ks.add("ffffnnn")
    def rnn_step_fwd(gx, gh, bias, h, B, Hd, tanh):
        # An Elman step's pre-activation gx + gh + bias, activated: tanh, else ReLU (NaN and
        # -0.0 pass through it, as PyTorch's).
        for e in range(cuda.grid(1), B * Hd, cuda.gridsize(1)):
            v = gx[e] + gh[e] + bias[e % Hd]
            if tanh != 0:
                h[e] = math.tanh(v)
            else:
                h[e] = dt(0) if v < dt(0) else v

    return ks


def _bias(b_ih, b_hh, rows, dtype):
    """b_ih + b_hh, either of which may be None: (rows,)."""
    if b_ih is None and b_hh is None:
        return xp.zeros(rows, dtype)
    if b_hh is None:
        return b_ih
    return b_hh if b_ih is None else b_ih + b_hh


def _forward(x, h0, c0, w_ih, w_hh, bias, store):
    """Runs the recurrence over x (T, B, I). Returns out (T, B, H), the cells (T + 1, B, H) or
    just two, the index of c_T in them, and when store the LstmSaved (out is then its hs[1:])."""
    T, B, _ = x.shape
    Hd = h0.shape[1]
    ks = kernels(x.dtype)
    gx = (x.reshape(T * B, -1) @ w_ih.T).reshape(T, B, 4 * Hd)  # all steps in one GEMM
    hs = xp.empty((T + 1, B, Hd), x.dtype) if store else None
    out = hs[1:] if store else xp.empty((T, B, Hd), x.dtype)
    cells = xp.empty((T + 1 if store else 2, B, Hd), x.dtype)
    cells[0] = c0
    acts = xp.empty((T, B, 4 * Hd), x.dtype) if store else dummy(x.dtype)
    h = h0
    for t in range(T):
        c_prev, c_next = (t, t + 1) if store else (t % 2, (t + 1) % 2)
        gh = h @ w_hh.T
        launch(ks.lstm_step_fwd, blocks_for(B * Hd), THREADS,
               flat(gx[t]), flat(gh), bias, flat(cells[c_prev]), flat(out[t]), flat(cells[c_next]),
               flat(acts[t]) if store else acts, int(store), B, Hd)
        h = out[t]
    if store:
        hs[0] = h0
        return out, cells, T, LstmSaved(backend.name, acts, hs, cells)
    return out, cells, T % 2, None


def _backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, saved):
    T, B, I = x.shape
    Hd = h0.shape[1]
    if saved is None:
        saved = _forward(x, h0, c0, w_ih, w_hh, _bias(b_ih, b_hh, 4 * Hd, x.dtype), True)[3]
    ks = kernels(x.dtype)
    acts, cells = saved.gates, saved.cs
    dgates = xp.empty((T, B, 4 * Hd), x.dtype)
    dh, dc = grad_hT, grad_cT.copy()  # dc is updated in place, step by step
    for t in reversed(range(T)):
        launch(ks.lstm_step_bwd, blocks_for(B * Hd), THREADS,
               flat(acts[t]), flat(cells[t]), flat(cells[t + 1]), flat(grad_out[t]), flat(dh),
               flat(dc), flat(dgates[t]), flat(dc), B, Hd)
        dh = dgates[t] @ w_hh
    dg = dgates.reshape(T * B, 4 * Hd)
    h_prev = saved.hs[:-1].reshape(T * B, Hd)
    grad_x = (dg @ w_ih).reshape(T, B, I)
    grad_w_ih = dg.T @ x.reshape(T * B, I)
    grad_w_hh = dg.T @ h_prev
    grad_b = dg.sum(axis=0)
    return (grad_x, dh, dc, grad_w_ih, grad_w_hh,
            None if b_ih is None else grad_b, None if b_hh is None else grad_b.copy())


@backend.register
def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    out, cells, last, _ = _forward(x[None], h, c, w_ih, w_hh, _bias(b_ih, b_hh, 4 * h.shape[1], x.dtype), False)
    return out[0], cells[last]


@backend.register
def lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh):
    gx, gh, gc, gw_ih, gw_hh, gb_ih, gb_hh = _backward(
        grad_h[None], xp.zeros_like(h), grad_c, x[None], h, c, w_ih, w_hh, b_ih, b_hh, None)
    return gx[0], gh, gc, gw_ih, gw_hh, gb_ih, gb_hh


@backend.register
def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, save):
    out, cells, last, saved = _forward(x, h0, c0, w_ih, w_hh, _bias(b_ih, b_hh, 4 * h0.shape[1], x.dtype), save)
    return out, (out[-1].copy(), cells[last].copy()), saved


@backend.register
def lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, saved):
    return _backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, saved)


@backend.register
def rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    B, Hd = h.shape
    h_new = xp.empty_like(h)
    launch(kernels(x.dtype).rnn_step_fwd, blocks_for(B * Hd), THREADS,
           flat(x @ w_ih.T), flat(h @ w_hh.T), _bias(b_ih, b_hh, Hd, x.dtype), flat(h_new), B, Hd,
           int(nonlinearity == "tanh"))
    return h_new


@backend.register
def rnn_cell_backward(grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    # The pre-activation's gradient from the output, by the activation's own backward kernel.
    grad_pre = (tanh_backward if nonlinearity == "tanh" else relu_backward)(grad_h, h_new)
    grad_b = grad_pre.sum(axis=0)
    return (grad_pre @ w_ih, grad_pre @ w_hh, grad_pre.T @ x, grad_pre.T @ h,
            None if b_ih is None else grad_b, None if b_hh is None else grad_b.copy())
