"""The training commands, ``pretrain`` and ``fine-tune``: one path with different defaults
(:data:`lstm_fn.config.COMMAND_DEFAULTS`)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from lstm_fn.cli import errors
from lstm_fn.cli.options import Command, UserPath, default_run_dir, flag, run_options


@click.command(cls=Command)
@click.option("--out", type=UserPath(dir_okay=False),
              help="Where the best model is written as JSON weights [default: model.json; "
                   "on --resume, the run's own].")
@run_options("pretrain")
def pretrain(corpus, config_path, run_dir, out, resume, data_dir, **options):
    """Train a model from scratch on CORPUS.

    CORPUS is a text file, a file name under --data-dir, 'tinyshakespeare' (fetched once and
    verified), or nothing for the built-in offline corpus (Python's own documentation text).
    """
    run_command("pretrain", corpus=corpus, config_path=config_path, run_dir=run_dir, out=out,
                resume=resume, data_dir=data_dir, base_path=None, options=options)


@click.command("fine-tune", cls=Command)
@click.option("--from", "base_path", type=UserPath(exists=True, dir_okay=False),
              help="The JSON weights to start from (required; on --resume, the run's own).")
@click.option("--out", type=UserPath(dir_okay=False),
              help="Where the best fine-tuned model is written [default: tuned.json; on "
                   "--resume, the run's own].")
@run_options("fine-tune", {"vocab": "the base model's", "cell": "the base model's",
                           "embed_size": "the base model's", "hidden_size": "the base model's",
                           "num_layers": "the base model's"})
def fine_tune(corpus, base_path, config_path, run_dir, out, resume, data_dir, **options):
    """Continue training the model in --from on CORPUS.

    Characters the model has never seen are added to its vocabulary (old ids keep their
    meaning); the default learning rate is lower than pretraining's.
    """
    if base_path is None and not resume:
        raise click.UsageError("Missing option '--from'.")
    run_command("fine-tune", corpus=corpus, config_path=config_path, run_dir=run_dir, out=out,
                resume=resume, data_dir=data_dir, base_path=base_path, options=options)


def run_command(command: str, *, corpus, config_path, run_dir, out, resume, data_dir,
                base_path, options: dict) -> None:
    """Run the training the options ask for, then exit with its code."""
    from lstm_fn.config import MODEL_FIELDS, config_file, read_config_file
    from lstm_fn.errors import ConfigError, RunError
    from lstm_fn.runs.plan import RunRequest
    from lstm_fn.runs.run import run

    if out is not None and out.endswith(("/", os.sep)):
        raise errors.BadInput(f"--out {out!r} is a folder; give a file name")
    if run_dir is None:
        if resume:
            raise click.UsageError("--resume needs --run-dir")
        run_dir = default_run_dir(corpus)
    given_model = {k: options.pop(k) for k in MODEL_FIELDS}
    given_train = {k: (v or None) if isinstance(v, tuple) else v for k, v in options.items()}
    typed = {f"model.{k}" for k, v in given_model.items() if v is not None} | \
        {f"train.{k}" for k, v in given_train.items() if v is not None}
    config_path = config_path and config_file(config_path)
    try:
        request = RunRequest(command, corpus, Path(run_dir), out and Path(out), resume,
                             Path(data_dir), base_path and Path(base_path), config_path,
                             read_config_file(config_path), given_model, given_train)
        result = run(request, _console())
    except ConfigError as error:  # a setting typed on the command line is named as typed
        if error.key in typed:
            raise errors.BadInput(error.worded(flag(error.key))) from None
        raise
    except RunError as error:
        if error.resumable:
            continuing = resume_command(error.command or command, run_dir)
            raise errors.BadInput(f"{error} with `{continuing}`") from None
        raise
    _say_how_it_ended(result, command, run_dir)
    sys.exit(_exit_code(result))


def _console():
    from lstm_fn.cli.console import Console

    return Console()


def resume_command(command: str, run_dir) -> str:
    """The command line that continues a run, quoted for the shell."""
    return f"lstm-fn {command} --resume --run-dir {shlex.quote(str(run_dir))}"


def _say_how_it_ended(result, command: str, run_dir) -> None:
    if result.status == "interrupted":
        click.echo(f"interrupted at step {result.step}: checkpoint saved; continue with "
                   f"`{resume_command(command, run_dir)}`", err=True)
    elif result.message:
        click.echo(result.message, err=True)
    if result.status != "done":
        return
    if result.model.exists():
        click.echo(f"best model: {result.model} (validation {result.best_val:.4f} nats/char)")
    elif result.best_val is None:
        click.echo(f"no model written to {result.model}: no evaluation has run", err=True)
    else:  # removed after the best evaluation, which no later one beat
        click.echo(f"no model at {result.model}: it was removed after the run's best "
                   f"evaluation ({result.best_val:.4f} nats/char), and no evaluation since "
                   "beat it", err=True)


def _exit_code(result) -> int:
    return {"done": errors.OK, "nonfinite": errors.NONFINITE}.get(
        result.status, errors.for_signal(result.signal or 0))
