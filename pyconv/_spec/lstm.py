"""The LSTM cell and sequence, the Elman RNN cell, and their gradients."""
from __future__ import annotations

from .core import (check_array, check_batch_optional, check_float_dtypes, shape_of, without_batch)


def _lstm_weights(op, x, B, I, unbatched, h, c, w_ih, w_hh, b_ih, b_hh, state_names=("h", "c")):
    """Checks the states and weights of a call on x with batch B and input size I (an unbatched
    x, without its batch axis, takes states without it too: (H,) rather than (B, H))."""
    h_name, c_name = state_names
    state_layout = "(H,) for an unbatched x" if unbatched else "(B, H)"
    for name, state in ((h_name, h), (c_name, c)):
        check_array(op, name, state)
        if state.ndim != 2 - unbatched:
            raise ValueError(f"{op}: {name} must be {2 - unbatched}-D {state_layout} "
                             f"(x has shape {shape_of(x)}), got shape {shape_of(state)}")
    check_array(op, "w_ih", w_ih, 2)
    check_array(op, "w_hh", w_hh, 2)
    check_array(op, "b_ih", b_ih, 1, allow_none=True)
    check_array(op, "b_hh", b_hh, 1, allow_none=True)
    given = {"x": x, h_name: h, c_name: c, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
    check_float_dtypes(op, **given)
    del given["x"]
    Hd = h.shape[-1]
    if h.shape[:-1] == c.shape[:-1] == without_batch((B,), unbatched) and h.shape != c.shape:
        # Either state may be the wrong one: name both rather than blame c.
        raise ValueError(
            f"{op}: {h_name} and {c_name} disagree: {h_name} has shape {shape_of(h)} and "
            f"{c_name} has shape {shape_of(c)} ({c_name} must have shape equal to {h_name}'s, "
            f"{'(hidden size,)' if unbatched else '(batch, hidden size)'})"
        )
    state = without_batch((B, Hd), unbatched)
    expected = {
        h_name: state, c_name: state, "w_ih": (4 * Hd, I), "w_hh": (4 * Hd, Hd),
        "b_ih": (4 * Hd,), "b_hh": (4 * Hd,),
    }
    for name, a in given.items():
        if a is not None and tuple(a.shape) != expected[name]:
            raise ValueError(
                f"{op}: {name} must have shape {expected[name]} for x {shape_of(x)} and hidden "
                f"size {Hd}, got {shape_of(a)}"
            )
    if min(B, I, Hd) < 1:
        raise ValueError(f"{op}: empty input (x.shape={shape_of(x)}, {h_name}.shape={shape_of(h)})")
    return B, I, Hd


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, op="lstm_cell"):
    """Returns (B, I, H), B = 1 for an unbatched x (I,)."""
    (B, I), unbatched = check_batch_optional(op, "x", x, "BI")
    return _lstm_weights(op, x, B, I, unbatched, h, c, w_ih, w_hh, b_ih, b_hh)


def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, op="lstm"):
    """Returns (T, B, I, H), B = 1 for an unbatched x (T, I)."""
    (T, B, I), unbatched = check_batch_optional(op, "x", x, "TBI", batch_axis=1)
    if T < 1:
        raise ValueError(f"{op}: x must hold at least one time step, got shape {shape_of(x)}")
    return (T,) + _lstm_weights(op, x, B, I, unbatched, h0, c0, w_ih, w_hh, b_ih, b_hh, ("h0", "c0"))


def _optional_grads(op, dtype, **grads_and_shapes):
    for name, (g, shape) in grads_and_shapes.items():
        if g is None:
            continue
        check_array(op, name, g)
        if tuple(g.shape) != tuple(shape):
            raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {shape_of(g)}")
        if g.dtype != dtype:
            raise TypeError(f"{op}: {name} is {g.dtype} but the inputs are {dtype}")


def lstm_cell_backward(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh):
    op = "lstm_cell_backward"
    B, I, Hd = lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, op=op)
    state = without_batch((B, Hd), x.ndim == 1)
    _optional_grads(op, x.dtype, grad_h=(grad_h, state), grad_c=(grad_c, state))
    return B, I, Hd


def lstm_backward(grad_out, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    op = "lstm_backward"
    T, B, I, Hd = lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, op=op)
    unbatched = x.ndim == 2
    state = without_batch((B, Hd), unbatched)
    _optional_grads(
        op, x.dtype, grad_out=(grad_out, without_batch((T, B, Hd), unbatched, 1)),
        grad_hT=(grad_hT, state), grad_cT=(grad_cT, state),
    )
    return T, B, I, Hd


RNN_NONLINEARITIES = ("tanh", "relu")


def rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, op="rnn_cell"):
    """Returns (B, I, H), B = 1 for an unbatched x (I,). h may be None (a zero state)."""
    if nonlinearity not in RNN_NONLINEARITIES:
        raise ValueError(f"{op}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    (B, _), _ = check_batch_optional(op, "x", x, "BI")
    check_array(op, "w_ih", w_ih)
    check_array(op, "w_hh", w_hh)
    check_array(op, "h", h, allow_none=True)
    check_array(op, "b_ih", b_ih, allow_none=True)
    check_array(op, "b_hh", b_hh, allow_none=True)
    check_float_dtypes(op, x=x, h=h, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    xs, ws = tuple(x.shape), tuple(w_ih.shape)
    if len(ws) != 2 or xs[-1] != ws[1]:
        raise ValueError(f"{op}: x of shape {xs} does not fit w_ih of shape {ws} (need x "
                         "(B, input_size) or (input_size,) and w_ih (hidden_size, input_size))")
    Hd = ws[0]
    if tuple(w_hh.shape) != (Hd, Hd):
        raise ValueError(f"{op}: w_hh must have shape ({Hd}, {Hd}) to match w_ih {ws}, "
                         f"got {shape_of(w_hh)}")
    if h is not None and tuple(h.shape) != xs[:-1] + (Hd,):
        raise ValueError(f"{op}: h must have shape {xs[:-1] + (Hd,)} for x of shape {xs}, "
                         f"got {shape_of(h)}")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and tuple(b.shape) != (Hd,):
            raise ValueError(f"{op}: {name} must have shape ({Hd},), got {shape_of(b)}")
    if min(B, ws[1], Hd) < 1:
        raise ValueError(f"{op}: empty input (x.shape={xs}, w_ih.shape={ws})")
    return B, ws[1], Hd


def rnn_cell_backward(grad_h, x, h, h_new, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    op = "rnn_cell_backward"
    B, I, Hd = rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity, op=op)
    state = without_batch((B, Hd), x.ndim == 1)
    check_array(op, "grad_h", grad_h)
    check_array(op, "h_new", h_new)
    _optional_grads(op, x.dtype, grad_h=(grad_h, state), h_new=(h_new, state))
    return B, I, Hd
