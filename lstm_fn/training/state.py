"""The training state, a typed pytree, and what the update step derives from a run's seed
and settings: its random streams and which parameters it trains.

Randomness (dropout, the samples shown in the log) is ``fold_in(stream_key(seed, STREAM),
step)``: nothing random is carried, and the batch of a step is a pure function of the step,
so a run resumed from a checkpoint repeats the uninterrupted run bit for bit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lstm_fn.config import TrainConfig
from lstm_fn.errors import ConfigError
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.model import initial_state
from lstm_fn.training.optim import make_optimizer

# The random streams of a run, all from key(seed). The init draws from split(key(seed), n),
# which equals fold_in(key(seed), i) for i < n, so a stream folded in by step number alone
# would reuse the init's numbers (dropout at step 2 = layer 0's initial w_x); each stream
# folds in its own tag first, far from any layer index.
DROPOUT_STREAM, SAMPLE_STREAM = 0x64726F70, 0x73616D70  # "drop", "samp"


class TrainState(NamedTuple):
    """Everything a training step reads and returns; a checkpoint holds it (as the dict of
    :meth:`as_tree`, the layout checkpoints have always had)."""

    params: dict
    opt_state: Any  # the optimizer's own state (lstm_fn.training.optim.make_optimizer)
    carry: tuple  # one state per layer, parts [B, H]: the streams' state between windows
    step: jax.Array  # int32 []: updates done
    lr_scale: jax.Array  # float32 []: the reduce-on-plateau factor (ValTracker.scale)

    @classmethod
    def fresh(cls, params: dict, cfg: ModelConfig, tcfg: TrainConfig) -> TrainState:
        """A state before the first step, around ``params``."""
        return cls(params, make_optimizer(tcfg).init(params),
                   initial_state(cfg, tcfg.batch_size), jnp.zeros((), jnp.int32),
                   jnp.ones((), jnp.float32))

    def as_tree(self) -> dict:
        """The state as the dict a checkpoint stores."""
        return self._asdict()

    @classmethod
    def from_tree(cls, tree: dict) -> TrainState:
        return cls(**tree)


def reset_carry(carry: tuple, reset: jax.typing.ArrayLike) -> tuple:
    """``carry`` zeroed where ``reset`` (one bool for all streams) says a new pass over the
    data starts."""
    if jnp.ndim(reset) != 0:
        raise ValueError(f"reset must be one bool for all streams, got shape {jnp.shape(reset)}")
    return jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), carry)


def stream_key(seed: int, stream: int) -> jax.Array:
    """The root key of one random stream of a run (fold in the step next)."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def check_freeze(freeze: tuple[str, ...], num_layers: int) -> None:
    """ConfigError naming a frozen layer number the model does not have, or for freezing
    every part (nothing would train)."""
    for part in freeze:
        if part.isdigit() and int(part) >= num_layers:
            raise ConfigError(f"names layer {part}, but the model has {num_layers} "
                              f"(0..{num_layers - 1})", "train.freeze")
    if set(freeze) >= {"embed", "head", *map(str, range(num_layers))}:
        raise ConfigError("names every part of the model (embed, head and each layer): nothing "
                          "would train", "train.freeze")


def trainable_mask(params: dict, freeze: tuple[str, ...]) -> dict:
    """1.0 for every trained parameter tensor, 0.0 for frozen ones (``embed``, ``head`` or a
    layer number, see :class:`TrainConfig`); ConfigError names a layer the model lacks."""
    check_freeze(freeze, len(params["layers"]))
    return {
        "embed": jax.tree.map(lambda _: float("embed" not in freeze), params["embed"]),
        "layers": [jax.tree.map(lambda _, l=l: float(str(l) not in freeze), layer)
                   for l, layer in enumerate(params["layers"])],
        "head": jax.tree.map(lambda _: float("head" not in freeze), params["head"]),
    }
