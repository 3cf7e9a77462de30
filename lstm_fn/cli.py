"""The ``lstm-fn`` command line: thin click commands over the library functions."""

from __future__ import annotations

import sys

import click

from lstm_fn.cli_model import evaluate_command, info, plot, sample
from lstm_fn.cli_options import BadInput, Command, UserPath, run_command, run_options
from lstm_fn.cli_study import gradcheck, gradnorms


# Train defaults of the commands where they differ from TrainConfig's (steps only applies
# without another stopping rule).
PRETRAIN_DEFAULTS = {"steps": 5000}
FINE_TUNE_DEFAULTS = {"steps": 1000, "learning_rate": 5e-4}


# Errors that mean "the input is wrong", shown as one line unless --debug (CorpusError,
# WeightsError, ConfigError and CheckpointError are ValueErrors).
INPUT_ERRORS = (ValueError, OSError)


class App(click.Group):
    """Turns input errors into one-line messages; ``--debug`` shows the traceback instead."""

    command_class = Command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader left (`lstm-fn sample | head`): stop quietly
            _silence_stdout()
            sys.exit(141)  # as a process ended by SIGPIPE
        except KeyboardInterrupt:  # before training's own handling starts (or after it)
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (ModuleNotFoundError, *INPUT_ERRORS) as error:
            if ctx.params.get("debug"):
                raise
            raise _one_line(error) from None


def _one_line(error: Exception) -> click.ClickException:
    if isinstance(error, ModuleNotFoundError):  # e.g. `python cli.py` where jax is missing
        return click.ClickException(f"the Python package {error.name!r} is not installed "
                                    "here; `pip install -e .` installs what lstm_fn needs")
    return BadInput(str(error).splitlines()[0] if str(error) else type(error).__name__)


def _silence_stdout():
    """Point stdout at /dev/null, so the flush at exit does not fail on the closed pipe."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (tests capture it)
        pass


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"],
                                        "show_default": True})
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.version_option(package_name="lstm-fn")
def cli(debug: bool):
    """Character-level RNN, LSTM and GRU language models in JAX."""


for command in (sample, evaluate_command, info, plot, gradcheck, gradnorms):
    cli.add_command(command)


@cli.command()
@click.option("--out", type=UserPath(dir_okay=False),
              help="Where the best model is written as JSON weights [default: model.json; "
                   "on --resume, the run's own].")
@run_options(PRETRAIN_DEFAULTS)
def pretrain(corpus, config_path, run_dir, out, resume, data_dir, **options):
    """Train a model from scratch on CORPUS.

    CORPUS is a text file, a file name under --data-dir, 'tinyshakespeare' (fetched once and
    verified), or nothing for the built-in offline corpus (Python's own documentation text).
    """
    run_command("pretrain", corpus, config_path, run_dir, out, resume, data_dir, None,
                PRETRAIN_DEFAULTS, options)


@cli.command("fine-tune")
@click.option("--from", "base_path", type=UserPath(exists=True, dir_okay=False),
              help="The JSON weights to start from (required; on --resume, the run's own).")
@click.option("--out", type=UserPath(dir_okay=False),
              help="Where the best fine-tuned model is written [default: tuned.json; on "
                   "--resume, the run's own].")
@run_options(FINE_TUNE_DEFAULTS, {"vocab": "the base model's", "cell": "the base model's",
                                   "embed_size": "the base model's",
                                   "hidden_size": "the base model's",
                                   "num_layers": "the base model's"})
def fine_tune(corpus, base_path, config_path, run_dir, out, resume, data_dir, **options):
    """Continue training the model in --from on CORPUS.

    Characters the model has never seen are added to its vocabulary (old ids keep their
    meaning); the default learning rate is lower than pretraining's.
    """
    if base_path is None and not resume:
        raise click.UsageError("Missing option '--from'.")
    run_command("fine-tune", corpus, config_path, run_dir, out, resume, data_dir, base_path,
                FINE_TUNE_DEFAULTS, options)


def main():
    from lstm_fn.cli_setup import prepare_jax, prepare_process

    try:
        prepare_process()
        cli(prog_name="lstm-fn", obj=prepare_jax)
    except KeyboardInterrupt:  # Ctrl-C while starting up, before the commands run
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
