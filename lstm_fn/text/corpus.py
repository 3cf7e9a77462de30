"""Corpora: the built-in one, named ones fetched once and verified, and text files, read
and validated as text (or as raw bytes).

Plain Python (no JAX), so the CLI validates its input before anything compiles.
"""
from __future__ import annotations

import hashlib
import stat
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lstm_fn.errors import CorpusError
from lstm_fn.text.vocab import check_encoding
from reference_numpy.atomic import atomic_write

# Where corpus names are looked up, and named corpora are kept once fetched.
DATA_DIR = Path("data")
BINARY_SNIFF_BYTES = 64 * 1024
DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class RemoteCorpus:
    """A named corpus kept in `data_dir/file_name`, fetched once from `url` and hash-checked."""
    file_name: str
    url: str
    size: int
    sha256: str


# Tests replace entries here (e.g. with a file:// url) so they never touch the network.
NAMED_CORPORA = {
    "tinyshakespeare": RemoteCorpus(
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        1_115_394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
}


@dataclass(frozen=True)
class Corpus:
    """name: "pydoc", a named corpus or the file's stem; raw: the bytes as read; text: the
    decoded text ("chars" mode: BOM dropped, newlines made "\\n"), None in "bytes" mode."""
    name: str
    text: str | None
    raw: bytes

    @property
    def content(self) -> str | bytes:
        """What `Vocab.encode` takes: the text in "chars" mode, the raw bytes in "bytes" mode."""
        return self.raw if self.text is None else self.text


def load_corpus(source: str | None, *, data_dir: str | Path = DATA_DIR, encoding: str = "chars",
                remedy: str = "pass --vocab bytes to model its raw bytes") -> Corpus:
    """Resolve and validate a corpus; anything unusable raises CorpusError.

    Args:
      source: None for the built-in offline corpus (Python's pydoc topics, ~465 kB); a name in
        `NAMED_CORPORA` (wins over a file of that name), kept in `data_dir`; else a file path,
        also looked for under `data_dir`.
      encoding: "chars" (UTF-8 text, one symbol per character) or "bytes" (raw bytes, any file).
      remedy: what the error for a file that is not UTF-8 text suggests.
    """
    check_encoding(encoding)
    data_dir = Path(data_dir)
    if source is None:
        from pydoc_data.topics import topics
        name, label = "pydoc", "built-in corpus 'pydoc'"
        raw = "".join(topics[key] for key in sorted(topics)).encode("utf-8")
    elif source in NAMED_CORPORA:
        name, label = source, f"corpus file {str(data_dir / NAMED_CORPORA[source].file_name)!r}"
        raw = _named_corpus_bytes(NAMED_CORPORA[source], data_dir)
    else:
        path = _resolve_path(source, data_dir)
        name, label = path.stem, f"corpus file {str(path)!r}"
        raw = _read_file(path, label)
    if not raw:
        raise CorpusError(f"{label} is empty")
    return Corpus(name, None if encoding == "bytes" else _decode_text(raw, label, remedy), raw)


def corpus_location(source: str | None, data_dir: str | Path = DATA_DIR) -> str | None:
    """Where :func:`load_corpus` reads ``source`` from, as an absolute path that reads the same
    from any working directory (None for the built-in corpus). Raises CorpusError for a file
    that does not exist."""
    if source is None:
        return None
    if source in NAMED_CORPORA:
        return str((Path(data_dir) / NAMED_CORPORA[source].file_name).resolve())
    return str(_resolve_path(source, Path(data_dir)).resolve())


def _resolve_path(source: str, data_dir: Path) -> Path:
    path = Path(source).expanduser()
    if not path.exists() and (data_dir / source).exists():
        path = data_dir / source
    if not path.exists():
        if path.is_symlink():
            raise CorpusError(f"corpus path is a broken symbolic link or a link loop: {source!r}")
        elsewhere = "" if path.is_absolute() else f" (nor {str(data_dir / source)!r})"
        raise CorpusError(f"corpus file not found: {source!r}{elsewhere}")
    if path.is_dir():
        raise CorpusError(f"corpus path is a directory, not a file: {str(path)!r}")
    kind = stat.S_IFMT(path.stat().st_mode)
    if kind in _NOT_A_TEXT:
        raise CorpusError(f"corpus path {str(path)!r} is {_NOT_A_TEXT[kind]}, not a file "
                          "holding a text")
    return path


# Files that are no text to train on: their reads never end (/dev/zero) or mean something else.
_NOT_A_TEXT = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket"}
# A corpus read from a pipe (`lstm-fn pretrain <(zcat corpus.gz)`) is read up to this size.
MAX_PIPE_BYTES = 1 << 30
PIPE_CHUNK = 1 << 20


def _read_file(path: Path, label: str) -> bytes:
    """The bytes of a regular file, or of a pipe up to :data:`MAX_PIPE_BYTES` (read in
    pieces, so Ctrl-C stops it between any two)."""
    try:
        if not stat.S_ISFIFO(path.stat().st_mode):
            return path.read_bytes()
        with path.open("rb") as pipe:
            pieces, size = [], 0
            while size <= MAX_PIPE_BYTES and (piece := pipe.read(PIPE_CHUNK)):
                pieces.append(piece)
                size += len(piece)
    except OSError as err:
        raise CorpusError(f"cannot read {label}: {err.strerror}") from None
    if size > MAX_PIPE_BYTES:
        raise CorpusError(f"{label} is a pipe that gave more than {MAX_PIPE_BYTES:,} bytes; "
                          "save the text to a file and train on that")
    return b"".join(pieces)


def plain_newlines(text: str) -> str:
    """``text`` without a leading BOM and with CRLF / lone CR as "\\n": Notepad's BOM and
    Windows newlines would otherwise become symbols of their own."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _decode_text(raw: bytes, label: str, remedy: str) -> str:
    """UTF-8 bytes -> text with the BOM dropped and CRLF / lone CR turned into "\\n"."""
    nul = raw.find(b"\0", 0, BINARY_SNIFF_BYTES)
    if nul >= 0:
        raise CorpusError(f"{label} has a NUL byte at offset {nul}: it looks like a binary (or "
                          f"UTF-16) file; {remedy}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise CorpusError(f"{label} is not valid UTF-8 at byte {err.start} (line {line}): "
                          f"{raw[err.start:err.start + 8]!r}; re-save it as UTF-8 or "
                          f"{remedy}") from None
    text = plain_newlines(text)
    if not text.strip():
        raise CorpusError(f"{label} contains only whitespace")
    return text


def _named_corpus_bytes(remote: RemoteCorpus, data_dir: Path) -> bytes:
    """Bytes of a named corpus: the verified local copy, else downloaded, verified and saved."""
    dest = data_dir / remote.file_name
    by_hand = f"download {remote.url} by hand and save it as {str(dest.resolve())!r}"
    if dest.exists():
        try:
            raw = dest.read_bytes()
        except OSError as err:
            raise CorpusError(f"cannot read {str(dest)!r}: {err.strerror}") from None
        if _digest(raw) != (remote.size, remote.sha256):
            raise CorpusError(f"{str(dest)!r} is not the expected {remote.file_name} ({len(raw)} "
                              f"bytes, want {remote.size} with sha256 {remote.sha256[:16]}...); "
                              f"delete it to re-download or {by_hand}; pass a path to use your own")
        return raw
    try:
        with urllib.request.urlopen(remote.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            raw = response.read(remote.size + 1)  # a wrong file need not be read to its end
    except (OSError, ValueError) as err:
        raise CorpusError(f"could not download {remote.file_name} ({err}); {by_hand}") from None
    if _digest(raw) != (remote.size, remote.sha256):
        raise CorpusError(f"downloaded {remote.file_name} does not match ({len(raw)} bytes, want "
                          f"{remote.size} with sha256 {remote.sha256[:16]}...); {by_hand}")
    try:
        atomic_write(dest, raw)
    except OSError as err:
        raise CorpusError(f"could not save {str(dest)!r} ({err.strerror}); {by_hand}") from None
    return raw


def _digest(raw: bytes) -> tuple[int, str]:
    return len(raw), hashlib.sha256(raw).hexdigest()
