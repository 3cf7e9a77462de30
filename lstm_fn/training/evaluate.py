"""Exact evaluation: the mean loss of a model over every prediction of a text, each counted
once, with the state carried from window to window."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import numpy as np

from lstm_fn.nn.bptt import MANUAL
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.model import cross_entropy, forward, initial_state
from lstm_fn.text.streams import eval_batches, eval_streams
from lstm_fn.training import cluster
from lstm_fn.training.state import reset_carry


class Score(NamedTuple):
    """A text's score: mean nats per character, bits per character, perplexity, and how it
    was read (``predictions`` in ``streams`` contiguous streams)."""

    loss: float
    bpc: float
    perplexity: float
    predictions: int
    streams: int

    @classmethod
    def of(cls, nats: float, predictions: int = 0, streams: int = 0) -> Score:
        nats = float(nats)
        return cls(nats, nats / math.log(2), math.exp(nats) if nats < 700 else math.inf,
                   predictions, streams)


@partial(jax.jit, static_argnums=1)
def _eval_step(params, cfg, carry, inputs, targets, mask, reset):
    # The hand-written layer's forward: the numbers of the plain scan, faster on the CPU.
    logits, carry, _ = forward(params, cfg.cell, inputs, reset_carry(carry, reset), MANUAL)
    return cross_entropy(logits, targets, mask) * mask.sum(), carry


def evaluate(params: dict, cfg: ModelConfig, ids: np.ndarray, batch_size: int,
             seq_len: int, max_chars: int | None = None,
             on_window: Callable[[int], None] | None = None) -> float:
    """Exact mean loss in nats per character over a whole split.

    The split (int ids ``[N]``) is read as ``batch_size`` contiguous streams with the state
    carried from window to window, every prediction counted once (see
    :func:`lstm_fn.text.streams.eval_batches`). ``max_chars`` scores only the first
    ``max_chars / batch_size`` predictions of each stream (the same ones every time, spread
    over the split). ``on_window`` is called after each window with the number of
    predictions scored so far. Returns nan for a split too short to predict anything. In a
    run of several processes with at least as many streams as processes, each scores its
    share of the streams and the sums are added up (every process gets the same mean).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"ids must be integer ids [N], got {ids.dtype} {list(ids.shape)}")
    # No wider than the split needs (the same rows, so the same numbers): a --seq-len or
    # --batch-size far beyond a short text would only allocate padding.
    n_predictions = max(len(ids) - 1, 1)
    batch_size = min(batch_size, n_predictions)
    seq_len = min(seq_len, -(-n_predictions // batch_size))
    mine = cluster.share(batch_size)  # this process's streams: all, but in a run of several
    # Committed, as the carries _eval_step returns are: jit compiles again when an argument
    # changes from uncommitted to committed. So one program serves every window and call.
    where = getattr(params["embed"], "sharding", None) or jax.local_devices()[0]
    params, carry = jax.device_put(
        (params, initial_state(cfg, mine.stop - mine.start, params["embed"].dtype)), where)
    total, count, done = 0.0, 0.0, 0
    for inputs, targets, mask, reset in eval_batches(ids, batch_size, seq_len, max_chars):
        if mine.stop > mine.start:
            nll_sum, carry = _eval_step(params, cfg, carry, inputs[mine], targets[mine],
                                        mask[mine], reset)
            total += float(nll_sum)
            count += float(mask[mine].sum())
        done += int(mask.sum())
        if on_window is not None:
            on_window(done)
    if mine != slice(0, batch_size):  # the sums of all processes' streams, once
        total, count = cluster.gather([total, count]).sum(axis=0)
    return total / count if count else float("nan")


def score(params: dict, cfg: ModelConfig, ids: np.ndarray, max_streams: int, seq_len: int,
          max_chars: int | None = None,
          on_window: Callable[[int], None] | None = None) -> Score:
    """:func:`evaluate` in as many streams as :func:`lstm_fn.text.streams.eval_streams`
    chooses (at most ``max_streams``, each long enough that starting from a zero state
    costs next to nothing), as a :class:`Score`."""
    predictions = max(len(ids) - 1, 0)
    streams = eval_streams(predictions, max_streams)
    nats = evaluate(params, cfg, ids, streams, seq_len, max_chars, on_window)
    return Score.of(nats, predictions, streams)
