"""The gradcheck tool itself: it must fail when a gradient is wrong, and test what its
docstring promises (a random carry, non-zero biases)."""

import jax
import jax.numpy as jnp

from lstm_fn import gradcheck


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


def test_gradcheck_problem_has_random_carry_and_biases():
    with jax.enable_x64(True):  # as gradient_check builds it
        cfg, params, tokens, targets, carry, masks = gradcheck.problem("lstm", 2, 5)
        assert all(float(jnp.abs(c).min()) > 0 for c in jax.tree.leaves(carry))
        assert all(float(jnp.abs(l["b_h"]).min()) > 0 for l in params["layers"])
