"""``loss.png`` of a run: training and validation loss against step, from metrics.jsonl."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from lstm_fn.errors import RunError
from lstm_fn.runs.records import METRICS, read_evaluations
from reference_numpy.atomic import atomic_write


def plot_run(run_dir: str | Path) -> Path:
    """Draw the run's curves (nats/char on the left axis, bits/char on the right) and write
    ``run_dir/loss.png`` atomically; returns its path. RunError when the folder holds no
    evaluations; ImportError without matplotlib.

    The training loss of an evaluation is the mean over the steps since the one before, so
    it is drawn as a level over that interval (the first one, from step 0, holds the
    untrained model's losses and sits well above the validation point at its end), the
    validation loss as a point at the step it was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = run_dir / METRICS
    if not metrics.exists():
        raise RunError(f"{str(metrics)!r} not found: is {str(run_dir)!r} a run directory?")
    rows = read_evaluations(metrics)
    if not rows:
        raise RunError(f"{str(metrics)!r} has no evaluations yet")
    steps = [r.step for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.stairs([r.train_loss for r in rows], [0, *steps], baseline=None,
              label="train (mean over each interval)")
    ax.plot(steps, [r.val_loss for r in rows], label="validation", marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    bpc = ax.secondary_yaxis("right", functions=(lambda n: n / math.log(2),
                                                 lambda b: b * math.log(2)))
    bpc.set_ylabel("bits/char")
    ax.grid(alpha=0.3)
    ax.legend()
    # a folder name that is not UTF-8 has lone surrogates, which no font can draw
    title = os.fsencode(run_dir.name).decode("utf-8", "replace")
    ax.set_title(drawable(title, ax.title.get_fontproperties()), parse_math=False)
    fig.tight_layout()
    path = run_dir / "loss.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def drawable(text: str, font) -> str:
    """``text`` with each character the title's font has no glyph for (Chinese or Japanese
    with matplotlib's default font) written as its escape (``\\u65e5``), so the title shows
    the name instead of empty boxes (and matplotlib warns of no missing glyph)."""
    from matplotlib.font_manager import findfont, get_font

    face = get_font(findfont(font))
    return "".join(c if c.isspace() or face.get_char_index(ord(c)) else
                   c.encode("ascii", "backslashreplace").decode("ascii") for c in text)
