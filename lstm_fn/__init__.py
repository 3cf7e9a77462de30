"""lstm_fn: recurrent language models (rnn, lstm, gru) as pure JAX functions.

    cfg = ModelConfig(cell="lstm", vocab_size=65, embed_size=64, hidden_size=256, num_layers=2)
    params = init(jax.random.key(0), cfg)
    carry = initial_state(cfg, batch_size)
    logits, carry = apply(params, cfg, tokens, carry)        # tokens int32 [B, T] -> [B, T, V]
    loss_value, carry = loss(params, cfg, tokens, targets, carry)
"""

from lstm_fn.cells import CELLS, HiddenState, LSTMState
from lstm_fn.vocab import Vocab
from lstm_fn.model import ModelConfig, apply, dropout_masks, init, initial_state, loss
from lstm_fn.weights import WeightsError, load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "CELLS", "HiddenState", "LSTMState", "ModelConfig", "Vocab", "WeightsError",
    "apply", "dropout_masks", "init", "initial_state", "load_weights", "loss", "save_weights",
]
