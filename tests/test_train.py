"""Training pieces in-process: exact evaluation, schedules, plateau bookkeeping, freezing
and each optimizer (the config loader: test_config.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_fn
from lstm_fn.config import TrainConfig
from lstm_fn.data import train_batch
from lstm_fn.optim import ValTracker, make_schedule
from lstm_fn.train import evaluate, global_norm, init_state, make_train_step
from conftest import SHORT_TEXT, assert_close, assert_refused, invoke

CFG = lstm_fn.ModelConfig("lstm", vocab_size=9, embed_size=4, hidden_size=16, num_layers=2)


def ids(n=700, seed=0):
    rng = np.random.default_rng(seed)
    return (np.arange(n) * 3 + rng.integers(0, 2, n)) % CFG.vocab_size


@pytest.mark.parametrize("batch_size, seq_len", [(1, 50), (4, 16), (7, 33)])
def test_evaluate_scores_every_prediction_once(batch_size, seq_len):
    """With one stream the exact answer is the whole split in one pass; more streams only
    restart the state at row borders, so the answer stays within a hair of it."""
    params = lstm_fn.init(jax.random.key(0), CFG)
    split = ids()
    whole, _ = lstm_fn.loss(params, CFG, split[None, :-1], split[None, 1:])
    counts = []  # what the eval command's progress line is fed
    got = evaluate(params, CFG, split, batch_size, seq_len, on_window=counts.append)
    assert counts == sorted(counts) and counts[-1] == len(split) - 1
    if batch_size == 1:
        assert_close(got, whole, atol=1e-5)
    else:
        assert abs(got - float(whole)) < 0.05


@pytest.mark.parametrize("batch_size", [1, 4])
def test_evaluate_with_a_limit_scores_the_start_of_each_stream(batch_size):
    """Each of the B streams (fresh state) scores its first max_chars / B predictions."""
    params = lstm_fn.init(jax.random.key(0), CFG)
    split, limit = ids(701), 120  # 700 predictions: rows of 175
    starts = np.arange(batch_size) * (700 // batch_size)
    per_row = limit // batch_size
    expected = np.mean([float(lstm_fn.loss(params, CFG, split[None, s:s + per_row],
                                           split[None, s + 1:s + 1 + per_row])[0])
                        for s in starts])
    got = evaluate(params, CFG, split, batch_size, 16, max_chars=limit)
    assert_close(got, expected, atol=1e-5)
    assert abs(got - evaluate(params, CFG, split, batch_size, 16)) > 1e-4  # not the whole


def test_schedules():
    cosine = make_schedule(TrainConfig(steps=100, schedule="cosine", warmup_steps=10,
                                       learning_rate=1.0, min_lr_ratio=0.1), 100)
    assert [float(cosine(s)) for s in (0, 9, 10)] == pytest.approx([0.1, 1.0, 1.0])
    assert float(cosine(99)) == pytest.approx(0.1)  # the last step of 100
    assert 0.1 < float(cosine(98)) < float(cosine(50)) < 1.0
    plain = make_schedule(TrainConfig(steps=10, schedule="cosine", learning_rate=1.0,
                                      min_lr_ratio=0.1), 10)
    assert [float(plain(s)) for s in (0, 9)] == pytest.approx([1.0, 0.1])  # no lr-0 step
    exponential = make_schedule(TrainConfig(steps=1, schedule="exponential", learning_rate=1.0,
                                            decay_rate=0.5, decay_steps=10), None)
    assert float(exponential(20)) == pytest.approx(0.25)
    warm = make_schedule(TrainConfig(steps=1, warmup_steps=4, learning_rate=2.0), None)
    assert [float(warm(s)) for s in range(5)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])
    with pytest.raises(ValueError, match="cosine"):
        make_schedule(TrainConfig(minutes=1, schedule="cosine"), None)


def test_plateau_and_patience():
    tracker = ValTracker(TrainConfig(steps=1, schedule="plateau", plateau_patience=2,
                                     plateau_factor=0.5, patience=3))
    assert [tracker.update(v) for v in (3.0, 2.0, 2.5, 2.1)] == [True, True, False, False]
    assert tracker.scale == 0.5 and not tracker.out_of_patience
    tracker.update(2.2)
    assert tracker.out_of_patience and tracker.best == 2.0


def test_an_equal_loss_is_not_an_improvement():
    tracker = ValTracker(TrainConfig(steps=1, patience=1))
    assert tracker.update(2.0) and not tracker.update(2.0)
    assert tracker.best == 2.0 and tracker.out_of_patience


@pytest.mark.parametrize("optimizer, precision", [
    ("adam", "float32"), ("adamw", "float32"), ("sgd", "float32"), ("rmsprop", "float32"),
    ("adam", "bfloat16")])
def test_each_optimizer_learns(optimizer, precision):
    lr = {"sgd": 0.5, "rmsprop": 3e-3}.get(optimizer, 1e-2)
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=60, optimizer=optimizer,
                       learning_rate=lr, weight_decay=0.01, matmul_precision=precision)
    step = make_train_step(CFG, tcfg, 60)
    state = init_state(lstm_fn.init(jax.random.key(1), CFG), CFG, tcfg)
    data, losses = ids(2000), []
    for position in range(60):
        state, metrics = step(state, *train_batch(data, 4, 16, position))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1, (optimizer, losses[::10])
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
def test_updates_follow_torch_optim(optimizer):
    """Three steps over consecutive windows (state carried), weight decay on: the same
    parameters as torch.optim's optimizer with the same settings."""
    torch = pytest.importorskip("torch")
    import reference_numpy as ref

    cfg = lstm_fn.ModelConfig("gru", vocab_size=9, embed_size=4, hidden_size=8, num_layers=2)
    tcfg = TrainConfig(batch_size=4, seq_len=8, steps=3, optimizer=optimizer, momentum=0.9,
                       learning_rate=0.01, weight_decay=0.1, grad_clip=0.0)
    params = jax.tree.map(np.asarray, lstm_fn.init(jax.random.key(4), cfg))
    state = init_state(jax.tree.map(jnp.asarray, params), cfg, tcfg)
    step = make_train_step(cfg, tcfg, 3)
    net = ref.torch_module(cfg.architecture(), params)
    options = {"adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {}),
               "sgd": (torch.optim.SGD, {"momentum": 0.9}),
               "rmsprop": (torch.optim.RMSprop, {"alpha": 0.95, "eps": 1e-8})}[optimizer]
    torch_opt = options[0](net.parameters(), lr=0.01, weight_decay=0.1, **options[1])
    carry = None
    for position in range(3):
        inputs, targets, reset = train_batch(ids(), 4, 8, position)
        state, _ = step(state, inputs, targets, reset)
        logits, carry = net(torch.from_numpy(inputs).long(), None if reset else carry)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size),
                                                 torch.from_numpy(targets).long().reshape(-1))
        torch_opt.zero_grad()
        loss.backward()
        torch_opt.step()
        carry = carry.detach()
    expected = ref.from_torch(net.state_dict(), cfg.architecture())
    for got, want in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(expected)):
        assert_close(got, want, atol=2e-5, rtol=0)


def test_dropout_draws_its_own_random_numbers():
    """The step's dropout masks come from their own stream: the loss it reports is the loss
    under those masks, and they are not the uniform numbers the init drew (a mask folded in
    by step number alone equals split(key(seed), n)[step]: layer 0's w_x at step 2)."""
    from lstm_fn.model import dropout_masks
    from lstm_fn.train import DROPOUT_STREAM, stream_key

    cfg = lstm_fn.ModelConfig("lstm", vocab_size=9, embed_size=16, hidden_size=16,
                              num_layers=2, dropout=0.3)
    tcfg = TrainConfig(batch_size=16, seq_len=32, steps=5)
    params = lstm_fn.init(jax.random.key(tcfg.seed), cfg)
    state = init_state(jax.tree.map(jnp.copy, params), cfg, tcfg)
    state["step"] = jnp.asarray(2, state["step"].dtype)
    inputs, targets, _ = train_batch(ids(), 16, 32, 0)
    _, metrics = make_train_step(cfg, tcfg, 5)(state, inputs, targets, True)
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
    state = init_state(jax.tree.map(jnp.copy, params), CFG, tcfg)
    step = make_train_step(CFG, tcfg, 3)
    for position in range(3):
        state, _ = step(state, *train_batch(ids(), 4, 16, position))
    after = state["params"]
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
    state = init_state(jax.tree.map(jnp.copy, params), CFG, tcfg)
    state, metrics = make_train_step(CFG, tcfg, 1)(state, *train_batch(ids(), 4, 16, 0))
    moved = global_norm(jax.tree.map(jnp.subtract, state["params"], params))
    assert float(metrics["grad_norm"]) > 1e-3 and float(moved) == pytest.approx(1e-3, rel=1e-3)


def test_the_step_uses_the_schedule_at_its_own_index():
    """Warmup: the first update uses lr/W, not 2 lr/W (the schedule at the step's index)."""
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=5, optimizer="sgd", learning_rate=2.0,
                       warmup_steps=4)
    state = init_state(lstm_fn.init(jax.random.key(3), CFG), CFG, tcfg)
    step, rates = make_train_step(CFG, tcfg, 5), []
    for i in range(5):
        state, metrics = step(state, *train_batch(ids(), 4, 16, i))
        rates.append(float(metrics["lr"]))
    assert rates == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])


def test_plateau_scales_once_per_patience():
    """The lr shrinks after every `plateau_patience` bad evaluations, not after each one past
    the first patience."""
    t = ValTracker(TrainConfig(steps=1, schedule="plateau", plateau_patience=2, plateau_factor=0.5))
    t.update(1.0)
    scales = []
    for _ in range(4):
        t.update(2.0)
        scales.append(t.scale)
    assert scales == [1.0, 0.5, 0.5, 0.25]


def test_the_eval_command_passes_batch_and_window_by_name(model_file, short_corpus,
                                                          monkeypatch, tmp_path):
    """A short text is one stream whatever --batch-size says; a long one is cut into at most
    --batch-size streams (it changes the numbers), and --seq-len is only the window; the
    command's result is evaluate's."""
    from lstm_fn import data

    params, cfg, vocab = lstm_fn.load_weights(model_file)
    ids = vocab.encode(SHORT_TEXT)
    result = invoke("eval", short_corpus, "--from", model_file, "--batch-size", "32")
    assert result.exit_code == 0, result.output
    assert f"{len(ids) - 1:,} predictions in 1 stream(s)" in result.output
    assert f"loss {evaluate(params, cfg, ids, 1, 7):.4f} nats/char" in result.output
    monkeypatch.setattr(data, "MIN_EVAL_STREAM", 10)  # as if the text were long
    want, swapped = evaluate(params, cfg, ids, 3, 50), evaluate(params, cfg, ids, 50, 3)
    assert f"{want:.4f}" != f"{swapped:.4f}"  # else this test could not tell them apart
    result = invoke("eval", short_corpus, "--from", model_file, "--batch-size", "3",
                    "--seq-len", "50")
    assert result.exit_code == 0 and f"loss {want:.4f} nats/char" in result.output, result.output
    assert "in 3 stream(s)" in result.output
    (tmp_path / "one.txt").write_text("a")
    assert_refused(invoke("eval", tmp_path / "one.txt", "--from", model_file),
                   "at least 2 characters")



def test_freezing_a_layer_number_the_model_lacks_is_refused():
    """Layers count from 0: a 2-layer model has layers 0 and 1, and no layer 2."""
    from lstm_fn.train import check_freeze

    check_freeze(("embed", "1"), 2)
    with pytest.raises(ValueError, match="names layer 2, but the model has 2"):
        check_freeze(("2",), 2)


# One rnn layer: the quickest training step to compile, for the tests of the step's wiring.
SMALL = lstm_fn.ModelConfig("rnn", vocab_size=9, embed_size=4, hidden_size=16, num_layers=1)


@pytest.fixture(scope="module")
def plain_step():
    """One compiled training step of SMALL (adam, batch 4, window 16) for the tests below."""
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=1)
    return tcfg, make_train_step(SMALL, tcfg, 1)


def test_the_plateau_scale_multiplies_the_learning_rate_of_a_step(plain_step):
    """``lr_scale`` in the state (what reduce-on-plateau lowers) scales the rate the step
    reports and the update it applies (adam's direction does not depend on the rate)."""
    tcfg, step = plain_step
    params = lstm_fn.init(jax.random.key(3), SMALL)
    inputs, targets, reset = train_batch(ids(), 4, 16, 0)
    moved, rates = [], []
    for scale in (1.0, 0.25):
        state = init_state(jax.tree.map(jnp.copy, params), SMALL, tcfg)
        state["lr_scale"] = jnp.asarray(scale, jnp.float32)
        state, metrics = step(state, inputs, targets, jnp.asarray(reset))
        rates.append(float(metrics["lr"]))
        moved.append(float(global_norm(jax.tree.map(jnp.subtract, state["params"], params))))
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
        state = init_state(jax.tree.map(jnp.copy, params), SMALL, tcfg)
        state["carry"] = jax.tree.map(lambda c: jnp.full_like(c, 0.9), state["carry"])
        losses.append(float(step(state, inputs, targets, jnp.asarray(reset))[1]["loss"]))
    assert_close(losses[0], fresh, atol=1e-5)
    assert abs(losses[1] - float(fresh)) > 1e-3


def test_a_non_finite_parameter_is_reported_even_when_the_loss_is_finite(plain_step):
    """``params_finite`` looks at every tensor: an infinite bias in the last layer (a
    saturated unit, so the loss stays finite) is reported, not only a broken embedding."""
    tcfg, step = plain_step
    params = lstm_fn.init(jax.random.key(3), SMALL)
    params["layers"][-1]["b_h"] = params["layers"][-1]["b_h"].at[0].set(jnp.inf)
    inputs, targets, reset = train_batch(ids(), 4, 16, 0)
    _, metrics = step(init_state(params, SMALL, tcfg), inputs, targets, jnp.asarray(reset))
    assert np.isfinite(float(metrics["loss"])) and not bool(metrics["params_finite"])


def test_a_bfloat16_training_step_rounds_its_matmul_operands():
    """``matmul_precision="bfloat16"`` reaches the step's loss: it is the bfloat16 loss of
    :func:`lstm_fn.loss`, not the float32 one (which differs by ~5e-5 here)."""
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=1, matmul_precision="bfloat16")
    params = lstm_fn.init(jax.random.key(3), SMALL)
    inputs, targets, reset = train_batch(ids(), 4, 16, 0)
    state = init_state(jax.tree.map(jnp.copy, params), SMALL, tcfg)
    _, metrics = make_train_step(SMALL, tcfg, 1)(state, inputs, targets, reset)
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
    trained = float(global_norm({k: v for k, v in grads.items() if k != "head"}))
    assert float(global_norm(grads["head"])) > 0.5 * trained  # freezing changes the norm
    state = init_state(jax.tree.map(jnp.copy, params), SMALL, tcfg)
    state, metrics = make_train_step(SMALL, tcfg, 1)(state, inputs, targets, reset)
    assert float(metrics["grad_norm"]) == pytest.approx(trained, rel=1e-4)
    moved = global_norm(jax.tree.map(jnp.subtract, state["params"], params))
    assert float(moved) == pytest.approx(1e-3, rel=1e-3)
