"""The stacked recurrent language model as pure functions over a plain-dict params tree.

``params`` is the JSON weights ``params`` tree::

    {"embed": [V, E],
     "layers": [{"w_x": [In, G*H], "w_h": [H, G*H], "b_x": [G*H], "b_h": [G*H]}, ...],
     "head": {"w": [H, V], "b": [V]}}

Forward: ``x_t = embed[token_t]``, each layer's output sequence feeds the next (times a
dropout mask when training), ``logits_t = h_top_t @ head.w + head.b``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_fn.cells import get_cell, init_layer, matmul, zero_state
from lstm_fn.config import ModelConfig
from lstm_fn.scan import layer_scan


def init(key: jax.Array, cfg: ModelConfig, dtype=jnp.float32) -> dict:
    """Fresh parameters: embedding ``N(0, 1)``, layers from :func:`lstm_fn.cells.init_layer`,
    head ``w`` uniform in ``±1/sqrt(H)`` and ``b`` zero."""
    k_embed, k_head, *k_layers = jax.random.split(key, 2 + cfg.num_layers)
    H = cfg.hidden_size
    layers = [
        init_layer(k, cfg.cell, cfg.embed_size if l == 0 else H, H, dtype)
        for l, k in enumerate(k_layers)
    ]
    bound = 1.0 / H**0.5
    return {
        "embed": jax.random.normal(k_embed, (cfg.vocab_size, cfg.embed_size), dtype),
        "layers": layers,
        "head": {"w": jax.random.uniform(k_head, (H, cfg.vocab_size), dtype, -bound, bound),
                 "b": jnp.zeros((cfg.vocab_size,), dtype)},
    }


def initial_state(cfg: ModelConfig, batch_size: int, dtype=jnp.float32) -> tuple:
    """Zero carry: a tuple with one state per layer, ``(h, c)`` for lstm, ``(h,)`` otherwise,
    each ``[B, H]``."""
    return tuple(zero_state(cfg.cell, batch_size, cfg.hidden_size, dtype)
                 for _ in range(cfg.num_layers))


def checked_tokens(tokens: jax.typing.ArrayLike, vocab_size: int | None = None,
                   name: str = "tokens") -> jax.Array:
    """``tokens`` as an integer ``[B, T]`` array (lists and numpy arrays are converted);
    ValueError for another rank, a float dtype, no rows or no steps, and, when the ids are
    known (not traced under ``jit``/``vmap``), an id outside ``[0, vocab_size)``. Under
    ``jit`` nothing can check them: an embedding lookup clamps an out-of-range id."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer) or 0 in tokens.shape:
        raise ValueError(f"{name} must be integer ids [B, T] with B, T >= 1, got "
                         f"{tokens.dtype} {list(tokens.shape)}")
    if vocab_size is None:
        return tokens
    try:  # on the host: inside a jit trace, even ids closed over would be traced by jnp.min
        ids = np.asarray(tokens)
    except jax.errors.TracerArrayConversionError:  # traced: unknown until run
        return tokens
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"{name} must be ids in [0, {vocab_size}), got "
                         f"{ids.min()}..{ids.max()}")
    return tokens


def cross_entropy(logits: jax.Array, targets: jax.typing.ArrayLike,
                  mask: jax.typing.ArrayLike | None = None) -> jax.Array:
    """Mean softmax cross-entropy of ``logits [B, T, V]`` against ``targets [B, T]``, or
    ``sum(mask * nll) / sum(mask)`` with float ``mask [B, T]`` (0 when it is all zero).
    ValueError when targets or mask have another shape than the logits' ``[B, T]``, and for
    a target outside ``[0, V)`` when there is no mask. With one, padding (mask 0) may hold
    any id, and a weighted position whose target is outside ``[0, V)`` makes the loss nan."""
    vocab_size = logits.shape[-1]
    targets = checked_tokens(targets, vocab_size if mask is None else None, "targets")
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must have the shape of the tokens, {list(logits.shape[:2])}, "
                         f"got {list(targets.shape)}")
    if mask is None:
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    mask = jnp.asarray(mask)
    if mask.shape != targets.shape:
        raise ValueError(f"mask must have the shape of the tokens, {list(targets.shape)}, got "
                         f"{list(mask.shape)}")
    # An id past V would read nan from the logits (and -1 the last column), and nan * 0 is
    # nan: padding is scored against id 0 and then dropped, in the loss and its gradient.
    valid = (targets >= 0) & (targets < vocab_size)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
    nll = jnp.where(mask != 0, jnp.where(valid, nll, jnp.nan), 0.0)
    total = mask.sum()
    return (nll * mask).sum() / jnp.where(total > 0, total, 1.0)


def layer_states(cell: str, params: dict, batch_size: int, carry: tuple | None) -> tuple:
    """The per-layer carry as the cell's state tuples in the params' dtype: zeros for None,
    and plain ``(h, c)`` / ``(h,)`` tuples (as :mod:`reference_numpy` returns them)
    converted; ValueError for a carry that does not fit the model or the batch."""
    layers = params["layers"]
    if carry is None:
        return tuple(zero_state(cell, batch_size, p["w_h"].shape[0], params["embed"].dtype)
                     for p in layers)
    if len(carry) != len(layers):
        raise ValueError(f"carry has {len(carry)} layer states, the model has {len(layers)} "
                         "layers")
    state, dtype = get_cell(cell).state, params["embed"].dtype
    for l, (layer_carry, p) in enumerate(zip(carry, layers)):
        if len(layer_carry) != len(state._fields):
            raise ValueError(f"carry[{l}] has {len(layer_carry)} arrays; a {cell} layer's "
                             f"state is ({', '.join(state._fields)})")
        for name, part in zip(state._fields, layer_carry):
            if tuple(jnp.shape(part)) != (batch_size, p["w_h"].shape[0]):
                raise ValueError(f"carry[{l}].{name} has shape {list(jnp.shape(part))}, the "
                                 f"tokens and the model need [{batch_size}, {p['w_h'].shape[0]}]")
    return tuple(state(*(jnp.asarray(part, dtype) for part in layer_carry))
                 for layer_carry in carry)


def dropout_masks(key: jax.Array, cfg: ModelConfig, batch_size: int, seq_len: int,
                  dtype=jnp.float32) -> list[jax.Array] | None:
    """Inverted-dropout masks, one ``[B, T, H]`` per layer, values 0 or ``1/(1-p)``;
    None when ``cfg.dropout`` is 0. Passed to :func:`apply` so the numpy twin can use the
    very same masks."""
    if cfg.dropout == 0.0:
        return None
    keep = 1.0 - cfg.dropout
    shape = (batch_size, seq_len, cfg.hidden_size)
    return [jax.random.bernoulli(k, keep, shape).astype(dtype) / keep
            for k in jax.random.split(key, cfg.num_layers)]


def apply(params: dict, cfg: ModelConfig, tokens: jax.Array, carry: tuple | None = None,
          *, dropout_masks: list[jax.Array] | None = None,
          precision: str = "float32") -> tuple[jax.Array, tuple]:
    """Logits for every position and the carry after the last one.

    Args:
      params: the params tree (see the module docstring).
      cfg: the architecture.
      tokens: int32 ``[B, T]``.
      carry: per-layer states from :func:`initial_state`, a previous call or plain
        ``(h, c)`` / ``(h,)`` tuples (None: zeros).
      dropout_masks: optional list of ``[B, T, H]`` masks, one per layer (training only).
      precision: of the matmuls' operands: ``"float32"``, or ``"bfloat16"`` with float32
        sums (:func:`lstm_fn.cells.matmul`).

    Returns:
      ``(logits [B, T, V], carry)``.
    """
    tokens = checked_tokens(tokens, params["embed"].shape[0])
    carry = layer_states(cfg.cell, params, tokens.shape[0], carry)
    xs = params["embed"][tokens.T]  # [T, B, E]: time-major for the scan
    new_carry = []
    for l, p in enumerate(params["layers"]):
        xs, c = layer_scan(cfg.cell, p, xs, carry[l], precision)  # [T, B, H]
        if dropout_masks is not None:
            xs = xs * jnp.swapaxes(dropout_masks[l], 0, 1)
        new_carry.append(c)
    logits = matmul(jnp.swapaxes(xs, 0, 1), params["head"]["w"], precision) + params["head"]["b"]
    return logits, tuple(new_carry)


def loss(params: dict, cfg: ModelConfig, tokens: jax.Array, targets: jax.Array,
         carry: tuple | None = None, *, dropout_masks: list[jax.Array] | None = None,
         mask: jax.Array | None = None, precision: str = "float32") -> tuple[jax.Array, tuple]:
    """Mean softmax cross-entropy in nats per character, and the carry.

    Args:
      tokens, targets: int32 ``[B, T]``; ``targets[b, t]`` is the character after ``tokens[b, t]``.
      mask: optional float ``[B, T]`` weights (0 for padding): ``sum(mask * nll) / sum(mask)``.
      precision: of the matmuls' operands (see :func:`apply`).

    Returns:
      ``(loss scalar, carry)``.
    """
    logits, carry = apply(params, cfg, tokens, carry, dropout_masks=dropout_masks,
                          precision=precision)
    return cross_entropy(logits, targets, mask), carry
