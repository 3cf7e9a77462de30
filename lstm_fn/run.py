"""A training run in a run directory: pretrain and fine-tune are this one loop.

``run_dir`` holds ``config.json`` (the resolved config, the vocabulary, the corpus),
``checkpoints/`` (orbax, for exact resume), ``metrics.jsonl`` (one object per evaluation)
and ``loss.png``; the best model by validation loss is written as JSON weights to ``out``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import shutil
from pathlib import Path

import jax
import numpy as np

from lstm_fn import checkpoint, data
from lstm_fn.config import ConfigError, TrainConfig
from lstm_fn.model import ModelConfig, init
from lstm_fn.loop import RunResult, log, train_loop
from lstm_fn.train import init_state
from lstm_fn.vocab import Vocab
from reference_numpy.atomic import atomic_write

# Options that may change when a run is resumed: they say when to stop, not how to train.
RESUMABLE = ("steps", "epochs", "minutes")


@dataclasses.dataclass
class RunSpec:
    """What to run. ``model`` holds the architecture fields given (``cell``, sizes, dropout);
    ``base`` is a weights file to fine-tune from (its architecture is kept)."""

    corpus: str | None
    model: dict
    train: TrainConfig
    run_dir: Path
    out: Path
    resume: bool = False
    data_dir: Path = Path("data")
    base: tuple | None = None  # (params, ModelConfig, Vocab) loaded from --from
    train_given: frozenset = frozenset()  # train fields set explicitly (checked on resume)


def model_section(cfg: ModelConfig) -> dict:
    """The config-file ``model`` section of ``cfg`` (vocab_size comes from the vocabulary)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "vocab_size"}


def _prepare_dir(spec: RunSpec) -> dict | None:
    """The saved config of a run being resumed; refuses to start over an existing run."""
    config_path = spec.run_dir / "config.json"
    if spec.resume:
        if not config_path.exists():
            raise ConfigError(f"--resume: {str(spec.run_dir)!r} holds no run (no config.json)")
        return json.loads(config_path.read_text(encoding="utf-8"))
    if config_path.exists() or checkpoint.all_steps(spec.run_dir / "checkpoints"):
        raise ConfigError(f"run directory {str(spec.run_dir)!r} already holds a run; pass "
                          "--resume to continue it or choose another --run-dir")
    return None


def _resumed_config(spec: RunSpec, saved: dict) -> tuple[dict, TrainConfig]:
    """The saved run's model and train config, with only the stopping rules overridable."""
    for key, value in spec.model.items():
        if saved["model"].get(key) != value:
            raise ConfigError(f"--resume: model.{key} is {saved['model'].get(key)!r} in the run, "
                              f"{value!r} was given")
    train = dict(saved["train"])
    given = dataclasses.asdict(spec.train)
    for key, value in given.items():
        value = list(value) if isinstance(value, tuple) else value
        if key not in RESUMABLE and value != train[key] and key in spec.train_given:
            raise ConfigError(f"--resume: train.{key} is {train[key]!r} in the run, "
                              f"{value!r} was given")
    train.update({k: given[k] for k in RESUMABLE if k in spec.train_given})
    return saved["model"], TrainConfig(**train)


def grow_vocab(params: dict, cfg: ModelConfig, extra: int, key: jax.Array) -> dict:
    """Append ``extra`` token ids: new embedding rows drawn like the old ones, new output
    columns zero with the lowest existing bias (a rare-character prior); old ids unchanged."""
    embed, head = np.asarray(params["embed"]), params["head"]
    new_rows = np.asarray(jax.random.normal(key, (extra, cfg.embed_size))) * embed.std()
    return {**params,
            "embed": np.concatenate([embed, new_rows.astype(embed.dtype)]),
            "head": {"w": np.concatenate([head["w"], np.zeros((cfg.hidden_size, extra),
                                                               np.float32)], axis=1),
                     "b": np.concatenate([head["b"], np.full(extra, np.min(head["b"]),
                                                             np.float32)])}}


def _model_and_vocab(spec: RunSpec, saved: dict | None, corpus: data.Corpus, seed: int):
    """``(model dict, vocab, initial params or None)`` for a fresh, resumed or fine-tune run.

    The initial params of a fine-tune are the base model's, grown by the new characters;
    a resumed fine-tune rebuilds them the same way in case no checkpoint was written yet.
    """
    if saved is not None:
        vocab = Vocab.from_symbols(saved["vocab"], saved["encoding"])
        if spec.base is None:
            return saved["model"], vocab, None
        params, base_cfg, base_vocab = spec.base
        extra = len(vocab) - len(base_vocab)
        if extra:
            params = grow_vocab(params, base_cfg, extra, jax.random.key(seed))
        return saved["model"], vocab, params
    if spec.base is None:
        vocab = Vocab.bytes() if spec.train.vocab == "bytes" else Vocab.from_text(corpus.text)
        return spec.model, vocab, None
    params, base_cfg, base_vocab = spec.base
    if base_vocab.encoding != spec.train.vocab:
        raise ConfigError(f"the base model uses vocab {base_vocab.encoding!r}, "
                          f"not {spec.train.vocab!r}; pass --vocab {base_vocab.encoding}")
    arch = model_section(base_cfg)
    for key, value in spec.model.items():
        if key != "dropout" and arch[key] != value:
            raise ConfigError(f"cannot fine-tune: the base model has model.{key} = "
                              f"{arch[key]!r}, {value!r} was given")
    vocab, added = base_vocab.extend(corpus.text or "")
    if added:
        log(f"vocabulary: added {len(added)} new character(s): "
            + " ".join(repr(c) for c in added[:40]))
        params = grow_vocab(params, base_cfg, len(added), jax.random.key(seed))
    return {**arch, "dropout": spec.model.get("dropout", 0.0)}, vocab, params


def _check_output_room(spec: RunSpec, cfg: ModelConfig) -> None:
    """Fail before training when the outputs cannot be written."""
    for folder in (spec.out.parent, spec.run_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(f"cannot create the output folder {str(folder)!r}: "
                          f"{error.strerror or error}") from None
        if not os.access(folder, os.W_OK):
            raise OSError(f"cannot write to {str(folder)!r}: permission denied")
    # JSON ~12 bytes per parameter; each checkpoint ~3 float32 copies (params, Adam moments).
    needed = cfg.num_params * (12 + 12 * (spec.train.keep_checkpoints + 1)) + (1 << 20)
    free = shutil.disk_usage(spec.run_dir).free
    if free < needed:
        raise OSError(f"not enough disk space in {str(spec.run_dir)!r}: {free >> 20} MiB free, "
                      f"this run needs about {needed >> 20} MiB")


def _remove_stale_temp_files(spec: RunSpec) -> None:
    """Delete the temp files of atomic writes cut short by a kill -9 (``.NAME.*.tmp``)."""
    for target in (spec.out, spec.run_dir / "config.json", spec.run_dir / "metrics.jsonl"):
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            stale.unlink(missing_ok=True)


def run(spec: RunSpec) -> RunResult:
    """Train (or fine-tune, or resume) as ``spec`` says; see the module docstring."""
    saved = _prepare_dir(spec)
    model, tcfg = (spec.model, spec.train) if saved is None else _resumed_config(spec, saved)
    if saved and spec.corpus is not None and spec.corpus != saved["corpus"]:
        raise ConfigError(f"--resume: the run trains on {saved['corpus']!r}, not {spec.corpus!r}")
    corpus = data.load_corpus(saved["corpus"] if saved else spec.corpus,
                              data_dir=spec.data_dir, encoding=tcfg.vocab)
    model, vocab, params = _model_and_vocab(spec, saved, corpus, tcfg.seed)
    cfg = ModelConfig(**model, vocab_size=len(vocab))
    ids = vocab.encode(corpus.content)
    train_frac = 1.0 - tcfg.val_fraction - tcfg.test_fraction
    train_ids, val_ids, test_ids = data.split(ids, (train_frac, tcfg.val_fraction,
                                                     tcfg.test_fraction))
    data.check_batch_fits(len(train_ids), tcfg.batch_size, tcfg.seq_len, "train")
    per_epoch = data.windows_per_epoch(len(train_ids), tcfg.batch_size, tcfg.seq_len)
    limits = [s for s in (tcfg.steps, tcfg.epochs and math.ceil(tcfg.epochs * per_epoch)) if s]
    total_steps = min(limits) if limits else None
    _check_output_room(spec, cfg)
    _remove_stale_temp_files(spec)
    if saved is None:
        atomic_write(spec.run_dir / "config.json", json.dumps({
            "corpus": spec.corpus, "model": model_section(cfg),
            "train": dataclasses.asdict(tcfg), "vocab": list(vocab.symbols),
            "encoding": vocab.encoding}, indent=1, ensure_ascii=False))
    if params is None:
        params = init(jax.random.key(tcfg.seed), cfg)
    log(f"corpus {corpus.name}: {len(ids):,} symbols, vocabulary {len(vocab)}, splits "
        f"{len(train_ids):,}/{len(val_ids):,}/{len(test_ids):,}; model {cfg.cell} "
        f"{cfg.num_layers}x{cfg.hidden_size}, {cfg.num_params:,} parameters")
    return train_loop(spec, cfg, tcfg, vocab, init_state(jax.tree.map(jax.numpy.asarray, params),
                                                         cfg, tcfg),
                      train_ids, val_ids, test_ids, total_steps)
