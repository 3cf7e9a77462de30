"""What a run says and hears on the console: its log on stderr, the live progress line,
and the signals (SIGINT, SIGTERM, and SIGPIPE from a log reader that left) that stop it
between steps. :class:`Console` is the training loop's reporter."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time

from lstm_fn.training.report import (Evaluation, Reporter, StepReport, duration,
                                     evaluation_line, progress_line, sample_lines)


def log(message: str) -> None:
    _to_stderr(message + "\n")


def _to_stderr(text: str) -> None:
    """Write the log. When its reader has left (``lstm-fn pretrain ... 2>&1 | head``), the
    rest of it goes to /dev/null and SIGPIPE is raised: in training, :class:`Signals` stops
    the run as on SIGTERM (a checkpoint, then exit 141); elsewhere it is ignored."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except BrokenPipeError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stderr.fileno())
        os.close(null)
        signal.raise_signal(signal.SIGPIPE)


class Signals:
    """Records SIGINT / SIGTERM (and SIGPIPE, see :func:`_to_stderr`) so the loop can
    checkpoint and stop between steps."""

    def __enter__(self):
        self.received = None
        self.previous = {s: signal.signal(s, self._handle)
                         for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)}
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class _StatusLine:
    """One status line on stderr: rewritten in place on a terminal (at most every 0.5 s),
    a line every 10 s otherwise, so log files stay short."""

    def __init__(self, last: float = -math.inf):
        self.tty = sys.stderr.isatty()
        self.last, self.open = last, False

    def _due(self) -> float | None:
        """The time now when a line is due, else None."""
        now = time.monotonic()
        if now - self.last < (0.5 if self.tty else 10.0):
            return None
        self.last = now
        return now

    def _write(self, line: str) -> None:
        _to_stderr(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.open = self.tty

    def newline(self):
        """End the line that was rewritten in place (a terminal only), if one is open."""
        if self.open:
            _to_stderr("\n")
            self.open = False


class Progress(_StatusLine):
    """Training's live status line: step, loss, pace, learning rate, time left."""

    def __init__(self, total_steps, minutes):
        super().__init__()
        self.total, self.minutes = total_steps, minutes

    def show(self, step, loss, chars_per_s, lr, elapsed):
        """``chars_per_s`` is None until a step has been timed (a process's first step
        compiles): the line then gives neither the pace nor a time left by steps."""
        if self._due() is not None:
            self._write(progress_line(StepReport(step, loss, chars_per_s, lr, elapsed),
                                      self.total, self.minutes))


class ScoringProgress(_StatusLine):
    """A status line while a long text is scored, for `evaluate`'s ``on_window``; nothing
    for a text scored within the first half second (terminal) or ten seconds."""

    def __init__(self, total: int, label: str = "scored"):
        super().__init__(last=time.monotonic())
        self.total, self.label = total, label
        self.started = self.last

    def __call__(self, done: int):
        if done >= self.total:
            self.newline()
            return
        now = self._due()
        if now is None:
            return
        rate = done / max(now - self.started, 1e-9)
        eta = duration((self.total - done) / max(rate, 1e-9))
        self._write(f"{self.label} {done:,}/{self.total:,} characters ({done / self.total:.0%}) "
                    f"| {rate:,.0f} chars/s | ETA {eta}")


class Listener(Reporter):
    """A reporter that prints nothing but hears Ctrl-C and SIGTERM (and a closed log), which
    stop training between steps: the reporter of a process other than 0 in a run of
    several, whose signals stop every process."""

    @contextlib.contextmanager
    def stop_signals(self):
        with Signals() as signals:
            yield lambda: signals.received


class Console(Listener):
    """The training loop's reporter on the command line: the log and the progress line on
    stderr, and Ctrl-C / SIGTERM / a closed log turned into a stop between steps."""

    def __init__(self, prefix: str = ""):
        self.progress, self.prefix = None, prefix

    def note(self, text: str) -> None:
        self.finished()
        log(self.prefix + text)

    def started(self, step: int, total_steps: int | None, minutes: float | None) -> None:
        self.progress = Progress(total_steps, minutes)

    def step(self, report: StepReport) -> None:
        self.progress.show(report.step, report.loss, report.chars_per_sec, report.lr,
                           report.seconds)

    def evaluated(self, evaluation: Evaluation, scored_training_loss: bool,
                  saved_to: str | None) -> None:
        self.note(evaluation_line(evaluation, scored_training_loss, saved_to))

    def sampled(self, step: int, text: str) -> None:
        self.note(sample_lines(step, text))

    def scoring(self, total: int, label: str):
        return ScoringProgress(total, label)

    def finished(self) -> None:
        """End a progress line rewritten in place before anything else is written."""
        if self.progress is not None:
            self.progress.newline()
