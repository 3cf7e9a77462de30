"""One time step of each cell, forward and backward, written out by hand in numpy.

Only the math differs per cell: the time loop, the stacking and the loss live in
``model.py`` and take a cell's two functions from ``REGISTRY``. Each cell provides

- ``step(p, carry, gx) -> (carry', h', cache)``: ``p`` one layer's params, ``carry`` a tuple
  of [B, H] arrays named by ``spec.CARRY[cell]`` (``h`` always first), ``gx = x @ w_x + b_x``
  [B, G*H] the input part of the gates (the caller computes it for all steps at once).
- ``backward(p, cache, dcarry', grads) -> (dcarry, dgx)``: ``dcarry'`` is dL/d(carry') whose
  ``h`` entry already holds the *total* dL/dh' (from the layer above and from step t+1).
  Returns dL/d(carry) (same tuple layout) and dL/dgx [B, G*H]; adds dL/dw_h and dL/db_h
  into ``grads`` (that layer's grads dict) in place.

Gate blocks are cut with ``spec.gate_slice``, so the order i, f, g, o / r, z, n is stated once.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from . import spec


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, written via tanh so large |x| never overflows ``exp``."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def split_gates(cell: str, a: np.ndarray) -> dict[str, np.ndarray]:
    """Cut a [B, G*H] array into its named gate blocks, each [B, H]."""
    hidden_size = a.shape[-1] // spec.num_gates(cell)
    return {g: a[..., spec.gate_slice(cell, g, hidden_size)] for g in spec.GATES[cell]}


def join_gates(cell: str, blocks: dict[str, np.ndarray]) -> np.ndarray:
    """Inverse of ``split_gates``: named [B, H] blocks -> [B, G*H] in gate order."""
    return np.concatenate([blocks[g] for g in spec.GATES[cell]], axis=-1)


def _accumulate_hidden_matmul(p, grads, h, dgh):
    """Backprop through gh = h @ w_h + b_h: add dw_h, db_h into grads, return dL/dh [B, H]."""
    grads["w_h"] += h.T @ dgh
    grads["b_h"] += dgh.sum(axis=0)
    return dgh @ p["w_h"].T


# ---------------------------------------------------------------------------------- rnn


def rnn_step(p, carry, gx):
    """h' = tanh(gx + h @ w_h + b_h)."""
    (h,) = carry
    h_next = np.tanh(gx + h @ p["w_h"] + p["b_h"])
    return (h_next,), h_next, (h, h_next)


def rnn_backward(p, cache, dcarry, grads):
    """Backward of ``rnn_step``."""
    h, h_next = cache
    (dh_next,) = dcarry
    # h' = tanh(a)  =>  da = dh' * (1 - h'^2)
    da = dh_next * (1.0 - h_next**2)
    # a = gx + h @ w_h + b_h: gx gets da unchanged, h and w_h through the matmul
    dh = _accumulate_hidden_matmul(p, grads, h, da)
    return (dh,), da


# --------------------------------------------------------------------------------- lstm


def lstm_step(p, carry, gx):
    """c' = sigmoid(a_f) * c + sigmoid(a_i) * tanh(a_g);  h' = sigmoid(a_o) * tanh(c')."""
    h, c = carry
    a = split_gates("lstm", gx + h @ p["w_h"] + p["b_h"])
    i, f, g, o = sigmoid(a["i"]), sigmoid(a["f"]), np.tanh(a["g"]), sigmoid(a["o"])
    c_next = f * c + i * g
    tanh_c = np.tanh(c_next)
    h_next = o * tanh_c
    return (h_next, c_next), h_next, (h, c, i, f, g, o, tanh_c)


def lstm_backward(p, cache, dcarry, grads):
    """Backward of ``lstm_step``."""
    h, c, i, f, g, o, tanh_c = cache
    dh_next, dc_next = dcarry
    # h' = o * tanh(c'): the output gate sees tanh(c')
    do = dh_next * tanh_c
    # ... and c' gets dh' through tanh, on top of what step t+1 sent back through its carry
    dc = dc_next + dh_next * o * (1.0 - tanh_c**2)
    # c' = f * c + i * g: each factor gets dc times the other
    df = dc * c
    di = dc * g
    dg = dc * i
    dc_prev = dc * f
    # gates are sigmoid (i, f, o) or tanh (g) of their pre-activations
    da = join_gates(
        "lstm",
        {
            "i": di * i * (1.0 - i),
            "f": df * f * (1.0 - f),
            "g": dg * (1.0 - g**2),
            "o": do * o * (1.0 - o),
        },
    )  # [B, 4H]
    # a = gx + h @ w_h + b_h
    dh = _accumulate_hidden_matmul(p, grads, h, da)
    return (dh, dc_prev), da


# ---------------------------------------------------------------------------------- gru


def gru_step(p, carry, gx):
    """r, z = sigmoid(gx + gh) blocks;  n = tanh(gx_n + r * gh_n);  h' = (1 - z) * n + z * h.

    ``gh = h @ w_h + b_h``: the reset gate multiplies the hidden matmul *after* it, with
    b_hn inside, as in PyTorch's nn.GRU.
    """
    (h,) = carry
    x = split_gates("gru", gx)
    gh = split_gates("gru", h @ p["w_h"] + p["b_h"])
    r = sigmoid(x["r"] + gh["r"])
    z = sigmoid(x["z"] + gh["z"])
    n = np.tanh(x["n"] + r * gh["n"])
    h_next = (1.0 - z) * n + z * h
    return (h_next,), h_next, (h, r, z, n, gh["n"])


def gru_backward(p, cache, dcarry, grads):
    """Backward of ``gru_step``."""
    h, r, z, n, gh_n = cache
    (dh_next,) = dcarry
    # h' = (1 - z) * n + z * h: mix of candidate and old state
    dn = dh_next * (1.0 - z)
    dz = dh_next * (h - n)
    dh = dh_next * z
    # n = tanh(gx_n + r * gh_n)
    dan = dn * (1.0 - n**2)
    # r scales gh_n, so gh_n gets dan * r and r gets dan * gh_n
    dgh_n = dan * r
    dr = dan * gh_n
    # r, z are sigmoids of (gx + gh) blocks
    dar = dr * r * (1.0 - r)
    daz = dz * z * (1.0 - z)
    dgx = join_gates("gru", {"r": dar, "z": daz, "n": dan})  # [B, 3H]
    dgh = join_gates("gru", {"r": dar, "z": daz, "n": dgh_n})  # [B, 3H]
    # gh = h @ w_h + b_h; h also reached h' directly through z * h
    dh = dh + _accumulate_hidden_matmul(p, grads, h, dgh)
    return (dh,), dgx


class Cell(NamedTuple):
    """A cell's forward step and its hand-written backward (contracts in the module doc)."""

    step: Callable
    backward: Callable


REGISTRY: dict[str, Cell] = {
    "rnn": Cell(rnn_step, rnn_backward),
    "lstm": Cell(lstm_step, lstm_backward),
    "gru": Cell(gru_step, gru_backward),
}


def get_cell(name: str) -> Cell:
    """The registered cell ``name``; ValueError (from spec) for an unknown name."""
    spec.num_gates(name)
    return REGISTRY[name]
