"""A run directory's records: ``config.json`` (what the run is), ``metrics.jsonl`` (one
evaluation a line) and ``end.json`` (how it ended). Each has one schema, one writer and one
reader, here; ``train.log`` is the log as the console showed it.

``config.json`` holds the command (and the command line), the corpus (its absolute path,
None for the built-in one) and SHA-256, ``--out`` and the base model (absolute paths), the
resolved ``model`` and ``train`` sections, where each setting came from (``sources``), and
the vocabulary and its encoding. A ``metrics.jsonl`` line is a
:class:`lstm_fn.training.report.Evaluation`. ``end.json`` is written when a run ends in a
way it can tell (finished, or stopped by a signal, early stopping or a non-finite value)
and removed when it starts again; a run killed or crashed has none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lstm_fn.config import MODEL_FIELDS, TRAIN_DEFAULTS
from lstm_fn.errors import RunError
from lstm_fn.training.report import Evaluation
from reference_numpy.atomic import atomic_write
from reference_numpy.jsontext import json_text, utf8_text

CONFIG = "config.json"
METRICS = "metrics.jsonl"
END = "end.json"
LOG = "train.log"
BEST_MODEL = "model.json"  # the run's best model, with its provenance
# What config.json of a run always records (a resume reads them).
RECORD_KEYS = ("corpus", "model", "train", "vocab", "encoding")


def read_record(path: Path) -> dict:
    """A run's ``config.json``; RunError naming the file when it is not one."""
    def refuse(why: str) -> RunError:
        return RunError(f"{str(path)!r} is not a lstm_fn run record{why}")

    try:
        record = json.loads(utf8_text(path.read_bytes()))
    except ValueError as error:
        raise refuse(f": {str(error).splitlines()[0]}") from None
    if not isinstance(record, dict):
        raise refuse(f" (a JSON {type(record).__name__}, not an object)")
    if missing := [k for k in RECORD_KEYS if k not in record]:
        raise refuse(f" (no {', '.join(missing)})")
    if not (isinstance(record["model"], dict) and isinstance(record["train"], dict)):
        raise refuse(" (its model and train are not objects)")
    texts = [record[k] for k in ("corpus", "out", "base", "command") if k in record]
    if not all(v is None or isinstance(v, str) for v in texts) or \
            not isinstance(record["encoding"], str) or not isinstance(record["vocab"], list):
        raise refuse(" (a field of the wrong type)")
    for section, known in (("model", MODEL_FIELDS), ("train", TRAIN_DEFAULTS)):
        if unknown := sorted(set(record[section]).difference(known)):
            raise RunError(f"{str(path)!r} has {section}.{unknown[0]}, which this version "
                           "of lstm_fn does not know (written by a newer one?)")
    return record


def write_record(path: Path, record: dict) -> None:
    """Write ``config.json`` atomically."""
    atomic_write(path, json_text(record, indent=1))


def metrics_line(evaluation: Evaluation) -> str:
    return json.dumps(evaluation._asdict()) + "\n"


def read_evaluations(path: Path) -> list[Evaluation]:
    """The evaluations of a ``metrics.jsonl``, skipping any line that is not one (cut short
    by a kill, say)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [e for e in map(_evaluation, text.splitlines()) if e is not None]


def _evaluation(line: str) -> Evaluation | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or not all(
            isinstance(row.get(k), (int, float)) for k in ("train_loss", "val_loss")):
        return None
    defaults = {"seconds": 0.0, "chars_per_sec": 0, "val_bpc": float("nan"), "lr": 0.0,
                "best": False}
    return Evaluation(**{k: row.get(k, defaults.get(k)) for k in Evaluation._fields})


def keep_evaluations_until(path: Path, step: int) -> None:
    """Drop the lines of ``metrics.jsonl`` past ``step`` (they belong to the part of the run
    that a resume repeats) and any line that is not an evaluation; atomic, so a kill keeps
    the old file."""
    if not path.exists():
        return
    kept = [metrics_line(e) for e in read_evaluations(path) if e.step <= step]
    atomic_write(path, "".join(kept))


def absolute(path: str | os.PathLike | None) -> str | None:
    """A path as config.json records it: absolute, so the run resumes from anywhere."""
    return None if path is None else os.path.abspath(path)


def write_end(run_dir: Path, end: dict) -> None:
    """``end.json``: ``status`` ("finished" or "stopped"), ``reason`` ("steps", "minutes",
    "patience", "signal", "nonfinite"), ``step``, ``best_val``, ``test`` (the test split's
    nats/char or None), ``seconds`` (of training), ``ended_at``."""
    atomic_write(Path(run_dir) / END, json.dumps(end, indent=1))


def read_end(run_dir: Path) -> dict | None:
    """A run's ``end.json``, None when it has none (or an unreadable one)."""
    try:
        end = json.loads(utf8_text((Path(run_dir) / END).read_bytes()))
    except (OSError, ValueError):
        return None
    return end if isinstance(end, dict) else None
