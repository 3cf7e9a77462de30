"""What a run writes into its directory while it trains, as a reporter of the loop: each
evaluation to ``metrics.jsonl``, the log to ``train.log``, and a copy of each new best
model to ``--out``. Every event is then passed on to the reporter it wraps (the console)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lstm_fn.errors import RunError
from lstm_fn.runs import records
from lstm_fn.training.report import (Evaluation, Reporter, StepReport, evaluation_line,
                                     progress_line, sample_lines)
from reference_numpy.atomic import atomic_write

# How often train.log gets a progress line (the console's is live).
LOG_PROGRESS_EVERY_S = 60.0


class Recorder(Reporter):
    """Writes the run's records, then passes each event on to ``inner``. ``copies`` are the
    files (``--out``) that get a copy of each new best model. A write that fails (a full
    disk) is a RunError naming the file, with the checkpoints whole."""

    def __init__(self, run_dir: Path, inner: Reporter, copies: tuple = ()):
        self.run_dir, self.inner, self.copies = Path(run_dir), inner, copies
        self.metrics = None
        self.log = self._open(self.run_dir / records.LOG)
        self.limits, self.logged_at = (None, None), -float("inf")

    def _open(self, path: Path):
        try:  # a file name that is not UTF-8 is written as its bytes, as stdout does
            return path.open("a", encoding="utf-8", errors="surrogateescape")
        except OSError as error:
            raise RunError(f"cannot write {str(path)!r} ({error.strerror or error})") from None

    def _write(self, file, path: Path, text: str) -> None:
        try:
            file.write(text)
            file.flush()
        except OSError as error:
            raise RunError(f"cannot write {str(path)!r} ({error.strerror or error}); the "
                           "checkpoints are whole: free some space and continue",
                           resumable=True) from None

    def to_log(self, text: str) -> None:
        """A line of ``train.log`` only (the console shows it in its own way)."""
        self._write(self.log, self.run_dir / records.LOG, text + "\n")

    def note(self, text: str) -> None:
        self.to_log(text)
        self.inner.note(text)

    def started(self, step: int, total_steps, minutes) -> None:
        path = self.run_dir / records.METRICS
        records.keep_evaluations_until(path, step)
        self.metrics = self._open(path)
        self.limits = (total_steps, minutes)
        self.inner.started(step, total_steps, minutes)

    def step(self, report: StepReport) -> None:
        now = time.monotonic()
        if now - self.logged_at >= LOG_PROGRESS_EVERY_S:
            self.logged_at = now
            self.to_log(progress_line(report, *self.limits))
        self.inner.step(report)

    def evaluated(self, evaluation: Evaluation, scored_training_loss: bool,
                  saved_to: str | None) -> None:
        self._write(self.metrics, self.run_dir / records.METRICS,
                    records.metrics_line(evaluation))
        if saved_to is not None:
            self.copy_best(Path(saved_to))
        self.to_log(evaluation_line(evaluation, scored_training_loss, saved_to))
        self.inner.evaluated(evaluation, scored_training_loss, saved_to)

    def copy_best(self, best: Path) -> None:
        """Copy the best model to each of ``copies``."""
        for copy in self.copies:
            try:
                atomic_write(copy, best.read_bytes())
            except OSError as error:
                raise RunError(f"cannot write the copy of the best model {str(copy)!r} "
                               f"({error.strerror or error}); the run's own "
                               f"{str(best)!r} is whole: free some space and continue",
                               resumable=True) from None

    def sampled(self, step: int, text: str) -> None:
        self.to_log(sample_lines(step, text))
        self.inner.sampled(step, text)

    def scoring(self, total: int, label: str) -> Callable[[int], None]:
        return self.inner.scoring(total, label)

    def finished(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.inner.finished()

    def close(self) -> None:
        self.log.close()

    def stop_signals(self):
        return self.inner.stop_signals()
