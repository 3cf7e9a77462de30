"""Hand-written backpropagation through time: each layer as a ``jax.custom_vjp``.

The twin of :mod:`reference_numpy.cells` in JAX, and the fast path of training
(``TrainConfig(gradients="manual")``). Only the math differs per cell (:data:`MATH`); the
forward scan, the reverse scan and the weight gradients are written once:

- forward: ``gx_t = x_t @ w_x + b_x`` and ``gh_t = h_{t-1} @ w_h + b_h`` feed the cell's
  ``forward``, which also returns what its backward needs (gate activations, not the
  pre-activations), stacked by ``lax.scan`` over time.
- backward: a reverse ``lax.scan`` carries ``dL/d carry`` and emits ``dgx_t`` (and ``dgh_t``
  when it differs, as in the gru); only ``dh_{t-1} += dgh_t @ w_h^T`` stays inside the
  sequential loop. After it, each weight gradient is ONE matmul over all ``T*B`` rows:
  ``dw_h = sum_t h_{t-1}^T dgh_t``, ``dw_x = sum_t x_t^T dgx_t``, ``dxs = dgx @ w_x^T``.

The layer returns its final carry, so a cotangent for it (zero in training, not in general)
starts the reverse scan; the gradient w.r.t. the initial carry is what the scan ends with.
Gate order is :data:`reference_numpy.spec.GATES`, cut with ``jnp.split``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from lstm_fn.cells import HiddenState, LSTMState
from lstm_fn.model import ModelConfig
from reference_numpy import spec


def _split(cell: str, a: jax.Array) -> list[jax.Array]:
    """``[.., G*H]`` -> G blocks ``[.., H]`` in spec gate order."""
    return jnp.split(a, spec.num_gates(cell), axis=-1)


# -------------------------------------------------------------------------- per-cell math
# forward(carry, gx, gh) -> (carry', h', saved):  gx, gh [B, G*H]; saved: a tuple of [B, .].
# backward(saved, h_prev, h, dcarry) -> (dcarry_prev, dgx, dgh):  dcarry holds the *total*
#   dL/d carry' (``h`` from the layer above and from step t+1); dcarry_prev leaves out the
#   path through ``gh = h_prev @ w_h``, which the caller adds; dgh None means dgh == dgx.


def _rnn_forward(carry, gx, gh):
    h = jnp.tanh(gx + gh)
    return HiddenState(h), h, ()


def _rnn_backward(saved, h_prev, h, dcarry):
    da = dcarry.h * (1.0 - h * h)  # h' = tanh(a)
    return HiddenState(jnp.zeros_like(h_prev)), da, None


def _lstm_forward(carry, gx, gh):
    i, f, g, o = _split("lstm", gx + gh)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c = f * carry.c + i * g
    h = o * jnp.tanh(c)
    return LSTMState(h, c), h, (jnp.concatenate([i, f, g, o], axis=-1), carry.c)


def _lstm_backward(saved, h_prev, h, dcarry):
    gates, c_prev = saved  # [B, 4H], [B, H]
    i, f, g, o = _split("lstm", gates)
    tanh_c = jnp.tanh(f * c_prev + i * g)  # recomputed: cheaper than saving it
    dc = dcarry.c + dcarry.h * o * (1.0 - tanh_c * tanh_c)  # h' = o * tanh(c')
    da = jnp.concatenate([
        dc * g * i * (1.0 - i),  # c' = f c + i g, and each gate is sigmoid / tanh of a
        dc * c_prev * f * (1.0 - f),
        dc * i * (1.0 - g * g),
        dcarry.h * tanh_c * o * (1.0 - o),
    ], axis=-1)  # [B, 4H]
    return LSTMState(jnp.zeros_like(h_prev), dc * f), da, None


def _gru_forward(carry, gx, gh):
    x_r, x_z, x_n = _split("gru", gx)
    h_r, h_z, h_n = _split("gru", gh)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)  # reset after the hidden matmul (PyTorch's variant)
    h = (1.0 - z) * n + z * carry.h
    return HiddenState(h), h, (r, z, n, h_n)


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
    """A cell's step and its hand-written backward (contracts above)."""

    forward: Callable
    backward: Callable


MATH: dict[str, CellMath] = {
    "rnn": CellMath(_rnn_forward, _rnn_backward),
    "lstm": CellMath(_lstm_forward, _lstm_backward),
    "gru": CellMath(_gru_forward, _gru_backward),
}
assert set(MATH) == set(spec.CELLS)


# ------------------------------------------------------------------------ the layer, once


def _forward(cell: str, p: dict, xs: jax.Array, carry, save: bool):
    """Forward scan; with ``save``, also the cell's per-step residuals stacked over T."""
    forward = MATH[cell].forward
    gxs = xs @ p["w_x"] + p["b_x"]  # [T, B, G*H]

    def step(carry, gx):
        carry, h, saved = forward(carry, gx, carry.h @ p["w_h"] + p["b_h"])
        return carry, (h, saved) if save else h

    return lax.scan(step, carry, gxs)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def manual_layer(cell: str, p: dict, xs: jax.Array, carry) -> tuple[jax.Array, tuple]:
    """One layer over time with a hand-written backward; same values as
    :func:`lstm_fn.scan.layer_scan`.

    Args:
      cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
      p: layer params ``w_x [In, G*H]``, ``w_h [H, G*H]``, ``b_x``, ``b_h [G*H]``.
      xs: inputs ``[T, B, In]`` (time-major).
      carry: initial state, ``HiddenState(h)`` or ``LSTMState(h, c)``, parts ``[B, H]``.

    Returns:
      ``(hs [T, B, H], final carry)``.
    """
    carry, hs = _forward(cell, p, xs, carry, save=False)
    return hs, carry


def _manual_layer_fwd(cell, p, xs, carry):
    final, (hs, saved) = _forward(cell, p, xs, carry, save=True)
    return (hs, final), (p, xs, carry, hs, saved)


def _manual_layer_bwd(cell, residuals, cotangents):
    p, xs, carry, hs, saved = residuals
    dhs, dfinal = cotangents  # [T, B, H], carry of [B, H]
    backward = MATH[cell].backward
    h_prevs = jnp.concatenate([carry.h[None], hs[:-1]])  # [T, B, H]
    w_h_t = p["w_h"].T  # [G*H, H]

    def step(dcarry, inputs):
        saved_t, h_prev, h, dh_above = inputs
        dcarry = dcarry._replace(h=dcarry.h + dh_above)
        dprev, dgx, dgh = backward(saved_t, h_prev, h, dcarry)
        dgh_t = dgx if dgh is None else dgh
        dprev = dprev._replace(h=dprev.h + dgh_t @ w_h_t)
        return dprev, (dgx if dgh is None else (dgx, dgh))

    dcarry, out = lax.scan(step, dfinal, (saved, h_prevs, hs, dhs), reverse=True)
    dgxs, dghs = out if isinstance(out, tuple) else (out, out)  # [T, B, G*H] each
    grads = {
        "w_x": jnp.einsum("tbi,tbg->ig", xs, dgxs),
        "w_h": jnp.einsum("tbh,tbg->hg", h_prevs, dghs),
        "b_x": dgxs.sum(axis=(0, 1)),
        "b_h": dghs.sum(axis=(0, 1)),
    }
    return {k: grads[k] for k in p}, dgxs @ p["w_x"].T, dcarry


manual_layer.defvjp(_manual_layer_fwd, _manual_layer_bwd)


# ------------------------------------------------------------------------ the model


def manual_stack(cell: str, layers: list[dict], xs: jax.Array, carry: tuple,
                 masks: list[jax.Array] | None = None) -> tuple[jax.Array, tuple]:
    """The stacked layers, each a :func:`manual_layer`; no ``ModelConfig`` needed.

    Args:
      layers: per-layer params, as ``params["layers"]``.
      xs: inputs of the first layer ``[T, B, E]`` (time-major).
      carry: one state per layer.
      masks: optional dropout masks, one ``[B, T, H]`` per layer, multiplying its output.

    Returns:
      ``(top layer's outputs [T, B, H], tuple of final states)``.
    """
    new_carry = []
    for l, p in enumerate(layers):
        xs, c = manual_layer(cell, p, xs, carry[l])
        if masks is not None:
            xs = xs * jnp.swapaxes(masks[l], 0, 1)
        new_carry.append(c)
    return xs, tuple(new_carry)


def manual_loss(params: dict, inputs: jax.Array, targets: jax.Array, carry: tuple,
                masks: list[jax.Array] | None = None, *, cfg: ModelConfig,
                mask: jax.Array | None = None) -> tuple[jax.Array, tuple]:
    """:func:`lstm_fn.model.loss` with the hand-written layer backward.

    Args:
      params: the params tree of :mod:`lstm_fn.model`.
      inputs, targets: int32 ``[B, T]``.
      carry: per-layer initial states, parts ``[B, H]``.
      masks: optional dropout masks, one ``[B, T, H]`` per layer.
      cfg: the architecture (only ``cell`` is read; shapes come from ``params``).
      mask: optional float ``[B, T]`` weights of each position.

    Returns:
      ``(mean cross-entropy in nats per character, final carry)``.
    """
    xs = params["embed"][inputs.T]  # [T, B, E]
    top, carry = manual_stack(cfg.cell, params["layers"], xs, carry, masks)
    logits = jnp.swapaxes(top, 0, 1) @ params["head"]["w"] + params["head"]["b"]  # [B, T, V]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]
    if mask is None:
        return nll.mean(), carry
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0), carry
