"""The hand-written BPTT (custom_vjp) against autodiff of the scan model, in float64, and
the manual training step against the autodiff one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_fn.nn import gradcheck
from lstm_fn.nn import model as M
from lstm_fn.nn.bptt import manual_layer, manual_loss
from lstm_fn.nn.cells import get_cell
from lstm_fn.config import TrainConfig
from lstm_fn.nn.precision import matmul
from lstm_fn.nn.scan import scan_recurrence
from lstm_fn.training.state import TrainState
from lstm_fn.training.step import make_train_step
from reference_numpy import spec
from reference_numpy.gradcheck import relative_error
from conftest import CELLS, lr

# Both gradients are exact in float64 and differ only in the order of the same sums
# (one T*B-row matmul vs T per-step products): measured <= 1e-14; a wrong term is >= 1e-3.
GRAD_BUDGET = 1e-10
# bfloat16 matmul operands (float32 sums): each operand is rounded to ~3 significant digits,
# so gradients move by ~1e-2 (measured here: <= 2.9e-2 from float32, <= 1.8e-2 between
# manual and autodiff, the rnn the largest); the two round at slightly different points
# (the autodiff backward rounds the cotangents it multiplies). A missing or wrong term is
# O(1); bfloat16 not in effect shows as a difference to float32 below 1e-5.
BF16_BUDGET = 5e-2
# Two float32 training steps, same data and dropout masks. Adam's first steps move each
# weight by ~lr * sign(g), so a component whose gradient is float32 rounding noise could
# move differently; measured max difference <= 1.2e-7 (lr 2e-3); a wrong gradient
# gives ~lr = 2e-3.
TRAIN_ATOL = 1e-5


def _problem(cell, num_layers, batch_size=3, steps=20, seed=0):
    """float64 numpy problem ``(cfg, params, tokens, targets, carry, masks)``: random weights
    and non-zero biases, a random initial carry and dropout masks (numpy, so building it
    compiles nothing)."""
    cfg = M.ModelConfig(cell, vocab_size=7, embed_size=5, hidden_size=6, num_layers=num_layers,
                        dropout=0.3)
    rng = np.random.default_rng([seed, num_layers, CELLS.index(cell)])
    shapes = spec.param_shapes(cfg.architecture())
    params = jax.tree.map(lambda shape: 0.5 * rng.standard_normal(shape), shapes,
                          is_leaf=lambda s: isinstance(s, tuple))
    state = get_cell(cell).state
    carry = tuple(state(*(0.5 * rng.standard_normal((batch_size, cfg.hidden_size))
                          for _ in state._fields)) for _ in range(num_layers))
    tokens, targets = rng.integers(0, cfg.vocab_size, (2, batch_size, steps))
    keep = 1.0 - cfg.dropout
    masks = [(rng.random((batch_size, steps, cfg.hidden_size)) < keep) / keep
             for _ in range(num_layers)]
    return cfg, params, tokens, targets, carry, masks


def _carry_weights(carry):
    """Fixed random weights for a loss term on the final carry, so its cotangent is not 0."""
    return jax.tree.map(lambda c: jnp.cos(1.7 * jnp.arange(c.size).reshape(c.shape)), carry)


def _assert_trees_close(a, b, budget):
    names = [name for name, _ in gradcheck.named_leaves(a)]
    for name, x, y in zip(names, jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        err = relative_error(np.asarray(x), np.asarray(y))
        assert err <= budget, f"{name}: relative error {err:.2e}"


def _losses(cfg, tokens, targets, masks, weights):
    """``{name: (params, carry) -> scalar}`` for autodiff and manual, each as the mean loss
    and as ``loss + sum(weights * final carry)`` (so the final carry's cotangent is not 0)."""
    def carry_term(final):
        return sum(jnp.sum(w * c) for w, c in zip(jax.tree.leaves(weights), jax.tree.leaves(final)))

    def auto(p, c):
        return M.loss(p, cfg, tokens, targets, c, dropout_masks=masks)

    def manual(p, c):
        return manual_loss(p, cfg, tokens, targets, c, dropout_masks=masks)

    return {
        "autodiff": lambda p, c: auto(p, c)[0],
        "manual": lambda p, c: manual(p, c)[0],
        "autodiff+carry": lambda p, c: (lambda v, f: v + carry_term(f))(*auto(p, c)),
        "manual+carry": lambda p, c: (lambda v, f: v + carry_term(f))(*manual(p, c)),
    }


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_manual_gradients_equal_autodiff(cell, num_layers):
    cfg, params, tokens, targets, carry, masks = _problem(cell, num_layers)
    with jax.enable_x64(True):
        losses = _losses(cfg, tokens, targets, masks, _carry_weights(carry))
        # one compiled program for all four (values, d/d params, d/d carry)
        results = jax.jit(lambda p, c: {name: jax.value_and_grad(f, argnums=(0, 1))(p, c)
                                        for name, f in losses.items()})(params, carry)
    for term in ("", "+carry"):
        (auto_value, auto_grads), (manual_value, manual_grads) = (
            results["autodiff" + term], results["manual" + term])
        assert abs(float(auto_value) - float(manual_value)) <= 1e-12 * abs(float(auto_value))
        _assert_trees_close(auto_grads, manual_grads, GRAD_BUDGET)
    # the carry term really sends a cotangent back: d/d carry changes
    assert relative_error(results["manual"][1][1][0].h, results["manual+carry"][1][1][0].h) > 1e-3


def test_gradients_without_embedding_table():
    """With more vocabulary rows than positions (V=7 > T*B=5), the first layer projects the
    embedded inputs instead of reading rows of ``embed @ w_x``."""
    cfg, params, tokens, targets, carry, masks = _problem("gru", 2, batch_size=1, steps=5)
    assert cfg.vocab_size > tokens.size
    with jax.enable_x64(True):
        losses = _losses(cfg, tokens, targets, masks, _carry_weights(carry))
        auto, manual = (jax.jit(jax.grad(losses[name], argnums=(0, 1)))(params, carry)
                        for name in ("autodiff+carry", "manual+carry"))
    _assert_trees_close(auto, manual, GRAD_BUDGET)


@pytest.mark.parametrize("cell", CELLS)
def test_forward_values_equal(cell):
    cfg, params, tokens, targets, carry, masks = _problem(cell, 3)
    with jax.enable_x64(True):
        auto_loss, auto_carry = M.loss(params, cfg, tokens, targets, carry, dropout_masks=masks)
        manual_value, manual_carry = manual_loss(params, cfg, tokens, targets, carry,
                                                 dropout_masks=masks)
        xs = jnp.asarray(params["embed"])[tokens.T]
        p0 = jax.tree.map(jnp.asarray, params["layers"][0])
        c0 = jax.tree.map(jnp.asarray, carry[0])
        hs, final = manual_layer(cell, p0, xs, c0)
        ref_hs, ref_final, _ = scan_recurrence(cell, p0, matmul(xs, p0["w_x"]), c0)
    np.testing.assert_allclose(manual_value, auto_loss, rtol=1e-13)
    _assert_trees_close(auto_carry, manual_carry, 1e-13)
    _assert_trees_close((ref_hs, ref_final), (hs, final), 1e-13)
    assert type(final) is type(carry[0]) and hs.dtype == jnp.float64


def test_position_mask_matches_model_loss():
    cfg, params, tokens, targets, carry, masks = _problem("lstm", 1)
    with jax.enable_x64(True):
        weights = (jnp.arange(tokens.size).reshape(tokens.shape) % 3 != 0) / (2.0 * tokens.size)
        np.testing.assert_allclose(  # float weights summing to < 1: a weighted mean still
            manual_loss(params, cfg, tokens, targets, carry, dropout_masks=masks, mask=weights)[0],
            M.loss(params, cfg, tokens, targets, carry, dropout_masks=masks, mask=weights)[0],
            rtol=1e-13)
        auto = jax.jit(jax.grad(lambda p: M.loss(p, cfg, tokens, targets, carry,
                                                 dropout_masks=masks, mask=weights)[0]))(params)
        manual = jax.jit(jax.grad(lambda p: manual_loss(p, cfg, tokens, targets, carry,
                                                        dropout_masks=masks,
                                                        mask=weights)[0]))(params)
    _assert_trees_close(auto, manual, GRAD_BUDGET)


@pytest.mark.parametrize("cell", CELLS)
def test_bfloat16_matmuls(cell):
    """``precision="bfloat16"`` in both implementations: the same loss and gradients up to
    bfloat16 rounding, close to float32's, and really rounded (not float32 in disguise)."""
    cfg, params, tokens, targets, carry, masks = jax.tree.map(
        lambda a: np.asarray(a, np.float32) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
        else a, _problem(cell, 2))
    carry_weights = _carry_weights(carry)

    def objective(which, precision):
        def f(p, c):
            if which == "manual":
                value, final = manual_loss(p, cfg, tokens, targets, c, dropout_masks=masks,
                                           precision=precision)
            else:
                value, final = M.loss(p, cfg, tokens, targets, c, dropout_masks=masks,
                                      precision=precision)
            return value + sum(jnp.sum(w * x) for w, x in
                               zip(jax.tree.leaves(carry_weights), jax.tree.leaves(final)))
        return jax.value_and_grad(f, argnums=(0, 1))

    results = jax.jit(lambda p, c: {(w, prec): objective(w, prec)(p, c)
                                    for w in ("autodiff", "manual")
                                    for prec in ("float32", "bfloat16")})(params, carry)
    (value, grads), (reference_value, reference_grads) = (results["manual", "bfloat16"],
                                                          results["manual", "float32"])
    auto_value, auto_grads = results["autodiff", "bfloat16"]
    assert abs(float(value) - float(auto_value)) <= 1e-5 * abs(float(value))
    _assert_trees_close(auto_grads, grads, BF16_BUDGET)
    _assert_trees_close(reference_grads, grads, BF16_BUDGET)
    assert abs(float(value) - float(reference_value)) <= 1e-2 * abs(float(reference_value))
    rounding = max(relative_error(a, b) for a, b in zip(jax.tree.leaves(reference_grads),
                                                        jax.tree.leaves(grads)))
    assert rounding > 1e-5, "bfloat16 operands had no effect"
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_bfloat16_weight_gradients_round_both_operands():
    """With bfloat16, the backward's weight gradient (``dw_x = sum_t x_t^T dgx_t`` of
    :func:`lstm_fn.bptt.project`) also rounds its operands to bfloat16 and sums in float32:
    it equals that sum over rounded operands, not the float32 product."""
    from lstm_fn.nn.bptt import project

    rng = np.random.default_rng(0)
    xs, w_x, dgx = (jnp.asarray(rng.normal(size=shape), jnp.float32)
                    for shape in ((5, 3, 8), (8, 12), (5, 3, 12)))
    _, vjp = jax.vjp(lambda x, w: project(x, w, "bfloat16"), xs, w_x)
    _, dw = vjp(dgx)

    def outer(a, b):
        return jnp.einsum("tbi,tbg->ig", a, b, precision=jax.lax.Precision.HIGHEST)

    def rounded(a):
        return a.astype(jnp.bfloat16).astype(jnp.float32)

    np.testing.assert_allclose(dw, outer(rounded(xs), rounded(dgx)), rtol=1e-5, atol=1e-5)
    assert relative_error(dw, outer(xs, dgx)) > 1e-4  # the rounding shows


def test_manual_train_step_equals_autodiff():
    """The wiring of ``gradients="manual"`` through the real training step. One cell (the
    lstm, whose carry has two parts): the per-cell math is checked above in float64, and
    each training step costs ~2.5 s to compile."""
    cell = "lstm"
    cfg, params64, *_ = _problem(cell, 2)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params64)
    batch = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 4, 16), dtype=np.int32)
    results = {}
    for gradients in ("autodiff", "manual"):
        tcfg = TrainConfig(batch_size=4, seq_len=16, steps=2, gradients=gradients)
        step = make_train_step(cfg, tcfg)
        state = TrainState.fresh(jax.tree.map(jnp.asarray, params), cfg, tcfg)
        for reset in (True, False):  # the second step starts from the first one's carry
            state, metrics = step(state, batch[0], batch[1], jnp.asarray(reset), lr(tcfg))
        results[gradients] = (state, metrics)
    (auto, auto_metrics), (manual, manual_metrics) = results["autodiff"], results["manual"]
    for a, b in zip(jax.tree.leaves(auto.params), jax.tree.leaves(manual.params)):
        np.testing.assert_allclose(a, b, atol=TRAIN_ATOL, rtol=0)
    for a, b in zip(jax.tree.leaves(auto.carry), jax.tree.leaves(manual.carry)):
        np.testing.assert_allclose(a, b, atol=TRAIN_ATOL, rtol=0)
    np.testing.assert_allclose(auto_metrics["loss"], manual_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(auto_metrics["grad_norm"], manual_metrics["grad_norm"], rtol=1e-4)
    # the two steps really trained: parameters moved away from the init
    assert max(float(jnp.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(params), jax.tree.leaves(manual.params))) > 1e-3
    with pytest.raises(ValueError, match="reset must be one bool for all streams"):
        step(state, batch[0], batch[1], jnp.ones(4, bool), lr(tcfg))  # traced again: no compile
