"""lstm_fn: recurrent language models (rnn, lstm, gru) as pure JAX functions.

    cfg = ModelConfig(cell="lstm", vocab_size=65, embed_size=64, hidden_size=256, num_layers=2)
    params = init(jax.random.key(0), cfg)
    carry = initial_state(cfg, batch_size)
    logits, carry = apply(params, cfg, tokens, carry)        # tokens int32 [B, T] -> [B, T, V]
    loss_value, carry = loss(params, cfg, tokens, targets, carry)

The names below, and the submodules (``lstm_fn.train``, ``lstm_fn.sample``, ...), are
imported on first use, so the command line starts (and answers ``--help``) without JAX.
"""

__version__ = "0.1.0"

# Each public name and the module that defines it.
_HOMES = {
    "CELLS": "cells", "HiddenState": "cells", "LSTMState": "cells",
    "ModelConfig": "config", "Vocab": "vocab",
    "apply": "model", "dropout_masks": "model", "init": "model", "initial_state": "model",
    "loss": "model",
    "WeightsError": "weights", "load_weights": "weights", "save_weights": "weights",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    import importlib

    if name in _HOMES:
        value = getattr(importlib.import_module(f"lstm_fn.{_HOMES[name]}"), name)
    else:
        try:
            value = importlib.import_module(f"lstm_fn.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"lstm_fn.{name}":
                raise
            raise AttributeError(f"module 'lstm_fn' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_HOMES})
