"""What a trained model does on a text, as arrays: how surprised it is by each character,
what it expected instead, every step's states and gates, which units follow simple features
of the text, how often the gates saturate, and how far back the gradient reaches.

The text is read as one stream from a zero state, as ``lstm-fn eval`` reads a short text,
so the mean surprisal (in nats) is ``eval``'s loss on it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lstm_fn.nn.cells import get_cell
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.model import cross_entropy, forward
from lstm_fn.nn.scan import SCAN, TRACED, nudged
from reference_numpy import spec

# The features a unit's activation is held against, each a number per character read.
FEATURES = ("position in line", "inside quotes", "bracket depth", "start of word",
            "after a newline", "upper case")
# A gate's activation below this is left-saturated, above 1 - this right-saturated
# (Karpathy, Johnson and Fei-Fei, 2015).
SATURATION = 0.1
TOP_PREDICTIONS = 5


class Inspection(NamedTuple):
    """The arrays of one text (``N`` characters read, ``N - 1`` predicted).

    - ``ids``: int ``[N]``; ``surprisal``: bits of each character after the first ``[N-1]``;
      ``top_ids``, ``top_probs``: the model's ``TOP_PREDICTIONS`` most likely characters at
      each prediction, ``[N-1, 5]``.
    - ``states``: per layer, ``{"h": [N, H]}`` (and ``"c"`` for lstm): the state after
      reading each character; ``gates``: per layer, each sigmoid gate's activations
      ``[N, H]`` (lstm ``i, f, o``; gru ``r, z``; none for rnn).
    - ``features``: ``{name: [N]}`` (:data:`FEATURES`); ``correlations``: per layer and state
      part, the Pearson correlation of each unit with each feature ``[H, F]``.
    - ``saturation``: per layer and gate, ``(left [H], right [H])``: the fraction of
      characters at which each unit is below 0.1, above 0.9.
    - ``gradient_flow``: ``[T]``, the mean ``||dL_T / dh_t||`` of the top layer for
      ``t = T..1`` (index 0: the last step), over windows of ``T`` characters, ``L_T`` the
      loss at a window's last step.
    """

    ids: np.ndarray
    surprisal: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    states: list
    gates: list
    features: dict
    correlations: list
    saturation: list
    gradient_flow: np.ndarray


def inspect(params: dict, cfg: ModelConfig, ids: np.ndarray, text: str | None = None,
            window: int = 128) -> Inspection:
    """Run the model over ``ids`` (int ``[N]``, ``N >= 2``) and measure it.

    Args:
      text: the characters of ``ids`` (one per id), for the text features; None (a bytes
        model's text) takes them from the ids' code points.
      window: ``T`` of the gradient flow.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) < 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integer ids [N] with N >= 2, got {ids.dtype} "
                         f"{list(ids.shape)}")
    logits, states, gates = _traced(params, cfg, ids)
    surprisal, top_ids, top_probs = _predictions(logits, ids)
    chars = text if text is not None else "".join(map(chr, ids.tolist()))
    features = text_features(chars)
    correlations = [{name: correlate(part, features) for name, part in layer.items()}
                    for layer in states]
    saturation = [{name: ((g < SATURATION).mean(0), (g > 1 - SATURATION).mean(0))
                   for name, g in layer.items()} for layer in gates]
    flow = gradient_flow(params, cfg, ids, window)
    return Inspection(ids, surprisal, top_ids, top_probs, states, gates, features,
                      correlations, saturation, flow)


def _traced(params: dict, cfg: ModelConfig, ids: np.ndarray):
    """Logits ``[N, V]`` for each character read, and each layer's states and sigmoid
    gates ``[N, H]``."""
    result = jax.jit(lambda p, t: forward(p, cfg.cell, t, None, TRACED))(params, ids[None, :])
    sigmoid = spec.SIGMOID_GATES[cfg.cell]
    states, gates = [], []
    carry_parts = get_cell(cfg.cell).state._fields
    for trace in result.traces:
        trace = {k: np.asarray(v[:, 0], np.float32) for k, v in trace.items()}  # [N, H]
        states.append({k: trace[k] for k in carry_parts})
        gates.append({k: trace[k] for k in sigmoid if k in trace})
    return np.asarray(result.logits[0]), states, gates


def _predictions(logits: np.ndarray, ids: np.ndarray):
    """Surprisal in bits of each next character, and the top predictions."""
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits[:-1], jnp.float32), axis=-1))
    surprisal = -logp[np.arange(len(ids) - 1), ids[1:]] / np.log(2)
    top_ids = np.argsort(-logp, axis=-1, kind="stable")[:, :TOP_PREDICTIONS]
    return surprisal, top_ids, np.exp(np.take_along_axis(logp, top_ids, axis=-1))


def text_features(text: str) -> dict[str, np.ndarray]:
    """Each :data:`FEATURES` entry as a number per character of ``text``: characters since
    the last newline, whether inside double quotes, the depth of open brackets ``([{``,
    whether it starts a word (a letter after a non-letter), whether it follows a newline,
    whether it is upper case."""
    values = {name: np.zeros(len(text), np.float32) for name in FEATURES}
    column, quoted, depth, previous = 0, False, 0, "\n"
    for t, char in enumerate(text):
        column = 0 if previous == "\n" else column + 1
        if char == '"':
            quoted = not quoted
        depth = max(depth + (char in "([{") - (char in ")]}"), 0)
        row = (column, quoted, depth, char.isalpha() and not previous.isalpha(),
               previous == "\n", char.isupper())
        for name, value in zip(FEATURES, row):
            values[name][t] = value
        previous = char
    return values


def correlate(activations: np.ndarray, features: dict[str, np.ndarray]) -> np.ndarray:
    """Pearson correlation of each unit (``activations [N, H]``) with each feature:
    ``[H, F]``, 0 where either is constant."""
    x = activations - activations.mean(0)
    x_norm = np.sqrt((x * x).sum(0))  # [H]
    out = np.zeros((activations.shape[1], len(features)), np.float32)
    for f, values in enumerate(features.values()):
        y = values - values.mean()
        y_norm = np.sqrt((y * y).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (x * y[:, None]).sum(0) / (x_norm * y_norm)
        out[:, f] = np.where(np.isfinite(r), r, 0.0)
    return out


def gradient_flow(params: dict, cfg: ModelConfig, ids: np.ndarray, window: int) -> np.ndarray:
    """Mean ``||dL_T/dh_t||`` of the top layer over the windows of ``window + 1`` ids the
    text holds (one window at least, shorter when the text is): ``[T]``, index 0 the last
    step. Computed with JAX on the model's own parameters, from a zero state."""
    count = max(1, (len(ids) - 1) // window)
    window = min(window, len(ids) - 1)
    batch = np.stack([ids[k * window:k * window + window + 1] for k in range(count)])
    tokens, targets = batch[:, :-1], batch[:, 1:]  # [B, T]
    last = np.zeros(tokens.shape, np.float32)
    last[:, -1] = 1.0  # the loss at each window's last step only

    def loss(offsets):
        passes = [SCAN] * (cfg.num_layers - 1) + [nudged(offsets)]
        logits = forward(params, cfg.cell, tokens, None, passes).logits
        return cross_entropy(logits, targets, last) * count  # the sum over windows

    zeros = jnp.zeros((window, count, cfg.hidden_size), params["embed"].dtype)
    grads = jax.jit(jax.grad(loss))(zeros)  # [T, B, H]
    return np.asarray(jnp.linalg.norm(grads, axis=-1).mean(axis=1))[::-1]
