"""lstm_fn: recurrent language models (rnn, lstm, gru) as pure JAX functions.

    cfg = ModelConfig(cell="lstm", vocab_size=65, embed_size=64, hidden_size=256, num_layers=2)
    params = init(jax.random.key(0), cfg)
    carry = initial_state(cfg, batch_size)
    logits, carry = apply(params, cfg, tokens, carry)        # tokens int32 [B, T] -> [B, T, V]
    loss_value, carry = loss(params, cfg, tokens, targets, carry)

The layers, each importing only from the ones before it: :mod:`lstm_fn.nn` (the model, pure
JAX) and :mod:`lstm_fn.text` (vocabulary, corpora, streams); :mod:`lstm_fn.config`,
:mod:`lstm_fn.weights` and :mod:`lstm_fn.sampling`; :mod:`lstm_fn.training`;
:mod:`lstm_fn.runs`; :mod:`lstm_fn.cli`. The names below are imported on first use, so the
command line starts (and answers ``--help``) without JAX.
"""

__version__ = "0.1.0"

# Each public name and the module that defines it.
_HOMES = {
    "CELLS": "nn.cells", "HiddenState": "nn.cells", "LSTMState": "nn.cells",
    "ModelConfig": "nn.config",
    "apply": "nn.model", "cross_entropy": "nn.model", "dropout_masks": "nn.model",
    "forward": "nn.model", "init": "nn.model", "initial_state": "nn.model", "loss": "nn.model",
    "manual_loss": "nn.bptt", "generate": "nn.generate",
    "Vocab": "text.vocab", "load_corpus": "text.corpus",
    "TrainConfig": "config",
    "WeightsError": "weights", "load_weights": "weights", "save_weights": "weights",
    "sample_text": "sampling",
    "LstmFnError": "errors", "CorpusError": "errors", "ConfigError": "errors",
    "RunError": "errors",
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
