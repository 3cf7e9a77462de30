"""The runs under a folder, one summary each, from the files their directories hold."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from lstm_fn.errors import RunError
from lstm_fn.runs import records
from lstm_fn.runs.lock import in_use
from lstm_fn.training import checkpoint

# What end.json's reasons mean to a reader.
REASONS = {"steps": "its step or epoch limit", "minutes": "its time budget",
           "patience": "early stop", "signal": "signal", "nonfinite": "non-finite values"}


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """One run: ``status`` is "finished", "stopped" (``why``: early stop, signal, non-finite
    values), "running" (a process holds its lock) or "incomplete" (a kill or crash left no
    end record)."""

    name: str
    path: str
    command: str
    status: str
    why: str | None
    steps: int | None
    best_val: float | None
    model: str | None
    corpus: str
    when: str


def list_runs(folder: str | Path) -> list[RunSummary]:
    """The runs in ``folder``'s subfolders (or ``folder`` itself when it is a run), oldest
    first; folders that hold no run record are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{str(folder)!r} is not a folder of runs")
    candidates = [folder] if (folder / records.CONFIG).is_file() else sorted(
        p for p in folder.iterdir() if p.is_dir() and (p / records.CONFIG).is_file())
    found = []
    for run_dir in candidates:
        try:
            found.append(summary(run_dir))
        except RunError:  # a config.json that is not a run's record
            continue
    return sorted(found, key=lambda run: run.when)


def summary(run_dir: Path) -> RunSummary:
    """What the files of one run directory say about it."""
    record = records.read_record(run_dir / records.CONFIG)
    end = records.read_end(run_dir)
    metrics = run_dir / records.METRICS
    evaluations = records.read_evaluations(metrics) if metrics.exists() else []
    steps = [e.step for e in evaluations] + checkpoint.all_steps(run_dir / "checkpoints")
    if in_use(run_dir):
        status, why = "running", None
    elif end is not None:
        status, why = end.get("status", "finished"), REASONS.get(end.get("reason"))
    else:
        status, why = "incomplete", "no end record: killed, or it crashed"
    vals = [e.val_loss for e in evaluations]
    model = run_dir / records.BEST_MODEL
    newest = max(p.stat().st_mtime for p in (run_dir / records.CONFIG, metrics, model)
                 if p.exists())
    return RunSummary(
        name=run_dir.name, path=str(run_dir), command=record.get("command") or "pretrain",
        status=status, why=why, steps=(end or {}).get("step", max(steps, default=None)),
        best_val=min(vals) if vals else None, model=str(model) if model.exists() else None,
        corpus=Path(record["corpus"]).name if record["corpus"] else "pydoc (built-in)",
        when=time.strftime("%Y-%m-%d %H:%M", time.localtime(newest)))
