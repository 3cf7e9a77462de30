"""``loss.png`` of a run: training and validation loss against step, from metrics.jsonl."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def plot_run(run_dir: str | Path) -> Path:
    """Draw the run's curves (nats/char on the left axis, bits/char on the right) and write
    ``run_dir/loss.png`` atomically; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reference_numpy.atomic import atomic_write

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise FileNotFoundError(f"{str(metrics)!r} not found: is {str(run_dir)!r} a run directory?")
    rows = [row for row in map(_evaluation, metrics.read_text(encoding="utf-8",
                                                              errors="replace").splitlines())
            if row is not None]
    if not rows:
        raise ValueError(f"{str(metrics)!r} has no evaluations yet")
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [r["train_loss"] for r in rows], label="train", marker=".")
    ax.plot(steps, [r["val_loss"] for r in rows], label="validation", marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    bpc = ax.secondary_yaxis("right", functions=(lambda n: n / math.log(2),
                                                 lambda b: b * math.log(2)))
    bpc.set_ylabel("bits/char")
    ax.grid(alpha=0.3)
    ax.legend()
    # a folder name that is not UTF-8 has lone surrogates, which no font can draw
    _set_title(fig, ax, os.fsencode(run_dir.name).decode("utf-8", "replace"))
    fig.tight_layout()
    path = run_dir / "loss.png"
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def _set_title(fig, ax, title: str) -> None:
    """The run directory's name as the title, as written (``$`` is no mathtext). A character
    the fonts have no glyph for (Chinese or Japanese in a corpus's name, with matplotlib's
    default font) is shown as its escape (``\\u65e5``), not as an empty box, and matplotlib's
    warning for each such glyph, three lines on stderr, is not shown."""
    import re
    import warnings

    ax.set_title(title, parse_math=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    missing = set()
    for warning in caught:
        glyph = re.match(r"Glyph (\d+) .*missing from font", str(warning.message))
        if glyph:
            missing.add(chr(int(glyph.group(1))))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    if missing:
        ax.set_title("".join(c.encode("ascii", "backslashreplace").decode("ascii")
                             if c in missing else c for c in title), parse_math=False)


def _evaluation(line: str) -> dict | None:
    """One evaluation of metrics.jsonl, or None for a line that is not one (cut short by a
    kill, say): the plot shows what is there, as the training loop does."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    keys = ("step", "train_loss", "val_loss")
    if not isinstance(row, dict) or not all(isinstance(row.get(k), (int, float)) for k in keys):
        return None
    return row
