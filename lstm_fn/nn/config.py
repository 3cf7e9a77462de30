"""``ModelConfig``: the architecture of a model, a pure description (no file I/O)."""

from __future__ import annotations

import dataclasses
import math
import numbers

from lstm_fn.errors import ConfigError
from reference_numpy import spec

# Each layer is its own part of the traced program: thousands would take minutes to compile.
MAX_LAYERS = 256
# The fields a config file or the command line may set; vocab_size comes from the text.
ARCHITECTURE_FIELDS = ("cell", "embed_size", "hidden_size", "num_layers")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a model. ``dropout`` is the drop probability applied to every
    layer's output sequence during training (0 disables it); it is not part of a weights
    file. Bad values raise :class:`lstm_fn.errors.ConfigError` naming the field."""

    cell: str = "lstm"
    vocab_size: int = 65
    embed_size: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0

    def __post_init__(self):
        if self.cell not in spec.CELLS:
            raise ConfigError(f"must be one of {', '.join(spec.CELLS)}, got {self.cell!r}",
                              "model.cell")
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"must be an integer >= 1, got {value!r}", f"model.{name}")
            object.__setattr__(self, name, int(value))  # numpy integers too, stored as int
        if self.num_layers > MAX_LAYERS:
            raise ConfigError(f"must be <= {MAX_LAYERS} (each layer is a separate part of the "
                              f"compiled program), got {self.num_layers}", "model.num_layers")
        if self.vocab_size < 2:
            raise ConfigError(f"must be >= 2, got {self.vocab_size}", "model.vocab_size")
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real)
                or not 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"must be a number in [0, 1), got {self.dropout!r}",
                              "model.dropout")
        object.__setattr__(self, "dropout", float(self.dropout))

    def architecture(self) -> dict:
        """The JSON ``model`` dict: the fields a weights file records."""
        return {k: getattr(self, k) for k in spec.MODEL_KEYS}

    def section(self) -> dict:
        """The config-file ``model`` section: every field but ``vocab_size``."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "vocab_size"}

    @property
    def num_params(self) -> int:
        """Number of trainable scalars."""
        shapes = spec.param_shapes(self.architecture())
        return sum(math.prod(shape) for shape in (
            shapes["embed"], *shapes["head"].values(),
            *(shape for layer in shapes["layers"] for shape in layer.values())))
