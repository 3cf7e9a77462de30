"""Save and load models as JSON weights (format version 1, see :mod:`reference_numpy.weights`).

The JSON reading, validation and atomic writing live in ``reference_numpy`` so that a file
loads in numpy alone; this module converts to and from :class:`ModelConfig`, :class:`Vocab`
and JAX arrays.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from lstm_fn.vocab import Vocab
from lstm_fn.config import ModelConfig
from reference_numpy.weights import WeightsError, read_weights, write_weights

__all__ = ["WeightsError", "save_weights", "load_weights"]


def save_weights(path: str | os.PathLike, params: dict, cfg: ModelConfig, vocab: Vocab) -> None:
    """Write ``params`` with their architecture and vocabulary, atomically: a kill at any
    moment leaves ``path`` either the previous whole file or the new one.

    Raises WeightsError (nothing written) when a parameter is not finite or a shape
    disagrees with ``cfg``.
    """
    write_weights(path, jax.device_get(params), cfg.architecture(), list(vocab.symbols),
                  vocab.encoding)


def load_weights(path: str | os.PathLike) -> tuple[dict, ModelConfig, Vocab]:
    """Read a weights file, validating everything first: ``(params, cfg, vocab)``.

    Raises WeightsError naming the key at fault; nothing is returned half-loaded.
    """
    try:
        params, model, symbols, encoding = read_weights(path)
        cfg, vocab = ModelConfig(**model), Vocab.from_symbols(symbols, encoding)
    except ValueError as error:  # WeightsError, or a model lstm_fn cannot run (vocab_size 1)
        raise WeightsError(f"weights file {str(path)!r}: {error}") from None
    return jax.tree.map(jnp.asarray, params), cfg, vocab
