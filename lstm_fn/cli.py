"""The ``lstm-fn`` command line: thin click commands over the library functions."""

from __future__ import annotations

import sys

import click

from lstm_fn.vocab import CorpusError
from reference_numpy.weights import WeightsError


class BadInput(click.ClickException):
    """Bad input from the user: one line on stderr, exit code 2."""

    exit_code = 2


# Errors that mean "the input is wrong", shown as one line unless --debug.
INPUT_ERRORS = (CorpusError, WeightsError, ValueError, OSError)


class App(click.Group):
    """Turns input errors into one-line messages; ``--debug`` shows the traceback instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except INPUT_ERRORS as error:
            if ctx.params.get("debug"):
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BadInput(message) from None


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"],
                                        "show_default": True})
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.version_option(package_name="lstm-fn")
def cli(debug: bool):
    """Character-level RNN, LSTM and GRU language models in JAX."""


@cli.command()
@click.option("--cell", type=click.Choice(["rnn", "lstm", "gru", "all"]), default="all")
@click.option("--layers", "num_layers", type=click.IntRange(1, 8), default=2)
@click.option("--steps", type=click.IntRange(1, 500), default=30, help="Sequence length T.")
@click.option("--hidden-size", type=click.IntRange(1, 64), default=6)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Also check backpropagation through shared random dropout masks.")
@click.option("--seed", type=int, default=0)
def gradcheck(cell, num_layers, steps, hidden_size, dropout, seed):
    """Check gradients three ways: numpy BPTT, jax.grad and finite differences (float64).

    Prints one row per parameter tensor and initial-carry part with the three relative
    errors (max |a - b| / max(|a|, |b|)); exits 1 if any is past its budget.
    """
    from lstm_fn import gradcheck as gc

    failed = False
    for name in ("rnn", "lstm", "gru") if cell == "all" else (cell,):
        rows = gc.gradient_check(name, num_layers, steps, hidden_size=hidden_size,
                                 dropout=dropout, seed=seed)
        click.echo(f"{name}: {num_layers} layer(s), T={steps}, H={hidden_size}, float64   "
                   f"budgets: numpy~jax {gc.AUTODIFF_BUDGET:.0e}, ~finite-diff {gc.FINITE_DIFF_BUDGET:.0e}")
        click.echo(f"  {'tensor':<18}{'shape':<12}{'numpy~jax':>12}{'numpy~fd':>12}{'jax~fd':>12}")
        for row in rows:
            flag = "" if row.ok else "  FAIL"
            click.echo(f"  {row.name:<18}{str(row.shape):<12}{row.numpy_vs_jax:>12.1e}"
                       f"{row.numpy_vs_fd:>12.1e}{row.jax_vs_fd:>12.1e}{flag}")
        failed |= not all(row.ok for row in rows)
    click.echo("FAILED: errors past budget" if failed else "all gradients agree")
    sys.exit(1 if failed else 0)


@cli.command()
@click.option("--steps", type=click.IntRange(2, 1000), default=50, help="Sequence length T.")
@click.option("--layers", "num_layers", type=click.IntRange(1, 8), default=1)
@click.option("--hidden-size", type=click.IntRange(1, 512), default=32)
@click.option("--seed", type=int, default=0)
def gradnorms(steps, num_layers, hidden_size, seed):
    """Show ||dL_T/dh_t|| for t = T..1 in rnn, lstm and gru at initialisation.

    L_T is the loss at the last step only; each row says how much the hidden state t steps
    earlier can still move it: the signal vanishes fast in rnn and gru, slowly in lstm.
    """
    from lstm_fn.gradcheck import hidden_grad_norms

    cells = ("rnn", "lstm", "gru")
    norms = {c: hidden_grad_norms(c, steps, num_layers=num_layers, hidden_size=hidden_size,
                                  seed=seed) for c in cells}
    click.echo(f"{'steps back':>10}" + "".join(f"{c:>12}" for c in cells))
    for back in range(steps):
        t = steps - 1 - back
        click.echo(f"{back:>10}" + "".join(f"{norms[c][t]:>12.2e}" for c in cells))


def main():
    cli(prog_name="lstm-fn")
