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


class Progress:
    """One live status line on stderr (rewritten in place on a terminal, a line every 10 s
    otherwise, so log files stay short)."""

    def __init__(self, total_steps, minutes):
        self.total, self.minutes = total_steps, minutes
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, step, loss, chars_per_s, lr, elapsed, force=False):
        """``chars_per_s`` is None until a step has been timed (a process's first step
        compiles): the line then gives neither the pace nor a time left by steps."""
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        remaining = []
        if self.total and chars_per_s is not None:
            remaining.append((self.total - step) * elapsed / max(step, 1))
        if self.minutes:
            remaining.append(self.minutes * 60 - elapsed)
        eta = f" | ETA {_fmt_time(max(min(remaining), 0))}" if remaining else ""
        of = f"/{self.total}" if self.total else ""
        pace = "" if chars_per_s is None else f" | {chars_per_s:,.0f} chars/s"
        line = f"step {step}{of} | loss {loss:.4f}{pace} | lr {lr:.2e}{eta}"
        _to_stderr(("\r" + line + "\033[K") if self.tty else line + "\n")

    def newline(self):
        if self.tty:
            _to_stderr("\n")


class ScoringProgress:
    """A status line on stderr while a long text is scored, for `evaluate`'s ``on_window``
    (in place on a terminal, a line every 10 s otherwise); nothing for a text scored within
    the first half second (terminal) or ten seconds."""

    def __init__(self, total: int, label: str = "scored"):
        self.total, self.label = total, label
        self.tty = sys.stderr.isatty()
        self.started = self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int):
        now = time.monotonic()
        if done >= self.total:
            if self.shown and self.tty:
                _to_stderr("\n")  # end the line that was rewritten in place
            return
        if now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last, self.shown = now, True
        rate = done / max(now - self.started, 1e-9)
        line = (f"{self.label} {done:,}/{self.total:,} characters ({done / self.total:.0%}) | "
                f"{rate:,.0f} chars/s | ETA {_fmt_time((self.total - done) / max(rate, 1e-9))}")
        _to_stderr(("\r" + line + "\033[K") if self.tty else line + "\n")
