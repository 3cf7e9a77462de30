"""Hand-written backpropagation through time: the recurrence as a ``jax.custom_vjp``.

The twin of :mod:`reference_numpy.cells` in JAX, and the fast path of training
(``TrainConfig(gradients="manual")``), as the layer pass :data:`MANUAL` of
:func:`lstm_fn.nn.model.forward`. Only the math differs per cell (the ``forward`` and
``backward`` of :data:`lstm_fn.nn.cells.CELLS`); the scans and the weight gradients are
written once:

- forward: ``gx_t = x_t @ w_x`` for all steps at once (one matmul, or a row of the
  ``embed @ w_x`` table for the first layer), then a ``lax.scan`` whose step adds ``b_x``,
  computes ``gh_t = h_{t-1} @ w_h + b_h`` and the cell, and stacks what the backward needs.
- backward: a reverse ``lax.scan`` carries ``dL/d carry`` and emits ``dgx_t`` (and ``dgh_t``
  where it differs, in the gru); only ``dh_{t-1} += dgh_t @ w_h^T`` stays in the sequential
  loop. After it, each gradient is ONE matmul or sum over all ``T*B`` rows:
  ``dw_h = sum_t h_{t-1}^T dgh_t``, ``db_x = sum dgx``, ``db_h = sum dgh``, and in the
  input projection (:func:`project`) ``dw_x = sum_t x_t^T dgx_t``, ``dxs = dgx @ w_x^T``.

The final carry is returned, so its cotangent (zero in training, not in general) starts the
reverse scan; the gradient w.r.t. the initial carry is what that scan ends with.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from lstm_fn.nn.cells import CELLS
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.model import check_params, cross_entropy, forward
from lstm_fn.nn.precision import lowered, matmul, sum_outer
from lstm_fn.nn.scan import LayerPass


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
    math = CELLS[cell]
    w_h = lowered(p["w_h"], precision)

    def step(carry, gx):
        gh = matmul(carry.h, w_h, precision) + p["b_h"]
        carry, h, saved = math.forward(carry, gx + p["b_x"], gh)
        return carry, (h, saved) if save else h

    return _scan(step, carry, gxs, prefetch=math.prefetch)


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
        ``"bfloat16"`` (:func:`lstm_fn.nn.precision.matmul`; sums stay float32).

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
    math = CELLS[cell]
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
    grads = {"w_h": sum_outer(h_prevs, dghs, precision),
             "b_x": dgxs.sum(axis=(0, 1)), "b_h": dghs.sum(axis=(0, 1))}
    return grads, dgxs, dcarry


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(xs: jax.Array, w_x: jax.Array, precision: str = "float32") -> jax.Array:
    """``xs [T, B, In] @ w_x [In, G*H]``; backward ``dxs = dgx @ w_x^T`` and
    ``dw_x = sum_t xs_t^T dgx_t``, one matmul each (the products JAX derives by itself ran
    as a slower generic dot plus a transpose on the CPU)."""
    return matmul(xs, w_x, precision)


def _project_fwd(xs, w_x, precision):
    return matmul(xs, w_x, precision), (xs, w_x)


def _project_bwd(precision, residuals, dgxs):
    xs, w_x = residuals
    return matmul(dgxs, w_x.T, precision), sum_outer(xs, dgxs, precision)


project.defvjp(_project_fwd, _project_bwd)


def _manual_recurrence(cell: str, p: dict, gxs: jax.Array, carry, precision: str):
    recurrent = {k: p[k] for k in ("w_h", "b_x", "b_h")}
    hs, carry = recurrence(cell, recurrent, gxs, carry, precision)
    return hs, carry, None


# The layer pass of lstm_fn.nn.model.forward with the hand-written backward; the first
# layer's projection is a row of embed @ w_x (its gradient: a scatter-add into V rows,
# then two small matmuls) where V <= T*B.
MANUAL = LayerPass(project, _manual_recurrence, table=True)


def manual_layer(cell: str, p: dict, xs: jax.Array, carry,
                 precision: str = "float32") -> tuple[jax.Array, tuple]:
    """One layer over time, the values of :func:`lstm_fn.nn.scan.scan_recurrence` on
    ``xs @ w_x``, differentiated through :func:`recurrence` and :func:`project`.

    Args:
      p: layer params ``w_x [In, G*H]``, ``w_h [H, G*H]``, ``b_x``, ``b_h [G*H]``.
      xs: inputs ``[T, B, In]`` (time-major).
      carry: initial state, parts ``[B, H]``.

    Returns:
      ``(hs [T, B, H], final carry)``.
    """
    hs, carry, _ = _manual_recurrence(cell, p, project(xs, p["w_x"], precision), carry,
                                      precision)
    return hs, carry


def manual_apply(params: dict, cfg: ModelConfig, tokens: jax.typing.ArrayLike,
                 carry: tuple | None = None, *, dropout_masks: list[jax.Array] | None = None,
                 precision: str = "float32") -> tuple[jax.Array, tuple]:
    """:func:`lstm_fn.nn.model.apply` (the same arguments and values) with the hand-written
    backward: ``(logits [B, T, V], carry)``."""
    check_params(params, cfg)
    logits, carry, _ = forward(params, cfg.cell, tokens, carry, MANUAL,
                               dropout_masks=dropout_masks, precision=precision)
    return logits, carry


def manual_loss(params: dict, cfg: ModelConfig, tokens: jax.typing.ArrayLike,
                targets: jax.typing.ArrayLike, carry: tuple | None = None, *,
                dropout_masks: list[jax.Array] | None = None,
                mask: jax.typing.ArrayLike | None = None,
                precision: str = "float32") -> tuple[jax.Array, tuple]:
    """:func:`lstm_fn.nn.model.loss` (the same arguments and values) with the hand-written
    backward of the recurrences.

    Args:
      params: the params tree of :mod:`lstm_fn.nn.model`; ``cfg`` must fit it.
      tokens, targets: int32 ``[B, T]``.
      carry: per-layer initial states, parts ``[B, H]`` (None: zeros).
      dropout_masks: optional, one ``[B, T, H]`` per layer.
      mask: optional float ``[B, T]`` weights of each position.
      precision: of the matmuls' operands (see :func:`recurrence`).

    Returns:
      ``(mean cross-entropy in nats per character, final carry)``.
    """
    logits, carry = manual_apply(params, cfg, tokens, carry, dropout_masks=dropout_masks,
                                 precision=precision)
    return cross_entropy(logits, targets, mask), carry
