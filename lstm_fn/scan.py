"""One recurrent layer over time: the input projection for all steps, then ``lax.scan``."""

from __future__ import annotations

import jax
from jax import lax

from lstm_fn.cells import get_cell, lowered, matmul


def layer_scan(cell: str, p: dict, xs: jax.Array, carry,
               precision: str = "float32") -> tuple[jax.Array, tuple]:
    """Run one layer of ``cell`` over a time-major sequence.

    The input projection ``x @ w_x + b_x`` of all T steps is one matmul before the scan, so
    only the recurrent product stays inside the sequential loop.

    Args:
      cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
      p: layer params ``w_x [In, G*H]``, ``w_h [H, G*H]``, ``b_x``, ``b_h [G*H]``.
      xs: inputs ``[T, B, In]`` (time-major).
      carry: the layer's initial state (NamedTuple of ``[B, H]``).
      precision: of the matmuls' operands, ``"float32"`` or ``"bfloat16"``
        (:func:`lstm_fn.cells.matmul`).

    Returns:
      ``(hs, carry)``: hidden outputs ``[T, B, H]`` and the state after the last step.
    """
    step = get_cell(cell).step
    gxs = matmul(xs, p["w_x"], precision) + p["b_x"]  # [T, B, G*H]
    p = {**p, "w_h": lowered(p["w_h"], precision)}  # cast once, not every step
    carry, hs = lax.scan(lambda c, gx: step(p, c, gx, precision), carry, gxs)
    return hs, carry
