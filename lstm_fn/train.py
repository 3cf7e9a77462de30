"""The training state, one jit-compiled update step, and exact evaluation.

The state is a plain dict pytree, so orbax saves it as it is::

    {"params": ..., "opt_state": ..., "carry": per-layer states [B, H],
     "step": int32 [], "lr_scale": float32 []}

Randomness (dropout) is ``fold_in(stream_key(seed, DROPOUT_STREAM), step)``: nothing random
is carried, and the batch of a step is a pure function of the step, so a run resumed from a
checkpoint repeats the uninterrupted run bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from lstm_fn import data, parallel
from lstm_fn.config import TrainConfig
from lstm_fn.bptt import manual_apply, manual_loss
from lstm_fn.cells import matmul
from lstm_fn.model import ModelConfig, dropout_masks, initial_state, loss
from lstm_fn.optim import make_optimizer, make_schedule


# The random streams of a run, all from key(seed). The init draws from split(key(seed), n),
# which equals fold_in(key(seed), i) for i < n, so a stream folded in by step number alone
# would reuse the init's numbers (dropout at step 2 = layer 0's initial w_x); each stream
# folds in its own tag first, far from any layer index.
DROPOUT_STREAM, SAMPLE_STREAM = 0x64726F70, 0x73616D70  # "drop", "samp"


def stream_key(seed: int, stream: int) -> jax.Array:
    """The root key of one random stream of a run (fold in the step next)."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def check_freeze(freeze: tuple[str, ...], num_layers: int) -> None:
    """ValueError naming a frozen layer number the model does not have, or for freezing
    every part (nothing would train)."""
    for part in freeze:
        if part.isdigit() and int(part) >= num_layers:
            raise ValueError(f"train.freeze names layer {part}, but the model has {num_layers} "
                             f"(0..{num_layers - 1})")
    if set(freeze) >= {"embed", "head", *map(str, range(num_layers))}:
        raise ValueError("train.freeze names every part of the model (embed, head and each "
                         "layer): nothing would train")


def trainable_mask(params: dict, freeze: tuple[str, ...]) -> dict:
    """1.0 for every trained parameter tensor, 0.0 for frozen ones (``embed``, ``head`` or a
    layer number, see :class:`TrainConfig`); ValueError names a layer the model lacks."""
    check_freeze(freeze, len(params["layers"]))
    return {
        "embed": jax.tree.map(lambda _: float("embed" not in freeze), params["embed"]),
        "layers": [jax.tree.map(lambda _, l=l: float(str(l) not in freeze), layer)
                   for l, layer in enumerate(params["layers"])],
        "head": jax.tree.map(lambda _: float("head" not in freeze), params["head"]),
    }


def global_norm(tree) -> jax.Array:
    """``sqrt(sum of squares)`` over every leaf: the norm that clipping bounds."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def init_state(params: dict, cfg: ModelConfig, tcfg: TrainConfig) -> dict:
    """A fresh training state around ``params``."""
    return {
        "params": params,
        "opt_state": make_optimizer(tcfg).init(params),
        "carry": initial_state(cfg, tcfg.batch_size),
        "step": jnp.zeros((), jnp.int32),
        "lr_scale": jnp.ones((), jnp.float32),
    }


def _reset(carry, reset):
    """Zero the carried state of every stream where a new pass over the data starts."""
    if jnp.ndim(reset) != 0:
        raise ValueError(f"reset must be one bool for all streams, got shape {jnp.shape(reset)}")
    return jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), carry)


def make_train_step(cfg: ModelConfig, tcfg: TrainConfig, total_steps: int | None,
                    mesh: Mesh | None = None):
    """``step(state, inputs, targets, reset) -> (state, metrics)``, jit-compiled, with the
    state's buffers donated (updated in place).

    One truncated-BPTT update: the carry from the previous window is the initial state
    (gradients stop at the window border; ``reset``, one bool for all streams, zeroes it
    first, as at the start of a pass over the data), the mean loss over ``[B, T]`` is
    differentiated, gradients of frozen tensors are zeroed, clipped by global norm, and the optimizer's
    direction (zero for frozen tensors, weight decay included) is applied with
    ``lr = schedule(step) * lr_scale``. ``metrics`` holds the loss, the (unclipped) gradient
    norm, the learning rate and whether every updated parameter is finite
    (``params_finite``).

    With a ``mesh`` (:func:`lstm_fn.parallel.batch_mesh`), the batch and the carry are split
    over its devices and everything else is replicated (:func:`lstm_fn.parallel.split_batch`);
    the state comes in and leaves laid out as :func:`state_layout` (a fresh, uncommitted
    state is placed by the call; a restored one needs ``jax.device_put``).
    """
    tx = make_optimizer(tcfg)
    schedule = make_schedule(tcfg, total_steps)
    base_key = stream_key(tcfg.seed, DROPOUT_STREAM)
    value_and_grad = jax.value_and_grad(_loss_function(cfg, tcfg), has_aux=True)
    if mesh is not None:
        value_and_grad = parallel.split_batch(value_and_grad, mesh)

    def step(state, inputs, targets, reset):
        params = state["params"]
        mask = trainable_mask(params, tcfg.freeze)
        masks = dropout_masks(jax.random.fold_in(base_key, state["step"]), cfg, *inputs.shape)
        (value, carry), grads = value_and_grad(
            params, inputs, targets, _reset(state["carry"], reset), masks)
        grads = jax.tree.map(jnp.multiply, grads, mask)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        updates = jax.tree.map(jnp.multiply, updates, mask)  # adamw's decay is not a gradient
        lr = schedule(state["step"]) * state["lr_scale"]
        params = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), params, updates)
        new_state = {"params": params, "opt_state": opt_state, "carry": carry,
                     "step": state["step"] + 1, "lr_scale": state["lr_scale"]}
        finite = jnp.all(jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]))
        return new_state, {"loss": value, "grad_norm": global_norm(grads), "lr": lr,
                           "params_finite": finite}

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    one, batch = parallel.replicated(mesh), parallel.batch_split(mesh)
    return jax.jit(step, donate_argnums=0, in_shardings=(state_layout(mesh), batch, batch, one),
                   out_shardings=(state_layout(mesh), one))


def state_layout(mesh: Mesh) -> dict:
    """Where a training state lives on ``mesh``: the carry split over the batch, the rest
    replicated (a prefix of the state's tree, for ``jax.device_put`` and ``jax.jit``)."""
    one = parallel.replicated(mesh)
    return {"params": one, "opt_state": one, "carry": parallel.batch_split(mesh), "step": one,
            "lr_scale": one}


def _loss_function(cfg: ModelConfig, tcfg: TrainConfig):
    """``(params, inputs, targets, carry, masks) -> (loss, carry)`` for the chosen gradients."""
    loss_fn = manual_loss if tcfg.gradients == "manual" else loss
    return lambda params, inputs, targets, carry, masks: loss_fn(
        params, cfg, inputs, targets, carry, dropout_masks=masks,
        precision=tcfg.matmul_precision)


@partial(jax.jit, static_argnums=1)
def _eval_step(params, cfg, carry, inputs, targets, mask, reset):
    # The hand-written layer's forward: the numbers of `apply`, faster on CPU (benchmarks/).
    hs, carry = manual_apply(params, cfg.cell, inputs, _reset(carry, reset))  # [T, B, H]
    logits = matmul(jnp.swapaxes(hs, 0, 1), params["head"]["w"]) + params["head"]["b"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (nll * mask).sum(), carry


def evaluate(params: dict, cfg: ModelConfig, ids: np.ndarray, batch_size: int,
             seq_len: int, max_chars: int | None = None,
             on_window: Callable[[int], None] | None = None) -> float:
    """Exact mean loss in nats per character over a whole split.

    The split is read as ``batch_size`` contiguous streams with the state carried from
    window to window, every prediction counted once (see :func:`data.eval_batches`).
    ``max_chars`` scores only the first ``max_chars / batch_size`` predictions of each
    stream (the same ones every time, spread over the split). ``on_window`` is called after
    each window with the number of predictions scored so far. Returns nan for a split too
    short to predict anything.
    """
    # No wider than the split needs (the same rows, so the same numbers): a --seq-len or
    # --batch-size far beyond a short text would only allocate padding.
    n_predictions = max(len(ids) - 1, 1)
    batch_size = min(batch_size, n_predictions)
    seq_len = min(seq_len, -(-n_predictions // batch_size))
    # Committed, as the carries _eval_step returns are: jit compiles again when an argument
    # changes from uncommitted to committed. So one program serves every window and call.
    where = getattr(params["embed"], "sharding", None) or jax.devices()[0]
    params, carry = jax.device_put(
        (params, initial_state(cfg, batch_size, params["embed"].dtype)), where)
    total, count = 0.0, 0.0
    for inputs, targets, mask, reset in data.eval_batches(ids, batch_size, seq_len, max_chars):
        nll_sum, carry = _eval_step(params, cfg, carry, inputs, targets, mask, reset)
        total += float(nll_sum)
        count += float(mask.sum())
        if on_window is not None:
            on_window(int(count))
    return total / count if count else float("nan")
