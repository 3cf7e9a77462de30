"""What a run says and hears: its log on stderr, the live progress line, and the signals
(SIGINT, SIGTERM, and SIGPIPE from a log reader that left) that stop it between steps."""

from __future__ import annotations

import os
import signal
import sys
import time


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

    def __init__(self, last: float = 0.0):
        self.tty = sys.stderr.isatty()
        self.last = last

    def _due(self, force: bool = False) -> float | None:
        """The time now when a line is due (or forced), else None."""
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 10.0):
            return None
        self.last = now
        return now

    def _write(self, line: str) -> None:
        _to_stderr(("\r" + line + "\033[K") if self.tty else line + "\n")

    def newline(self):
        """End the line that was rewritten in place (a terminal only)."""
        if self.tty:
            _to_stderr("\n")


class Progress(_StatusLine):
    """Training's live status line: step, loss, pace, learning rate, time left."""

    def __init__(self, total_steps, minutes):
        super().__init__()
        self.total, self.minutes = total_steps, minutes

    def show(self, step, loss, chars_per_s, lr, elapsed, force=False):
        """``chars_per_s`` is None until a step has been timed (a process's first step
        compiles): the line then gives neither the pace nor a time left by steps."""
        if self._due(force) is None:
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
        self.started, self.shown = self.last, False

    def __call__(self, done: int):
        if done >= self.total:
            if self.shown:
                self.newline()
            return
        now = self._due()
        if now is None:
            return
        self.shown = True
        rate = done / max(now - self.started, 1e-9)
        eta = _fmt_time((self.total - done) / max(rate, 1e-9))
        self._write(f"{self.label} {done:,}/{self.total:,} characters ({done / self.total:.0%}) "
                    f"| {rate:,.0f} chars/s | ETA {eta}")
