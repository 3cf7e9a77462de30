"""Corpus loading, vocabulary, deterministic splits and truncated-BPTT batch streams.

Plain Python and numpy (no JAX), so the CLI validates its input before anything compiles.
"""
from __future__ import annotations

import hashlib
import math
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstm_fn.vocab import CorpusError, Vocab, check_encoding  # noqa: F401 (re-exported)
from reference_numpy.atomic import atomic_write

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


def load_corpus(spec: str | None, *, data_dir: str | Path = "data", encoding: str = "chars",
                remedy: str = "pass --vocab bytes to model its raw bytes") -> Corpus:
    """Resolve and validate a corpus; anything unusable raises CorpusError.

    Args:
      spec: None for the built-in offline corpus (Python's pydoc topics, ~465 kB); a name in
        `NAMED_CORPORA` (wins over a file of that name), kept in `data_dir`; else a file path,
        also looked for under `data_dir`.
      encoding: "chars" (UTF-8 text, one symbol per character) or "bytes" (raw bytes, any file).
      remedy: what the error for a file that is not UTF-8 text suggests.
    """
    check_encoding(encoding)
    data_dir = Path(data_dir)
    if spec is None:
        from pydoc_data.topics import topics
        name, label = "pydoc", "built-in corpus 'pydoc'"
        raw = "".join(topics[key] for key in sorted(topics)).encode("utf-8")
    elif spec in NAMED_CORPORA:
        name, label = spec, f"corpus file {str(data_dir / NAMED_CORPORA[spec].file_name)!r}"
        raw = _named_corpus_bytes(NAMED_CORPORA[spec], data_dir)
    else:
        path = _resolve_path(spec, data_dir)
        name, label = path.stem, f"corpus file {str(path)!r}"
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise CorpusError(f"cannot read {label}: {err.strerror}") from None
    if not raw:
        raise CorpusError(f"{label} is empty")
    return Corpus(name, None if encoding == "bytes" else _decode_text(raw, label, remedy), raw)


def corpus_location(spec: str | None, data_dir: str | Path = "data") -> str | None:
    """Where :func:`load_corpus` reads ``spec`` from, as an absolute path that reads the same
    from any working directory (None for the built-in corpus). Raises CorpusError for a file
    that does not exist."""
    if spec is None:
        return None
    if spec in NAMED_CORPORA:
        return str((Path(data_dir) / NAMED_CORPORA[spec].file_name).resolve())
    return str(_resolve_path(spec, Path(data_dir)).resolve())


def _resolve_path(spec: str, data_dir: Path) -> Path:
    path = Path(spec).expanduser()
    if not path.exists() and (data_dir / spec).exists():
        path = data_dir / spec
    if not path.exists():
        if path.is_symlink():
            raise CorpusError(f"corpus path is a broken symbolic link or a link loop: {spec!r}")
        elsewhere = "" if path.is_absolute() else f" (nor {str(data_dir / spec)!r})"
        raise CorpusError(f"corpus file not found: {spec!r}{elsewhere}")
    if path.is_dir():
        raise CorpusError(f"corpus path is a directory, not a file: {str(path)!r}")
    return path


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
                ) -> tuple[np.ndarray, np.ndarray, bool]:
    """The training window at `position`, counted in windows since training began.

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
    inputs = ids[: batch_size * row_len].reshape(batch_size, row_len)[:, columns]
    targets = ids[1: batch_size * row_len + 1].reshape(batch_size, row_len)[:, columns]
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


def nats_to_metrics(nats: float) -> dict[str, float]:
    """Mean nats per character -> {"loss": nats, "bpc": nats / ln 2, "perplexity": e^nats}."""
    nats = float(nats)
    return {"loss": nats, "bpc": nats / math.log(2),
            "perplexity": math.exp(nats) if nats < 700 else math.inf}
