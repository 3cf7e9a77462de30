"""lstm_fn.data: corpus validation, named corpora and the built-in corpus (no network, no JAX)."""
import dataclasses
import hashlib
from pathlib import Path

import pytest

from lstm_fn.text import corpus as data
from lstm_fn.errors import CorpusError
from lstm_fn.text.corpus import load_corpus
from lstm_fn.text.vocab import Vocab

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


def test_a_path_that_exists_wins_over_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, b"here", "same.txt")
    (tmp_path / "data").mkdir()
    write(tmp_path / "data", b"in data", "same.txt")
    assert load_corpus("same.txt", data_dir=tmp_path / "data").text == "here"


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


def test_fetch_of_the_file_with_more_after_it_is_refused(tmp_path, monkeypatch):
    """A download that starts as the corpus but goes on is not the corpus."""
    expected = b"the corpus\n"
    fake_remote(monkeypatch, write(tmp_path, expected + b"and more", "source.txt"), expected)
    with pytest.raises(CorpusError, match="does not match"):
        load_corpus("tinyshakespeare", data_dir=tmp_path / "data")


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


def test_absolute_missing_path_and_link_loop_are_named_once(tmp_path):
    missing = tmp_path / "gone.txt"
    with pytest.raises(CorpusError, match=r"not found: '[^']*gone.txt'$"):
        load_corpus(str(missing), data_dir=tmp_path)
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    with pytest.raises(CorpusError, match="broken symbolic link or a link loop"):
        load_corpus(str(loop), data_dir=tmp_path)
