"""The vocabulary: token ids <-> characters ("chars") or bytes ("bytes").

Plain Python and numpy (no JAX).
"""
from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lstm_fn.errors import CorpusError
from reference_numpy.spec import ENCODINGS

# Characters encoded per piece by `Vocab.encode` (16 MB of code points at a time).
ENCODE_CHUNK = 1 << 22


def check_encoding(encoding: str) -> None:
    """Refuse a vocabulary mode other than "chars" or "bytes"."""
    if encoding not in ENCODINGS:
        raise CorpusError(f"unknown vocabulary encoding {encoding!r}; use 'chars' or 'bytes'")


@dataclass(frozen=True)
class Vocab:
    """Token id i is `symbols[i]`; encoding "chars" (characters) or "bytes" (id b = byte b,
    stored as chr(b)). Build through `from_text`, `bytes` or `from_symbols`, which validate."""
    symbols: tuple[str, ...]
    encoding: str = "chars"

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The sorted distinct characters of a corpus; fewer than 2 is refused."""
        symbols = tuple(sorted(set(text)))
        if len(symbols) < 2:
            raise CorpusError(f"corpus has {len(symbols)} distinct character(s) {list(symbols)}; "
                              "a language model needs at least 2")
        return cls.from_symbols(symbols)

    @classmethod
    def bytes(cls) -> Vocab:
        return cls(tuple(map(chr, range(256))), "bytes")

    @classmethod
    def from_symbols(cls, symbols: Sequence[str], encoding: str = "chars") -> Vocab:
        """Validate a stored symbol list (e.g. from a weights file)."""
        check_encoding(encoding)
        symbols = tuple(symbols)
        if not symbols:
            raise CorpusError("vocabulary is empty")
        seen: set[str] = set()
        for index, symbol in enumerate(symbols):
            if not isinstance(symbol, str) or len(symbol) != 1:
                raise CorpusError(f"vocabulary symbol {index} is {symbol!r}, not one character")
            if "\ud800" <= symbol <= "\udfff":
                raise CorpusError(f"vocabulary symbol {index} is a lone surrogate "
                                  f"(U+{ord(symbol):04X}), not a character UTF-8 can store")
            if symbol in seen:
                raise CorpusError(f"vocabulary symbol {symbol!r} appears twice (again at {index})")
            seen.add(symbol)
        if encoding == "bytes" and symbols != cls.bytes().symbols:
            raise CorpusError("a 'bytes' vocabulary must be exactly chr(0)..chr(255) in order")
        return cls(symbols, encoding)

    def __len__(self) -> int:
        return len(self.symbols)

    @cached_property
    def _code_points(self) -> np.ndarray:
        """uint32 [V]: code point of each id."""
        return np.array([ord(s) for s in self.symbols], dtype="<u4")

    @cached_property
    def _ids_by_code_point(self) -> np.ndarray:
        """int32 [max code point + 1]: the id of each code point, -1 where none."""
        table = np.full(int(self._code_points.max()) + 1, -1, dtype=np.int32)
        table[self._code_points] = np.arange(len(self), dtype=np.int32)
        return table

    def encode(self, data: str | bytes) -> np.ndarray:
        """Text (or raw bytes in "bytes" mode) -> ids int32 [N]; unknown characters raise.

        Long texts are encoded in pieces of ``ENCODE_CHUNK`` characters, so the scratch
        memory stays small next to the result (a 100 MB corpus needs ~0.4 GB of ids)."""
        if self.encoding == "bytes":
            raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            return np.frombuffer(raw, dtype=np.uint8).astype(np.int32)
        if not isinstance(data, str):
            raise TypeError(f"a 'chars' vocabulary encodes str, got {type(data).__name__}")
        table = self._ids_by_code_point
        ids = np.empty(len(data), dtype=np.int32)
        unknown: set[int] = set()
        for start in range(0, len(data), ENCODE_CHUNK):
            piece = data[start:start + ENCODE_CHUNK].encode("utf-32-le", "surrogatepass")
            code_points = np.frombuffer(piece, dtype="<u4")
            found = table[np.minimum(code_points, len(table) - 1)]
            found[code_points >= len(table)] = -1
            ids[start:start + len(found)] = found
            if (found < 0).any():
                unknown.update(np.unique(code_points[found < 0]).tolist())
        if unknown:
            shown = ", ".join(repr(chr(c)) for c in sorted(unknown)[:20])
            raise CorpusError(f"{len(unknown)} character(s) not in the vocabulary: {shown}"
                              + (" ..." if len(unknown) > 20 else ""))
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """ids [N] -> text; in "bytes" mode invalid UTF-8 becomes U+FFFD."""
        ids = _checked_ids(ids, len(self))
        if self.encoding == "bytes":
            return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        return self._code_points[ids].tobytes().decode("utf-32-le", "surrogatepass")

    def missing(self, text: str) -> list[str]:
        """Sorted characters of `text` not in the vocabulary (always [] in "bytes" mode)."""
        if self.encoding == "bytes":
            return []
        return sorted(set(text) - set(self.symbols))

    def extend(self, text: str) -> tuple[Vocab, list[str]]:
        """Append the characters of `text` that are missing, after the old ones so old ids keep
        their meaning. Returns (new vocab, added characters)."""
        added = self.missing(text)
        return Vocab.from_symbols(self.symbols + tuple(added), self.encoding), added

    def streaming_decoder(self) -> Callable[..., str]:
        """A function `decode_chunk(ids, final=False) -> str` for text produced piece by piece;
        in "bytes" mode a multi-byte character split across chunks comes out whole."""
        if self.encoding == "chars":
            return lambda ids, final=False: self.decode(ids)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def decode_chunk(ids: Sequence[int] | np.ndarray, final: bool = False) -> str:
            return utf8.decode(_checked_ids(ids, 256).astype(np.uint8).tobytes(), final=final)
        return decode_chunk


def _checked_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """ids as int64 [N], refusing any outside [0, vocab_size)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise CorpusError(f"token ids must be in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
    return ids
