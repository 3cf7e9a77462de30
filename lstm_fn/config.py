"""Configuration: the model's and the training's frozen dataclasses, JSON config files
(and the ones installed with the package) and command-line overrides.

A config file is ``{"model": {...}, "train": {...}}``; command-line options override single
fields on top of it, and the resolved config is saved with every run. Unknown keys, wrong
types and out-of-range values raise :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
import numbers
import types
import typing
from pathlib import Path

from reference_numpy import spec

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "exponential", "plateau")
GRADIENTS = ("autodiff", "manual")
STOPPING_RULES = ("steps", "epochs", "minutes")
# The samples printed during training are generated whole, while the run waits.
MAX_SAMPLE_LENGTH = 100_000
# The model fields a config may set; vocab_size always comes from the corpus.
MODEL_FIELDS = {"cell": str, "embed_size": int, "hidden_size": int, "num_layers": int,
                "dropout": float}


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key."""


# Each layer is its own part of the traced program: thousands would take minutes to compile.
MAX_LAYERS = 256


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a model. ``dropout`` is the drop probability applied to every
    layer's output sequence during training (0 disables it); it is not part of a weights file."""

    cell: str = "lstm"
    vocab_size: int = 65
    embed_size: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0

    def __post_init__(self):
        spec.num_gates(self.cell)
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"model.{name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers too, stored as int
        if self.num_layers > MAX_LAYERS:
            raise ValueError(f"model.num_layers must be <= {MAX_LAYERS} (each layer is a "
                             f"separate part of the compiled program), got {self.num_layers}")
        if self.vocab_size < 2:
            raise ValueError(f"model.vocab_size must be >= 2, got {self.vocab_size}")
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real)
                or not 0.0 <= self.dropout < 1.0):
            raise ValueError(f"model.dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))

    def architecture(self) -> dict:
        """The JSON ``model`` dict: the fields a weights file records."""
        return {k: getattr(self, k) for k in spec.MODEL_KEYS}

    @property
    def num_params(self) -> int:
        """Number of trainable scalars."""
        shapes = spec.param_shapes(self.architecture())
        return sum(math.prod(shape) for shape in (
            shapes["embed"], *shapes["head"].values(),
            *(shape for layer in shapes["layers"] for shape in layer.values())))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the architecture.

    Stop after ``steps`` updates, ``epochs`` passes over the training split or ``minutes`` of
    wall-clock time, whichever comes first (at least one is needed); ``patience`` evaluations
    without a better validation loss stop early. One step trains on ``batch_size`` parallel
    streams of ``seq_len`` characters. Schedules: ``constant``; ``cosine`` (linear warmup,
    then cosine down to ``min_lr_ratio`` of the rate at the last step); ``exponential``
    (``decay_rate ** (step / decay_steps)``, smooth); ``plateau`` (times ``plateau_factor`` after
    ``plateau_patience`` evaluations without improvement). Each evaluation during training
    scores at most ``eval_chars`` characters of the validation split, spread over it (0: all
    of it), so a big corpus does not spend its time evaluating. ``gradients``: ``manual`` (the
    hand-written BPTT of :mod:`lstm_fn.bptt`, measured faster for every cell) or
    ``autodiff`` (``jax.grad`` of the plain scan); both give the same gradients.
    ``matmul_precision``: ``float32``, or ``bfloat16`` operands with float32 sums for every
    matmul of the training step (faster on CPUs with AMX and on GPUs; params, optimizer and
    evaluation stay float32).
    """

    batch_size: int = 32
    seq_len: int = 128
    steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    grad_clip: float = 5.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_rate: float = 0.97
    decay_steps: int = 1000
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    patience: int | None = None
    eval_every: int = 200
    eval_chars: int = 500_000
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 1000
    sample_length: int = 200
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    vocab: str = "chars"
    gradients: str = "manual"
    matmul_precision: str = "float32"
    freeze: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        for name, kind in typing.get_type_hints(TrainConfig).items():
            value = _typed(f"train.{name}", getattr(self, name), kind)
            object.__setattr__(self, name, value)
            if name != "seed" and isinstance(value, int) and value >= 2**31:
                raise ConfigError(f"train.{name} must be < 2**31, got {value}")  # int32 on device
        positive = ("batch_size", "seq_len", "decay_steps", "plateau_patience", "eval_every",
                    "checkpoint_every", "keep_checkpoints", "steps", "epochs", "minutes",
                    "patience")
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"train.{name} must be > 0, got {value}")
        _in_range("train.learning_rate", self.learning_rate, 0, 10, low_open=True)
        _in_range("train.weight_decay", self.weight_decay, 0, 1)
        _in_range("train.momentum", self.momentum, 0, 1, high_open=True)
        _in_range("train.grad_clip", self.grad_clip, 0, math.inf)
        _in_range("train.min_lr_ratio", self.min_lr_ratio, 0, 1)
        _in_range("train.decay_rate", self.decay_rate, 0, 1, low_open=True)
        _in_range("train.plateau_factor", self.plateau_factor, 0, 1, low_open=True, high_open=True)
        _in_range("train.val_fraction", self.val_fraction, 0, 0.5)
        _in_range("train.test_fraction", self.test_fraction, 0, 0.5)
        for name in ("warmup_steps", "eval_chars", "sample_every", "sample_length"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.sample_length > MAX_SAMPLE_LENGTH:
            raise ConfigError(f"train.sample_length must be <= {MAX_SAMPLE_LENGTH:,} (a sample "
                              f"during training), got {self.sample_length}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("vocab", spec.ENCODINGS), ("gradients", GRADIENTS),
                              ("matmul_precision", spec.MATMUL_PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        for part in self.freeze:
            if part not in ("embed", "head") and not (part.isascii() and part.isdigit()):
                raise ConfigError(f"train.freeze entries are 'embed', 'head' or a layer number, "
                                  f"got {part!r}")
        object.__setattr__(self, "freeze", tuple(  # "01" and "1" name the same layer
            p if p in ("embed", "head") else str(int(p)) for p in self.freeze))
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"train.seed must be in [0, 2**32), got {self.seed}")
        if self.steps is None and self.epochs is None and self.minutes is None:
            raise ConfigError("train needs a stopping rule: set steps, epochs or minutes")


def _in_range(key, value, low, high, *, low_open=False, high_open=False):
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must be in {interval}, got {value}")


def _typed(key: str, value, kind):
    """``value`` checked (and gently converted: int -> float, list -> tuple) against ``kind``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return None if value is None else _typed(key, value, args[0])
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return tuple(_typed(key, v, str) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range
            raise ConfigError(f"{key} must be a finite number, got an integer too large "
                              "for a float") from None
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    return value


def check_model_section(model: dict) -> dict:
    """The ``model`` section with known keys only, each of the right type."""
    for key, value in model.items():
        if key not in MODEL_FIELDS:
            hint = " (it comes from the corpus)" if key == "vocab_size" else ""
            raise ConfigError(f"unknown key model.{key}{hint}; allowed: {', '.join(MODEL_FIELDS)}")
        model[key] = _typed(f"model.{key}", value, MODEL_FIELDS[key])
    return model


# Configs installed with the package, named without folder and suffix: `--config quick`.
BUILT_IN_CONFIGS = Path(__file__).parent / "configs"


def config_file(name: str | Path) -> Path:
    """The file ``--config name`` means: that path, or where it names no file (a folder
    ``quick/`` in the working directory included), the config of that name installed with
    the package (``quick``, ``shakespeare``)."""
    built_in = BUILT_IN_CONFIGS / f"{name}.json"
    if not Path(name).is_file() and Path(name).name == str(name) and built_in.is_file():
        return built_in
    return Path(name)


def read_config_file(path: str | Path | None) -> dict:
    """``{"model": {...}, "train": {...}}`` from a JSON file (both sections optional)."""
    if path is None:
        return {"model": {}, "train": {}}
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        names = ", ".join(sorted(p.stem for p in BUILT_IN_CONFIGS.glob("*.json")))
        hint = f" (built-in configs: {names})" if Path(path).name == str(path) else ""
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}{hint}") from None
    body = raw.removeprefix(codecs.BOM_UTF8)  # as corpora and weights files: a BOM is dropped
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text "
                          f"(byte {len(raw) - len(body) + e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer with too many digits
        raise ConfigError(f"config {path} is not usable JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path} must be a JSON object with 'model' and 'train'")
    if unknown := sorted(set(doc) - {"model", "train"}):
        raise ConfigError(f"unknown config section {unknown[0]!r}; allowed: model, train")
    for section in ("model", "train"):
        if not isinstance(doc.setdefault(section, {}), dict):
            raise ConfigError(f"config section {section!r} must be an object")
    return doc


def resolve(doc: dict, model_overrides: dict, train_overrides: dict,
            defaults: dict | None = None) -> tuple[dict, TrainConfig]:
    """Merge defaults < config file < command line; returns ``(model dict, TrainConfig)``.

    ``None`` in the overrides means "not given on the command line".
    """
    model = check_model_section({**doc["model"],
                                 **{k: v for k, v in model_overrides.items() if v is not None}})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train = {**(defaults or {}), **doc["train"],
             **{k: v for k, v in train_overrides.items() if v is not None}}
    if unknown := sorted(set(train) - fields):
        raise ConfigError(f"unknown key train.{unknown[0]}; see `lstm-fn pretrain --help`")
    return model, TrainConfig(**train)
