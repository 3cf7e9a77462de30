"""A training run in a run directory: pretrain and fine-tune are this one loop.

``run_dir`` holds ``config.json`` (the resolved config, the vocabulary, the corpus),
``checkpoints/`` (orbax, for exact resume), ``metrics.jsonl`` (one object per evaluation)
and ``loss.png``; the best model by validation loss is written as JSON weights to ``out``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import jax
import numpy as np

from lstm_fn import checkpoint, data, preflight, resume
from lstm_fn.config import MODEL_FIELDS, ConfigError, TrainConfig
from lstm_fn.console import log
from lstm_fn.model import ModelConfig, init
from lstm_fn.loop import RunResult, train_loop
from lstm_fn.optim import make_schedule
from lstm_fn.train import check_freeze, init_state
from lstm_fn.vocab import Vocab
from lstm_fn.weights import load_weights
from reference_numpy.atomic import atomic_write


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


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def model_section(cfg: ModelConfig) -> dict:
    """The config-file ``model`` section of ``cfg`` (vocab_size comes from the vocabulary)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "vocab_size"}


# What config.json of a run always records (resume reads them).
RECORD_KEYS = ("corpus", "model", "train", "vocab", "encoding")


def _read_record(path: Path) -> dict:
    """A run's ``config.json``; ConfigError naming the file when it is not one."""
    try:
        record = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{str(path)!r} is not a lstm_fn run record: {error}") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{str(path)!r} is not a lstm_fn run record (a JSON "
                          f"{type(record).__name__}, not an object)")
    if missing := [k for k in RECORD_KEYS if k not in record]:
        raise ConfigError(f"{str(path)!r} is not a lstm_fn run record (no {', '.join(missing)})")
    if not (isinstance(record["model"], dict) and isinstance(record["train"], dict)):
        raise ConfigError(f"{str(path)!r} is not a lstm_fn run record (its model and train "
                          "are not objects)")
    texts = [record[k] for k in ("corpus", "out", "base", "command") if k in record]
    if not all(v is None or isinstance(v, str) for v in texts) or \
            not isinstance(record["encoding"], str) or not isinstance(record["vocab"], list):
        raise ConfigError(f"{str(path)!r} is not a lstm_fn run record (a field of the wrong "
                          "type)")
    for section, known in (("model", MODEL_FIELDS), ("train", resume.TRAIN_DEFAULTS)):
        if unknown := sorted(set(record[section]).difference(known)):
            raise ConfigError(f"{str(path)!r} has {section}.{unknown[0]}, which this version "
                              "of lstm_fn does not know (written by a newer one?)")
    return record


def _prepare_dir(spec: RunSpec) -> dict | None:
    """The saved config of a run being resumed; refuses to start over a run that has
    progress (a checkpoint or an evaluation), not over one that failed before its first,
    and over a ``config.json`` that is not a run's record (the run would overwrite it)."""
    config_path = spec.run_dir / "config.json"
    if spec.resume:
        if not config_path.exists():
            raise ConfigError(f"--resume: {str(spec.run_dir)!r} holds no run (no config.json)")
        return _read_record(config_path)
    metrics = spec.run_dir / "metrics.jsonl"
    if checkpoint.all_steps(spec.run_dir / "checkpoints") or (
            metrics.exists() and metrics.stat().st_size):
        raise ConfigError(f"run directory {str(spec.run_dir)!r} already holds a run; pass "
                          "--resume to continue it or choose another --run-dir")
    if config_path.exists():
        try:
            _read_record(config_path)
        except ConfigError as error:
            raise ConfigError(f"{error}, and the run would overwrite it; choose another "
                              "--run-dir") from None
    return None


def _settle_paths(spec: RunSpec, saved: dict | None) -> tuple[RunSpec, str | None]:
    """``spec`` with ``out``, ``base_path`` and ``base`` filled in and checked (on a resume,
    what the run recorded unless given again), and the corpus's absolute path (None for the
    built-in one). Refuses an ``out`` that is a folder, would overwrite an input or a file
    of the run, or holds anything but lstm_fn weights."""
    location = resume.corpus_location(spec, saved)
    out = spec.out or Path((saved or {}).get("out") or spec.default_out)
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; give a file name")
    preflight.check_out_is_a_file(out)
    run_files = {name: spec.run_dir / name for name in ("config.json", "metrics.jsonl", "loss.png")}
    for name, run_file in run_files.items():
        if location is not None and Path(location).resolve() == run_file.resolve():
            raise ConfigError(f"the corpus {location!r} is the run's {name}, which the run "
                              "writes; move it or choose another --run-dir")
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
              **{f"the run's {name}": path for name, path in run_files.items()}}
    for what, path in inputs.items():
        if path is not None and Path(path).resolve() == out.resolve():
            raise ConfigError(f"--out {str(out)!r} is {what}; choose another file")
    if out.resolve().is_relative_to((spec.run_dir / "checkpoints").resolve()):
        raise ConfigError(f"--out {str(out)!r} is inside the run's checkpoints; choose "
                          "another file")
    preflight.check_out_holds_weights(out)
    base = load_weights(base_path) if base_path is not None else None
    return dataclasses.replace(spec, out=out, base_path=base_path, base=base), location


def grow_vocab(params: dict, cfg: ModelConfig, extra: int, key: jax.Array) -> dict:
    """Append ``extra`` token ids: new embedding rows drawn like the old ones, new output
    columns zero with bias ``min(b) - log(extra)``, so all new characters together weigh what
    one with the smallest old bias and no weights would, however many there are (with each
    new one as likely as the rarest old one, thousands would take probability from the text
    the model knows); old ids unchanged."""
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
    vocab, added = base_vocab.extend(corpus.text or "")  # listed once the checks pass
    if added:
        params = grow_vocab(params, base_cfg, len(added), jax.random.key(seed))
    return {**arch, "dropout": spec.model.get("dropout", 0.0)}, vocab, params


def run(spec: RunSpec) -> RunResult:
    """Train (or fine-tune, or resume) as ``spec`` says; see the module docstring."""
    lock = preflight.RunDirLock(spec.run_dir)
    try:
        return _run(spec, lock)
    finally:
        lock.release()


def _run(spec: RunSpec, lock: preflight.RunDirLock) -> RunResult:
    preflight.check_run_dir_name(spec.run_dir)
    if spec.run_dir.is_dir():
        lock.acquire()
    saved = _prepare_dir(spec)
    if saved is not None:
        resume.check_resume(spec, saved)
    spec, location = _settle_paths(spec, saved)
    model, tcfg = (spec.model, spec.train) if saved is None else resume.resumed_config(spec, saved)
    if saved is None and spec.base is not None and "vocab" not in spec.train_given:
        tcfg = dataclasses.replace(tcfg, vocab=spec.base[2].encoding)  # the base model's
    remedy = ("fine-tune a model trained with --vocab bytes"
              if spec.command == "fine-tune" else "pass --vocab bytes to model its raw bytes")
    corpus = data.load_corpus(location if saved else spec.corpus, data_dir=spec.data_dir,
                              encoding=tcfg.vocab, remedy=remedy)
    digest = hashlib.sha256(corpus.raw).hexdigest()
    if saved is not None:
        resume.check_same_text(saved, digest, location)
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
    if total_steps is not None and total_steps >= 2**31:
        raise ConfigError(f"--epochs {tcfg.epochs:g} is {total_steps:,} steps here; at most "
                          f"{2**31 - 1:,} fit the step counter")
    check_freeze(tcfg.freeze, cfg.num_layers)
    make_schedule(tcfg, total_steps)  # refuses a schedule without a known length
    preflight.check_memory(cfg)
    preflight.check_output_room(spec, cfg)
    lock.acquire()  # the folder exists now; before anything in it is touched
    if saved is None:
        _prepare_dir(spec)  # again: another run may have started and ended since
    preflight.remove_stale_temp_files(spec)
    log(f"run directory: {spec.run_dir}")  # after the checks: a refusal stays one line
    if saved is not None:
        resume.keep_best_at_new_out(spec, saved)
    # Written again on a resume: a later plain --resume keeps its --out and stopping rules.
    base = os.path.abspath(spec.base_path) if spec.base_path else (saved or {}).get("base")
    record = {"command": spec.command, "corpus": location, "corpus_sha256": digest,
              "out": os.path.abspath(spec.out), "base": base,
              "model": model_section(cfg), "train": dataclasses.asdict(tcfg),
              "vocab": list(vocab.symbols), "encoding": vocab.encoding}
    paths = "".join(p or "" for p in (location, record["out"], base))
    # A file name that is not UTF-8 holds lone surrogates (os.fsdecode): JSON escapes them.
    atomic_write(spec.run_dir / "config.json", json.dumps(
        record, indent=1, ensure_ascii=_has_surrogates(paths)))
    if params is None:
        params = init(jax.random.key(tcfg.seed), cfg)
    log(f"corpus {corpus.name}: {len(ids):,} symbols, vocabulary {len(vocab)}, splits "
        f"{len(train_ids):,}/{len(val_ids):,}/{len(test_ids):,}; model {cfg.cell} "
        f"{cfg.num_layers}x{cfg.hidden_size}, {cfg.num_params:,} parameters")
    added = vocab.symbols[len(spec.base[2]):] if saved is None and spec.base else ()
    if added:
        log(f"vocabulary: added {len(added)} new character(s): "
            + " ".join(repr(c) for c in added[:40]))
    if added and "head" in tcfg.freeze:
        log(f"warning: --freeze head keeps the output weights of the {len(added)} new "
            "character(s) at their start, so the model will rarely produce them")
    if len(val_ids) < 2:
        log("warning: the validation split is empty, so the best model is chosen by the "
            "training loss; raise --val-fraction or use a longer corpus")
    return train_loop(spec, cfg, tcfg, vocab, init_state(jax.tree.map(jax.numpy.asarray, params),
                                                         cfg, tcfg),
                      train_ids, val_ids, test_ids, total_steps)
