"""lstm_fn.data.Vocab: encoding, decoding and extending vocabularies (no JAX)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lstm_fn.errors import CorpusError
from lstm_fn.text.vocab import Vocab


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
    monkeypatch.setattr("lstm_fn.text.vocab.ENCODE_CHUNK", 4)
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


@pytest.mark.parametrize("surrogate", ["\ud800", "\udfff"])
def test_lone_surrogates_are_not_symbols(surrogate):
    with pytest.raises(CorpusError, match="lone surrogate"):
        Vocab.from_text("ab" + surrogate)


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


