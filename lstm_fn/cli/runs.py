"""``lstm-fn runs``: the runs under a folder, one line each (or JSON for scripts)."""

from __future__ import annotations

import click

from lstm_fn.cli.options import Command, UserPath


@click.command(cls=Command)
@click.argument("folder", type=UserPath(exists=True, file_okay=False), default="runs")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, in a list.")
def runs(folder, as_json):
    """List the runs under FOLDER: name, command, status (finished; stopped, and why;
    running; incomplete, when a kill or crash left no end record), steps, best validation
    loss, model, corpus, when."""
    import dataclasses
    import json

    from lstm_fn.runs.listing import list_runs

    found = list_runs(folder)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(run) for run in found], indent=1))
        return
    if not found:
        click.echo(f"no runs in {folder}")
        return
    rows = [("name", "command", "status", "steps", "best val", "model", "corpus", "when")]
    rows += [(run.name, run.command, run.status + (f" ({run.why})" if run.why else ""),
              "" if run.steps is None else f"{run.steps:,}",
              "" if run.best_val is None else f"{run.best_val:.4f}", run.model or "-",
              run.corpus, run.when) for run in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
