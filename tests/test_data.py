"""lstm_fn.data: corpus validation, vocabulary, splits and batch streams (no network, no JAX)."""
import dataclasses
import hashlib
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lstm_fn import data
from lstm_fn.data import (CorpusError, Vocab, check_batch_fits, eval_batches, load_corpus,
                          nats_to_metrics, split, train_batch, windows_per_epoch)

# The repository's parent folder holds shared/ (a checkout elsewhere simply skips these tests).
SHARED_SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Point every named corpus at a local URL that does not exist, so no test can download."""
    for name, remote in list(data.NAMED_CORPORA.items()):
        offline = dataclasses.replace(remote, url=(tmp_path / "offline" / name).as_uri())
        monkeypatch.setitem(data.NAMED_CORPORA, name, offline)


def write(tmp_path: Path, raw: bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


# ---------------------------------------------------------------------------- corpus loading

@pytest.mark.parametrize("raw, expected", [
    (b"", "is empty"),
    (b" \n\t\r\n  ", "only whitespace"),
    (b"abc\x00def", "NUL byte at offset 3"),
    (b"ok\nline two caf\xe9 au lait", "not valid UTF-8 at byte 15 (line 2)"),
    (b"\xff\xfeh\x00i\x00", "NUL byte"),  # UTF-16 looks binary
])
def test_bad_file_contents_are_refused(tmp_path, raw, expected):
    path = write(tmp_path, raw)
    with pytest.raises(CorpusError, match="corpus.txt") as err:
        load_corpus(str(path))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_binary_and_non_utf8_suggest_bytes_vocab(tmp_path):
    for raw in (b"\x00\x01\x02", b"abc\x80"):
        with pytest.raises(CorpusError, match="--vocab bytes"):
            load_corpus(str(write(tmp_path, raw)))


def test_missing_path_and_directory_are_named(tmp_path):
    with pytest.raises(CorpusError, match="not found: 'nope.txt'"):
        load_corpus("nope.txt", data_dir=tmp_path)
    with pytest.raises(CorpusError, match="is a directory"):
        load_corpus(str(tmp_path))


def test_unknown_encoding_is_refused(tmp_path):
    with pytest.raises(CorpusError, match="'utf-16'"):
        load_corpus(str(write(tmp_path, b"ab")), encoding="utf-16")


def test_bom_dropped_and_newlines_normalized(tmp_path):
    corpus = load_corpus(str(write(tmp_path, b"\xef\xbb\xbfone\r\ntwo\rthree\n")))
    assert corpus.text == "one\ntwo\nthree\n"
    assert corpus.name == "corpus"
    assert corpus.raw.startswith(b"\xef\xbb\xbf")


def test_relative_name_falls_back_to_data_dir(tmp_path):
    write(tmp_path, "héllo wörld".encode(), "mine.txt")
    assert load_corpus("mine.txt", data_dir=tmp_path).text == "héllo wörld"


def test_bytes_mode_takes_any_file_but_not_an_empty_one(tmp_path):
    raw = b"\x00\xff\xfe\r\nabc\x80"
    corpus = load_corpus(str(write(tmp_path, raw)), encoding="bytes")
    assert corpus.text is None and corpus.raw == raw and corpus.content == raw
    with pytest.raises(CorpusError, match="is empty"):
        load_corpus(str(write(tmp_path, b"", "empty.bin")), encoding="bytes")


def test_builtin_corpus_is_offline_and_large():
    corpus = load_corpus(None)
    assert corpus.name == "pydoc"
    assert len(corpus.raw) > 400_000
    assert corpus.text == load_corpus(None).text  # deterministic order


# -------------------------------------------------------------------------- named corpora

def fake_remote(monkeypatch, source: Path, expected: bytes) -> None:
    """Make "tinyshakespeare" download `source` and expect the size and hash of `expected`."""
    remote = dataclasses.replace(data.NAMED_CORPORA["tinyshakespeare"], url=source.as_uri(),
                                 size=len(expected), sha256=hashlib.sha256(expected).hexdigest())
    monkeypatch.setitem(data.NAMED_CORPORA, "tinyshakespeare", remote)


def test_fetch_writes_verified_file_atomically(tmp_path, monkeypatch):
    expected = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    fake_remote(monkeypatch, write(tmp_path, expected, "source.txt"), expected)
    data_dir = tmp_path / "data"
    corpus = load_corpus("tinyshakespeare", data_dir=data_dir)
    assert corpus.raw == expected and corpus.name == "tinyshakespeare"
    assert sorted(p.name for p in data_dir.iterdir()) == ["tinyshakespeare.txt"]  # no temp left
    write(tmp_path, b"changed", "source.txt")
    assert load_corpus("tinyshakespeare", data_dir=data_dir).raw == expected  # fetched once


def test_fetch_of_wrong_file_is_refused_and_not_saved(tmp_path, monkeypatch):
    fake_remote(monkeypatch, write(tmp_path, b"not the corpus", "source.txt"), b"the corpus")
    data_dir = tmp_path / "data"
    with pytest.raises(CorpusError, match="does not match") as err:
        load_corpus("tinyshakespeare", data_dir=data_dir)
    assert str((data_dir / "tinyshakespeare.txt").resolve()) in str(err.value)
    assert not (data_dir / "tinyshakespeare.txt").exists()


def test_offline_says_how_to_place_the_file(tmp_path):
    data_dir = tmp_path / "data"
    with pytest.raises(CorpusError, match="could not download") as err:
        load_corpus("tinyshakespeare", data_dir=data_dir)
    message = str(err.value)
    assert data.NAMED_CORPORA["tinyshakespeare"].url in message
    assert str((data_dir / "tinyshakespeare.txt").resolve()) in message


def test_wrong_local_copy_is_refused(tmp_path):
    write(tmp_path, b"some other play\n", "tinyshakespeare.txt")
    with pytest.raises(CorpusError, match="not the expected tinyshakespeare.txt"):
        load_corpus("tinyshakespeare", data_dir=tmp_path)


@pytest.mark.skipif(not SHARED_SHAKESPEARE.exists(), reason="no shared tinyshakespeare copy")
def test_real_tinyshakespeare_fetched_from_local_url(tmp_path, monkeypatch):
    real = data.NAMED_CORPORA["tinyshakespeare"]
    monkeypatch.setitem(data.NAMED_CORPORA, "tinyshakespeare",
                        dataclasses.replace(real, url=SHARED_SHAKESPEARE.as_uri()))
    corpus = load_corpus("tinyshakespeare", data_dir=tmp_path)
    assert len(corpus.raw) == 1_115_394 and len(Vocab.from_text(corpus.text)) == 65
    assert load_corpus("tinyshakespeare", data_dir=tmp_path).raw == corpus.raw  # local copy ok


# ------------------------------------------------------------------------------ vocabulary

@given(st.text(max_size=200))
def test_chars_round_trip(text):
    vocab = Vocab.from_text(text + "ab")
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert [vocab.symbols[i] for i in ids] == list(text)


@given(st.binary(max_size=200))
def test_bytes_round_trip(raw):
    vocab = Vocab.bytes()
    ids = vocab.encode(raw)
    assert bytes(ids.astype(np.uint8)) == raw
    assert vocab.decode(ids) == raw.decode("utf-8", errors="replace")


def test_encode_in_pieces_is_encode_at_once(monkeypatch):
    """Long texts are encoded piece by piece: same ids, and unknown characters from every
    piece are named once."""
    text = "ab\u00e9\u4e00\U0001f600\U0010ffff" * 7
    vocab = Vocab.from_text(text)
    whole = vocab.encode(text)
    monkeypatch.setattr("lstm_fn.vocab.ENCODE_CHUNK", 4)
    np.testing.assert_array_equal(vocab.encode(text), whole)
    with pytest.raises(CorpusError, match=r"^3 character\(s\) not in the vocabulary: 'x', "
                                          "'\u2603', '\\\\U000f0000'$"):
        vocab.encode("ab" + "\u2603" + "abab" * 3 + "x" + "\U000f0000" + "\u2603")


def test_from_text_is_sorted_and_refuses_one_symbol():
    assert Vocab.from_text("hello").symbols == ("e", "h", "l", "o")
    with pytest.raises(CorpusError, match="1 distinct character"):
        Vocab.from_text("aaaa")


def test_encode_names_unknown_characters():
    vocab = Vocab.from_text("abc")
    with pytest.raises(CorpusError, match=r"2 character\(s\) not in the vocabulary: 'x', 'é'"):
        vocab.encode("abxéa")
    assert vocab.missing("abxéa") == ["x", "é"]
    assert Vocab.bytes().missing("é\x00") == []


def test_extend_keeps_old_ids():
    vocab = Vocab.from_text("cab")
    extended, added = vocab.extend("zebra!")
    assert added == ["!", "e", "r", "z"]
    assert extended.symbols[:3] == vocab.symbols
    np.testing.assert_array_equal(extended.encode("abc"), vocab.encode("abc"))
    assert extended.decode(extended.encode("zebra!")) == "zebra!"


@pytest.mark.parametrize("symbols, encoding, expected", [
    (["a", "b", "a"], "chars", "'a' appears twice"),
    (["a", "bc"], "chars", "symbol 1 is 'bc'"),
    ([], "chars", "empty"),
    ([chr(i) for i in range(255)], "bytes", "chr\\(0\\)..chr\\(255\\)"),
    (["a", "b"], "words", "'words'"),
])
def test_from_symbols_validates(symbols, encoding, expected):
    with pytest.raises(CorpusError, match=expected):
        Vocab.from_symbols(symbols, encoding)


def test_lone_surrogates_are_not_symbols():
    with pytest.raises(CorpusError, match="lone surrogate"):
        Vocab.from_text("ab\ud800")


def test_from_symbols_accepts_stored_vocabs():
    assert Vocab.from_symbols(["\n", " ", "a"]) == Vocab(("\n", " ", "a"), "chars")
    assert Vocab.from_symbols(Vocab.bytes().symbols, "bytes") == Vocab.bytes()


def test_decode_refuses_out_of_range_ids():
    with pytest.raises(CorpusError, match=r"\[0, 2\)"):
        Vocab.from_text("ab").decode([0, 2])


def test_streaming_decoder_reassembles_split_characters():
    text = "aé€😀z"
    ids = Vocab.bytes().encode(text)
    for cut in range(len(ids) + 1):
        decode_chunk = Vocab.bytes().streaming_decoder()
        assert decode_chunk(ids[:cut]) + decode_chunk(ids[cut:], final=True) == text
    chars = Vocab.from_text(text)
    decode_chunk = chars.streaming_decoder()
    assert decode_chunk(chars.encode(text[:2])) + decode_chunk(chars.encode(text[2:])) == text


# ---------------------------------------------------------------------------------- splits

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


@pytest.mark.parametrize("n, batch_size, seq_len", [(101, 4, 5), (1000, 3, 7), (9, 1, 8)])
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


def test_nats_to_metrics():
    metrics = nats_to_metrics(math.log(2))
    assert metrics["loss"] == pytest.approx(math.log(2))
    assert metrics["bpc"] == pytest.approx(1.0)
    assert metrics["perplexity"] == pytest.approx(2.0)
    assert nats_to_metrics(1e6)["perplexity"] == math.inf
