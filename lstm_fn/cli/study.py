"""The commands for studying the gradients: ``lstm-fn gradcheck`` and ``lstm-fn gradnorms``."""

from __future__ import annotations

import sys

import click

from lstm_fn.cli.options import Command
from reference_numpy.spec import CELLS


@click.command(cls=Command)
@click.option("--cell", type=click.Choice([*CELLS, "all"]), default="all")
@click.option("--layers", "num_layers", type=click.IntRange(1, 8), default=2)
@click.option("--steps", type=click.IntRange(1, 500), default=30, help="Sequence length T.")
@click.option("--hidden-size", type=click.IntRange(1, 64), default=6)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Also check backpropagation through shared random dropout masks.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0)
def gradcheck(cell, num_layers, steps, hidden_size, dropout, seed):
    """Check gradients four ways (float64): jax.grad of the plain scan, the hand-written
    BPTT of lstm_fn.nn.bptt (what training uses), numpy's BPTT and finite differences.

    Prints one row per parameter tensor and initial-carry part with the relative errors
    (max |a - b| / max(|a|, |b|)); exits 1 if any is past its budget.
    """
    from lstm_fn.nn import gradcheck as gc

    failed = False
    for name in CELLS if cell == "all" else (cell,):
        rows = gc.gradient_check(name, num_layers, steps, hidden_size=hidden_size,
                                 dropout=dropout, seed=seed)
        click.echo(f"{name}: {num_layers} layer(s), T={steps}, H={hidden_size}, float64   "
                   f"budgets: ~jax {gc.AUTODIFF_BUDGET:.0e}, ~fd {gc.FINITE_DIFF_BUDGET:.0e}")
        click.echo(f"  {'tensor':<18}{'shape':<12}{'numpy~jax':>12}{'bptt~jax':>12}"
                   f"{'numpy~fd':>12}{'jax~fd':>12}")
        for row in rows:
            flag = "" if row.ok else "  FAIL"
            click.echo(f"  {row.name:<18}{str(row.shape):<12}{row.numpy_vs_jax:>12.1e}"
                       f"{row.bptt_vs_jax:>12.1e}{row.numpy_vs_fd:>12.1e}{row.jax_vs_fd:>12.1e}"
                       f"{flag}")
        click.echo("  (jax: jax.grad of the plain scan; bptt: lstm_fn.nn.bptt; numpy: "
                   "reference_numpy; fd: finite differences)")
        failed |= not all(row.ok for row in rows)
    click.echo("FAILED: errors past budget" if failed else "all gradients agree")
    sys.exit(1 if failed else 0)


@click.command(cls=Command)
@click.option("--steps", type=click.IntRange(2, 1000), default=50, help="Sequence length T.")
@click.option("--layers", "num_layers", type=click.IntRange(1, 8), default=1,
              help="Stacked layers; the top layer's state is shown.")
@click.option("--hidden-size", type=click.IntRange(1, 512), default=32)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0)
def gradnorms(steps, num_layers, hidden_size, seed):
    """Show ||dL_T/dh_t|| for t = T..1 in rnn, lstm and gru at initialisation.

    The init's own weights and a zero initial state, the top layer's hidden state h_t.

    L_T is the loss at the last step only; each row says how much the hidden state t steps
    earlier can still move it: the signal vanishes fast in rnn and gru, slowly in lstm.
    """
    from lstm_fn.nn.gradcheck import hidden_grad_norms

    norms = {c: hidden_grad_norms(c, steps, num_layers=num_layers, hidden_size=hidden_size,
                                  seed=seed) for c in CELLS}
    click.echo(f"{'steps back':>10}" + "".join(f"{c:>12}" for c in CELLS))
    for back in range(steps):
        t = steps - 1 - back
        click.echo(f"{back:>10}" + "".join(f"{norms[c][t]:>12.2e}" for c in CELLS))
