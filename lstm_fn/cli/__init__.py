"""The ``lstm-fn`` command line: thin click commands over the library.

Each command resolves its options and calls one library function; JAX is imported when a
command starts (``--help`` never loads it). What ends a command, and with which exit code,
is :mod:`lstm_fn.cli.errors`.
"""

from __future__ import annotations

import sys

import click

from lstm_fn.cli.errors import INTERRUPTED, App
from lstm_fn.cli.model import evaluate_command, info, plot, sample
from lstm_fn.cli.study import gradcheck, gradnorms
from lstm_fn.cli.train import fine_tune, pretrain


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"],
                                        "show_default": True})
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.version_option(package_name="lstm-fn")
def cli(debug: bool):
    """Character-level RNN, LSTM and GRU language models in JAX."""


for command in (pretrain, fine_tune, sample, evaluate_command, info, plot, gradcheck, gradnorms):
    cli.add_command(command)


def main():
    from lstm_fn.cli.setup import prepare_jax, prepare_process

    try:
        prepare_process()
        cli(prog_name="lstm-fn", obj=prepare_jax)
    except KeyboardInterrupt:  # Ctrl-C while starting up, before the commands run
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
