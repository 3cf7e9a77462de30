"""One time step of each recurrent cell, their parameter init, and the registry by name.

Every cell has the contract ``step(p, carry, gx) -> (carry, h)`` that ``lax.scan`` wants:

- ``p``: the layer's params; the step reads ``w_h [H, G*H]`` and ``b_h [G*H]``.
- ``carry``: the layer's state, a small NamedTuple of ``[B, H]`` arrays
  (``HiddenState(h)`` for rnn and gru, ``LSTMState(h, c)`` for lstm).
- ``gx``: ``x @ w_x + b_x`` for this step, ``[B, G*H]``, computed for all steps at once
  by :mod:`lstm_fn.scan`.

Gate order and equations are those of :mod:`reference_numpy.spec` (PyTorch's, transposed).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from reference_numpy import spec


class HiddenState(NamedTuple):
    """Carry of the rnn and gru cells."""

    h: jax.Array  # [B, H]


class LSTMState(NamedTuple):
    """Carry of the lstm cell: hidden output and cell memory."""

    h: jax.Array  # [B, H]
    c: jax.Array  # [B, H]


def _gates(cell: str, a: jax.Array) -> dict[str, jax.Array]:
    """Split ``[.., G*H]`` pre-activations into named ``[.., H]`` blocks in spec order."""
    return dict(zip(spec.GATES[cell], jnp.split(a, spec.num_gates(cell), axis=-1)))


def rnn_step(p: dict, carry: HiddenState, gx: jax.Array) -> tuple[HiddenState, jax.Array]:
    """Elman step: ``h' = tanh(gx + h @ w_h + b_h)``."""
    h = jnp.tanh(gx + carry.h @ p["w_h"] + p["b_h"])
    return HiddenState(h), h


def lstm_step(p: dict, carry: LSTMState, gx: jax.Array) -> tuple[LSTMState, jax.Array]:
    """LSTM step, gates i, f, g, o:
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``."""
    a = _gates("lstm", gx + carry.h @ p["w_h"] + p["b_h"])
    c = jax.nn.sigmoid(a["f"]) * carry.c + jax.nn.sigmoid(a["i"]) * jnp.tanh(a["g"])
    h = jax.nn.sigmoid(a["o"]) * jnp.tanh(c)
    return LSTMState(h, c), h


def gru_step(p: dict, carry: HiddenState, gx: jax.Array) -> tuple[HiddenState, jax.Array]:
    """GRU step (PyTorch variant, reset applied after the hidden matmul), gates r, z, n:
    ``n = tanh(gx_n + r * (h w_hn + b_hn))``, ``h' = (1 - z) * n + z * h``."""
    x = _gates("gru", gx)
    hh = _gates("gru", carry.h @ p["w_h"] + p["b_h"])
    r = jax.nn.sigmoid(x["r"] + hh["r"])
    z = jax.nn.sigmoid(x["z"] + hh["z"])
    n = jnp.tanh(x["n"] + r * hh["n"])
    h = (1.0 - z) * n + z * carry.h
    return HiddenState(h), h


class Cell(NamedTuple):
    """A registry entry: the step function and the carry type of one cell."""

    step: Callable
    state: type


CELLS: dict[str, Cell] = {
    "rnn": Cell(rnn_step, HiddenState),
    "lstm": Cell(lstm_step, LSTMState),
    "gru": Cell(gru_step, HiddenState),
}
assert all(CELLS[name].state._fields == spec.CARRY[name] for name in spec.CELLS)


def get_cell(name: str) -> Cell:
    """Registry lookup with an error naming the valid cells."""
    spec.num_gates(name)  # raises for an unknown name
    return CELLS[name]


def zero_state(cell: str, batch_size: int, hidden_size: int, dtype=jnp.float32):
    """All-zero carry of one layer, each part ``[B, H]``."""
    state = get_cell(cell).state
    return state(*(jnp.zeros((batch_size, hidden_size), dtype) for _ in state._fields))


def init_layer(key: jax.Array, cell: str, input_size: int, hidden_size: int,
               dtype=jnp.float32) -> dict[str, jax.Array]:
    """Parameters of one layer: ``w_x [In, G*H]``, ``w_h [H, G*H]``, ``b_x``, ``b_h [G*H]``.

    ``w_x`` is uniform in ``±1/sqrt(H)`` (PyTorch's default); each gate block of ``w_h`` is an
    orthogonal ``[H, H]`` matrix, so repeated products neither blow up nor vanish at the
    start. Biases are zero except the LSTM forget gate in ``b_x`` (``spec.LSTM_FORGET_BIAS``),
    which lets the memory persist from the first step on.
    """
    G = spec.num_gates(cell)
    kx, kh = jax.random.split(key)
    bound = 1.0 / hidden_size**0.5
    w_x = jax.random.uniform(kx, (input_size, G * hidden_size), dtype, -bound, bound)
    ortho = jax.nn.initializers.orthogonal()
    w_h = jnp.concatenate(
        [ortho(k, (hidden_size, hidden_size), dtype) for k in jax.random.split(kh, G)], axis=1)
    b_x = jnp.zeros((G * hidden_size,), dtype)
    if cell == "lstm":
        b_x = b_x.at[spec.gate_slice("lstm", "f", hidden_size)].set(spec.LSTM_FORGET_BIAS)
    return {"w_x": w_x, "w_h": w_h, "b_x": b_x, "b_h": jnp.zeros((G * hidden_size,), dtype)}
