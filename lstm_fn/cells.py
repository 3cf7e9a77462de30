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
from jax import lax

from reference_numpy import spec


class HiddenState(NamedTuple):
    """Carry of the rnn and gru cells."""

    h: jax.Array  # [B, H]


class LSTMState(NamedTuple):
    """Carry of the lstm cell: hidden output and cell memory."""

    h: jax.Array  # [B, H]
    c: jax.Array  # [B, H]


def lowered(w: jax.Array, precision: str) -> jax.Array:
    """``w`` as a matmul operand: unchanged for ``"float32"`` (full precision, whatever the
    params' dtype), rounded to bfloat16 for ``"bfloat16"``. Weights are cast once, outside a
    scan, with this."""
    if precision not in spec.MATMUL_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(spec.MATMUL_PRECISIONS)}, "
                         f"got {precision!r}")
    return w if precision == "float32" else w.astype(jnp.bfloat16)


def matmul(a: jax.Array, b: jax.Array, precision: str = "float32") -> jax.Array:
    """``a @ b``. ``"float32"`` is full float32 (``Precision.HIGHEST``: on GPUs JAX's default
    would round operands to TF32). With ``"bfloat16"`` both operands are rounded to bfloat16
    and the products summed in float32 (the result has the operands' dtype): on CPUs with AMX
    and on GPUs' tensor cores such a matmul runs several times faster; the params and all
    other math keep their dtype."""
    if precision == "float32":
        return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    out = a.dtype if b.dtype == jnp.bfloat16 else jnp.result_type(a, b)  # b: maybe lowered
    return jnp.matmul(lowered(a, precision), lowered(b, precision),
                      preferred_element_type=jnp.float32).astype(out)


def split_gates(cell: str, a: jax.Array) -> list[jax.Array]:
    """``[.., G*H]`` -> the G gate blocks ``[.., H]`` in spec order."""
    return jnp.split(a, spec.num_gates(cell), axis=-1)


# forward(carry, gx, gh) -> (carry', h', saved): the math of one step given both projections
# with their biases, gx = x @ w_x + b_x and gh = h @ w_h + b_h, each [B, G*H]. ``saved`` is
# what the hand-written backward of lstm_fn.bptt needs; the plain step drops it.


def rnn_forward(carry: HiddenState, gx: jax.Array, gh: jax.Array):
    """Elman: ``h' = tanh(gx + gh)``."""
    h = jnp.tanh(gx + gh)
    return HiddenState(h), h, ()


def lstm_forward(carry: LSTMState, gx: jax.Array, gh: jax.Array):
    """LSTM, gates i, f, g, o of ``a = gx + gh``:
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``.
    Saves the activated gates ``[B, 4H]`` and ``c``."""
    i, f, g, o = split_gates("lstm", gx + gh)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c = f * carry.c + i * g
    h = o * jnp.tanh(c)
    return LSTMState(h, c), h, (jnp.concatenate([i, f, g, o], axis=-1), carry.c)


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


class Cell(NamedTuple):
    """A registry entry: the step math and the carry type of one cell."""

    forward: Callable
    state: type

    def step(self, p: dict, carry, gx: jax.Array, precision: str = "float32"):
        """``step(p, carry, gx) -> (carry, h)``: the recurrent product (in ``precision``, see
        :func:`matmul`), then the math."""
        carry, h, _ = self.forward(carry, gx, matmul(carry.h, p["w_h"], precision) + p["b_h"])
        return carry, h


CELLS: dict[str, Cell] = {
    "rnn": Cell(rnn_forward, HiddenState),
    "lstm": Cell(lstm_forward, LSTMState),
    "gru": Cell(gru_forward, HiddenState),
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
    drawn = jnp.promote_types(dtype, jnp.float32)  # the QR has no bfloat16/float16 kernel
    w_h = jnp.concatenate([ortho(k, (hidden_size, hidden_size), drawn)
                           for k in jax.random.split(kh, G)], axis=1).astype(dtype)
    b_x = jnp.zeros((G * hidden_size,), dtype)
    if cell == "lstm":
        b_x = b_x.at[spec.gate_slice("lstm", "f", hidden_size)].set(spec.LSTM_FORGET_BIAS)
    return {"w_x": w_x, "w_h": w_h, "b_x": b_x, "b_h": jnp.zeros((G * hidden_size,), dtype)}
