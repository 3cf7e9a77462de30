"""Hand-written backpropagation through time: the recurrence as a ``jax.custom_vjp``.

The twin of :mod:`reference_numpy.cells` in JAX, and the fast path of training
(``TrainConfig(gradients="manual")``). Only the math differs per cell (:data:`MATH`: the
cells' own forward from :mod:`lstm_fn.cells`, and a backward here); the scans and the
weight gradients are written once:

- forward: ``gx_t = x_t @ w_x`` for all steps at once (one matmul), then a ``lax.scan``
  whose step adds ``b_x``, computes ``gh_t = h_{t-1} @ w_h + b_h`` and the cell, and stacks
  what the backward needs (gate activations, not pre-activations).
- backward: a reverse ``lax.scan`` carries ``dL/d carry`` and emits ``dgx_t`` (and ``dgh_t``
  where it differs, in the gru); only ``dh_{t-1} += dgh_t @ w_h^T`` stays in the sequential
  loop. After it, each gradient is ONE matmul or sum over all ``T*B`` rows:
  ``dw_h = sum_t h_{t-1}^T dgh_t``, ``db_x = sum dgx``, ``db_h = sum dgh``, and in the
  input projection (:func:`project`) ``dw_x = sum_t x_t^T dgx_t``, ``dxs = dgx @ w_x^T``.

The final carry is returned, so its cotangent (zero in training, not in general) starts the
reverse scan; the gradient w.r.t. the initial carry is what that scan ends with. Gate order
is :data:`reference_numpy.spec.GATES`, cut with ``jnp.split``.

Speed notes (measured on CPU, see ``benchmarks/README.md``): the lstm's scans read step t's
inputs from the loop carry, sliced one step ahead (:func:`_scan`), and the first layer's
projection is a row lookup in ``embed @ w_x`` (``[V, G*H]``), not a ``[T*B, E]`` matmul.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lstm_fn.cells import CELLS, HiddenState, LSTMState, lowered, matmul, split_gates
from lstm_fn.model import ModelConfig, checked_tokens, cross_entropy, layer_states
from reference_numpy import spec


# -------------------------------------------------------------------------- per-cell math
# forward: lstm_fn.cells (rnn|lstm|gru)_forward(carry, gx, gh) -> (carry', h', saved); the
#   scan stacks ``saved`` over time for the backward.
# backward(saved, h_prev, h, dcarry) -> (dcarry_prev, dgx, dgh):  dcarry holds the *total*
#   dL/d carry' (``h`` from the layer above and from step t+1); dcarry_prev leaves out the
#   path through ``gh = h_prev @ w_h``, which the caller adds; dgh None means dgh == dgx.


def _rnn_backward(saved, h_prev, h, dcarry):
    da = dcarry.h * (1.0 - h * h)  # h' = tanh(a)
    return HiddenState(jnp.zeros_like(h_prev)), da, None


def _lstm_backward(saved, h_prev, h, dcarry):
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


def _gru_backward(saved, h_prev, h, dcarry):
    r, z, n, h_n = saved
    dh = dcarry.h
    dan = dh * (1.0 - z) * (1.0 - n * n)  # h' = (1 - z) n + z h,  n = tanh(a_n)
    dar = dan * h_n * r * (1.0 - r)  # a_n = gx_n + r * gh_n
    daz = dh * (h_prev - n) * z * (1.0 - z)
    dgx = jnp.concatenate([dar, daz, dan], axis=-1)  # [B, 3H]
    dgh = jnp.concatenate([dar, daz, dan * r], axis=-1)  # [B, 3H]
    return HiddenState(dh * z), dgx, dgh


class CellMath(NamedTuple):
    """A cell's step, its hand-written backward (contracts above), and whether its scans
    read each step's inputs from the loop carry (:func:`_scan`): measured faster for the
    lstm, slower for rnn and gru (see ``benchmarks/README.md``)."""

    forward: Callable
    backward: Callable
    prefetch: bool


MATH: dict[str, CellMath] = {
    "rnn": CellMath(CELLS["rnn"].forward, _rnn_backward, prefetch=False),
    "lstm": CellMath(CELLS["lstm"].forward, _lstm_backward, prefetch=True),
    "gru": CellMath(CELLS["gru"].forward, _gru_backward, prefetch=False),
}
assert set(MATH) == set(spec.CELLS)


# ------------------------------------------------------------------- the scans, once


def _scan(step: Callable, carry, xs, *, reverse: bool = False, prefetch: bool = False):
    """``lax.scan(step, carry, xs, reverse=reverse)``; with ``prefetch``, step t's slice of
    ``xs`` is read from the loop carry, where step t-1 put it.

    Why: XLA's CPU backend emits scalar code for an elementwise fusion that slices a scanned
    array itself (its LLVM IR re-reads the loop index for every element), which made the
    lstm's gate math several times slower; a slice taken into the carry is a plain copy, and
    the math then reads dense buffers. For rnn and gru the extra copies cost more than that.
    """
    if not prefetch:
        return lax.scan(step, carry, xs, reverse=reverse)
    T = jax.tree.leaves(xs)[0].shape[0]

    def take(t):
        return jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, t, keepdims=False), xs)

    def body(state, t):
        carry, x = state
        carry, y = step(carry, x)
        return (carry, take(jnp.clip(t - 1 if reverse else t + 1, 0, T - 1))), y

    first = T - 1 if reverse else 0
    (carry, _), ys = lax.scan(body, (carry, take(first)), jnp.arange(T), reverse=reverse)
    return carry, ys


def _forward(cell: str, p: dict, gxs: jax.Array, carry, save: bool, precision: str):
    """Forward scan over ``gxs = xs @ w_x`` (no bias); with ``save``, also the cell's
    residuals stacked over T."""
    math = MATH[cell]
    w_h = lowered(p["w_h"], precision)

    def step(carry, gx):
        gh = matmul(carry.h, w_h, precision) + p["b_h"]
        carry, h, saved = math.forward(carry, gx + p["b_x"], gh)
        return carry, (h, saved) if save else h

    return _scan(step, carry, gxs, prefetch=math.prefetch)


def _sum_outer(a: jax.Array, b: jax.Array, precision: str) -> jax.Array:
    """``sum_t a_t^T b_t`` for ``a [T, B, I]``, ``b [T, B, G]``, one matmul.

    float32: on 2-D views, ``[T*B, I]^T x [T*B, G]``: ``einsum("tbi,tbg->ig")`` made XLA
    transpose both operands (16 MB copies for the lstm at H=256) and ran a slower dot (119
    vs 160 GFLOP/s at H=256, 81 vs 123 at H=512, CPU). bfloat16: the other way round: the
    2-D form is a dot the CPU's AMX path does not take (~20 ms at H=256, one core), the
    einsum copies bfloat16 operands into a layout it does take (~8 ms). See
    ``benchmarks/README.md``."""
    if precision == "float32":
        return matmul(a.reshape(-1, a.shape[-1]).T, b.reshape(-1, b.shape[-1]))
    return jnp.einsum("tbi,tbg->ig", lowered(a, precision), lowered(b, precision),
                      preferred_element_type=jnp.float32).astype(jnp.result_type(a, b))


@partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def recurrence(cell: str, p: dict, gxs: jax.Array, carry,
               precision: str = "float32") -> tuple[jax.Array, tuple]:
    """The recurrent part of a layer, with a hand-written backward.

    Args:
      cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
      p: ``w_h [H, G*H]``, ``b_x [G*H]``, ``b_h [G*H]`` (``w_x`` is not used here).
      gxs: the input projection ``xs @ w_x`` without its bias, ``[T, B, G*H]``.
      carry: initial state, ``HiddenState(h)`` or ``LSTMState(h, c)``, parts ``[B, H]``.
      precision: of every matmul's operands, forward and backward: ``"float32"`` or
        ``"bfloat16"`` (:func:`lstm_fn.cells.matmul`; sums stay float32).

    Returns:
      ``(hs [T, B, H], final carry)``.
    """
    carry, hs = _forward(cell, p, gxs, carry, False, precision)
    return hs, carry


def _recurrence_fwd(cell, p, gxs, carry, precision):
    final, (hs, saved) = _forward(cell, p, gxs, carry, True, precision)
    return (hs, final), (p["w_h"], carry, hs, saved)


def _recurrence_bwd(cell, precision, residuals, cotangents):
    w_h, carry, hs, saved = residuals
    dhs, dfinal = cotangents  # [T, B, H], carry of [B, H]
    math = MATH[cell]
    h_prevs = jnp.concatenate([carry.h[None], hs[:-1]])  # [T, B, H]
    w_h_t = lowered(w_h, precision).T  # [G*H, H]

    def step(dcarry, inputs):
        saved_t, h_prev, h, dh_above = inputs
        dcarry = dcarry._replace(h=dcarry.h + dh_above)
        dprev, dgx, dgh = math.backward(saved_t, h_prev, h, dcarry)
        dprev = dprev._replace(
            h=dprev.h + matmul(dgx if dgh is None else dgh, w_h_t, precision))
        return dprev, (dgx if dgh is None else (dgx, dgh))

    dcarry, out = _scan(step, dfinal, (saved, h_prevs, hs, dhs), reverse=True,
                        prefetch=math.prefetch)
    dgxs, dghs = out if isinstance(out, tuple) else (out, out)  # [T, B, G*H] each
    grads = {"w_h": _sum_outer(h_prevs, dghs, precision),
             "b_x": dgxs.sum(axis=(0, 1)), "b_h": dghs.sum(axis=(0, 1))}
    return grads, dgxs, dcarry


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _recurrent_params(p: dict) -> dict:
    return {k: p[k] for k in ("w_h", "b_x", "b_h")}


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(xs: jax.Array, w_x: jax.Array, precision: str = "float32") -> jax.Array:
    """``xs [T, B, In] @ w_x [In, G*H]``; backward ``dxs = dgx @ w_x^T`` and
    ``dw_x = sum_t xs_t^T dgx_t``, one matmul each (written out: the products JAX derives
    by itself ran as a slow generic dot plus a transpose on CPU)."""
    return matmul(xs, w_x, precision)


def _project_fwd(xs, w_x, precision):
    return matmul(xs, w_x, precision), (xs, w_x)


def _project_bwd(precision, residuals, dgxs):
    xs, w_x = residuals
    return matmul(dgxs, w_x.T, precision), _sum_outer(xs, dgxs, precision)


project.defvjp(_project_fwd, _project_bwd)


def manual_layer(cell: str, p: dict, xs: jax.Array, carry,
                 precision: str = "float32") -> tuple[jax.Array, tuple]:
    """One layer over time, same values as :func:`lstm_fn.scan.layer_scan`, differentiated
    through :func:`recurrence`.

    Args:
      p: layer params ``w_x [In, G*H]``, ``w_h [H, G*H]``, ``b_x``, ``b_h [G*H]``.
      xs: inputs ``[T, B, In]`` (time-major).
      carry: initial state, parts ``[B, H]``.
      precision: of the matmuls' operands (see :func:`recurrence`).

    Returns:
      ``(hs [T, B, H], final carry)``.
    """
    gxs = project(xs, p["w_x"], precision)
    return recurrence(cell, _recurrent_params(p), gxs, carry, precision)


# ------------------------------------------------------------------------ the model


def manual_apply(params: dict, cell: str, tokens: jax.Array, carry: tuple | None,
                 masks: list[jax.Array] | None = None,
                 precision: str = "float32") -> tuple[jax.Array, tuple]:
    """The stacked layers on token ids; no ``ModelConfig`` needed.

    The first layer's projection ``embed[tokens] @ w_x`` is read from the ``[V, G*H]``
    table ``embed @ w_x`` (its gradient: a scatter-add into ``V`` rows, then two small
    matmuls) when ``V <= T*B``, as it is for characters.

    Args:
      params: the params tree of :mod:`lstm_fn.model`.
      cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
      tokens: int ``[B, T]``.
      carry: one state per layer, parts ``[B, H]`` (None: zeros).
      masks: optional dropout masks, one ``[B, T, H]`` per layer, multiplying its output.
      precision: of the matmuls' operands (see :func:`recurrence`).

    Returns:
      ``(top layer's outputs [T, B, H], tuple of final states)``.
    """
    tokens = checked_tokens(tokens, params["embed"].shape[0])
    carry = layer_states(cell, params, tokens.shape[0], carry)
    embed, w_x = params["embed"], params["layers"][0]["w_x"]
    if embed.shape[0] <= tokens.size:
        gxs = matmul(embed, w_x, precision)[tokens.T]  # [T, B, G*H]
    else:
        gxs = project(embed[tokens.T], w_x, precision)
    new_carry = []
    for l, p in enumerate(params["layers"]):
        if l > 0:
            gxs = project(xs, p["w_x"], precision)
        xs, c = recurrence(cell, _recurrent_params(p), gxs, carry[l], precision)  # [T, B, H]
        if masks is not None:
            xs = xs * jnp.swapaxes(masks[l], 0, 1)
        new_carry.append(c)
    return xs, tuple(new_carry)


def manual_loss(params: dict, cfg: ModelConfig, tokens: jax.Array, targets: jax.Array,
                carry: tuple | None = None, *, dropout_masks: list[jax.Array] | None = None,
                mask: jax.Array | None = None, precision: str = "float32") -> tuple[jax.Array, tuple]:
    """:func:`lstm_fn.model.loss` (the same arguments and values) with the hand-written
    backward of the recurrences.

    Args:
      params: the params tree of :mod:`lstm_fn.model`.
      cfg: the architecture (only ``cell`` is read; shapes come from ``params``).
      tokens, targets: int32 ``[B, T]``.
      carry: per-layer initial states, parts ``[B, H]`` (None: zeros).
      dropout_masks: optional, one ``[B, T, H]`` per layer.
      mask: optional float ``[B, T]`` weights of each position.
      precision: of the matmuls' operands (see :func:`recurrence`).

    Returns:
      ``(mean cross-entropy in nats per character, final carry)``.
    """
    top, carry = manual_apply(params, cfg.cell, tokens, carry, dropout_masks, precision)
    logits = matmul(jnp.swapaxes(top, 0, 1), params["head"]["w"], precision) + params["head"]["b"]
    return cross_entropy(logits, targets, mask), carry
