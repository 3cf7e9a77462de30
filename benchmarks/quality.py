"""Held-out quality at a time budget: lstm_fn against a plain PyTorch script, in one run.

    python benchmarks/quality.py [--minutes 3] [--seeds 3] [--config quick] [--out quality]

The corpus (tinyshakespeare by default: ``../shared/data/tinyshakespeare.txt`` beside the
checkout, else ``data/``) is cut into its first 90% (``train.txt``, what both sides train
on) and its last 10% (``heldout.txt``, scored once per model with ``lstm-fn eval``, read
as one stream). lstm_fn trains with ``lstm-fn pretrain train.txt --config CONFIG --minutes
M`` (and again with ``--cell lstm``, for LSTM against LSTM); it holds out its own validation
split at the end of ``train.txt``, and the PyTorch script is given exactly the characters
lstm_fn trains on. The script is the plain recipe: Embedding(V, 64) -> 2 x 256 nn.LSTM or
nn.GRU -> Linear, Adam 2e-3 constant, 32 streams of 128 characters with the state carried
(truncated BPTT), gradient clipping at global norm 5, float32, no autocast. For both sides
the budget is wall time from the first training step, evaluations included. The runs
alternate (seed by seed) so that a slow phase of a shared machine hits all of them. Prints
and writes ``quality.md`` and ``quality.json``: every run, the median of the seeds per side,
and the differences. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def corpus_text(path: str | None) -> str:
    candidates = [Path(path)] if path else [ROOT.parent / "shared" / "data" /
                                            "tinyshakespeare.txt",
                                            ROOT / "data" / "tinyshakespeare.txt"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    sys.exit(f"no corpus at {', '.join(map(str, candidates))}: pass --corpus")


def lstm_fn(*args, log) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lstm_fn", *map(str, args)]
    log("$ " + " ".join(command[2:]))
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return result


def held_out(model: Path, heldout: Path, log) -> float:
    out = lstm_fn("eval", heldout, "--from", model, "--batch-size", "1", log=log).stdout
    return float(re.search(r"loss ([\d.]+) nats/char", out).group(1))


def run_lstm_fn(name: str, train: Path, heldout: Path, out: Path, seed: int, args,
                extra: list, log) -> dict:
    run_dir = out / f"{name.replace(' ', '-')}-seed{seed}"
    if not (run_dir / "end.json").exists():
        lstm_fn("pretrain", train, "--config", args.config, "--minutes", args.minutes,
                "--seed", seed, "--run-dir", run_dir, "--sample-every", "0", *extra, log=log)
    end = json.loads((run_dir / "end.json").read_text())
    record = json.loads((run_dir / "config.json").read_text())
    chars = end["step"] * record["train"]["batch_size"] * record["train"]["seq_len"]
    return {"side": name, "seed": seed, "steps": end["step"], "chars": chars,
            "seconds": end["seconds"], "held_out": held_out(run_dir, heldout, log)}


def training_text(train: Path, run_dir: Path) -> tuple[str, list]:
    """The characters lstm_fn's run trained on (its training split), and its vocabulary."""
    record = json.loads((run_dir / "config.json").read_text())
    text = train.read_text(encoding="utf-8")
    fraction = 1.0 - record["train"]["val_fraction"] - record["train"]["test_fraction"]
    return text[:round(len(text) * fraction)], record["vocab"]


def run_torch(cell: str, text: str, symbols: list, heldout: Path, out: Path, seed: int,
              minutes: float, log) -> dict:
    """The plain PyTorch script; its model is scored by lstm_fn's own ``eval``."""
    import numpy as np
    import torch

    import lstm_fn as lf
    import reference_numpy as ref

    path = out / f"torch-{cell}-seed{seed}.json"
    if path.exists():
        saved = json.loads((out / f"torch-{cell}-seed{seed}.meta.json").read_text())
        return {**saved, "held_out": held_out(path, heldout, log)}
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count())
    index = {c: i for i, c in enumerate(symbols)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    model = {"cell": cell, "vocab_size": len(symbols), "embed_size": 64, "hidden_size": 256,
             "num_layers": 2}
    net = ref.torch_module(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    B, T = 32, 128
    length = (len(ids) - 1) // B
    rows, targets = ids[:B * length].view(B, length), ids[1:B * length + 1].view(B, length)
    windows, state, steps = length // T, None, 0
    log(f"torch {cell} seed {seed}: {len(text):,} training characters, {minutes} minutes")
    started = time.monotonic()
    while time.monotonic() - started < minutes * 60:
        window = steps % windows
        if window == 0:
            state = None
        x, y = rows[:, window * T:(window + 1) * T], targets[:, window * T:(window + 1) * T]
        logits, state = net(x, state)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(symbols)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        steps += 1
    seconds = time.monotonic() - started
    params = ref.from_torch(net.state_dict(), model)
    cfg = lf.ModelConfig(**model)
    lf.save_weights(path, params, cfg, symbols)
    saved = {"side": f"torch {cell}", "seed": seed, "steps": steps, "chars": steps * B * T,
             "seconds": round(seconds, 2)}
    (out / f"torch-{cell}-seed{seed}.meta.json").write_text(json.dumps(saved))
    return {**saved, "held_out": held_out(path, heldout, log)}


def report(results: list[dict], args) -> str:
    sides = sorted({r["side"] for r in results}, key=[r["side"] for r in results].index)
    medians = {side: statistics.median(r["held_out"] for r in results if r["side"] == side)
               for side in sides}
    lines = [f"Held-out nats/char on the last 10% of the corpus, {args.minutes} minutes a run, "
             f"{args.seeds} seed(s) a side (median, and each seed):", "",
             "| side | steps | characters | held-out nats/char (median) | seeds |",
             "|---|--:|--:|--:|---|"]
    for side in sides:
        runs = [r for r in results if r["side"] == side]
        lines.append(f"| {side} | {statistics.median(r['steps'] for r in runs):,.0f} | "
                     f"{statistics.median(r['chars'] for r in runs):,.0f} | "
                     f"{medians[side]:.4f} | "
                     + ", ".join(f"{r['held_out']:.4f}" for r in runs) + " |")
    torch_sides = [s for s in sides if s.startswith("torch")]
    ours = [s for s in sides if not s.startswith("torch")]
    best_torch = min(torch_sides, key=medians.get)
    lines += ["", f"best PyTorch: {best_torch} {medians[best_torch]:.4f}"]
    for side in ours:
        lines.append(f"{side} - best PyTorch: {medians[side] - medians[best_torch]:+.4f} "
                     "nats/char")
    if "lstm_fn lstm" in medians and "torch lstm" in medians:
        lines.append(f"lstm_fn lstm - torch lstm: "
                     f"{medians['lstm_fn lstm'] - medians['torch lstm']:+.4f} nats/char")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="a text file [default: tinyshakespeare]")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--config", default="quick", help="lstm_fn's config [default: quick]")
    parser.add_argument("--out", type=Path, default=ROOT / "quality",
                        help="where the runs and the report go; finished runs are reused")
    args = parser.parse_args(argv)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    text = corpus_text(args.corpus)
    cut = round(len(text) * 0.9)
    train, heldout = out / "train.txt", out / "heldout.txt"
    train.write_text(text[:cut], encoding="utf-8")
    heldout.write_text(text[cut:], encoding="utf-8")
    results = []
    for seed in range(args.seeds):
        results.append(run_lstm_fn("lstm_fn", train, heldout, out, seed, args, [], log))
        chars, symbols = training_text(train, out / f"lstm_fn-seed{seed}")
        for cell in ("lstm", "gru"):
            results.append(run_torch(cell, chars, symbols, heldout, out, seed, args.minutes,
                                     log))
        results.append(run_lstm_fn("lstm_fn lstm", train, heldout, out, seed, args,
                                   ["--cell", "lstm"], log))
        log(report(results, args))
    summary = report(results, args)
    (out / "quality.md").write_text(summary)
    (out / "quality.json").write_text(json.dumps(
        {"minutes": args.minutes, "config": args.config, "runs": results}, indent=1))
    print(summary, end="")


if __name__ == "__main__":
    main()
