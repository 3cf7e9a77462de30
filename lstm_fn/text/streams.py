"""Splits and the streams training and evaluation read: contiguous, deterministic splits;
truncated-BPTT windows of B parallel streams; evaluation windows that score every
prediction of a split exactly once.

Plain numpy (no JAX).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from lstm_fn.errors import CorpusError


def split(ids: np.ndarray, fractions: Sequence[float] = (0.9, 0.05, 0.05),
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ids [N] into contiguous (train, val, test) at round(N * cumulative fraction).

    The same corpus always gives the same splits; a zero fraction gives an empty split.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or not all(f >= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise CorpusError(f"split fractions must be 3 numbers >= 0 summing to 1, got {fractions}")
    n = len(ids)
    train_end = round(n * fractions[0])
    val_end = n if fractions[2] == 0 else round(n * (fractions[0] + fractions[1]))
    return ids[:train_end], ids[train_end:val_end], ids[val_end:]


def check_batch_fits(n_ids: int, batch_size: int, seq_len: int, split_name: str = "train",
                     held_out: float = 0.0) -> None:
    """Raise CorpusError unless a split of n_ids tokens holds one [batch_size, seq_len] window;
    ``held_out`` (the validation and test share) is named in the advice when it is large."""
    if batch_size < 1 or seq_len < 1:
        raise CorpusError(f"--batch-size and --seq-len must be >= 1, got {batch_size}, {seq_len}")
    need = batch_size * seq_len + 1
    if n_ids < need:
        advice = "use a smaller --batch-size or --seq-len"
        if held_out >= 0.5:
            advice = (f"--val-fraction and --test-fraction hold out {held_out:.0%} of the "
                      f"corpus: lower them, or {advice}")
        raise CorpusError(f"{split_name} split has {n_ids} characters but one batch needs {need} "
                          f"(batch_size {batch_size} x seq_len {seq_len} + 1); {advice}")


def windows_per_epoch(n_ids: int, batch_size: int, seq_len: int) -> int:
    """Number of [B, T] windows per pass over B streams of L = (n_ids - 1) // B predictions."""
    return max(0, (n_ids - 1) // batch_size) // seq_len


def train_batch(ids: np.ndarray, batch_size: int, seq_len: int, position: int,
                rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray, bool]:
    """The training window at `position`, counted in windows since training began: of the
    streams ``rows`` only (a process of a multi-host run builds its own).

    Row b is the stream ids[b*L : (b+1)*L + 1], L = (len(ids) - 1) // B, cut into windows of T
    (the last L % T positions of each row and the tail past B*L + 1 are not trained on). Window
    k + 1 of a row continues window k, so the caller carries the recurrent state across them.

    Returns:
      inputs: int32 [B, T]; targets: int32 [B, T] (inputs shifted by one within the stream);
      reset: True at the first window of each epoch, where the caller zeros the state.
    """
    if position < 0:
        raise ValueError(f"position must be >= 0, got {position}")
    check_batch_fits(len(ids), batch_size, seq_len, "train")
    row_len = (len(ids) - 1) // batch_size
    window = position % windows_per_epoch(len(ids), batch_size, seq_len)
    columns = slice(window * seq_len, (window + 1) * seq_len)
    ids = np.asarray(ids)
    inputs = ids[: batch_size * row_len].reshape(batch_size, row_len)[rows, columns]
    targets = ids[1: batch_size * row_len + 1].reshape(batch_size, row_len)[rows, columns]
    return inputs.astype(np.int32), targets.astype(np.int32), window == 0


# Each stream of an evaluation starts from a zero state, and its first characters cost more
# than they would in context (~10-25 nats in all for a trained 2x256 lstm, measured): so a
# stream is at least this long, and a text under twice it is scored as one stream, exactly.
MIN_EVAL_STREAM = 50_000


def eval_streams(n_predictions: int, batch_size: int) -> int:
    """How many streams the CLI and the training loop score ``n_predictions`` in: up to
    ``batch_size`` (more are faster), each at least :data:`MIN_EVAL_STREAM` long (fewer
    are closer to reading the text as one stream, which is what the figure means)."""
    return max(1, min(batch_size, n_predictions // MIN_EVAL_STREAM))


def eval_batches(ids: np.ndarray, batch_size: int, seq_len: int,
                 max_predictions: int | None = None,
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
    """Windows that score every prediction of a split exactly once.

    The len(ids) - 1 predictions are cut into R = min(B, len(ids) - 1) contiguous rows whose
    lengths differ by at most one; each row is a stream (state carried between windows). Rows
    past R (a split shorter than B + 1 tokens) and positions past a row's end are padding:
    token 0, mask 0. Every window has shape [B, T], so one compiled function serves all.
    An empty or 1-token split yields nothing. With ``max_predictions``, each row keeps only
    its first share of them: that many predictions in all, spread over the whole split.

    Yields:
      inputs int32 [B, T], targets int32 [B, T], mask float32 [B, T], reset (True first only).
    Mean loss = sum(nats * mask) / sum(mask) over all windows.
    """
    ids = np.asarray(ids)
    n_predictions = len(ids) - 1
    if n_predictions < 1:
        return
    n_rows = min(batch_size, n_predictions)

    def shares(total: int) -> np.ndarray:  # [B]: total cut into n_rows near-equal parts
        parts = np.zeros(batch_size, dtype=np.int64)
        parts[:n_rows] = total // n_rows
        parts[: total % n_rows] += 1
        return parts

    row_lengths = shares(n_predictions)
    row_starts = np.concatenate([[0], np.cumsum(row_lengths)[:-1]])
    if max_predictions is not None and max_predictions < n_predictions:
        row_lengths = np.minimum(row_lengths, shares(max_predictions))
    n_windows = -(-int(row_lengths.max()) // seq_len)
    for window in range(n_windows):  # one window at a time: a big split is never copied whole
        offsets = np.arange(window * seq_len, (window + 1) * seq_len)
        valid = offsets[None, :] < row_lengths[:, None]  # [B, T]
        positions = np.where(valid, row_starts[:, None] + offsets[None, :], 0)
        inputs = np.where(valid, ids[positions], 0).astype(np.int32)
        targets = np.where(valid, ids[positions + 1], 0).astype(np.int32)
        yield inputs, targets, valid.astype(np.float32), window == 0
