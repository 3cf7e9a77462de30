"""The gradcheck tool itself: it must fail when a gradient is wrong, and test what its
docstring promises (a random carry, non-zero biases)."""

import jax
import jax.numpy as jnp
import numpy as np

from conftest import CELLS, invoke
from lstm_fn.nn import gradcheck


def test_gradient_check_detects_a_wrong_bptt(monkeypatch):
    real = gradcheck.manual_loss
    monkeypatch.setattr(gradcheck, "manual_loss",
                        lambda *a, **k: (lambda v, c: (v * 1.001, c))(*real(*a, **k)))
    rows = gradcheck.gradient_check("gru", 1, 5)
    assert all(r.bptt_vs_jax > gradcheck.AUTODIFF_BUDGET for r in rows)
    assert not any(r.ok for r in rows)


def test_row_ok_needs_every_budget():
    assert not gradcheck.Row("x", (1,), 0.0, 0.0, 1e-3, 0.0).ok
    assert not gradcheck.Row("x", (1,), 0.0, 0.0, 0.0, 1e-3).ok
    assert not gradcheck.Row("x", (1,), 0.0, 1e-3, 0.0, 0.0).ok
    assert gradcheck.Row("x", (1,), 0.0, 0.0, 0.0, 0.0).ok
    at_budget = (gradcheck.AUTODIFF_BUDGET,) * 2 + (gradcheck.FINITE_DIFF_BUDGET,) * 2
    assert gradcheck.Row("x", (1,), *at_budget).ok


def test_gradcheck_problem_has_random_carry_and_biases():
    with jax.enable_x64(True):  # as gradient_check builds it
        cfg, params, tokens, targets, carry, masks = gradcheck.problem("lstm", 2, 5)
        assert all(float(jnp.abs(c).min()) > 0 for c in jax.tree.leaves(carry))
        assert all(float(jnp.abs(l["b_h"]).min()) > 0 for l in params["layers"])


def test_the_commands_report_every_cell_and_fail_on_any(monkeypatch):
    """``lstm-fn gradcheck`` checks the three cells (by default 2 layers, T=30, H=6, no
    dropout, seed 0), marks a row past its budget and exits 1 if any cell failed, the first
    one included; ``gradnorms`` lists the last step first."""
    checked, settings = [], set()

    def check(cell, num_layers, steps, **kwargs):
        checked.append(cell)
        settings.add((num_layers, steps, *sorted(kwargs.items())))
        return [gradcheck.Row("w", (2,), 0.0, 1e-3 if cell == "rnn" else 0.0, 0.0, 0.0)]

    monkeypatch.setattr(gradcheck, "gradient_check", check)
    result = invoke("gradcheck")
    assert result.exit_code == 1 and checked == list(CELLS), result.output
    assert settings == {(2, 30, ("dropout", 0.0), ("hidden_size", 6), ("seed", 0))}
    assert result.stdout.startswith("rnn: 2 layer(s), T=30, H=6, float64")
    assert [line.endswith("FAIL") for line in result.stdout.splitlines()
            if line.startswith("  w ")] == [cell == "rnn" for cell in CELLS]
    assert result.stdout.endswith("FAILED: errors past budget\n")
    result = invoke("gradcheck", "--cell", "gru")
    assert result.exit_code == 0 and result.stdout.endswith("all gradients agree\n")
    monkeypatch.setattr(gradcheck, "hidden_grad_norms",
                        lambda cell, steps, **kwargs: np.arange(1.0, steps + 1))
    rows = invoke("gradnorms", "--steps", "3").stdout.splitlines()[1:]
    assert [row.split() for row in rows] == [[str(back), *[f"{3.0 - back:.2e}"] * len(CELLS)]
                                             for back in range(3)]
