"""The command group: each command resolves its options and calls one library function;
JAX is imported when a command starts (``--help`` never loads it)."""

from __future__ import annotations

import click

from lstm_fn.cli.errors import App
from lstm_fn.cli.compare import compare
from lstm_fn.cli.inspect import inspect
from lstm_fn.cli.model import evaluate_command, info, plot, sample
from lstm_fn.cli.runs import runs
from lstm_fn.cli.study import gradcheck, gradnorms
from lstm_fn.cli.train import fine_tune, pretrain


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"],
                                        "show_default": True})
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.version_option(package_name="lstm-fn")
def cli(debug: bool):
    """Character-level RNN, LSTM and GRU language models in JAX."""


for command in (pretrain, fine_tune, sample, evaluate_command, info, inspect, runs, compare,
                plot, gradcheck, gradnorms):
    cli.add_command(command)
