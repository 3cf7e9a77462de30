"""Text in, text out: a prime encoded with the model's vocabulary, continued by
:func:`lstm_fn.nn.generate.generate` (which works on ids), and decoded as it streams."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np

from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.generate import generate
from lstm_fn.text.vocab import Vocab


def sample_text(params: dict, cfg: ModelConfig, vocab: Vocab, prime: str | bytes, length: int,
                *, echo_prime: bool = False, **options) -> Iterator[str]:
    """Continue ``prime`` with ``length`` tokens of one sample, yielded as text pieces.

    The prime is encoded when called (:class:`lstm_fn.errors.CorpusError` names unknown
    characters). Pieces come from ``vocab.streaming_decoder()``, so in "bytes" mode a
    character split across chunks (or between the prime and the first new bytes) comes out
    whole; the decoder is flushed at the end (an unfinished character becomes U+FFFD).
    Empty pieces are not yielded.

    Args:
      prime: text, or raw bytes for a "bytes" vocabulary.
      echo_prime: start with the prime itself.
      options: :func:`lstm_fn.nn.generate.generate`'s (``key``, ``temperature``, ...),
        except ``num_samples``, which is 1.

    Yields:
      str pieces whose concatenation is the generated text (after the prime, if echoed).
    """
    if "num_samples" in options:
        raise TypeError("sample_text draws one sample; use sample_texts for num_samples")
    prime_ids = vocab.encode(prime)
    chunks = generate(params, cfg, prime_ids, length, **options)

    def pieces() -> Iterator[str]:
        decode = vocab.streaming_decoder()
        first = [prime_ids] if echo_prime else []
        for ids in itertools.chain(first, (chunk[0] for chunk in chunks)):
            if text := decode(ids):
                yield text
        if text := decode([], final=True):
            yield text

    return pieces()


def sample_texts(params: dict, cfg: ModelConfig, vocab: Vocab, prime: str | bytes, length: int,
                 num_samples: int, *, on_chunk: Callable[[int], None] | None = None,
                 **options) -> list[str]:
    """``num_samples`` independent continuations of ``prime``, each with the prime in front,
    generated together (see :func:`sample_text` for the options); ``on_chunk`` is called
    after each chunk with the number of steps generated so far."""
    prime_ids = vocab.encode(prime)
    rows = [list(prime_ids) for _ in range(num_samples)]
    done = 0
    for ids in generate(params, cfg, prime_ids, length, num_samples=num_samples, **options):
        for row, part in zip(rows, ids):
            row.extend(part.tolist())
        done += ids.shape[1]
        if on_chunk is not None:
            on_chunk(done)
    return [vocab.decode(np.asarray(row, np.int64)) for row in rows]
