"""Plain-numpy twin of lstm_fn: forward and hand-written backpropagation through time.

An independent oracle for the JAX model: imports nothing but numpy, the standard library
and its own ``spec`` (``interop.torch_module`` imports PyTorch when called). The per-step math of each cell is in ``cells``; the time loop, stacking,
loss and BPTT in ``model``; finite differences in ``gradcheck``; text generation in
``sample``; PyTorch's names for the weights in ``interop``.
"""

from . import spec
from .gradcheck import finite_difference_grads, relative_error
from .interop import from_torch, to_torch, torch_module
from .model import forward, hidden_grads, loss, loss_and_grads, zero_carry
from .sample import next_token_probs, sample

__all__ = [
    "spec",
    "forward",
    "loss",
    "loss_and_grads",
    "hidden_grads",
    "zero_carry",
    "finite_difference_grads",
    "relative_error",
    "sample",
    "next_token_probs",
    "to_torch",
    "from_torch",
    "torch_module",
]
