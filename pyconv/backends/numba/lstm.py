"""The LSTM and the Elman RNN cell on the "numba" backend. LSTM gate rows i, f, g, o as PyTorch:
gates = x @ w_ih^T + h @ w_hh^T + b_ih + b_hh, i, f, o = sigmoid, g = tanh,
c' = f*c + i*g, h' = o*tanh(c').

The GEMMs go to BLAS (the input projection of all steps at once); everything elementwise of
one step is one fused pass over the rows of the GEMM that produced them, in the same parallel
region. The backward pass keeps (or recomputes) every step's cells and gates, runs the
recurrence backwards step by step, then computes the weight gradients of all steps at once.
"""
from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import overload

from .. import LstmSaved
from . import backend
from ._jit import (_block, _matmul, _matmul_tn, _one_blas_thread, _sum_blocks, _threads, _u,
                   driver, helper, kernel)


# Activations in the precision of their argument. LLVM cannot vectorise calls to libm's
# tanhf/expf (Numba has no vector math library here), which would leave the float32 pass
# far slower than the C++ one; so float32 uses a rational approximation of tanh made only of
# multiplies, adds, one divide and clamps (max error 3.3e-7, about 6 float32 ulp of 1), and
# float64 keeps libm's functions for full precision.
_TANH_CLAMP = 9.0  # the fit below holds on [-9, 9]
# From here on tanh(x) rounds to 1 in float32 (1 - tanh(x) < 2**-25). The fit stays below 1
# at 9, so beyond this the result is set to +-1 exactly: then sigmoid(-inf) is 0, not 3e-8,
# and a saturated gate keeps nothing of its input (0 * inf is NaN, as in the reference).
_TANH_ONE = 9.011
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
    r = _clamp(x * p / q, f(-1), f(1))
    return f(1) if v >= f(_TANH_ONE) else (f(-1) if v <= f(-_TANH_ONE) else r)


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
# that its arrays do not overlap, and gives up when there are too many pairs to check, so
# one loop doing a whole step's elementwise work stays scalar.


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


# ---- The Elman RNN cell: h' = act(x w_ih^T + b_ih + h w_hh^T + b_hh), act tanh or ReLU. Its
# products go to BLAS; the biases and the activation are one pass over the rows, and so is the
# backward's gradient of the pre-activation.


@helper
def _relu_row(pre_x, pre_h, bias, out):
    for col in range(out.shape[0]):
        j = _u(col)
        v = pre_x[j] + pre_h[j] + bias[j]
        out[j] = 0 if v < 0 else v  # NaN and -0.0 pass, as PyTorch's relu


@kernel
def _rnn_pointwise(pre_x, pre_h, bias, tanh, out):
    for b in prange(out.shape[0]):
        if tanh:
            _tanh_row(pre_x[b], pre_h[b], bias, out[b])
        else:
            _relu_row(pre_x[b], pre_h[b], bias, out[b])


@kernel
def _rnn_grad_pre(grad_y, y, tanh, out):
    """The pre-activation's gradient from the output: tanh' = 1 - y^2, relu' = [y > 0] (a NaN
    output passes the gradient, as PyTorch's)."""
    for b in prange(y.shape[0]):
        for col in range(y.shape[1]):
            j = _u(col)
            v = y[b, j]
            if tanh:
                out[b, j] = grad_y[b, j] * (1 - v * v)
            else:
                out[b, j] = 0 if v <= 0 else grad_y[b, j]


@backend.register
def rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    _one_blas_thread()
    pre_x, pre_h, h_new = (np.empty(h.shape, x.dtype) for _ in range(3))
    _matmul(x, w_ih.T, pre_x, _threads())
    _matmul(h, w_hh.T, pre_h, _threads())
    _rnn_pointwise(pre_x, pre_h, _lstm_bias(b_ih, b_hh, w_ih), nonlinearity == "tanh", h_new)
    return h_new


@backend.register
def rnn_cell_backward(grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    _one_blas_thread()
    grad_pre = np.empty_like(h_new)
    _rnn_grad_pre(grad_h, h_new, nonlinearity == "tanh", grad_pre)
    grad_h_prev = np.empty_like(h)
    _matmul(grad_pre, w_hh, grad_h_prev, _threads())
    grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = _lstm_gradients(
        grad_pre, x, h, w_ih, w_hh, b_ih, b_hh)
    return grad_x, grad_h_prev, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh
