"""One jit-compiled update of the training state: truncated BPTT on a window of every
stream, frozen parts kept, gradients clipped, the optimizer's step at the scheduled rate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lstm_fn.config import TrainConfig
from lstm_fn.nn.bptt import manual_loss
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.model import dropout_masks, loss
from lstm_fn.training import parallel
from lstm_fn.training.optim import make_optimizer
from lstm_fn.training.state import (DROPOUT_STREAM, TrainState, reset_carry, stream_key,
                                    trainable_mask)


def make_train_step(cfg: ModelConfig, tcfg: TrainConfig, mesh: Mesh | None = None):
    """``step(state, inputs, targets, reset, lr) -> (state, metrics)`` on a
    :class:`TrainState`, jit-compiled, with the state's buffers donated (updated in place).

    One truncated-BPTT update: the carry from the previous window is the initial state
    (gradients stop at the window border; ``reset``, one bool for all streams, zeroes it
    first, as at the start of a pass over the data), the mean loss over ``[B, T]`` is
    differentiated, gradients of frozen tensors are zeroed, clipped by global norm, and the optimizer's
    direction (zero for frozen tensors, weight decay included) is applied with the rate
    ``lr * lr_scale`` (``lr``, a float32 scalar, from :func:`lstm_fn.training.schedule.rate`
    on the host). ``metrics`` holds the loss, the (unclipped) gradient
    norm, the learning rate and whether every updated parameter is finite
    (``params_finite``).

    With a ``mesh`` (:func:`lstm_fn.parallel.batch_mesh`), the batch and the carry are split
    over its devices and everything else is replicated (:func:`lstm_fn.parallel.split_batch`);
    the state comes in and leaves laid out as :func:`state_layout` (a fresh, uncommitted
    state is placed by the call; a restored one needs ``jax.device_put``). ``inputs`` and
    ``targets`` are int32 ``[B, T]``, ``reset`` a bool scalar.
    """
    tx = make_optimizer(tcfg)
    base_key = stream_key(tcfg.seed, DROPOUT_STREAM)
    value_and_grad = jax.value_and_grad(_loss_function(cfg, tcfg), has_aux=True)
    if mesh is not None:
        value_and_grad = parallel.split_batch(value_and_grad, mesh)

    def step(state: TrainState, inputs, targets, reset, lr):
        mask = trainable_mask(state.params, tcfg.freeze)
        masks = dropout_masks(jax.random.fold_in(base_key, state.step), cfg, *inputs.shape)
        (value, carry), grads = value_and_grad(
            state.params, inputs, targets, reset_carry(state.carry, reset), masks)
        grads = jax.tree.map(jnp.multiply, grads, mask)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(jnp.multiply, updates, mask)  # adamw's decay is not a gradient
        lr = lr * state.lr_scale
        params = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), state.params, updates)
        finite = jnp.all(jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]))
        new_state = state._replace(params=params, opt_state=opt_state, carry=carry,
                                   step=state.step + 1)
        return new_state, {"loss": value, "grad_norm": optax.tree_utils.tree_norm(grads),
                           "lr": lr, "params_finite": finite}

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    one, batch = parallel.replicated(mesh), parallel.batch_split(mesh)
    return jax.jit(step, donate_argnums=0,
                   in_shardings=(state_layout(mesh), batch, batch, one, one),
                   out_shardings=(state_layout(mesh), one))


def state_layout(mesh: Mesh) -> TrainState:
    """Where a training state lives on ``mesh``: the carry split over the batch, the rest
    replicated (a prefix of the state's tree, for ``jax.device_put`` and ``jax.jit``)."""
    one = parallel.replicated(mesh)
    return TrainState(params=one, opt_state=one, carry=parallel.batch_split(mesh), step=one,
                      lr_scale=one)


def _loss_function(cfg: ModelConfig, tcfg: TrainConfig):
    """``(params, inputs, targets, carry, masks) -> (loss, carry)`` for the chosen gradients."""
    loss_fn = manual_loss if tcfg.gradients == "manual" else loss
    return lambda params, inputs, targets, carry, masks: loss_fn(
        params, cfg, inputs, targets, carry, dropout_masks=masks,
        precision=tcfg.matmul_precision)
