"""The model a command is pointed at: a weights file, a run directory (its best model, or a
checkpoint's parameters with ``step``), or one checkpoint folder of a run."""

from __future__ import annotations

from pathlib import Path

import jax

from lstm_fn.config import TRAIN_DEFAULTS, TrainConfig
from lstm_fn.errors import RunError
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.model import init
from lstm_fn.runs import records
from lstm_fn.text.vocab import Vocab
from lstm_fn.training import checkpoint
from lstm_fn.training.state import TrainState
from lstm_fn.weights import Model, load_model


def open_model(source: str | Path, step: int | None = None) -> Model:
    """The model ``source`` names.

    Args:
      source: a weights file; a run directory (its best model, ``RUN_DIR/model.json``); or
        a checkpoint folder (``RUN_DIR/checkpoints/00000042``: that step's parameters).
      step: with a run directory, that checkpoint's parameters instead of the best model.

    Raises RunError naming what is missing (a run with no model yet lists its checkpoints),
    WeightsError for a damaged weights file.
    """
    source = Path(source)
    if not source.is_dir():
        if step is not None:
            raise RunError(f"--step {step} needs a run directory, and {str(source)!r} is a file")
        return load_model(source)
    if (source / records.CONFIG).is_file():
        if step is None:
            return _best_model(source)
        return checkpoint_model(source, step)
    run_dir = source.parent.parent
    if source.parent.name == "checkpoints" and source.name.isdigit() and \
            (run_dir / records.CONFIG).is_file():
        if step is not None and step != int(source.name):
            raise RunError(f"{str(source)!r} is the checkpoint of step {int(source.name)}, "
                           f"not {step}")
        return checkpoint_model(run_dir, int(source.name))
    raise RunError(f"{str(source)!r} is a folder, but not a run directory (no config.json) "
                   "nor one of its checkpoints")


def _best_model(run_dir: Path) -> Model:
    path = run_dir / records.BEST_MODEL
    if path.exists():
        return load_model(path)
    steps = checkpoint.all_steps(run_dir / "checkpoints")
    have = (f"; its checkpoints: {', '.join(map(str, steps))} (pass --step N)" if steps
            else " nor any checkpoint")
    raise RunError(f"run {str(run_dir)!r} has no best model yet ({records.BEST_MODEL}){have}")


def checkpoint_model(run_dir: Path, step: int) -> Model:
    """The parameters of checkpoint ``step`` of a run, with the run's architecture and
    vocabulary (from its ``config.json``)."""
    record = records.read_record(run_dir / records.CONFIG)
    vocab = Vocab.from_symbols(record["vocab"], record["encoding"])
    cfg = ModelConfig(**record["model"], vocab_size=len(vocab))
    tcfg = TrainConfig(**{**TRAIN_DEFAULTS, **record["train"]})
    abstract = checkpoint.abstract_of(
        lambda: TrainState.fresh(init(jax.random.key(0), cfg), cfg, tcfg).as_tree())
    steps = checkpoint.all_steps(run_dir / "checkpoints")
    if step not in steps:
        raise RunError(f"run {str(run_dir)!r} has no checkpoint {step}; its checkpoints: "
                       f"{', '.join(map(str, steps)) or 'none'}")
    restored = checkpoint.restore(run_dir / "checkpoints", abstract, step=step)
    provenance = {"run_dir": str(run_dir.resolve()), "step": step,
                  "corpus_sha256": record.get("corpus_sha256"), "command": record.get("command")}
    val = [e.val_loss for e in records.read_evaluations(run_dir / records.METRICS)
           if e.step == step] if (run_dir / records.METRICS).exists() else []
    if val:
        provenance["val_loss"] = val[-1]
    return Model(restored.state["params"], cfg, vocab, provenance)
