"""What the training loop tells its caller, and what it asks: a :class:`Reporter`.

The loop prints nothing. It reports each thing that happens (a line of the log, a step, an
evaluation, a sample, the progress of a long scoring) to the reporter it is given, and asks
it, between steps, whether a signal asked the run to stop. This base class does nothing and
is never asked to stop: a notebook or a test can pass it (or a subclass that records), and
the command line passes its console (:class:`lstm_fn.cli.console.Console`).
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Callable, Iterator
from typing import NamedTuple


class Evaluation(NamedTuple):
    """One evaluation during training: a line of a run's ``metrics.jsonl``.

    ``train_loss`` is the mean training loss of the steps since the previous scheduled
    evaluation; ``chars_per_sec`` counts update steps only (not evaluation, checkpoints or
    compilation); ``best``: the model was exported as the best so far.
    """

    step: int
    seconds: float
    chars_per_sec: int
    train_loss: float
    val_loss: float
    val_bpc: float
    lr: float
    best: bool


class StepReport(NamedTuple):
    """The state of training after an update step."""

    step: int
    loss: float
    chars_per_sec: float | None  # None until a step has been timed (the first compiles)
    lr: float
    seconds: float  # of training in all, earlier processes of a resumed run included


class Reporter:
    """The loop's listener; every method may be overridden, none needs to be."""

    def note(self, text: str) -> None:
        """A line of the run's log (what was resumed, a warning, why the run stopped)."""

    def started(self, step: int, total_steps: int | None, minutes: float | None) -> None:
        """Training (re)starts at ``step``; it ends at ``total_steps`` or after ``minutes``
        of this process, whichever comes first (None: no such limit)."""

    def step(self, report: StepReport) -> None:
        """An update step finished."""

    def evaluated(self, evaluation: Evaluation, scored_training_loss: bool,
                  saved_to: str | None) -> None:
        """An evaluation finished; ``scored_training_loss``: there is no validation split,
        so ``val_loss`` is the training loss; ``saved_to``: where the model was exported as
        the best so far (None when it was not)."""

    def sampled(self, step: int, text: str) -> None:
        """A sample of the model's text at ``step``."""

    def scoring(self, total: int, label: str) -> Callable[[int], None]:
        """A callback for a long scoring of ``total`` predictions: called with the number
        scored so far after each window."""
        return lambda done: None

    def finished(self) -> None:
        """The loop is done with the live progress (a line rewritten in place ends)."""

    @contextlib.contextmanager
    def stop_signals(self) -> Iterator[Callable[[], int | None]]:
        """While the steps run: a callable that returns the number of a signal that asked
        the run to stop (SIGINT, SIGTERM), else None. The base class never stops."""
        yield lambda: None


# How each event reads as a line of a run's log (the console and RUN_DIR/train.log).

def duration(seconds: float) -> str:
    """``3m07s`` below an hour, ``1h05m`` from one on."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(report: StepReport, total_steps: int | None, minutes: float | None) -> str:
    """``step 120/1500 | loss 1.9012 | 21,304 chars/s | lr 2.00e-03 | ETA 4m10s``: the time
    left is the sooner of the steps (at the pace so far) and the minutes; before the first
    timed step there is no pace, nor a time left by steps."""
    remaining = []
    if total_steps and report.chars_per_sec is not None:
        remaining.append((total_steps - report.step) * report.seconds / max(report.step, 1))
    if minutes:
        remaining.append(minutes * 60 - report.seconds)
    eta = f" | ETA {duration(max(min(remaining), 0))}" if remaining else ""
    of = f"/{total_steps}" if total_steps else ""
    pace = "" if report.chars_per_sec is None else f" | {report.chars_per_sec:,.0f} chars/s"
    return f"step {report.step}{of} | loss {report.loss:.4f}{pace} | lr {report.lr:.2e}{eta}"


def evaluation_line(evaluation: Evaluation, scored_training_loss: bool,
                    saved_to: str | None) -> str:
    scored = "val (no validation split: the training loss)" if scored_training_loss else "val"
    return (f"step {evaluation.step}: train {evaluation.train_loss:.4f}, {scored} "
            f"{evaluation.val_loss:.4f} nats/char ({evaluation.val_bpc:.3f} bpc)"
            + (f" *best, saved {saved_to}" if saved_to else ""))


def sample_lines(step: int, text: str) -> str:
    """A sample as the log shows it. Control characters other than newline and tab are
    escapes (``\\x1b``): a corpus of terminal output would otherwise send escape sequences
    to the terminal that shows the log (clearing it, moving the cursor), and a carriage
    return would overwrite the line. ``lstm-fn sample`` writes them as they are."""
    shown = "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" and c not in "\n\t"
                    else c for c in text)
    return f"--- sample at step {step} ---\n{shown}\n---"
