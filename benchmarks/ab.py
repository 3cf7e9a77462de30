"""Two checkouts of lstm_fn side by side: is one slower than the other?

    python benchmarks/ab.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 3] [--only "train lstm"]

Runs each checkout's own ``benchmarks/speed.py --quick --json`` in a fresh process,
alternating (old, new, new, old, ...), ``--rounds`` times each, and prints for every lstm_fn
row (config and variant) the median chars/s of each side and their ratio new / old, then
the median ratio over all rows. Both sides see the same machine in the same minutes; torch's
rows, measured in both, show how much the machine itself moved between processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run_speed(checkout: Path, only: str | None) -> list[dict]:
    command = [sys.executable, str(checkout / "benchmarks" / "speed.py"), "--quick", "--json"]
    if only:
        command += ["--only", only]
    out = subprocess.run(command, cwd=checkout, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["results"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="passed to speed.py: configs whose name contains it")
    args = parser.parse_args(argv)
    speeds: dict[tuple, dict[str, list[float]]] = {}
    order = []
    for r in range(args.rounds):
        order += [("old", args.old), ("new", args.new)][::1 if r % 2 == 0 else -1]
    for i, (side, checkout) in enumerate(order):
        print(f"[{i + 1}/{len(order)}] {side}: {checkout}", file=sys.stderr, flush=True)
        for row in run_speed(checkout, args.only):
            key = (row["config"], row["variant"])
            speeds.setdefault(key, {"old": [], "new": []})[side].append(row["chars_per_s"])
    ratios = []
    print("| config | variant | old chars/s | new chars/s | new / old |\n|---|---|--:|--:|--:|")
    for (config, variant), sides in speeds.items():
        old, new = statistics.median(sides["old"]), statistics.median(sides["new"])
        if variant.startswith("lstm_fn"):
            ratios.append(new / old)
        print(f"| {config} | {variant} | {old:,.0f} | {new:,.0f} | {new / old:.3f} |")
    print(f"\nmedian new / old over the {len(ratios)} lstm_fn rows: "
          f"{statistics.median(ratios):.3f} ({args.rounds} processes each, alternating)")


if __name__ == "__main__":
    main()
