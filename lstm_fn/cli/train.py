"""The training commands, ``pretrain`` and ``fine-tune``: one path with different defaults
(:data:`lstm_fn.config.COMMAND_DEFAULTS`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from lstm_fn.cli import errors, interrupts
from lstm_fn.cli.options import (Command, UserPath, command_line, default_run_dir, flag,
                                 given_train, invoked_as, run_options)

OUT_HELP = ("Also copy the best model here, each time it improves [default: no copy; the "
            "model is RUN_DIR/model.json; on --resume, the run's own --out].")
REPLACE_OUT_HELP = ("Let --out replace a weights file that is the only copy of a model (by "
                    "default refused; a copy of another run's model is replaced anyway).")


@click.command(cls=Command)
@click.option("--out", type=UserPath(dir_okay=False), help=OUT_HELP)
@click.option("--replace-out", is_flag=True, help=REPLACE_OUT_HELP)
@run_options("pretrain")
def pretrain(corpus, config_path, run_dir, out, replace_out, resume, data_dir, **options):
    """Train a model from scratch on CORPUS.

    CORPUS is a text file, a file name under --data-dir, 'tinyshakespeare' (fetched once and
    verified), or nothing for the built-in offline corpus (Python's own documentation text).
    The best model is RUN_DIR/model.json; `lstm-fn sample --from RUN_DIR` samples from it.
    """
    run_command("pretrain", corpus=corpus, config_path=config_path, run_dir=run_dir, out=out,
                replace_out=replace_out, resume=resume, data_dir=data_dir, base_path=None,
                options=options)


@click.command("fine-tune", cls=Command)
@click.option("--from", "base_path", type=UserPath(exists=True, dir_okay=False),
              help="The JSON weights to start from (required; on --resume, the run's own).")
@click.option("--out", type=UserPath(dir_okay=False), help=OUT_HELP)
@click.option("--replace-out", is_flag=True, help=REPLACE_OUT_HELP)
@run_options("fine-tune", {"vocab": "the base model's", "cell": "the base model's",
                           "embed_size": "the base model's", "hidden_size": "the base model's",
                           "num_layers": "the base model's"})
def fine_tune(corpus, base_path, config_path, run_dir, out, replace_out, resume, data_dir,
              **options):
    """Continue training the model in --from on CORPUS.

    Characters the model has never seen are added to its vocabulary (old ids keep their
    meaning); the default learning rate is lower than pretraining's.
    """
    if base_path is None and not resume:
        raise click.UsageError("Missing option '--from'.")
    run_command("fine-tune", corpus=corpus, config_path=config_path, run_dir=run_dir, out=out,
                replace_out=replace_out, resume=resume, data_dir=data_dir, base_path=base_path,
                options=options)


def run_command(command: str, *, corpus, config_path, run_dir, out, replace_out, resume,
                data_dir, base_path, options: dict) -> None:
    """Run the training the options ask for, say how it ended, exit with its code."""
    from lstm_fn.cli.console import Console, Listener
    from lstm_fn.config import MODEL_FIELDS, config_file, read_config_file
    from lstm_fn.errors import ConfigError, RunError
    from lstm_fn.runs.plan import RunRequest
    from lstm_fn.runs.run import run
    from lstm_fn.training import cluster

    if out is not None and out.endswith(("/", os.sep)):
        raise errors.BadInput(f"--out {out!r} is a folder; give a file name")
    if run_dir is None:
        if resume:
            raise click.UsageError("--resume needs --run-dir")
        run_dir = default_run_dir(corpus)
    given_model = {k: options.pop(k) for k in MODEL_FIELDS}
    train_given = given_train(options)
    typed = {f"model.{k}" for k, v in given_model.items() if v is not None} | \
        {f"train.{k}" for k, v in train_given.items() if v is not None}
    config_path = config_path and config_file(config_path)
    program = invoked_as()
    request = RunRequest(
        command, corpus, Path(run_dir), out and Path(out), resume, Path(data_dir),
        base_path and Path(base_path), config_path, read_config_file(config_path), given_model,
        train_given, replace_out, command_line(), program)
    try:
        end = run(request, Console() if cluster.primary() else Listener())
    except ConfigError as error:  # a setting typed on the command line is named as typed
        if error.key in typed:
            raise errors.BadInput(error.worded(flag(error.key))) from None
        raise
    except RunError as error:
        if error.resumable:
            continuing = request.resume_command(error.command)
            raise errors.BadInput(f"{error} with `{continuing}`") from None
        raise
    except Exception as error:
        if cluster.processes() > 1 and cluster.lost_contact(error):
            lost_process(error, request)
        raise
    for line in end.closing:
        click.echo(line, err=end.result.status != "done")
    sys.exit(_exit_code(end.result))


def lost_process(error: Exception, request) -> None:
    """End this process of a run of several when another one is gone (its collectives
    fail): one line, the resume command, and an exit that skips JAX's shutdown, which
    would wait for the lost process and then abort."""
    from lstm_fn.training import cluster

    others = cluster.processes() - 1
    lost = (f"process {1 - cluster.index()}" if others == 1
            else f"one of the other {others} processes")
    click.echo(f"Error: {lost} of the run is gone ({type(error).__name__}: "
               f"{errors.first_line(error)[:200]}); the last whole checkpoint is kept: "
               f"continue with `{request.resume_command()}` on every process", err=True)
    interrupts.leave(errors.LOST_PROCESS)


def _exit_code(result) -> int:
    return {"done": errors.OK, "nonfinite": errors.NONFINITE}.get(
        result.status, errors.for_signal(result.signal or 0))
