"""A run's settings: :class:`TrainConfig`, config files (and the ones installed with the
package), and :func:`resolve`, the one place where a run's model and training settings are
decided from its sources.

A config file is ``{"model": {...}, "train": {...}}``. What a run uses, lowest to highest:
``TrainConfig``'s and ``ModelConfig``'s defaults, the command's own defaults
(:data:`COMMAND_DEFAULTS`), the config file, the options given on the command line. A
fine-tune takes its architecture and vocabulary mode from its base model; a resume takes
everything from the run's record, except the stopping rules given again. Unknown keys,
wrong types and out-of-range values raise :class:`lstm_fn.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Callable, NamedTuple

from lstm_fn.errors import ConfigError
from lstm_fn.nn.config import ModelConfig
from reference_numpy import spec
from reference_numpy.jsontext import utf8_text

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "linear", "wsd", "exponential", "plateau")
GRADIENTS = ("autodiff", "manual")
STOPPING_RULES = ("steps", "epochs", "chars", "minutes")
# "auto": bfloat16 where this machine runs it faster (see lstm_fn.training.hardware).
PRECISIONS = ("auto", *spec.MATMUL_PRECISIONS)
# The samples printed during training are generated whole, while the run waits.
MAX_SAMPLE_LENGTH = 100_000
# The model fields a config may set, with their types; vocab_size comes from the text.
MODEL_FIELDS = {name: kind for name, kind in typing.get_type_hints(ModelConfig).items()
                if name != "vocab_size"}
# The model and train defaults of each command where they differ from ModelConfig's and
# TrainConfig's (which stay plain for the library: float32, a constant rate). A pretrain
# from the command line takes what measured best for a run of minutes to an hour on a CPU
# (docs/results.md): the GRU, a short warmup, the rate held then decayed over the last
# fifth, bfloat16 matmuls where the hardware has them. "steps" applies only when no
# stopping rule is given anywhere (config file or command line).
COMMAND_DEFAULTS = {
    "pretrain": {"model": {"cell": "gru"},
                 "train": {"steps": 5000, "schedule": "wsd", "warmup_steps": 20,
                           "matmul_precision": "auto"}},
    "fine-tune": {"model": {}, "train": {"steps": 1000, "learning_rate": 5e-4}},
}


def _positive(value) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def _non_negative(value) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def _interval(low, high, *, low_open=False, high_open=False) -> Callable:
    def check(value) -> str | None:
        ok = (value > low if low_open else value >= low) and \
            (value < high if high_open else value <= high)
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        return None if ok else f"must be in {interval}, got {value}"
    return check


def _one_of(*allowed) -> Callable:
    return lambda value: None if value in allowed else \
        f"must be one of {', '.join(allowed)}, got {value!r}"


def _sample_length(value) -> str | None:
    if value < 0:
        return f"must be >= 0, got {value}"
    if value > MAX_SAMPLE_LENGTH:
        return f"must be <= {MAX_SAMPLE_LENGTH:,} (a sample during training), got {value}"
    return None


def _freeze(parts) -> str | None:
    for part in parts:
        if part not in ("embed", "head") and not (part.isascii() and part.isdigit()):
            return f"entries are 'embed', 'head' or a layer number, got {part!r}"
    return None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the architecture.

    Stop after ``steps`` updates, ``epochs`` passes over the training split, ``chars``
    training characters (``batch_size * seq_len`` a step) or ``minutes`` of training (all
    processes of a resumed run together), whichever comes first (at least one is needed);
    ``patience`` evaluations without a better validation loss stop early. One step trains
    on ``batch_size`` parallel streams of ``seq_len`` characters. Schedules (after a linear
    warmup): ``constant``; ``cosine`` and ``linear`` (down to ``min_lr_ratio`` of the rate at
    the last step); ``wsd`` (the full rate, then linearly down over the last
    ``decay_fraction`` of the run); ``exponential`` (``decay_rate ** (step / decay_steps)``);
    ``plateau`` (times ``plateau_factor`` after ``plateau_patience`` evaluations without
    improvement). A decaying schedule bounded by ``minutes`` plans its length from the
    measured pace (:mod:`lstm_fn.training.schedule`). Each evaluation during training
    scores at most ``eval_chars`` characters of the validation split, spread over it (0: all
    of it), so a big corpus does not spend its time evaluating. ``gradients``: ``manual`` (the
    hand-written BPTT of :mod:`lstm_fn.nn.bptt`) or ``autodiff`` (``jax.grad`` of the plain
    scan); both give the same gradients. ``matmul_precision``: ``float32``, or ``bfloat16``
    operands with float32 sums for every matmul of the training step (params, optimizer and
    evaluation stay float32), or ``auto``: bfloat16 where the machine runs it faster, decided
    when the run starts and recorded. Each field's allowed values are in :data:`RULES`.
    """

    batch_size: int = 32
    seq_len: int = 128
    steps: int | None = None
    epochs: float | None = None
    chars: int | None = None
    minutes: float | None = None
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    grad_clip: float = 5.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
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
            if name != "seed" and isinstance(value, int) and value >= 2**31:  # int32 on device
                raise ConfigError(f"must be < 2**31, got {value}", f"train.{name}")
        for name, rule in RULES.items():
            value = getattr(self, name)
            if value is not None and (problem := rule(value)):
                raise ConfigError(problem, f"train.{name}")
        object.__setattr__(self, "freeze", tuple(  # "01" and "1" name the same layer
            p if p in ("embed", "head") else str(int(p)) for p in self.freeze))
        if all(getattr(self, rule) is None for rule in STOPPING_RULES):
            raise ConfigError("train needs a stopping rule: set steps, epochs, chars or minutes")


# What each TrainConfig field allows (its type is checked first); None is always allowed
# where the type admits it.
RULES: dict[str, Callable] = {
    **dict.fromkeys(("batch_size", "seq_len", "decay_steps", "plateau_patience", "eval_every",
                     "checkpoint_every", "keep_checkpoints", "steps", "epochs", "chars",
                     "minutes", "patience"), _positive),
    **dict.fromkeys(("warmup_steps", "eval_chars", "sample_every"), _non_negative),
    "sample_length": _sample_length,
    "learning_rate": _interval(0, 10, low_open=True),
    "weight_decay": _interval(0, 1),
    "momentum": _interval(0, 1, high_open=True),
    "grad_clip": _interval(0, math.inf),
    "min_lr_ratio": _interval(0, 1),
    "decay_fraction": _interval(0, 1, low_open=True),
    "decay_rate": _interval(0, 1, low_open=True),
    "plateau_factor": _interval(0, 1, low_open=True, high_open=True),
    "val_fraction": _interval(0, 0.5),
    "test_fraction": _interval(0, 0.5),
    "optimizer": _one_of(*OPTIMIZERS),
    "schedule": _one_of(*SCHEDULES),
    "vocab": _one_of(*spec.ENCODINGS),
    "gradients": _one_of(*GRADIENTS),
    "matmul_precision": _one_of(*PRECISIONS),
    "freeze": _freeze,
    "seed": lambda value: None if 0 <= value < 2**32 else f"must be in [0, 2**32), got {value}",
}
TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
MODEL_DEFAULTS = {name: getattr(ModelConfig, name) for name in MODEL_FIELDS}


def _typed(key: str, value, kind):
    """``value`` checked (and gently converted: int -> float, list -> tuple) against ``kind``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return None if value is None else _typed(key, value, args[0])
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"must be a list of strings, got {value!r}", key)
        return tuple(_typed(key, v, str) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range
            raise ConfigError("must be a finite number, got an integer too large for a "
                              "float", key) from None
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value}", key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"must be {kind.__name__}, got {value!r}", key)
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
    try:
        doc = json.loads(utf8_text(raw))
    except json.JSONDecodeError as e:
        raise ConfigError(f"config {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError as e:
        raise ConfigError(f"config {path} is not usable JSON (nested too deeply)") from None
    except ValueError as e:  # not UTF-8, or e.g. an integer with too many digits
        raise ConfigError(f"config {path} is {str(e).splitlines()[0]}"
                          if str(e).startswith("not UTF-8") else
                          f"config {path} is not usable JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path} must be a JSON object with 'model' and 'train'")
    if unknown := sorted(set(doc) - {"model", "train"}):
        raise ConfigError(f"unknown config section {unknown[0]!r}; allowed: model, train")
    for section in ("model", "train"):
        if not isinstance(doc.setdefault(section, {}), dict):
            raise ConfigError(f"config section {section!r} must be an object")
    return doc


class BaseModel(NamedTuple):
    """What a fine-tune's base model decides about the run: its architecture and vocabulary
    mode."""

    model: ModelConfig
    encoding: str


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run's resolved settings. ``model`` is the ``model`` section (every
    :class:`ModelConfig` field but ``vocab_size``, which the vocabulary gives); ``sources``
    says where each value came from (``"train.steps": "command line"``), for the record."""

    model: dict
    train: TrainConfig
    sources: dict


def resolve(command: str, file: dict, given_model: dict, given_train: dict, *,
            record: dict | None = None, base: BaseModel | None = None) -> RunConfig:
    """Decide a run's settings from every source; the precedence is in the module docstring.

    Args:
      command: ``"pretrain"`` or ``"fine-tune"`` (its :data:`COMMAND_DEFAULTS`).
      file: the config file's document (:func:`read_config_file`).
      given_model, given_train: the options given on the command line by field name
        (None: not given).
      record: the ``model`` and ``train`` sections of the run being resumed, if any: the run
        keeps them, and only its stopping rules may be given anew.
      base: the base model of a fine-tune, whose architecture and vocabulary mode it keeps.

    Raises ConfigError naming the setting for a value that is out of range, or that differs
    from what the base model or the resumed run fixes.
    """
    given_model = {k: v for k, v in given_model.items() if v is not None}
    given_train = {k: v for k, v in given_train.items() if v is not None}
    file_model = check_model_section(dict(file["model"]))
    if unknown := sorted(set(file["train"]).union(given_train) - set(TRAIN_DEFAULTS)):
        raise ConfigError(f"unknown key train.{unknown[0]}; see `lstm-fn pretrain --help`")
    layers = [("config file", file_model, file["train"]), ("command line", given_model,
                                                            given_train)]
    if record is not None:
        return _resumed(record, layers)
    defaults = dict(COMMAND_DEFAULTS[command]["train"])
    if set(STOPPING_RULES) & (set(file["train"]) | set(given_train)):
        defaults.pop("steps", None)
    layers = [("default", MODEL_DEFAULTS, TRAIN_DEFAULTS),
              (f"{command} default", COMMAND_DEFAULTS[command]["model"], defaults), *layers]
    model, train, sources = _merge(layers)
    if base is not None:
        _inherit(base, model, train, sources)
    return RunConfig(model, TrainConfig(**train), sources)


def _merge(layers) -> tuple[dict, dict, dict]:
    """The model and train values of ``(source, model, train)`` layers, later ones winning,
    and the source of each."""
    model, train, sources = {}, {}, {}
    for source, model_values, train_values in layers:
        for section, values, merged in (("model", model_values, model),
                                        ("train", train_values, train)):
            merged.update(values)
            sources.update({f"{section}.{key}": source for key in values})
    return model, train, sources


def _inherit(base: BaseModel, model: dict, train: dict, sources: dict) -> None:
    """A fine-tune keeps its base model's architecture and vocabulary mode: refuse a
    different value given for either, then take the base's."""
    for key, value in base.model.section().items():
        if key == "dropout":
            continue
        if sources[f"model.{key}"] != "default" and model[key] != value:
            raise ConfigError(f"cannot fine-tune: the base model has model.{key} = {value!r}, "
                              f"{model[key]!r} was given")
        model[key], sources[f"model.{key}"] = value, "base model"
    if sources["train.vocab"] != "default" and train["vocab"] != base.encoding:
        raise ConfigError(f"the base model uses vocab {base.encoding!r}, not "
                          f"{train['vocab']!r}; leave out --vocab or pass --vocab {base.encoding}")
    train["vocab"], sources["train.vocab"] = base.encoding, "base model"


def _resumed(record: dict, layers) -> RunConfig:
    """A resumed run's settings: its record's, with only the stopping rules given anew; any
    other value given must be the recorded one."""
    recorded = TrainConfig(**{**TRAIN_DEFAULTS, **record["train"]})  # older than a field
    model, train = dict(record["model"]), dataclasses.asdict(recorded)
    sources = {f"model.{key}": "run record" for key in model}
    sources.update({f"train.{key}": "run record" for key in train})
    for source, given_model, given_train in layers:
        for key, value in given_model.items():
            if value != model.get(key):
                raise ConfigError(f"is {model.get(key)!r} in the run, {value!r} was given",
                                  f"model.{key}", prefix="--resume: ")
        for key, value in given_train.items():
            if key in STOPPING_RULES:
                train[key], sources[f"train.{key}"] = value, source
                continue
            if key == "matmul_precision" and value == "auto":
                continue  # the run recorded what "auto" meant when it started
            value = getattr(dataclasses.replace(recorded, **{key: value}), key)  # as stored
            if value != getattr(recorded, key):
                raise ConfigError(f"is {_shown(getattr(recorded, key))} in the run, "
                                  f"{_shown(value)} was given", f"train.{key}",
                                  prefix="--resume: ")
    return RunConfig(model, TrainConfig(**train), sources)


def _shown(value) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)
