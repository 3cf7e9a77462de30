"""The conventions every part of lstm_fn agrees on: cells, gate order, parameter shapes.

The JAX cells, the numpy twin and the JSON weights format all read these constants, so a
convention is stated once. Pure Python: it uses neither numpy nor JAX itself.

With ``a = x @ w_x + b_x + h @ w_h + b_h`` split into G blocks of width H along the last axis:

- ``rnn``  (G=1):                 ``h' = tanh(a)``
- ``lstm`` (G=4, order i, f, g, o): ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
  ``h' = sigmoid(o) * tanh(c')``
- ``gru``  (G=3, order r, z, n):  ``r = sigmoid(a_r)``, ``z = sigmoid(a_z)``,
  ``n = tanh(x w_xn + b_xn + r * (h w_hn + b_hn))``, ``h' = (1 - z) * n + z * h``

These are PyTorch's nn.RNN / nn.LSTM / nn.GRU equations with the weights transposed
(``torch weight_ih_l{k} == w_x.T``), so a model moves there by transposing and copying.
"""

from __future__ import annotations

# Gate blocks along the last axis of w_x, w_h, b_x and b_h, in order.
GATES: dict[str, tuple[str, ...]] = {
    "rnn": ("a",),
    "lstm": ("i", "f", "g", "o"),
    "gru": ("r", "z", "n"),
}
CELLS = tuple(GATES)

# The gates that are sigmoids, in [0, 1] (the others, g and n, are tanh): how often these
# saturate is what `lstm-fn inspect` shows.
SIGMOID_GATES: dict[str, tuple[str, ...]] = {"rnn": (), "lstm": ("i", "f", "o"),
                                             "gru": ("r", "z")}

# Names of the parts of each layer's carry, in order: the JAX carry and the numpy carry
# are tuples with exactly these entries, each [B, H].
CARRY: dict[str, tuple[str, ...]] = {"rnn": ("h",), "lstm": ("h", "c"), "gru": ("h",)}

# The initial value of the LSTM forget-gate bias (in b_x); set by init, never added in a forward pass.
LSTM_FORGET_BIAS = 1.0

FORMAT = "lstm_fn-weights"
# The newest format version a reader here reads: 2 adds "provenance" (where a model came
# from); a file without it is written as version 1, which every reader reads.
VERSION = 2
# What "provenance" may hold, each optional: the run directory that trained the model (its
# absolute path), the step and validation loss it was saved at, the corpus's SHA-256, the
# command line, and when (ISO 8601).
PROVENANCE_KEYS = {"run_dir": str, "step": int, "val_loss": float, "corpus_sha256": str,
                   "command": str, "saved_at": str}
MODEL_KEYS = ("cell", "vocab_size", "embed_size", "hidden_size", "num_layers")
LAYER_KEYS = ("w_x", "w_h", "b_x", "b_h")
ENCODINGS = ("chars", "bytes")
# Operand precision of the JAX matmuls in training (sums are float32 either way); weights
# files are float32 whichever was used.
MATMUL_PRECISIONS = ("float32", "bfloat16")


def num_gates(cell: str) -> int:
    """Number of gate blocks G of a cell name; ValueError names an unknown cell."""
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r}: expected one of {', '.join(CELLS)}")
    return len(GATES[cell])


def gate_slice(cell: str, gate: str, hidden_size: int) -> slice:
    """Columns of gate ``gate`` in a [.., G*H] array of cell ``cell``."""
    k = GATES[cell].index(gate)
    return slice(k * hidden_size, (k + 1) * hidden_size)


def param_shapes(model: dict) -> dict:
    """Shapes of every parameter, as the same tree as the JSON ``params``.

    Args:
      model: the JSON ``model`` dict (``cell``, ``vocab_size`` V, ``embed_size`` E,
        ``hidden_size`` H, ``num_layers`` L).

    Returns:
      ``{"embed": (V, E), "layers": [{"w_x": (in_l, GH), "w_h": (H, GH), "b_x": (GH,),
      "b_h": (GH,)}, ...], "head": {"w": (H, V), "b": (V,)}}`` with ``in_0 = E``, ``in_l = H``.
    """
    V, E, H, L = (model[k] for k in ("vocab_size", "embed_size", "hidden_size", "num_layers"))
    GH = num_gates(model["cell"]) * H
    layers = [
        {"w_x": (E if l == 0 else H, GH), "w_h": (H, GH), "b_x": (GH,), "b_h": (GH,)}
        for l in range(L)
    ]
    return {"embed": (V, E), "layers": layers, "head": {"w": (H, V), "b": (V,)}}
