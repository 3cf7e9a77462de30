"""Planning a run: everything a run decides and checks before it writes anything.

:func:`plan_run` reads the run directory (a resume's record), the base model and the
corpus, resolves the settings (:func:`lstm_fn.config.resolve`), builds the vocabulary and
the splits, and refuses whatever would fail later. It creates and writes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shlex
from pathlib import Path

import jax
import numpy as np

from lstm_fn.config import BaseModel, RunConfig, TrainConfig, resolve
from lstm_fn.errors import ConfigError, RunError
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.model import grow_vocab
from lstm_fn.runs import checks, records, resume
from lstm_fn.text.corpus import DATA_DIR, Corpus, corpus_location, load_corpus
from lstm_fn.text.streams import check_batch_fits, split, windows_per_epoch
from lstm_fn.text.vocab import Vocab
from lstm_fn.training import checkpoint, cluster
from lstm_fn.training.hardware import resolved_precision
from lstm_fn.training.schedule import check_schedule
from lstm_fn.training.state import check_freeze
from lstm_fn.weights import load_weights

@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What a command asks for. ``config_file`` is the config file's document
    (:func:`lstm_fn.config.read_config_file`), ``given_model`` and ``given_train`` the
    options typed on the command line by field name (None: not given). ``out`` is a file
    that gets a copy of the best model (the run's own is ``RUN_DIR/model.json``);
    ``replace_out`` lets it replace a weights file that is the only copy of a model. ``out``
    and ``base_path`` None on a resume mean the run's own. Paths are recorded as absolute
    paths, so a run resumes from anywhere. ``command_line`` is recorded with the run and in
    its models; ``program`` is how the user called lstm-fn, for the commands the messages
    suggest."""

    command: str  # "pretrain" or "fine-tune"
    corpus: str | None
    run_dir: Path
    out: Path | None = None
    resume: bool = False
    data_dir: Path = DATA_DIR
    base_path: Path | None = None
    config_path: Path | None = None  # the --config file, never overwritten
    config_file: dict = dataclasses.field(default_factory=lambda: {"model": {}, "train": {}})
    given_model: dict = dataclasses.field(default_factory=dict)
    given_train: dict = dataclasses.field(default_factory=dict)
    replace_out: bool = False
    command_line: str = ""
    program: str = "lstm-fn"

    def resume_command(self, command: str | None = None) -> str:
        """The command line that continues this run (with ``command``: another one's)."""
        line = (f"{self.program} {command or self.command} --resume --run-dir "
                f"{shlex.quote(str(self.run_dir))}")
        if cluster.processes() > 1:  # each process with its own number
            line += (f" --coordinator {cluster.COORDINATOR.get('address', 'HOST:PORT')} "
                     f"--num-processes {cluster.processes()} --process-id I")
        return line


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run, decided: its settings, paths, text, vocabulary and initial parameters."""

    request: RunRequest
    record: dict | None  # the record of the run being resumed
    out: Path | None  # the copy of the best model (None: none)
    out_note: str | None  # what writing ``out`` replaces, to be said
    base_path: Path | None  # a fine-tune's base model (None: the checkpoints hold it)
    corpus: Corpus
    corpus_at: str | None  # the corpus's absolute path (None: the built-in one)
    digest: str  # the corpus's SHA-256
    config: RunConfig
    cfg: ModelConfig
    vocab: Vocab
    added: tuple  # characters a fine-tune added to its base model's vocabulary
    params: dict | None  # a fine-tune's initial parameters (None: a fresh init)
    splits: tuple  # train, val, test ids
    total_steps: int | None

    @property
    def tcfg(self) -> TrainConfig:
        return self.config.train


def plan_run(request: RunRequest) -> RunPlan:
    """Decide and check a run; see the module docstring."""
    checks.check_run_dir_name(request.run_dir)
    record = existing_run(request)
    if record is not None:
        resume.check_resume(request.command, request.run_dir, request.base_path, record)
    corpus_at = (corpus_location(request.corpus, request.data_dir) if record is None else
                 resume.resumed_corpus(request.corpus, request.data_dir, record))
    out, out_note, base_path = _settle_paths(request, record, corpus_at)
    base = load_weights(base_path) if base_path is not None else None
    base_model = None if base is None or record else BaseModel(base[1], base[2].encoding)
    config = _with_precision(resolve(request.command, request.config_file, request.given_model,
                                     request.given_train, record=record, base=base_model))
    corpus = load_corpus(corpus_at if record else request.corpus, data_dir=request.data_dir,
                         encoding=config.train.vocab, remedy=(
                             "fine-tune a model trained with --vocab bytes"
                             if request.command == "fine-tune"
                             else "pass --vocab bytes to model its raw bytes"))
    digest = hashlib.sha256(corpus.raw).hexdigest()
    if record is not None:
        resume.check_same_text(record, digest, corpus_at)
    vocab, params, added = _vocab_and_params(config, record, base, corpus)
    cfg = ModelConfig(**config.model, vocab_size=len(vocab))
    splits, total_steps = _splits(config.train, vocab.encode(corpus.content))
    check_freeze(config.train.freeze, cfg.num_layers)
    check_schedule(config.train, total_steps)
    checks.check_memory(cfg)
    return RunPlan(request, record, out, out_note, base_path, corpus, corpus_at, digest, config,
                   cfg, vocab, tuple(added), params, splits, total_steps)


def existing_run(request: RunRequest) -> dict | None:
    """The record of the run being resumed; refuses to start over a run that has progress
    (a checkpoint or an evaluation), not over one that failed before its first, and over a
    ``config.json`` that is not a run's record (the run would overwrite it)."""
    config_path = request.run_dir / records.CONFIG
    if request.resume:
        if not config_path.exists():
            raise RunError(f"--resume: {str(request.run_dir)!r} holds no run (no config.json)")
        return records.read_record(config_path)
    metrics = request.run_dir / records.METRICS
    if checkpoint.all_steps(request.run_dir / "checkpoints") or (
            metrics.exists() and metrics.stat().st_size):
        raise RunError(f"run directory {str(request.run_dir)!r} already holds a run; pass "
                       "--resume to continue it or choose another --run-dir")
    if config_path.exists():
        try:
            records.read_record(config_path)
        except RunError as error:
            raise RunError(f"{error}, and the run would overwrite it; choose another "
                           "--run-dir") from None
    return None


def _settle_paths(request: RunRequest, record: dict | None,
                  corpus_at: str | None) -> tuple[Path | None, str | None, Path | None]:
    """``(out, what writing it replaces, base_path)``: on a resume what the run recorded
    unless given again. Refuses an ``out`` that is a folder, would overwrite an input or a
    file of the run, holds anything but lstm_fn weights, or holds the only copy of a model
    (:func:`lstm_fn.runs.checks.check_out_owner`)."""
    run_files = {name: request.run_dir / name for name in (
        records.CONFIG, records.METRICS, records.END, records.LOG, records.BEST_MODEL,
        "loss.png")}
    for name, run_file in run_files.items():
        if corpus_at is not None and Path(corpus_at).resolve() == run_file.resolve():
            raise RunError(f"the corpus {corpus_at!r} is the run's {name}, which the run "
                           "writes; move it or choose another --run-dir")
    base_path = _base_path(request, record)
    recorded = (record or {}).get("out")
    out = request.out or (Path(recorded) if recorded else None)
    if out is None:
        return None, None, base_path
    if out.is_dir():
        raise RunError(f"--out {str(out)!r} is a folder; give a file name")
    checks.check_out_is_a_file(out)
    inputs = {"the corpus": corpus_at, "the base model (--from)": base_path,
              "the --config file": request.config_path,
              **{f"the run's {name}": path for name, path in run_files.items()}}
    for what, path in inputs.items():
        if path is not None and Path(path).resolve() == out.resolve():
            raise RunError(f"--out {str(out)!r} is {what}; choose another file")
    if out.resolve().is_relative_to((request.run_dir / "checkpoints").resolve()):
        raise RunError(f"--out {str(out)!r} is inside the run's checkpoints; choose another "
                       "file")
    note = checks.check_out_owner(out, request.run_dir, recorded, request.replace_out)
    return out, note, base_path


def _base_path(request: RunRequest, record: dict | None) -> Path | None:
    """A fine-tune's base model: the one given, else the one the resumed run recorded (None
    when that is gone but the checkpoints hold the weights)."""
    if request.command != "fine-tune" or request.base_path is not None:
        return request.base_path
    if not (record and record.get("base")):
        raise ConfigError("fine-tune needs --from, the weights file to start from")
    base_path = Path(record["base"])
    if base_path.exists():
        return base_path
    if not checkpoint.all_steps(request.run_dir / "checkpoints"):
        raise RunError(f"the run's base model {str(base_path)!r} is gone and the run has no "
                       "checkpoint yet; pass --from")
    return None


def _vocab_and_params(config: RunConfig, record: dict | None, base: tuple | None,
                      corpus: Corpus) -> tuple[Vocab, dict | None, list]:
    """``(vocab, initial params or None, added characters)`` for a fresh, resumed or
    fine-tune run. A fine-tune starts from its base model's params, grown by the new
    characters; a resumed fine-tune rebuilds them the same way in case no checkpoint was
    written yet."""
    seed = config.train.seed
    if record is not None:
        vocab = Vocab.from_symbols(record["vocab"], record["encoding"])
        if base is None:
            return vocab, None, []
        params, base_cfg, base_vocab = base
        if any(record["model"][k] != v for k, v in base_cfg.section().items() if k != "dropout") \
                or vocab.symbols[:len(base_vocab)] != base_vocab.symbols:
            raise RunError(f"--resume: --from is not the model this run fine-tunes "
                           f"(architecture or vocabulary differ); the run started from "
                           f"{record.get('base')!r}")
        extra = len(vocab) - len(base_vocab)
        return vocab, grow_vocab(params, extra, jax.random.key(seed)) if extra else params, []
    if base is None:
        encoding = config.train.vocab
        return (Vocab.bytes() if encoding == "bytes" else Vocab.from_text(corpus.text)), None, []
    params, _, base_vocab = base
    vocab, added = base_vocab.extend(corpus.text or "")
    if added:
        params = grow_vocab(params, len(added), jax.random.key(seed))
    return vocab, params, added


def _with_precision(config: RunConfig) -> RunConfig:
    """``matmul_precision`` "auto" resolved for this machine, so that the record holds what
    the run uses (and a resume keeps it)."""
    precision = config.train.matmul_precision
    if precision != "auto":
        return config
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train,
                                          matmul_precision=resolved_precision(precision)),
        sources={**config.sources, "train.matmul_precision":
                 f"{config.sources['train.matmul_precision']} (auto)"})


def _splits(tcfg: TrainConfig, ids: np.ndarray) -> tuple[tuple, int | None]:
    """The train, validation and test ids, and the number of steps in all (None: no step
    limit); refuses a training split shorter than one batch."""
    train_frac = 1.0 - tcfg.val_fraction - tcfg.test_fraction
    splits = split(ids, (train_frac, tcfg.val_fraction, tcfg.test_fraction))
    check_batch_fits(len(splits[0]), tcfg.batch_size, tcfg.seq_len, "train",
                     tcfg.val_fraction + tcfg.test_fraction)
    per_epoch = windows_per_epoch(len(splits[0]), tcfg.batch_size, tcfg.seq_len)
    limits = [s for s in (tcfg.steps, tcfg.epochs and math.ceil(tcfg.epochs * per_epoch),
                          tcfg.chars and math.ceil(tcfg.chars / (tcfg.batch_size * tcfg.seq_len)))
              if s]
    total_steps = min(limits) if limits else None
    if total_steps is not None and total_steps >= 2**31:
        raise ConfigError(f"{tcfg.epochs:g} is {total_steps:,} steps here; at most "
                          f"{2**31 - 1:,} fit the step counter", "train.epochs")
    return splits, total_steps
