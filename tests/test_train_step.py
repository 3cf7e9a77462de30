"""The training step in-process: its dropout stream, freezing, clipping, the schedule's
index, ``lr_scale``, ``reset``, ``params_finite`` and bfloat16 matmuls (evaluation,
schedules and optimizers: test_train.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax.tree_utils import tree_norm

import lstm_fn
from lstm_fn.config import TrainConfig
from lstm_fn.text.streams import train_batch
from lstm_fn.training.state import TrainState
from lstm_fn.training.step import make_train_step
from conftest import assert_close, lr

CFG = lstm_fn.ModelConfig("lstm", vocab_size=9, embed_size=4, hidden_size=16, num_layers=2)


def ids(n=700, seed=0):
    rng = np.random.default_rng(seed)
    return (np.arange(n) * 3 + rng.integers(0, 2, n)) % CFG.vocab_size


def test_dropout_draws_its_own_random_numbers():
    """The step's dropout masks come from their own stream: the loss it reports is the loss
    under those masks, and they are not the uniform numbers the init drew (a mask folded in
    by step number alone equals split(key(seed), n)[step]: layer 0's w_x at step 2)."""
    from lstm_fn.nn.model import dropout_masks
    from lstm_fn.training.state import DROPOUT_STREAM, stream_key

    cfg = lstm_fn.ModelConfig("lstm", vocab_size=9, embed_size=16, hidden_size=16,
                              num_layers=2, dropout=0.3)
    tcfg = TrainConfig(batch_size=16, seq_len=32, steps=5)
    params = lstm_fn.init(jax.random.key(tcfg.seed), cfg)
    state = TrainState.fresh(jax.tree.map(jnp.copy, params), cfg, tcfg)
    state = state._replace(step=jnp.asarray(2, state.step.dtype))
    inputs, targets, _ = train_batch(ids(), 16, 32, 0)
    _, metrics = make_train_step(cfg, tcfg)(state, inputs, targets, True, lr(tcfg))
    masks = dropout_masks(jax.random.fold_in(stream_key(tcfg.seed, DROPOUT_STREAM), 2), cfg,
                          16, 32)
    expected, _ = lstm_fn.loss(params, cfg, inputs, targets, dropout_masks=masks)
    assert_close(metrics["loss"], expected, atol=1e-5)
    w_x = np.asarray(params["layers"][0]["w_x"]).ravel()
    bound = 1 / np.sqrt(cfg.hidden_size)
    kept_by_init = (w_x + bound) / (2 * bound) < 1 - cfg.dropout
    agree = np.mean((np.asarray(masks[0]).ravel()[:w_x.size] > 0) == kept_by_init)
    assert agree < 0.7  # independent draws agree on ~0.58; the reused ones on 1.0


@pytest.mark.parametrize("optimizer, weight_decay, layer", [
    ("adam", 0.0, "1"),
    ("adamw", 0.1, "01"),  # decay is part of the update, not the gradient; "01" is layer 1
])
def test_frozen_parts_do_not_move(optimizer, weight_decay, layer):
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=3, freeze=("embed", layer),
                       optimizer=optimizer, weight_decay=weight_decay)
    assert tcfg.freeze == ("embed", "1")
    params = lstm_fn.init(jax.random.key(2), CFG)
    state = TrainState.fresh(jax.tree.map(jnp.copy, params), CFG, tcfg)
    step = make_train_step(CFG, tcfg)
    for position in range(3):
        state, _ = step(state, *train_batch(ids(), 4, 16, position), lr(tcfg))
    after = state.params
    np.testing.assert_array_equal(after["embed"], params["embed"])
    for name, value in after["layers"][1].items():
        np.testing.assert_array_equal(value, params["layers"][1][name])
    assert not np.array_equal(after["layers"][0]["w_h"], params["layers"][0]["w_h"])
    assert not np.array_equal(after["head"]["w"], params["head"]["w"])


def test_clipping_bounds_the_first_update():
    """With plain sgd (momentum 0) the update is exactly -lr * clipped gradient."""
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=1, optimizer="sgd", momentum=0.0,
                       learning_rate=1.0, grad_clip=1e-3)
    params = lstm_fn.init(jax.random.key(3), CFG)
    state = TrainState.fresh(jax.tree.map(jnp.copy, params), CFG, tcfg)
    state, metrics = make_train_step(CFG, tcfg)(state, *train_batch(ids(), 4, 16, 0), lr(tcfg))
    moved = tree_norm(jax.tree.map(jnp.subtract, state.params, params))
    assert float(metrics["grad_norm"]) > 1e-3 and float(moved) == pytest.approx(1e-3, rel=1e-3)


def test_each_step_gets_the_rate_of_its_own_index(tmp_path):
    """Warmup: the first update uses lr/W, not 2 lr/W (the schedule at the step's index, as
    the loop computes it on the host and the step applies it)."""
    from lstm_fn.training.loop import Training, train_loop
    from lstm_fn.training.report import Reporter

    class Rates(Reporter):
        rates = []

        def step(self, report):
            self.rates.append(report.lr)

    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=5, optimizer="sgd", learning_rate=2.0,
                       warmup_steps=4, sample_every=0)
    data = ids(2000)
    job = Training(CFG, tcfg, lstm_fn.Vocab.from_symbols("abcdefghi"), data, data[:100],
                   data[:0], 5, tmp_path / "checkpoints", tmp_path / "model.json")
    result = train_loop(job, lstm_fn.init(jax.random.key(3), CFG), Rates())
    assert result.status == "done" and Rates.rates == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])


def test_freezing_a_layer_number_the_model_lacks_is_refused():
    """Layers count from 0: a 2-layer model has layers 0 and 1, and no layer 2."""
    from lstm_fn.training.state import check_freeze

    check_freeze(("embed", "1"), 2)
    with pytest.raises(ValueError, match="names layer 2, but the model has 2"):
        check_freeze(("2",), 2)


# One rnn layer: the quickest training step to compile, for the tests of the step's wiring.
SMALL = lstm_fn.ModelConfig("rnn", vocab_size=9, embed_size=4, hidden_size=16, num_layers=1)


@pytest.fixture(scope="module")
def plain_step():
    """One compiled training step of SMALL (adam, batch 4, window 16) for the tests below."""
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=1)
    return tcfg, make_train_step(SMALL, tcfg)


def test_the_plateau_scale_multiplies_the_learning_rate_of_a_step(plain_step):
    """``lr_scale`` in the state (what reduce-on-plateau lowers) scales the rate the step
    reports and the update it applies (adam's direction does not depend on the rate)."""
    tcfg, step = plain_step
    params = lstm_fn.init(jax.random.key(3), SMALL)
    inputs, targets, reset = train_batch(ids(), 4, 16, 0)
    moved, rates = [], []
    for scale in (1.0, 0.25):
        state = TrainState.fresh(jax.tree.map(jnp.copy, params), SMALL, tcfg)
        state = state._replace(lr_scale=jnp.asarray(scale, jnp.float32))
        state, metrics = step(state, inputs, targets, jnp.asarray(reset), lr(tcfg))
        rates.append(float(metrics["lr"]))
        moved.append(float(tree_norm(jax.tree.map(jnp.subtract, state.params, params))))
    assert rates == pytest.approx([tcfg.learning_rate, 0.25 * tcfg.learning_rate])
    assert moved[1] == pytest.approx(0.25 * moved[0], rel=1e-3) and moved[0] > 0


def test_reset_starts_every_stream_from_a_zero_carry(plain_step):
    """With ``reset`` (a new pass over the data) the carry left by the last window is
    dropped: the loss is that of a zero initial state; without it, the carry is used."""
    tcfg, step = plain_step
    params = lstm_fn.init(jax.random.key(3), SMALL)
    inputs, targets, _ = train_batch(ids(), 4, 16, 0)
    fresh, _ = lstm_fn.loss(params, SMALL, inputs, targets)
    losses = []
    for reset in (True, False):
        state = TrainState.fresh(jax.tree.map(jnp.copy, params), SMALL, tcfg)
        state = state._replace(carry=jax.tree.map(lambda c: jnp.full_like(c, 0.9), state.carry))
        losses.append(float(step(state, inputs, targets, jnp.asarray(reset), lr(tcfg))[1]["loss"]))
    assert_close(losses[0], fresh, atol=1e-5)
    assert abs(losses[1] - float(fresh)) > 1e-3


def test_a_non_finite_parameter_is_reported_even_when_the_loss_is_finite(plain_step):
    """``params_finite`` looks at every tensor: an infinite bias in the last layer (a
    saturated unit, so the loss stays finite) is reported, not only a broken embedding."""
    tcfg, step = plain_step
    params = lstm_fn.init(jax.random.key(3), SMALL)
    params["layers"][-1]["b_h"] = params["layers"][-1]["b_h"].at[0].set(jnp.inf)
    inputs, targets, reset = train_batch(ids(), 4, 16, 0)
    _, metrics = step(TrainState.fresh(params, SMALL, tcfg), inputs, targets, jnp.asarray(reset),
                      lr(tcfg))
    assert np.isfinite(float(metrics["loss"])) and not bool(metrics["params_finite"])


def test_a_bfloat16_training_step_rounds_its_matmul_operands():
    """``matmul_precision="bfloat16"`` reaches the step's loss: it is the bfloat16 loss of
    :func:`lstm_fn.loss`, not the float32 one (which differs by ~5e-5 here)."""
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=1, matmul_precision="bfloat16")
    params = lstm_fn.init(jax.random.key(3), SMALL)
    inputs, targets, reset = train_batch(ids(), 4, 16, 0)
    state = TrainState.fresh(jax.tree.map(jnp.copy, params), SMALL, tcfg)
    _, metrics = make_train_step(SMALL, tcfg)(state, inputs, targets, reset, lr(tcfg))
    rounded = float(lstm_fn.loss(params, SMALL, inputs, targets, precision="bfloat16")[0])
    full = float(lstm_fn.loss(params, SMALL, inputs, targets)[0])
    assert abs(rounded - full) > 1e-5  # else this test could not tell them apart
    assert float(metrics["loss"]) == pytest.approx(rounded, abs=2e-6)


def test_frozen_parts_count_neither_in_the_gradient_norm_nor_in_its_clipping():
    """Frozen tensors' gradients are zeroed before clipping: the reported norm is the trained
    tensors' alone, and a clipped update moves them by exactly grad_clip (plain sgd)."""
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=1, optimizer="sgd", momentum=0.0,
                       learning_rate=1.0, grad_clip=1e-3, freeze=("head",))
    params = lstm_fn.init(jax.random.key(3), SMALL)
    inputs, targets, reset = train_batch(ids(), 4, 16, 0)
    grads = jax.grad(lambda p: lstm_fn.loss(p, SMALL, inputs, targets)[0])(params)
    trained = float(tree_norm({k: v for k, v in grads.items() if k != "head"}))
    assert float(tree_norm(grads["head"])) > 0.5 * trained  # freezing changes the norm
    state = TrainState.fresh(jax.tree.map(jnp.copy, params), SMALL, tcfg)
    state, metrics = make_train_step(SMALL, tcfg)(state, inputs, targets, reset, lr(tcfg))
    assert float(metrics["grad_norm"]) == pytest.approx(trained, rel=1e-4)
    moved = tree_norm(jax.tree.map(jnp.subtract, state.params, params))
    assert float(moved) == pytest.approx(1e-3, rel=1e-3)
