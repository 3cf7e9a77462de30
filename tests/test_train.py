"""Training pieces in-process: exact evaluation, schedules, plateau bookkeeping and each
optimizer (the update step's wiring: test_train_step.py; the config loader:
test_config.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_fn
from lstm_fn.config import TrainConfig
from lstm_fn.text.streams import train_batch
from lstm_fn.training.optim import ValTracker
from lstm_fn.training.report import Reporter
from lstm_fn.training.schedule import (check_schedule, fixed_plan, follow_pace, plan_budget, rate,
                                       replan)
from lstm_fn.training.evaluate import evaluate
from lstm_fn.training.state import TrainState
from lstm_fn.training.step import make_train_step
from conftest import SHORT_TEXT, assert_close, assert_refused, invoke, lr

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


def schedule(total=None, **settings):
    """``step -> rate`` of a run of ``total`` steps (None: a length not known)."""
    tcfg = TrainConfig(**{"steps": 1, "learning_rate": 1.0, **settings})
    plan = fixed_plan(tcfg, total)
    return lambda step: rate(tcfg, plan, step)


def test_schedules():
    cosine = schedule(100, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert [cosine(s) for s in (0, 9, 10)] == pytest.approx([0.1, 1.0, 1.0])
    assert cosine(99) == pytest.approx(0.1)  # the last step of 100
    assert 0.1 < cosine(98) < cosine(50) < 1.0
    plain = schedule(10, schedule="cosine", min_lr_ratio=0.1)
    assert [plain(s) for s in (0, 9)] == pytest.approx([1.0, 0.1])  # no lr-0 step
    linear = schedule(11, schedule="linear", min_lr_ratio=0.0)
    assert [linear(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    wsd = schedule(100, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.1)
    assert [wsd(s) for s in (0, 79, 80, 99)] == pytest.approx([1.0, 1.0, 1.0, 0.1])
    assert wsd(90) == pytest.approx(1.0 - 0.9 * 10 / 19)
    exponential = schedule(schedule="exponential", decay_rate=0.5, decay_steps=10)
    assert exponential(20) == pytest.approx(0.25)
    warm = schedule(warmup_steps=4, learning_rate=2.0)
    assert [warm(s) for s in range(5)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])
    with pytest.raises(ValueError, match="cosine"):
        check_schedule(TrainConfig(steps=1, schedule="cosine"), None)
    check_schedule(TrainConfig(minutes=1, schedule="cosine"), None)  # planned from the pace


def test_a_time_budget_plans_the_decay_from_the_pace():
    wsd = TrainConfig(minutes=10, schedule="wsd", decay_fraction=0.25, learning_rate=1.0,
                      min_lr_ratio=0.0)
    assert plan_budget(wsd, 100, 449.0, 1.5, None, 99) is None  # the stable part runs on
    plan = plan_budget(wsd, 100, 450.0, 1.5, None, 99)  # 150 s left: 100 steps fit
    assert (plan.total_steps, plan.decay_from, plan.seconds_per_step) == (200, 100, 1.5)
    assert [rate(wsd, plan, s) for s in (99, 100, 199)] == pytest.approx([1.0, 1.0, 0.0])
    assert plan_budget(wsd, 100, 450.0, 1.5, 150, 99).total_steps == 150  # steps bind first
    linear = TrainConfig(minutes=1, schedule="linear", warmup_steps=5)
    assert plan_budget(linear, 10, 5.0, 0.5, None, 9) is None  # still measuring
    assert plan_budget(linear, 21, 11.0, 0.5, None, 20).total_steps == 21 + 98
    # A resume that raises the budget stretches what is left of the decay, from where it is.
    raised = TrainConfig(minutes=15, schedule="wsd", decay_fraction=0.25, learning_rate=1.0,
                         min_lr_ratio=0.0)
    again = replan(raised, plan, 150, 525.0, None)
    assert again.total_steps == 150 + 250 and again.decay_from == 150
    assert again.from_rate == pytest.approx(rate(wsd, plan, 150))
    assert rate(raised, again, 150) == pytest.approx(rate(wsd, plan, 150))
    assert replan(raised, plan._replace(decay_from=160), 150, 525.0, None) is None  # anew
    assert replan(wsd, plan, 150, 525.0, None) == plan  # the same budget: the same plan
    # During the decay, a pace that changed moves the end, from the rate reached.
    assert follow_pace(wsd, plan, 120, 480.0, 1.5, None) is None  # on pace
    assert follow_pace(wsd, plan, 120, 480.0, 1.55, None) is None  # within the tolerance
    slower = follow_pace(wsd, plan, 120, 480.0, 3.0, None)  # 120 s left fit 40 steps, not 80
    assert (slower.total_steps, slower.decay_from, slower.seconds_per_step) == (160, 120, 3.0)
    assert rate(wsd, slower, 120) == pytest.approx(rate(wsd, plan, 120))
    assert rate(wsd, slower, 159) == pytest.approx(0.0)
    assert follow_pace(wsd, plan, 120, 480.0, 1.0, 180).total_steps == 180  # steps bind first
    assert follow_pace(wsd, plan, 99, 480.0, 3.0, None) is None  # not in the decay yet


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
    rate_ = {"sgd": 0.5, "rmsprop": 3e-3}.get(optimizer, 1e-2)
    tcfg = TrainConfig(batch_size=4, seq_len=16, steps=60, optimizer=optimizer,
                       learning_rate=rate_, weight_decay=0.01, matmul_precision=precision)
    step = make_train_step(CFG, tcfg)
    state = TrainState.fresh(lstm_fn.init(jax.random.key(1), CFG), CFG, tcfg)
    data, losses = ids(2000), []
    for position in range(60):
        state, metrics = step(state, *train_batch(data, 4, 16, position), lr(tcfg))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1, (optimizer, losses[::10])
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))


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
    state = TrainState.fresh(jax.tree.map(jnp.asarray, params), cfg, tcfg)
    step = make_train_step(cfg, tcfg)
    net = ref.torch_module(cfg.architecture(), params)
    options = {"adam": (torch.optim.Adam, {}), "adamw": (torch.optim.AdamW, {}),
               "sgd": (torch.optim.SGD, {"momentum": 0.9}),
               "rmsprop": (torch.optim.RMSprop, {"alpha": 0.95, "eps": 1e-8})}[optimizer]
    torch_opt = options[0](net.parameters(), lr=0.01, weight_decay=0.1, **options[1])
    carry = None
    for position in range(3):
        inputs, targets, reset = train_batch(ids(), 4, 8, position)
        state, _ = step(state, inputs, targets, reset, lr(tcfg))
        logits, carry = net(torch.from_numpy(inputs).long(), None if reset else carry)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size),
                                                 torch.from_numpy(targets).long().reshape(-1))
        torch_opt.zero_grad()
        loss.backward()
        torch_opt.step()
        carry = carry.detach()
    expected = ref.from_torch(net.state_dict(), cfg.architecture())
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
        assert_close(got, want, atol=2e-5, rtol=0)


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
    from lstm_fn.text import streams as data

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


def test_a_score_gives_bits_and_perplexity():
    from lstm_fn.training.evaluate import Score

    score = Score.of(math.log(2))
    assert score.loss == pytest.approx(math.log(2))
    assert score.bpc == pytest.approx(1.0)
    assert score.perplexity == pytest.approx(2.0)
    assert Score.of(1e6).perplexity == math.inf
    assert Score.of(699.0).perplexity == pytest.approx(math.exp(699.0))  # finite


class Ticking(Reporter):
    """Time passes with the steps alone, ``seconds(step)`` a step; asks to stop after step
    ``stop_at``."""

    def __init__(self, stop_at=None, seconds=lambda step: 1.0):
        self.now, self.stop_at, self.seconds, self.notes, self.rates = 0.0, stop_at, seconds, [], []
        self.last = None

    def step(self, report):
        self.now += self.seconds(report.step)
        self.last = report.step
        self.rates.append(report.lr)

    def note(self, text):
        self.notes.append(text)

    def stop_signals(self):
        import contextlib
        import signal

        return contextlib.nullcontext(
            lambda: signal.SIGINT if self.stop_at and self.last == self.stop_at else None)


def budgeted_run(folder, tcfg, reporter, resume=False):
    from lstm_fn.training.loop import Training, train_loop

    vocab = lstm_fn.Vocab.from_symbols("abcdefghi")
    data, params = ids(4000), lstm_fn.init(jax.random.key(2), CFG)
    job = Training(CFG, tcfg, vocab, data, data[:200], data[:0], None, folder / "ckpt",
                   folder / "model.json", resume)
    return train_loop(job, params, reporter, clock=lambda: reporter.now)


def test_a_resumed_budgeted_run_matches_an_uninterrupted_one(tmp_path):
    """A wsd schedule bounded by 2 minutes, on a clock that moves one second a step: the
    plan (decided at 90 s: 30 steps fit) and the weights of a run interrupted at step 100
    and resumed equal the uninterrupted run's, bit for bit."""
    tcfg = TrainConfig(batch_size=4, seq_len=16, minutes=2, schedule="wsd", decay_fraction=0.25,
                       eval_every=40, checkpoint_every=1000, sample_every=0, learning_rate=0.01)

    def run(folder, reporter, resume=False):
        return budgeted_run(folder, tcfg, reporter, resume)

    straight = Ticking()
    whole = run(tmp_path / "a", straight)
    assert (whole.status, whole.step, whole.reason) == ("done", 120, "minutes")
    [note] = [n for n in straight.notes if n.startswith("schedule wsd")]
    assert "2 minutes fit 120 steps" in note and "decays from step 90" in note
    first = run(tmp_path / "b", Ticking(stop_at=100))
    assert (first.status, first.step) == ("interrupted", 100)
    second = run(tmp_path / "b", Ticking(), resume=True)
    assert (second.status, second.step) == ("done", 120)
    a, _, _ = lstm_fn.load_weights(tmp_path / "a" / "model.json")
    b, _, _ = lstm_fn.load_weights(tmp_path / "b" / "model.json")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_a_budget_whose_pace_slows_in_the_decay_still_ends_at_the_lowest_rate(tmp_path):
    """Planned at one second a step (decay from step 180, end at 240), then two seconds a
    step: the 60 seconds left fit about 30 steps, not 60; the decay follows the new pace and
    the run's last step is at the lowest rate, where it stood at half the peak before."""
    tcfg = TrainConfig(batch_size=4, seq_len=16, minutes=4, schedule="wsd", decay_fraction=0.25,
                       eval_every=1000, checkpoint_every=1000, sample_every=0, learning_rate=0.01,
                       min_lr_ratio=0.1)
    slowing = Ticking(seconds=lambda step: 1.0 if step <= 180 else 2.0)
    result = budgeted_run(tmp_path, tcfg, slowing)
    assert result.reason == "minutes" and 205 <= result.step <= 212, result.step
    assert [n for n in slowing.notes if n.startswith("the pace is now 2.000 s a step")]
    assert slowing.rates[-1] == pytest.approx(0.001, rel=1e-3)
    assert all(a >= b for a, b in zip(slowing.rates[180:], slowing.rates[181:]))
