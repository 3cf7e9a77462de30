"""The weights under PyTorch's names, both ways, in numpy (PyTorch itself only where asked).

A weights file's layer ``l`` is ``nn.RNN / nn.LSTM / nn.GRU`` layer ``l`` with the matrices
transposed (torch computes ``x @ W.T``), in the same gate order::

    weight_ih_l{l} = w_x.T    weight_hh_l{l} = w_h.T    bias_ih_l{l} = b_x    bias_hh_l{l} = b_h

and the model around it is ``embed`` (``nn.Embedding``, the same ``[V, E]`` matrix) and
``head`` (``nn.Linear``: ``weight = head.w.T``, ``bias = head.b``). :func:`torch_module`
builds that module; with ``batch_first=True`` it maps tokens ``[B, T]`` to logits
``[B, T, V]``, the numbers of :func:`reference_numpy.forward`.
"""

from __future__ import annotations

import numpy as np

from . import spec
from .weights import WeightsError, _check_model, _check_params

# The class in torch.nn that computes each cell as the spec says (a cell without one has no
# PyTorch module, though its weights still convert by name).
TORCH_CLASSES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def to_torch(params: dict, model: dict) -> dict[str, np.ndarray]:
    """``params`` (the JSON tree) -> a state dict of :func:`torch_module`, numpy arrays."""
    model = _check_model(dict(model))
    params = _check_params(params, spec.param_shapes(model))
    state = {"embed.weight": params["embed"]}
    for l, layer in enumerate(params["layers"]):
        state.update({f"rnn.weight_ih_l{l}": layer["w_x"].T,
                      f"rnn.weight_hh_l{l}": layer["w_h"].T,
                      f"rnn.bias_ih_l{l}": layer["b_x"], f"rnn.bias_hh_l{l}": layer["b_h"]})
    state.update({"head.weight": params["head"]["w"].T, "head.bias": params["head"]["b"]})
    return {name: np.ascontiguousarray(array, np.float32) for name, array in state.items()}


def from_torch(state_dict, model: dict) -> dict:
    """A state dict of :func:`torch_module` (tensors or arrays) -> ``params``, validated
    against ``model`` (a missing name or a wrong shape raises :class:`WeightsError`)."""
    model = _check_model(dict(model))

    def get(name: str) -> np.ndarray:
        if name not in state_dict:
            raise WeightsError(f"the state dict has no {name!r}")
        value = state_dict[name]
        return np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)

    params = {"embed": get("embed.weight"),
              "layers": [{"w_x": get(f"rnn.weight_ih_l{l}").T,
                          "w_h": get(f"rnn.weight_hh_l{l}").T,
                          "b_x": get(f"rnn.bias_ih_l{l}"), "b_h": get(f"rnn.bias_hh_l{l}")}
                         for l in range(model["num_layers"])],
              "head": {"w": get("head.weight").T, "b": get("head.bias")}}
    return _check_params(params, spec.param_shapes(model))


def torch_module(model: dict, params: dict | None = None):
    """A ``torch.nn.Module``: ``forward(tokens [B, T], state=None) -> (logits [B, T, V],
    state)``, ``state`` being torch's own (``h`` or ``(h, c)``, each ``[L, B, H]``); loaded
    with ``params`` when given. Needs PyTorch, imported here only."""
    import torch

    model = _check_model(dict(model))
    if model["cell"] not in TORCH_CLASSES:
        raise ValueError(f"PyTorch has no module for the {model['cell']!r} cell")
    recurrent = getattr(torch.nn, TORCH_CLASSES[model["cell"]])

    class CharModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(model["vocab_size"], model["embed_size"])
            self.rnn = recurrent(model["embed_size"], model["hidden_size"], model["num_layers"],
                                 batch_first=True)
            self.head = torch.nn.Linear(model["hidden_size"], model["vocab_size"])

        def forward(self, tokens, state=None):
            hs, state = self.rnn(self.embed(tokens), state)
            return self.head(hs), state

    net = CharModel()
    if params is not None:
        net.load_state_dict({name: torch.from_numpy(array)
                             for name, array in to_torch(params, model).items()})
    return net
