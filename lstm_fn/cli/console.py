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
import unicodedata

from lstm_fn.training.report import Evaluation, Reporter, StepReport


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


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


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
        if self._due() is None:
            return
        remaining = []
        if self.total and chars_per_s is not None:
            remaining.append((self.total - step) * elapsed / max(step, 1))
        if self.minutes:
            remaining.append(self.minutes * 60 - elapsed)
        eta = f" | ETA {_fmt_time(max(min(remaining), 0))}" if remaining else ""
        of = f"/{self.total}" if self.total else ""
        pace = "" if chars_per_s is None else f" | {chars_per_s:,.0f} chars/s"
        self._write(f"step {step}{of} | loss {loss:.4f}{pace} | lr {lr:.2e}{eta}")


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
        eta = _fmt_time((self.total - done) / max(rate, 1e-9))
        self._write(f"{self.label} {done:,}/{self.total:,} characters ({done / self.total:.0%}) "
                    f"| {rate:,.0f} chars/s | ETA {eta}")


class Console(Reporter):
    """The training loop's reporter on the command line: the log and the progress line on
    stderr, and Ctrl-C / SIGTERM / a closed log turned into a stop between steps."""

    def __init__(self):
        self.progress = None

    def note(self, text: str) -> None:
        self.finished()
        log(text)

    def started(self, step: int, total_steps: int | None, minutes: float | None) -> None:
        self.progress = Progress(total_steps, minutes)

    def step(self, report: StepReport) -> None:
        self.progress.show(report.step, report.loss, report.chars_per_sec, report.lr,
                           report.seconds)

    def evaluated(self, evaluation: Evaluation, scored_training_loss: bool,
                  saved_to: str | None) -> None:
        scored = "val (no validation split: the training loss)" if scored_training_loss \
            else "val"
        self.note(f"step {evaluation.step}: train {evaluation.train_loss:.4f}, {scored} "
                  f"{evaluation.val_loss:.4f} nats/char ({evaluation.val_bpc:.3f} bpc)"
                  + (f" *best, saved {saved_to}" if saved_to else ""))

    def sampled(self, step: int, text: str) -> None:
        """Control characters other than newline and tab are logged as escapes (``\\x1b``):
        a corpus of terminal output would otherwise send escape sequences to the terminal
        that shows the log (clearing it, moving the cursor), and a carriage return would
        overwrite the line. ``lstm-fn sample`` writes them as they are."""
        shown = "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" and c not in "\n\t"
                        else c for c in text)
        self.note(f"--- sample at step {step} ---\n{shown}\n---")

    def scoring(self, total: int, label: str):
        return ScoringProgress(total, label)

    def finished(self) -> None:
        """End a progress line rewritten in place before anything else is written."""
        if self.progress is not None:
            self.progress.newline()

    @contextlib.contextmanager
    def stop_signals(self):
        with Signals() as signals:
            yield lambda: signals.received
