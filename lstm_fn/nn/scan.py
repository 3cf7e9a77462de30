"""One layer over time, as :func:`lstm_fn.nn.model.forward` takes it: a :class:`LayerPass`.

:data:`SCAN` is the plain form (the input projection of all steps as one matmul, then
``lax.scan`` of the cell's step), differentiated by ``jax.grad``; :data:`TRACED` computes
the same numbers and also returns every step's states and gates.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
from jax import lax

from lstm_fn.nn.cells import get_cell
from lstm_fn.nn.precision import lowered, matmul


class LayerPass(NamedTuple):
    """How each layer of the stack runs over time.

    - ``project(xs [T, B, In], w_x [In, G*H], precision) -> [T, B, G*H]``: ``xs @ w_x``.
    - ``recur(cell, p, gxs [T, B, G*H], carry, precision) -> (hs [T, B, H], carry, trace)``:
      the recurrence on ``gxs`` (``b_x`` not yet added); ``trace`` is None or a dict of
      per-step arrays ``[T, B, H]`` (states and gates).
    - ``table``: whether the first layer's projection may be read from the ``[V, G*H]``
      table ``embed @ w_x`` (when ``V <= T*B``, as it is for characters) instead of
      computed for every position.
    """

    project: Callable
    recur: Callable
    table: bool = False


def scan_recurrence(cell: str, p: dict, gxs: jax.Array, carry,
                    precision: str = "float32") -> tuple[jax.Array, tuple, None]:
    """``lax.scan`` of the cell's step over ``gxs + b_x [T, B, G*H]``; returns
    ``(hs [T, B, H], final carry, None)``. The recurrent weights are cast once, outside the
    loop."""
    step = get_cell(cell).step
    gxs = gxs + p["b_x"]
    p = {**p, "w_h": lowered(p["w_h"], precision)}
    carry, hs = lax.scan(lambda c, gx: step(p, c, gx, precision), carry, gxs)
    return hs, carry, None


def traced_recurrence(cell: str, p: dict, gxs: jax.Array, carry,
                      precision: str = "float32") -> tuple[jax.Array, tuple, dict]:
    """:func:`scan_recurrence` that also returns, for every step, the carry's parts (``h``,
    and ``c`` for lstm) and the activated gates by name (``i, f, g, o`` for lstm,
    ``r, z, n`` for gru), each ``[T, B, H]``."""
    math = get_cell(cell)
    w_h = lowered(p["w_h"], precision)

    def step(carry, gx):
        carry, h, saved = math.forward(carry, gx + p["b_x"], matmul(carry.h, w_h, precision)
                                       + p["b_h"])
        return carry, (h, {**carry._asdict(), **math.gates(saved)})

    carry, (hs, trace) = lax.scan(step, carry, gxs)
    return hs, carry, trace


SCAN = LayerPass(matmul, scan_recurrence)
TRACED = LayerPass(matmul, traced_recurrence)


def nudged(offsets: jax.Array) -> LayerPass:
    """:data:`SCAN` with ``offsets [T, B, H]`` added to each step's ``h``, where it feeds
    both the layer above and the next step: the gradient with respect to the offsets (at
    zero) is the total ``dL/dh_t`` of that layer."""
    def recur(cell: str, p: dict, gxs: jax.Array, carry, precision: str = "float32"):
        step = get_cell(cell).step
        w = {**p, "w_h": lowered(p["w_h"], precision)}

        def body(carry, inputs):
            gx, offset = inputs
            carry, h = step(w, carry, gx + p["b_x"], precision)
            h = h + offset
            return carry._replace(h=h), h

        carry, hs = lax.scan(body, carry, (gxs, offsets))
        return hs, carry, None

    return LayerPass(matmul, recur)
