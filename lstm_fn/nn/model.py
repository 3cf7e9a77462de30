"""The stacked recurrent language model as pure functions over a plain-dict params tree,
and :func:`forward`, the one function that walks its layers.

``params`` is the JSON weights ``params`` tree::

    {"embed": [V, E],
     "layers": [{"w_x": [In, G*H], "w_h": [H, G*H], "b_x": [G*H], "b_h": [G*H]}, ...],
     "head": {"w": [H, V], "b": [V]}}

Forward: ``x_t = embed[token_t]``; layer ``l`` runs over time on its input projection
``x_t @ w_x``; its output sequence (times a dropout mask when training) feeds the next;
``logits_t = h_top_t @ head.w + head.b``. How a layer runs over time is an argument of
:func:`forward` (a :class:`lstm_fn.nn.scan.LayerPass`): :data:`lstm_fn.nn.scan.SCAN` (``lax.scan``,
differentiated by ``jax.grad``), :data:`lstm_fn.nn.bptt.MANUAL` (the same numbers with a
hand-written backward), :data:`lstm_fn.nn.scan.TRACED` (also returns every step's states
and gates) or :data:`lstm_fn.nn.generate.ONE_STEP` (a single step, for generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_fn.nn.cells import get_cell, init_layer, zero_state
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.precision import matmul
from lstm_fn.nn.scan import SCAN, LayerPass


class Forward(NamedTuple):
    """What :func:`forward` returns."""

    logits: jax.Array  # [B, T, V]
    carry: tuple  # one state per layer, parts [B, H]
    traces: tuple  # per layer: None, or a dict of [T, B, H] arrays (see LayerPass.recur)


def init(key: jax.Array, cfg: ModelConfig, dtype=jnp.float32,
         head_bias: jax.typing.ArrayLike | None = None) -> dict:
    """Fresh parameters: embedding ``N(0, 1)``, layers from :func:`lstm_fn.nn.cells.init_layer`,
    head ``w`` uniform in ``±1/sqrt(H)`` and ``b`` = ``head_bias`` ``[V]``, zero when None.

    A training run passes :func:`log_frequencies` of its training split, so the untrained
    model already predicts each character at its frequency: Adam moves a bias about one
    learning rate per step, and from zero the head would need thousands of steps to reach
    log frequencies ~10 nats apart, spending the recurrent units on it meanwhile
    (``docs/results.md`` measures what this buys)."""
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
                 "b": (jnp.zeros((cfg.vocab_size,), dtype) if head_bias is None
                       else jnp.asarray(head_bias, dtype).reshape(cfg.vocab_size))},
    }


def log_frequencies(ids: jax.typing.ArrayLike, vocab_size: int) -> np.ndarray:
    """float32 ``[V]``: the log of each id's add-one smoothed frequency in ``ids``, the head
    bias whose softmax is the unigram distribution."""
    counts = np.bincount(np.asarray(ids).ravel(), minlength=vocab_size)[:vocab_size] + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def initial_state(cfg: ModelConfig, batch_size: int, dtype=jnp.float32) -> tuple:
    """Zero carry: a tuple with one state per layer, ``(h, c)`` for lstm, ``(h,)`` otherwise,
    each ``[B, H]``."""
    return tuple(zero_state(cfg.cell, batch_size, cfg.hidden_size, dtype)
                 for _ in range(cfg.num_layers))


def check_params(params: dict, cfg: ModelConfig) -> None:
    """ValueError naming the first tensor of ``params`` whose shape does not fit ``cfg``
    (GRU params with an LSTM config, say), or a missing part. Shapes only: works under
    ``jit``."""
    from reference_numpy.spec import param_shapes

    expected = param_shapes(cfg.architecture())
    try:
        got = jax.tree.map(jnp.shape, params)
        layers = got["layers"]
        named = [("embed", got["embed"], expected["embed"]),
                 *((f"head.{k}", got["head"][k], v) for k, v in expected["head"].items())]
    except (KeyError, TypeError):
        raise ValueError("params must be a dict with 'embed', 'layers' and 'head' "
                         "(the tree of lstm_fn.init)") from None
    if not isinstance(layers, (list, tuple)) or len(layers) != cfg.num_layers:
        raise ValueError(f"params has {len(layers) if isinstance(layers, (list, tuple)) else 'no'}"
                         f" layers, the config {cfg.num_layers}")
    for l, (layer, shapes) in enumerate(zip(layers, expected["layers"])):
        named += [(f"layers[{l}].{k}", layer.get(k), v) for k, v in shapes.items()]
    for name, shape, want in named:
        if shape is None or tuple(shape) != tuple(want):
            raise ValueError(f"params {name} has shape {None if shape is None else list(shape)}"
                             f", a {cfg.cell} model of {cfg.architecture()} needs {list(want)}")


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


def input_table(params: dict, precision: str = "float32") -> jax.Array:
    """``embed @ w_x`` of the first layer, ``[V, G*H]``: row ``v`` is what token ``v`` adds
    to the first layer's gates (``b_x`` not included), so a position's projection is one
    row lookup."""
    return matmul(params["embed"], params["layers"][0]["w_x"], precision)


def head(p: dict, top: jax.Array, precision: str = "float32") -> jax.Array:
    """Logits ``top @ w + b`` of the top layer's outputs ``top [.., H]``: ``[.., V]``."""
    return matmul(top, p["w"], precision) + p["b"]


def forward(params: dict, cell: str, tokens: jax.typing.ArrayLike, carry: tuple | None = None,
            layers: LayerPass | Sequence[LayerPass] = SCAN, *, dropout_masks: list[jax.Array] | None = None,
            precision: str = "float32", table: jax.Array | None = None) -> Forward:
    """Walk the stack: input projection, each layer over time, dropout, head.

    Args:
      params: the params tree (see the module docstring).
      cell: ``"rnn"``, ``"lstm"`` or ``"gru"``; the shapes come from ``params``.
      tokens: int ``[B, T]``.
      carry: per-layer states, parts ``[B, H]`` (None: zeros; plain tuples are converted).
      layers: how each layer runs over time (:class:`lstm_fn.nn.scan.LayerPass`), or one
        pass a layer.
      dropout_masks: optional list of ``[B, T, H]`` masks, one per layer, multiplying its
        output (training only).
      precision: of the matmuls' operands, ``"float32"`` or ``"bfloat16"``.
      table: the first layer's :func:`input_table`, when the caller has it already.

    Returns:
      :class:`Forward`: ``logits [B, T, V]``, the carry after the last step, and each
      layer's trace (None unless the layer pass records one).
    """
    tokens = checked_tokens(tokens, params["embed"].shape[0])
    carry = layer_states(cell, params, tokens.shape[0], carry)
    passes = [layers] * len(params["layers"]) if isinstance(layers, LayerPass) else list(layers)
    if len(passes) != len(params["layers"]):
        raise ValueError(f"{len(passes)} layer passes for {len(params['layers'])} layers")
    first = params["layers"][0]
    if table is None and passes[0].table and params["embed"].shape[0] <= tokens.size:
        table = input_table(params, precision)
    if table is not None:
        gxs = table[tokens.T]  # [T, B, G*H]
    else:
        gxs = passes[0].project(params["embed"][tokens.T], first["w_x"], precision)
    new_carry, traces = [], []
    for l, (p, layer) in enumerate(zip(params["layers"], passes)):
        if l > 0:
            gxs = layer.project(xs, p["w_x"], precision)  # [T, B, G*H]
        xs, layer_carry, trace = layer.recur(cell, p, gxs, carry[l], precision)  # [T, B, H]
        if dropout_masks is not None:
            xs = xs * jnp.swapaxes(dropout_masks[l], 0, 1)
        new_carry.append(layer_carry)
        traces.append(trace)
    logits = head(params["head"], jnp.swapaxes(xs, 0, 1), precision)  # [B, T, V]
    return Forward(logits, tuple(new_carry), tuple(traces))


def apply(params: dict, cfg: ModelConfig, tokens: jax.typing.ArrayLike, carry: tuple | None = None,
          *, dropout_masks: list[jax.Array] | None = None,
          precision: str = "float32") -> tuple[jax.Array, tuple]:
    """Logits for every position and the carry after the last one (:func:`forward` with
    ``lax.scan``).

    Args:
      params: the params tree (see the module docstring).
      cfg: the architecture; ``params`` must fit it.
      tokens: int32 ``[B, T]``.
      carry: per-layer states from :func:`initial_state`, a previous call or plain
        ``(h, c)`` / ``(h,)`` tuples (None: zeros).
      dropout_masks: optional list of ``[B, T, H]`` masks, one per layer (training only).
      precision: of the matmuls' operands: ``"float32"``, or ``"bfloat16"`` with float32
        sums (:func:`lstm_fn.nn.precision.matmul`).

    Returns:
      ``(logits [B, T, V], carry)``.
    """
    check_params(params, cfg)
    logits, carry, _ = forward(params, cfg.cell, tokens, carry, dropout_masks=dropout_masks,
                               precision=precision)
    return logits, carry


def loss(params: dict, cfg: ModelConfig, tokens: jax.typing.ArrayLike,
         targets: jax.typing.ArrayLike, carry: tuple | None = None, *,
         dropout_masks: list[jax.Array] | None = None, mask: jax.typing.ArrayLike | None = None,
         precision: str = "float32") -> tuple[jax.Array, tuple]:
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


def grow_vocab(params: dict, extra: int, key: jax.Array) -> dict:
    """``params`` with ``extra`` token ids appended: new embedding rows drawn like the old
    ones, new output columns zero with bias ``min(b) - log(extra)``, so all new characters
    together weigh what one with the smallest old bias and no weights would, however many
    there are (with each new one as likely as the rarest old one, thousands would take
    probability from the text the model knows); old ids unchanged. numpy arrays out."""
    embed, w, b = (np.asarray(a) for a in (params["embed"], params["head"]["w"],
                                           params["head"]["b"]))
    new_rows = np.asarray(jax.random.normal(key, (extra, embed.shape[1]))) * embed.std()
    new_bias = np.full(extra, np.min(b) - np.log(extra), np.float32)
    return {**params,
            "embed": np.concatenate([embed, new_rows.astype(embed.dtype)]),
            "head": {"w": np.concatenate([w, np.zeros((w.shape[0], extra), w.dtype)], axis=1),
                     "b": np.concatenate([b, new_bias.astype(b.dtype)])}}
