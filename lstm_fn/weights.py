"""Save and load models as JSON weights files.

The format (its reading, validation and atomic writing) lives in
:mod:`reference_numpy.weights`, so that a file loads in numpy alone; this module converts to
and from :class:`ModelConfig`, :class:`Vocab` and JAX arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_fn.nn.config import ModelConfig
from lstm_fn.text.vocab import Vocab
from reference_numpy.weights import WeightsError, read_weights_file, write_weights

__all__ = ["Model", "WeightsError", "save_weights", "load_model", "load_weights"]


class Model(NamedTuple):
    """A model as a weights file holds it: params, architecture, vocabulary, and where it
    came from (``provenance``, see :data:`reference_numpy.spec.PROVENANCE_KEYS`; ``{}`` when
    the file does not say)."""

    params: dict
    cfg: ModelConfig
    vocab: Vocab
    provenance: dict


def save_weights(path: str | os.PathLike, params: dict, cfg: ModelConfig,
                 vocab: Vocab | Sequence[str], provenance: dict | None = None) -> None:
    """Write ``params`` with their architecture and vocabulary, atomically: a kill at any
    moment leaves ``path`` either the previous whole file or the new one.

    Args:
      params: the params tree (:func:`lstm_fn.init`), JAX or numpy arrays.
      cfg: the architecture; ``cfg.vocab_size`` must be the vocabulary's length.
      vocab: a :class:`Vocab`, or any sequence of one-character strings (``list("abc")``,
        ``"abc"``): the character of each token id, a "chars" vocabulary.
      provenance: where the model came from (:data:`reference_numpy.spec.PROVENANCE_KEYS`);
        a file with it is format version 2.

    Raises WeightsError (nothing written) when a parameter is not finite, a shape disagrees
    with ``cfg`` or the vocabulary is not one of distinct characters.
    """
    if not isinstance(vocab, Vocab):
        try:
            vocab = Vocab.from_symbols(vocab)
        except (ValueError, TypeError) as error:
            raise WeightsError(f"vocab: {error}") from None
    write_weights(path, jax.device_get(params), cfg.architecture(), list(vocab.symbols),
                  vocab.encoding, provenance)


def load_weights(path: str | os.PathLike) -> tuple[dict, ModelConfig, Vocab]:
    """Read a weights file, validating everything first: ``(params, cfg, vocab)``.

    Raises WeightsError naming the file and the key at fault; nothing is returned
    half-loaded.
    """
    return load_model(path)[:3]


def load_model(path: str | os.PathLike) -> Model:
    """:func:`load_weights` with the file's provenance."""
    try:
        params, model, symbols, encoding, provenance = read_weights_file(path)
        cfg, vocab = ModelConfig(**model), Vocab.from_symbols(symbols, encoding)
    except ValueError as error:  # WeightsError, or a model lstm_fn cannot run (vocab_size 1)
        raise WeightsError(f"weights file {str(path)!r}: {error}") from None
    return Model(jax.tree.map(jnp.asarray, params), cfg, vocab, provenance)
