"""Several architectures trained under one budget on one split and scored on one held-out
text: the runs of ``lstm-fn compare`` and their table, JSON and plot.

Each variant (a cell, a number of layers, a width) is trained once per seed into its own
run directory under the comparison's folder; a variant already finished is not trained
again, one that was stopped is resumed. The held-out text is each run's own test split (the
same one for all: the same corpus and fractions), or a file scored with every run's best
model.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
from pathlib import Path

from lstm_fn.errors import ConfigError
from lstm_fn.nn.config import ModelConfig
from lstm_fn.runs import records
from lstm_fn.runs.models import open_model
from lstm_fn.runs.plan import RunRequest
from lstm_fn.runs.run import run
from lstm_fn.text.corpus import load_corpus
from lstm_fn.training.evaluate import score
from lstm_fn.training.report import Reporter
from reference_numpy.atomic import atomic_write


@dataclasses.dataclass(frozen=True)
class Variant:
    cell: str
    num_layers: int
    hidden_size: int

    @property
    def name(self) -> str:
        return f"{self.cell}-{self.num_layers}x{self.hidden_size}"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What to compare: the variants' lists (every combination), the seeds, where the runs
    go, the held-out file (None: the runs' test split), and the request every run starts
    from (corpus, config file, training options: the budget among them)."""

    cells: tuple
    layers: tuple
    hidden_sizes: tuple
    seeds: int
    folder: Path
    base: RunRequest
    match_params: bool = False
    held_out: Path | None = None


def variants(comparison: Comparison, vocab_size: int, embed_size: int) -> list[Variant]:
    """Every combination of the lists, in order; with ``match_params``, each one's width is
    the one whose parameter count comes closest to the first variant's."""
    combos = [Variant(c, l, h) for c, l, h in itertools.product(
        comparison.cells, comparison.layers, comparison.hidden_sizes)]
    if not comparison.match_params:
        return combos

    def count(v: Variant) -> int:
        return ModelConfig(v.cell, vocab_size, embed_size, v.hidden_size, v.num_layers).num_params

    target = count(combos[0])
    matched = []
    for v in combos:
        low, high = 1, 1 << 14  # the smallest width with at least the target's parameters
        while low < high:
            mid = (low + high) // 2
            low, high = (mid + 1, high) if count(dataclasses.replace(v, hidden_size=mid)) < \
                target else (low, mid)
        near = min((low - 1, low), key=lambda h: abs(count(dataclasses.replace(
            v, hidden_size=max(h, 1))) - target))
        matched.append(dataclasses.replace(v, hidden_size=max(near, 1)))
    return list(dict.fromkeys(matched))


def run_all(comparison: Comparison, vocab_size: int, embed_size: int,
            reporter_for) -> list[dict]:
    """Train (or resume, or skip) every variant and seed; one result a run. ``reporter_for``
    makes the reporter of a run from its label."""
    results = []
    for variant in variants(comparison, vocab_size, embed_size):
        for seed in range(comparison.seeds):
            results.append(_one(comparison, variant, seed, reporter_for))
    return results


def _one(comparison: Comparison, variant: Variant, seed: int, reporter_for) -> dict:
    run_dir = comparison.folder / "runs" / f"{variant.name}-seed{seed}"
    end = records.read_end(run_dir)
    label = f"{variant.name} seed {seed}"
    if end is None or end.get("reason") == "signal":
        base = comparison.base
        model = {**base.given_model, "cell": variant.cell, "num_layers": variant.num_layers,
                 "hidden_size": variant.hidden_size}
        train = {**base.given_train, "seed": seed}
        resume = (run_dir / records.CONFIG).exists()
        request = dataclasses.replace(base, run_dir=run_dir, resume=resume, out=None,
                                      given_model={} if resume else model,
                                      given_train={k: v for k, v in train.items()
                                                   if not resume or k in ("steps", "epochs",
                                                                          "chars", "minutes")})
        outcome = run(request, reporter_for(label))
        if outcome.result.status != "done":
            raise ConfigError(f"{label}: {outcome.closing[0] if outcome.closing else 'stopped'}")
        end = records.read_end(run_dir)
    held_out = end.get("test") if comparison.held_out is None else _held_out(
        comparison, run_dir)
    record = records.read_record(run_dir / records.CONFIG)
    model = open_model(run_dir)
    return {"variant": variant.name, "cell": variant.cell, "layers": variant.num_layers,
            "hidden_size": variant.hidden_size, "seed": seed, "run_dir": str(run_dir),
            "parameters": model.cfg.num_params, "steps": end["step"],
            "chars": end["step"] * record["train"]["batch_size"] * record["train"]["seq_len"],
            "seconds": end.get("seconds"), "held_out": held_out}


def _held_out(comparison: Comparison, run_dir: Path) -> float:
    params, cfg, vocab, _ = open_model(run_dir)
    text = load_corpus(str(comparison.held_out), encoding=vocab.encoding)
    ids = vocab.encode(text.content)
    return score(params, cfg, ids, 32, 256).loss


def _by_variant(results: list[dict]) -> list[tuple[str, list[dict]]]:
    return [(name, list(group))
            for name, group in itertools.groupby(results, key=lambda r: r["variant"])]


def summary(results: list[dict]) -> list[dict]:
    """One row a variant: the median of its seeds' held-out loss and their spread."""
    rows = []
    for name, group in _by_variant(results):
        losses = [r["held_out"] for r in group if r["held_out"] is not None]
        median = statistics.median(losses) if losses else None
        rows.append({
            "variant": name, "parameters": group[0]["parameters"], "seeds": len(group),
            "chars": statistics.median(r["chars"] for r in group),
            "seconds": statistics.median(r["seconds"] or 0.0 for r in group),
            "held_out": median, "spread": (min(losses), max(losses)) if losses else None,
            "bpc": None if median is None else median / math.log(2),
            "perplexity": None if median is None else math.exp(median)})
    return rows


def markdown(rows: list[dict], held_out: str) -> str:
    lines = [f"Held-out text: {held_out}. Median over seeds (min-max).", "",
             "| variant | parameters | characters seen | seconds | held-out nats/char | bpc | "
             "perplexity |", "|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        spread = "" if r["spread"] is None else f" ({r['spread'][0]:.4f}-{r['spread'][1]:.4f})"
        loss = "-" if r["held_out"] is None else f"{r['held_out']:.4f}{spread}"
        lines.append(f"| {r['variant']} | {r['parameters']:,} | {r['chars']:,.0f} | "
                     f"{r['seconds']:,.0f} | {loss} | "
                     + ("- | -" if r["bpc"] is None else f"{r['bpc']:.3f} | {r['perplexity']:.2f}")
                     + " |")
    return "\n".join(lines) + "\n"


def write(folder: Path, results: list[dict], held_out: str) -> list[Path]:
    """``compare.md``, ``compare.json`` and (with matplotlib) ``compare.png``."""
    rows = summary(results)
    atomic_write(folder / "compare.md", markdown(rows, held_out))
    atomic_write(folder / "compare.json", json.dumps(
        {"held_out": held_out, "variants": rows, "runs": results}, indent=1))
    written = [folder / "compare.md", folder / "compare.json"]
    try:
        written.append(plot(folder, results))
    except ImportError:
        pass
    return written


def plot(folder: Path, results: list[dict]) -> Path:
    """Validation bpc of each variant (the median of its seeds at each evaluation) against
    characters seen and against seconds, with its held-out result marked at the end."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=True)
    for name, group in _by_variant(results):
        curves = [records.read_evaluations(Path(r["run_dir"]) / records.METRICS) for r in group]
        length = min(map(len, curves))
        if not length:
            continue
        per_step = group[0]["chars"] / max(group[0]["steps"], 1)
        points = [[statistics.median(getattr(c[i], key) for c in curves) for i in range(length)]
                  for key in ("step", "seconds", "val_bpc")]
        for ax, xs in zip(axes, ([s * per_step for s in points[0]], points[1])):
            line, = ax.plot(xs, points[2], marker=".", label=name)
            losses = [r["held_out"] for r in group if r["held_out"] is not None]
            if losses:
                ax.plot(xs[-1], statistics.median(losses) / math.log(2), marker="*",
                        markersize=10, color=line.get_color())
    axes[0].set_xlabel("characters seen")
    axes[1].set_xlabel("seconds")
    axes[0].set_ylabel("bits/char (validation; * held-out)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(folder / "compare.png", buffer.getvalue())
    return folder / "compare.png"
