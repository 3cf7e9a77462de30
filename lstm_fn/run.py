"""A training run in a run directory: pretrain and fine-tune are this one loop.

``run_dir`` holds ``config.json`` (the resolved config, the vocabulary, the corpus),
``checkpoints/`` (orbax, for exact resume), ``metrics.jsonl`` (one object per evaluation)
and ``loss.png``; the best model by validation loss is written as JSON weights to ``out``.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import shlex
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from lstm_fn import checkpoint, data
from lstm_fn.config import STOPPING_RULES, ConfigError, TrainConfig
from lstm_fn.model import ModelConfig, init
from lstm_fn.loop import RunResult, log, train_loop
from lstm_fn.optim import make_schedule
from lstm_fn.train import check_freeze, init_state
from lstm_fn.vocab import Vocab
from lstm_fn.weights import load_weights
from reference_numpy.atomic import atomic_write

# Options that may change when a run is resumed: they say when to stop, not how to train.
RESUMABLE = STOPPING_RULES
TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


@dataclasses.dataclass
class RunSpec:
    """What to run. ``model`` holds the architecture fields given (``cell``, sizes, dropout).

    ``out`` None means the resumed run's own ``--out``, else ``default_out``; ``base_path``
    (fine-tune) is the weights file to start from, None on a resume means the run's own.
    Paths are kept in ``config.json`` as absolute paths, so a run resumes from anywhere.
    """

    command: str  # "pretrain" or "fine-tune", for the messages
    corpus: str | None
    model: dict
    train: TrainConfig
    run_dir: Path
    out: Path | None
    default_out: Path
    resume: bool = False
    data_dir: Path = Path("data")
    base_path: Path | None = None
    config_path: Path | None = None  # the --config file, never overwritten
    train_given: frozenset = frozenset()  # train fields set explicitly (checked on resume)
    base: tuple | None = None  # (params, ModelConfig, Vocab) of base_path, loaded by run()


def model_section(cfg: ModelConfig) -> dict:
    """The config-file ``model`` section of ``cfg`` (vocab_size comes from the vocabulary)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "vocab_size"}


def _prepare_dir(spec: RunSpec) -> dict | None:
    """The saved config of a run being resumed; refuses to start over a run that has
    progress (a checkpoint or an evaluation), not over one that failed before its first."""
    config_path = spec.run_dir / "config.json"
    if spec.resume:
        if not config_path.exists():
            raise ConfigError(f"--resume: {str(spec.run_dir)!r} holds no run (no config.json)")
        return json.loads(config_path.read_text(encoding="utf-8"))
    metrics = spec.run_dir / "metrics.jsonl"
    if checkpoint.all_steps(spec.run_dir / "checkpoints") or (
            metrics.exists() and metrics.stat().st_size):
        raise ConfigError(f"run directory {str(spec.run_dir)!r} already holds a run; pass "
                          "--resume to continue it or choose another --run-dir")
    return None


def _check_resume(spec: RunSpec, saved: dict) -> None:
    """Refuse resuming a run with another command or another base model."""
    made_by = saved.get("command") or ("fine-tune" if saved.get("base") else "pretrain")
    if made_by != spec.command:
        raise ConfigError(f"--resume: {str(spec.run_dir)!r} is a {made_by} run; continue it "
                          f"with `lstm-fn {made_by} --resume --run-dir "
                          f"{shlex.quote(str(spec.run_dir))}`")
    if spec.base_path is not None and saved.get("base") and \
            Path(spec.base_path).resolve() != Path(saved["base"]).resolve():
        raise ConfigError(f"--resume: the run fine-tunes {saved['base']!r}, not "
                          f"{str(spec.base_path)!r}; leave out --from")


def _check_same_text(saved: dict, digest: str, location: str | None) -> None:
    """Refuse resuming on a corpus file that changed since the run started (its splits, and
    so the batches of the remaining steps, would differ)."""
    recorded = saved.get("corpus_sha256")
    if recorded is not None and recorded != digest:
        raise ConfigError(f"--resume: the corpus {location!r} changed since the run started; "
                          "start a new run (fine-tune from its best model to keep what it "
                          "learned)")


def _settle_paths(spec: RunSpec, saved: dict | None) -> tuple[RunSpec, str | None]:
    """``spec`` with ``out``, ``base_path`` and ``base`` filled in and checked (on a resume,
    what the run recorded unless given again), and the corpus's absolute path (None for the
    built-in one). Refuses an ``out`` that is a folder or would overwrite an input or a
    file of the run."""
    location = _corpus_location(spec, saved)
    out = spec.out or Path((saved or {}).get("out") or spec.default_out)
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; give a file name")
    base_path = spec.base_path
    if spec.command == "fine-tune" and base_path is None:
        if not (saved and saved.get("base")):
            raise ConfigError("fine-tune needs --from, the weights file to start from")
        base_path = Path(saved["base"])
        if not base_path.exists():
            if not checkpoint.all_steps(spec.run_dir / "checkpoints"):
                raise ConfigError(f"the run's base model {str(base_path)!r} is gone and the "
                                  "run has no checkpoint yet; pass --from")
            base_path = None  # the checkpoints hold the weights
    inputs = {"the corpus": location, "the base model (--from)": base_path,
              "the --config file": spec.config_path,
              **{f"the run's {name}": spec.run_dir / name
                 for name in ("config.json", "metrics.jsonl", "loss.png")}}
    for what, path in inputs.items():
        if path is not None and Path(path).resolve() == out.resolve():
            raise ConfigError(f"--out {str(out)!r} is {what}; choose another file")
    if out.resolve().is_relative_to((spec.run_dir / "checkpoints").resolve()):
        raise ConfigError(f"--out {str(out)!r} is inside the run's checkpoints; choose "
                          "another file")
    base = load_weights(base_path) if base_path is not None else None
    return dataclasses.replace(spec, out=out, base_path=base_path, base=base), location


def _corpus_location(spec: RunSpec, saved: dict | None) -> str | None:
    """The corpus's absolute path; on a resume the run's own, which a given corpus must be."""
    given = None if spec.corpus is None else data.corpus_location(spec.corpus, spec.data_dir)
    if saved is None:
        return given
    recorded = saved["corpus"]
    if given is not None and recorded is not None and not Path(recorded).is_absolute() and \
            Path(given).name == Path(recorded).name:
        return given  # recorded relative to another folder (older config.json files)
    location = data.corpus_location(recorded, spec.data_dir)
    if given is not None and given != location:
        name = repr(recorded) if recorded else "the built-in corpus"
        raise ConfigError(f"--resume: the run trains on {name}, not {spec.corpus!r}")
    return location


def _keep_best_at_new_out(spec: RunSpec, saved: dict) -> None:
    """A resume given another ``--out`` starts it with the run's best model so far."""
    old = Path(saved.get("out") or spec.default_out)
    if old.exists() and not spec.out.exists() and old.resolve() != spec.out.resolve():
        atomic_write(spec.out, old.read_bytes())
        log(f"copied the best model so far from {old} to {spec.out}")


def _resumed_config(spec: RunSpec, saved: dict) -> tuple[dict, TrainConfig]:
    """The saved run's model and train config, with only the stopping rules overridable."""
    for key, value in spec.model.items():
        if saved["model"].get(key) != value:
            raise ConfigError(f"--resume: model.{key} is {saved['model'].get(key)!r} in the run, "
                              f"{value!r} was given")
    train = {**TRAIN_DEFAULTS, **saved["train"]}  # a run recorded before a field existed
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
    columns zero with bias ``min(b) - log(extra)``, so all new characters together start no
    likelier than the rarest old one (many new ones would otherwise take probability from
    the text the model knows); old ids unchanged."""
    embed, head = np.asarray(params["embed"]), params["head"]
    new_rows = np.asarray(jax.random.normal(key, (extra, cfg.embed_size))) * embed.std()
    new_bias = np.full(extra, np.min(head["b"]) - np.log(extra), np.float32)
    return {**params,
            "embed": np.concatenate([embed, new_rows.astype(embed.dtype)]),
            "head": {"w": np.concatenate([head["w"], np.zeros((cfg.hidden_size, extra),
                                                               np.float32)], axis=1),
                     "b": np.concatenate([head["b"], new_bias])}}


def _model_and_vocab(spec: RunSpec, saved: dict | None, corpus: data.Corpus, encoding: str,
                     seed: int):
    """``(model dict, vocab, initial params or None)`` for a fresh, resumed or fine-tune run.

    The initial params of a fine-tune are the base model's, grown by the new characters;
    a resumed fine-tune rebuilds them the same way in case no checkpoint was written yet.
    """
    if saved is not None:
        vocab = Vocab.from_symbols(saved["vocab"], saved["encoding"])
        if spec.base is None:
            return saved["model"], vocab, None
        params, base_cfg, base_vocab = spec.base
        arch = {k: v for k, v in model_section(base_cfg).items() if k != "dropout"}
        if any(saved["model"][k] != v for k, v in arch.items()) or \
                vocab.symbols[:len(base_vocab)] != base_vocab.symbols:
            raise ConfigError(f"--resume: --from {str(spec.base_path)!r} is not the model this "
                              f"run fine-tunes (architecture or vocabulary differ); the run "
                              f"started from {saved.get('base')!r}")
        extra = len(vocab) - len(base_vocab)
        if extra:
            params = grow_vocab(params, base_cfg, extra, jax.random.key(seed))
        return saved["model"], vocab, params
    if spec.base is None:
        vocab = Vocab.bytes() if encoding == "bytes" else Vocab.from_text(corpus.text)
        return spec.model, vocab, None
    params, base_cfg, base_vocab = spec.base
    if base_vocab.encoding != encoding:
        raise ConfigError(f"the base model uses vocab {base_vocab.encoding!r}, not "
                          f"{encoding!r}; leave out --vocab or pass --vocab {base_vocab.encoding}")
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


def _check_memory(cfg: ModelConfig) -> None:
    """Refuse a model whose parameters, gradients and optimizer moments alone (four float32
    copies) would not fit in this machine's memory."""
    needed = cfg.num_params * 16
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(
        os, "sysconf") else None
    if total and needed > total:
        raise ConfigError(f"the model has {cfg.num_params:,} parameters, about "
                          f"{needed / 2**30:,.0f} GiB to train; this machine has "
                          f"{total / 2**30:,.0f} GiB: lower --hidden-size, --embed-size or "
                          "--layers")


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
        try:  # a real file: permission bits alone can mislead (root, read-only mounts)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise OSError(f"cannot write to {str(folder)!r}: {error.strerror or error}") from None
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
    if saved is not None:
        _check_resume(spec, saved)
    spec, location = _settle_paths(spec, saved)
    model, tcfg = (spec.model, spec.train) if saved is None else _resumed_config(spec, saved)
    if saved is None and spec.base is not None and "vocab" not in spec.train_given:
        tcfg = dataclasses.replace(tcfg, vocab=spec.base[2].encoding)  # the base model's
    remedy = ("fine-tune a model trained with --vocab bytes"
              if spec.command == "fine-tune" else "pass --vocab bytes to model its raw bytes")
    corpus = data.load_corpus(location if saved else spec.corpus, data_dir=spec.data_dir,
                              encoding=tcfg.vocab, remedy=remedy)
    digest = hashlib.sha256(corpus.raw).hexdigest()
    if saved is not None:
        _check_same_text(saved, digest, location)
    model, vocab, params = _model_and_vocab(spec, saved, corpus, tcfg.vocab, tcfg.seed)
    cfg = ModelConfig(**model, vocab_size=len(vocab))
    ids = vocab.encode(corpus.content)
    train_frac = 1.0 - tcfg.val_fraction - tcfg.test_fraction
    train_ids, val_ids, test_ids = data.split(ids, (train_frac, tcfg.val_fraction,
                                                     tcfg.test_fraction))
    data.check_batch_fits(len(train_ids), tcfg.batch_size, tcfg.seq_len, "train",
                          tcfg.val_fraction + tcfg.test_fraction)
    per_epoch = data.windows_per_epoch(len(train_ids), tcfg.batch_size, tcfg.seq_len)
    limits = [s for s in (tcfg.steps, tcfg.epochs and math.ceil(tcfg.epochs * per_epoch)) if s]
    total_steps = min(limits) if limits else None
    check_freeze(tcfg.freeze, cfg.num_layers)
    make_schedule(tcfg, total_steps)  # refuses a schedule without a known length
    _check_memory(cfg)
    _check_output_room(spec, cfg)
    _remove_stale_temp_files(spec)
    log(f"run directory: {spec.run_dir}")  # after the checks: a refusal stays one line
    if saved is not None:
        _keep_best_at_new_out(spec, saved)
    # Written again on a resume: a later plain --resume keeps its --out and stopping rules.
    base = os.path.abspath(spec.base_path) if spec.base_path else (saved or {}).get("base")
    atomic_write(spec.run_dir / "config.json", json.dumps({
        "command": spec.command, "corpus": location,
        "corpus_sha256": digest,
        "out": os.path.abspath(spec.out), "base": base,
        "model": model_section(cfg), "train": dataclasses.asdict(tcfg),
        "vocab": list(vocab.symbols), "encoding": vocab.encoding}, indent=1, ensure_ascii=False))
    if params is None:
        params = init(jax.random.key(tcfg.seed), cfg)
    log(f"corpus {corpus.name}: {len(ids):,} symbols, vocabulary {len(vocab)}, splits "
        f"{len(train_ids):,}/{len(val_ids):,}/{len(test_ids):,}; model {cfg.cell} "
        f"{cfg.num_layers}x{cfg.hidden_size}, {cfg.num_params:,} parameters")
    if saved is None and spec.base is not None and "head" in tcfg.freeze and \
            len(vocab) > len(spec.base[2]):
        log(f"warning: --freeze head keeps the output weights of the "
            f"{len(vocab) - len(spec.base[2])} new character(s) at their start, so the model "
            "will rarely produce them")
    if len(val_ids) < 2:
        log("warning: the validation split is empty, so the best model is chosen by the "
            "training loss; raise --val-fraction or use a longer corpus")
    return train_loop(spec, cfg, tcfg, vocab, init_state(jax.tree.map(jax.numpy.asarray, params),
                                                         cfg, tcfg),
                      train_ids, val_ids, test_ids, total_steps)
