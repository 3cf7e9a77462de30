"""The recurrent cells: one time step's math forward and backward, their carries, their
parameter init, and the registry by name (:data:`CELLS`). Only this math differs per cell;
the scans, the stack, the loss, training, sampling and export are written once.

A cell's step has the contract ``step(p, carry, gx) -> (carry, h)`` that ``lax.scan`` wants:

- ``p``: the layer's params; the step reads ``w_h [H, G*H]`` and ``b_h [G*H]``.
- ``carry``: the layer's state, a small NamedTuple of ``[B, H]`` arrays
  (``HiddenState(h)`` for rnn and gru, ``LSTMState(h, c)`` for lstm).
- ``gx``: ``x @ w_x + b_x`` for this step, ``[B, G*H]``, computed for all steps at once by
  the caller.

Gate order and equations are those of :mod:`reference_numpy.spec` (PyTorch's, transposed).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lstm_fn.nn.precision import matmul
from reference_numpy import spec


class HiddenState(NamedTuple):
    """Carry of the rnn and gru cells."""

    h: jax.Array  # [B, H]


class LSTMState(NamedTuple):
    """Carry of the lstm cell: hidden output and cell memory."""

    h: jax.Array  # [B, H]
    c: jax.Array  # [B, H]


def split_gates(cell: str, a: jax.Array) -> list[jax.Array]:
    """``[.., G*H]`` -> the G gate blocks ``[.., H]`` in spec order."""
    return jnp.split(a, spec.num_gates(cell), axis=-1)


# forward(carry, gx, gh) -> (carry', h', saved): the math of one step given both projections
#   with their biases, gx = x @ w_x + b_x and gh = h @ w_h + b_h, each [B, G*H]; ``saved`` is
#   what the backward needs (activated gates, not pre-activations).
# backward(saved, h_prev, h, dcarry) -> (dcarry_prev, dgx, dgh): dcarry holds the *total*
#   dL/d carry' (``h`` from the layer above and from step t+1); dcarry_prev leaves out the
#   path through gh = h_prev @ w_h, which the caller adds; dgh None means dgh == dgx.


def rnn_forward(carry: HiddenState, gx: jax.Array, gh: jax.Array):
    """Elman: ``h' = tanh(gx + gh)``."""
    h = jnp.tanh(gx + gh)
    return HiddenState(h), h, ()


def rnn_backward(saved, h_prev, h, dcarry):
    da = dcarry.h * (1.0 - h * h)  # h' = tanh(a)
    return HiddenState(jnp.zeros_like(h_prev)), da, None


def lstm_forward(carry: LSTMState, gx: jax.Array, gh: jax.Array):
    """LSTM, gates i, f, g, o of ``a = gx + gh``:
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``.
    Saves the activated gates ``[B, 4H]`` and ``c``."""
    i, f, g, o = split_gates("lstm", gx + gh)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c = f * carry.c + i * g
    h = o * jnp.tanh(c)
    return LSTMState(h, c), h, (jnp.concatenate([i, f, g, o], axis=-1), carry.c)


def lstm_backward(saved, h_prev, h, dcarry):
    gates, c_prev = saved  # [B, 4H], [B, H]
    i, f, g, o = split_gates("lstm", gates)
    tanh_c = jnp.tanh(f * c_prev + i * g)  # recomputed: cheaper than stacking it
    dc = dcarry.c + dcarry.h * o * (1.0 - tanh_c * tanh_c)  # h' = o * tanh(c')
    da = jnp.concatenate([
        dc * g * i * (1.0 - i),  # c' = f c + i g, and each gate is sigmoid / tanh of a
        dc * c_prev * f * (1.0 - f),
        dc * i * (1.0 - g * g),
        dcarry.h * tanh_c * o * (1.0 - o),
    ], axis=-1)  # [B, 4H]
    return LSTMState(jnp.zeros_like(h_prev), dc * f), da, None


def gru_forward(carry: HiddenState, gx: jax.Array, gh: jax.Array):
    """GRU (PyTorch's variant, reset applied after the hidden matmul), gates r, z, n:
    ``n = tanh(gx_n + r * gh_n)``, ``h' = (1 - z) * n + z * h``. Saves ``r, z, n, gh_n``."""
    x_r, x_z, x_n = split_gates("gru", gx)
    h_r, h_z, h_n = split_gates("gru", gh)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * carry.h
    return HiddenState(h), h, (r, z, n, h_n)


def gru_backward(saved, h_prev, h, dcarry):
    r, z, n, h_n = saved
    dh = dcarry.h
    dan = dh * (1.0 - z) * (1.0 - n * n)  # h' = (1 - z) n + z h,  n = tanh(a_n)
    dar = dan * h_n * r * (1.0 - r)  # a_n = gx_n + r * gh_n
    daz = dh * (h_prev - n) * z * (1.0 - z)
    dgx = jnp.concatenate([dar, daz, dan], axis=-1)  # [B, 3H]
    dgh = jnp.concatenate([dar, daz, dan * r], axis=-1)  # [B, 3H]
    return HiddenState(dh * z), dgx, dgh


class Cell(NamedTuple):
    """A registry entry: a cell's step math, its hand-written backward, its carry type, how
    to name its saved gates, and whether the hand-written BPTT's scans read each step's
    inputs from the loop carry (``lstm_fn.nn.bptt``: faster for the lstm on XLA's CPU
    backend, slower for the others)."""

    forward: Callable
    backward: Callable
    state: type
    gates: Callable  # saved -> {gate name: activation [.., H]}
    prefetch: bool = False

    def step(self, p: dict, carry, gx: jax.Array, precision: str = "float32"):
        """``step(p, carry, gx) -> (carry, h)``: the recurrent product (in ``precision``, see
        :func:`lstm_fn.nn.precision.matmul`), then the math."""
        carry, h, _ = self.forward(carry, gx, matmul(carry.h, p["w_h"], precision) + p["b_h"])
        return carry, h


def _named(cell: str, blocks) -> dict[str, jax.Array]:
    return dict(zip(spec.GATES[cell], blocks))


CELLS: dict[str, Cell] = {
    "rnn": Cell(rnn_forward, rnn_backward, HiddenState, lambda saved: {}),
    "lstm": Cell(lstm_forward, lstm_backward, LSTMState,
                 lambda saved: _named("lstm", split_gates("lstm", saved[0])), prefetch=True),
    "gru": Cell(gru_forward, gru_backward, HiddenState, lambda saved: _named("gru", saved[:3])),
}
assert tuple(CELLS) == spec.CELLS
assert all(CELLS[name].state._fields == spec.CARRY[name] for name in spec.CELLS)


def get_cell(name: str) -> Cell:
    """Registry lookup; ValueError naming the valid cells."""
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
    drawn = jnp.promote_types(dtype, jnp.float32)  # the QR has no bfloat16/float16 kernel
    w_h = jnp.concatenate([ortho(k, (hidden_size, hidden_size), drawn)
                           for k in jax.random.split(kh, G)], axis=1).astype(dtype)
    b_x = jnp.zeros((G * hidden_size,), dtype)
    if cell == "lstm":
        b_x = b_x.at[spec.gate_slice("lstm", "f", hidden_size)].set(spec.LSTM_FORGET_BIAS)
    return {"w_x": w_x, "w_h": w_h, "b_x": b_x, "b_h": jnp.zeros((G * hidden_size,), dtype)}
