"""lstm_fn.text.streams: splits, training windows and evaluation batches (no JAX)."""
import math
from collections import Counter

import numpy as np
import pytest

from lstm_fn.errors import CorpusError
from lstm_fn.text.streams import (MIN_EVAL_STREAM, check_batch_fits, eval_batches, eval_streams,
                                  split, train_batch, windows_per_epoch)


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1001])
def test_split_is_contiguous_with_expected_sizes(n):
    ids = np.arange(n)
    train, val, test = split(ids)
    np.testing.assert_array_equal(np.concatenate([train, val, test]), ids)
    assert len(train) == round(0.9 * n) and len(val) == round(0.95 * n) - round(0.9 * n)


def test_zero_fraction_gives_empty_split():
    train, val, test = split(np.arange(1000), (0.7, 0.3, 0.0))
    assert (len(train), len(val), len(test)) == (700, 300, 0)
    assert len(split(np.arange(10), (1.0, 0.0, 0.0))[1]) == 0


@pytest.mark.parametrize("fractions", [(0.9, 0.1, 0.1), (1.1, -0.05, -0.05), (0.5, 0.5),
                                       (float("nan"), 0.5, 0.5)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(CorpusError, match="fractions"):
        split(np.arange(10), fractions)


# ----------------------------------------------------------------------- training batches

def reference_streams(ids, batch_size):
    """Row b = ids[b*L : (b+1)*L + 1], built with a Python loop."""
    row_len = (len(ids) - 1) // batch_size
    return [ids[b * row_len:(b + 1) * row_len + 1] for b in range(batch_size)]


@pytest.mark.parametrize("n, batch_size, seq_len", [(101, 4, 5), (1000, 3, 7), (9, 1, 8),
                                                    (80, 4, 10)])  # n % B == 0: L is 19, not 20
def test_train_batches_walk_each_stream(n, batch_size, seq_len):
    ids = np.arange(n) * 3 % 97  # distinct neighbours, repeated values
    streams = reference_streams(ids, batch_size)
    n_windows = windows_per_epoch(n, batch_size, seq_len)
    assert n_windows == ((n - 1) // batch_size) // seq_len >= 1
    for position in range(3 * n_windows):
        inputs, targets, reset = train_batch(ids, batch_size, seq_len, position)
        assert inputs.shape == targets.shape == (batch_size, seq_len)
        assert inputs.dtype == targets.dtype == np.int32
        assert reset == (position % n_windows == 0)
        start = (position % n_windows) * seq_len
        for b, stream in enumerate(streams):  # targets are inputs shifted by one in the stream
            np.testing.assert_array_equal(inputs[b], stream[start:start + seq_len])
            np.testing.assert_array_equal(targets[b], stream[start + 1:start + seq_len + 1])


def test_consecutive_windows_continue_the_stream():
    ids = np.arange(403)  # token value = corpus position
    batch_size, seq_len = 4, 10
    for position in range(windows_per_epoch(len(ids), batch_size, seq_len) - 1):
        now, now_targets, _ = train_batch(ids, batch_size, seq_len, position)
        after, _, reset = train_batch(ids, batch_size, seq_len, position + 1)
        assert not reset
        np.testing.assert_array_equal(after[:, 0], now[:, -1] + 1)
        np.testing.assert_array_equal(after[:, 0], now_targets[:, -1])


def test_position_past_an_epoch_wraps():
    ids = np.arange(403)
    n_windows = windows_per_epoch(len(ids), 4, 10)
    for position in (0, 3, n_windows - 1):
        first = train_batch(ids, 4, 10, position)
        later = train_batch(ids, 4, 10, position + 5 * n_windows)
        np.testing.assert_array_equal(first[0], later[0])
        np.testing.assert_array_equal(first[1], later[1])
        assert first[2] == later[2]


@pytest.mark.parametrize("batch_size, seq_len", [(1, 1), (4, 50), (7, 3)])
def test_check_batch_fits_at_the_boundary(batch_size, seq_len):
    need = batch_size * seq_len + 1
    check_batch_fits(need, batch_size, seq_len, "train")
    train_batch(np.arange(need), batch_size, seq_len, 0)
    with pytest.raises(CorpusError, match=f"val split has {need - 1} characters .* needs {need}"):
        check_batch_fits(need - 1, batch_size, seq_len, "val")
    with pytest.raises(CorpusError, match="--batch-size or --seq-len"):
        train_batch(np.arange(need - 1), batch_size, seq_len, 0)


def test_nonpositive_sizes_are_refused():
    with pytest.raises(CorpusError, match=">= 1"):
        check_batch_fits(100, 0, 5)


# ------------------------------------------------------------------------ eval batches

@pytest.mark.parametrize("n, batch_size, seq_len", [
    (1000, 4, 16), (1001, 4, 16), (17, 4, 4), (3, 8, 5), (2, 1, 1), (64, 3, 100)])
def test_eval_batches_cover_each_prediction_once(n, batch_size, seq_len):
    ids = np.arange(n)  # unique tokens: a (input, target) pair names its position
    seen = Counter()
    windows = list(eval_batches(ids, batch_size, seq_len))
    for index, (inputs, targets, mask, reset) in enumerate(windows):
        assert inputs.shape == targets.shape == mask.shape == (batch_size, seq_len)
        assert inputs.dtype == targets.dtype == np.int32 and mask.dtype == np.float32
        assert reset == (index == 0)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert not inputs[mask == 0].any() and not targets[mask == 0].any()
        seen.update(zip(inputs[mask == 1].tolist(), targets[mask == 1].tolist()))
    assert seen == Counter(zip(ids[:-1].tolist(), ids[1:].tolist()))
    # Each row is one contiguous stream across windows, so carried state stays meaningful.
    rows = np.concatenate([w[0] for w in windows], axis=1)
    masks = np.concatenate([w[2] for w in windows], axis=1)
    for row, row_mask in zip(rows, masks):
        kept = row[row_mask == 1]
        assert (np.diff(kept) == 1).all() and (row_mask[:len(kept)] == 1).all()


@pytest.mark.parametrize("n, batch_size, limit", [(1000, 4, 101), (1000, 4, 3), (50, 8, 49),
                                                  (50, 8, 1000), (7, 1, 2)])
def test_eval_batches_with_a_limit_score_the_start_of_each_row(n, batch_size, limit):
    """``max_predictions`` keeps the rows where they were and shortens each one, so the
    scored characters are spread over the whole split and are the same every time."""
    ids = np.arange(n)
    whole = list(eval_batches(ids, batch_size, 4))
    capped = list(eval_batches(ids, batch_size, 4, max_predictions=limit))
    assert sum(int(mask.sum()) for _, _, mask, _ in capped) == min(limit, n - 1)
    rows = lambda windows: [row[mask == 1] for row, mask in zip(  # noqa: E731
        np.concatenate([w[0] for w in windows], axis=1),
        np.concatenate([w[2] for w in windows], axis=1))]
    for full, short in zip(rows(whole), rows(capped)):
        assert (short == full[:len(short)]).all()
        assert len(full) - len(short) >= 0


def test_eval_batches_with_repeated_tokens_count_pairs():
    ids = np.array([0, 1, 0, 1, 1, 0, 2, 2, 2, 0])
    seen = Counter()
    for inputs, targets, mask, _ in eval_batches(ids, 3, 2):
        seen.update(zip(inputs[mask == 1].tolist(), targets[mask == 1].tolist()))
    assert seen == Counter(zip(ids[:-1].tolist(), ids[1:].tolist()))


def test_eval_batches_of_too_short_split_yield_nothing():
    assert list(eval_batches(np.arange(1), 4, 8)) == []
    assert list(eval_batches(np.arange(0), 4, 8)) == []


def test_eval_streams_are_long_and_at_most_the_batch():
    assert eval_streams(1, 32) == 1
    assert eval_streams(2 * MIN_EVAL_STREAM - 1, 32) == 1  # one stream: exact
    assert eval_streams(2 * MIN_EVAL_STREAM, 32) == 2
    assert eval_streams(10**9, 32) == 32 and eval_streams(10**9, 1) == 1
