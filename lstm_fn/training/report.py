"""What the training loop tells its caller, and what it asks: a :class:`Reporter`.

The loop prints nothing. It reports each thing that happens (a line of the log, a step, an
evaluation, a sample, the progress of a long scoring) to the reporter it is given, and asks
it, between steps, whether a signal asked the run to stop. This base class does nothing and
is never asked to stop: a notebook or a test can pass it (or a subclass that records), and
the command line passes its console (:class:`lstm_fn.cli.console.Console`).
"""

from __future__ import annotations

import contextlib
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
