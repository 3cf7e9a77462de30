"""The JAX model against itself (scan vs loop, chunked vs whole), against the numpy twin
(forward and three-way gradients) and its init conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_fn
import reference_numpy as ref
from lstm_fn.nn import gradcheck
from lstm_fn.nn.cells import get_cell
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.model import dropout_masks
from reference_numpy import spec
from conftest import CELLS, assert_close


def small(cell, num_layers=2, dropout=0.0):
    return ModelConfig(cell, vocab_size=11, embed_size=5, hidden_size=8, num_layers=num_layers,
                       dropout=dropout)


def problem(cell, num_layers=2, batch=3, steps=20, seed=0):
    cfg = small(cell, num_layers)
    params = lstm_fn.init(jax.random.key(seed), cfg)
    tokens = jax.random.randint(jax.random.key(seed + 1), (batch, steps), 0, cfg.vocab_size)
    carry = jax.tree.map(lambda z: jax.random.normal(jax.random.key(seed + 2), z.shape) * 0.5,
                         lstm_fn.initial_state(cfg, batch))
    return cfg, params, tokens, carry


@pytest.mark.parametrize("cell", CELLS)
def test_scan_equals_python_loop(cell):
    cfg, params, tokens, carry = problem(cell)
    logits, final = lstm_fn.apply(params, cfg, tokens, carry)
    step = get_cell(cell).step
    loop_carry = list(carry)
    outputs = []
    for t in range(tokens.shape[1]):
        x = params["embed"][tokens[:, t]]
        for l, p in enumerate(params["layers"]):
            loop_carry[l], x = step(p, loop_carry[l], x @ p["w_x"] + p["b_x"])
        outputs.append(x @ params["head"]["w"] + params["head"]["b"])
    assert_close(logits, jnp.stack(outputs, axis=1))
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(tuple(loop_carry))):
        assert_close(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_two_chunks_equal_one_sequence(cell):
    cfg, params, tokens, carry = problem(cell, steps=40)
    whole, whole_carry = lstm_fn.apply(params, cfg, tokens, carry)
    first, mid = lstm_fn.apply(params, cfg, tokens[:, :20], carry)
    second, end = lstm_fn.apply(params, cfg, tokens[:, 20:], mid)
    assert_close(whole, jnp.concatenate([first, second], axis=1))
    for a, b in zip(jax.tree.leaves(whole_carry), jax.tree.leaves(end)):
        assert_close(a, b)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_float32_forward_matches_numpy_float64(cell, dropout):
    cfg, params, tokens, carry = problem(cell, num_layers=3)
    cfg = small(cell, 3, dropout)
    masks = lstm_fn.dropout_masks(jax.random.key(7), cfg, *tokens.shape)
    logits, final = lstm_fn.apply(params, cfg, tokens, carry, dropout_masks=masks)
    as64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
    np_masks = None if masks is None else [np.asarray(m, np.float64) for m in masks]
    np_logits, np_final = ref.forward(as64(params), cfg.architecture(), np.asarray(tokens),
                                      as64(tuple(tuple(c) for c in carry)), np_masks)
    assert_close(logits, np_logits)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(np_final)):
        assert_close(a, b)


def test_loss_is_mean_nats_and_mask_weights_positions():
    cfg, params, tokens, carry = problem("lstm")
    targets = jnp.roll(tokens, -1, axis=1)
    logits, _ = lstm_fn.apply(params, cfg, tokens, carry)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    value, _ = lstm_fn.loss(params, cfg, tokens, targets, carry)
    assert_close(value, nll.mean())
    mask = jnp.zeros(tokens.shape).at[:, :5].set(1.0)
    masked, _ = lstm_fn.loss(params, cfg, tokens, targets, carry, mask=mask)
    assert_close(masked, nll[:, :5].mean())
    small = jnp.zeros(tokens.shape).at[0, :2].set(0.25)  # weights summing to less than 1
    weighted, _ = lstm_fn.loss(params, cfg, tokens, targets, carry, mask=small)
    assert_close(weighted, nll[0, :2].mean())
    none, _ = lstm_fn.loss(params, cfg, tokens, targets, carry, mask=jnp.zeros(tokens.shape))
    assert float(none) == 0.0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [2])  # 1 and 3: pairwise in test_bptt, test_reference_numpy
def test_four_way_gradient_check(cell, num_layers):
    """jax.grad vs lstm_fn.bptt vs numpy BPTT vs central differences, float64, T = 20,
    non-zero initial carry, dropout masks shared by all, every tensor and the carry."""
    rows = gradcheck.gradient_check(cell, num_layers, 20, dropout=0.25, seed=num_layers)
    names = {r.name for r in rows}
    assert {"embed", "head.w", "head.b", f"layers[{num_layers - 1}].w_h", "carry[0].h"} <= names
    assert len(rows) == 3 + 4 * num_layers + num_layers * len(spec.CARRY[cell])
    for row in rows:
        assert row.numpy_vs_jax <= gradcheck.AUTODIFF_BUDGET, row
        assert row.bptt_vs_jax <= gradcheck.AUTODIFF_BUDGET, row
        assert row.numpy_vs_fd <= gradcheck.FINITE_DIFF_BUDGET, row
        assert row.jax_vs_fd <= gradcheck.FINITE_DIFF_BUDGET, row


def test_gradient_check_detects_a_wrong_gradient(monkeypatch):
    """The check can fail: a numpy backward that drops one term is caught."""
    real = ref.loss_and_grads

    def broken(*args, **kwargs):
        loss, grads, dcarry = real(*args, **kwargs)
        grads["layers"][0]["b_h"] = grads["layers"][0]["b_h"] * 1.001
        return loss, grads, dcarry

    monkeypatch.setattr(ref, "loss_and_grads", broken)
    rows = {r.name: r for r in gradcheck.gradient_check("gru", 1, 20)}
    assert not rows["layers[0].b_h"].ok and rows["layers[0].w_h"].ok


def test_gradients_vanish_in_rnn_and_survive_in_lstm():
    rnn = gradcheck.hidden_grad_norms("rnn", 60)
    lstm = gradcheck.hidden_grad_norms("lstm", 60)
    assert rnn.shape == (60,)
    # 60 steps back from the loss, the rnn's signal has fallen far below the lstm's.
    assert rnn[0] / rnn[-1] < 1e-4 and lstm[0] / lstm[-1] > 1e-4


@pytest.mark.parametrize("cell", CELLS)
def test_init_conventions(cell):
    cfg = ModelConfig(cell, vocab_size=13, embed_size=7, hidden_size=16, num_layers=2)
    params = lstm_fn.init(jax.random.key(0), cfg)
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes == spec.param_shapes(cfg.architecture())
    G, H = spec.num_gates(cell), 16
    for layer in params["layers"]:
        for k in range(G):  # each recurrent gate block is orthogonal
            block = np.asarray(layer["w_h"][:, k * H:(k + 1) * H])
            assert_close(block.T @ block, np.eye(H), atol=1e-5)
        expected_bias = np.zeros(G * H)
        if cell == "lstm":
            expected_bias[spec.gate_slice("lstm", "f", H)] = 1.0  # the memory starts kept
        np.testing.assert_array_equal(layer["b_x"], expected_bias)
        np.testing.assert_array_equal(layer["b_h"], 0.0)
    assert cfg.num_params == sum(a.size for a in jax.tree.leaves(params))


@pytest.mark.parametrize("cell", CELLS)
def test_plain_tuples_lists_and_none_are_accepted_as_inputs(cell):
    """A carry from reference_numpy (plain tuples), token lists, and carry=None in the
    hand-written path give what the documented types give."""
    from lstm_fn.nn.bptt import manual_loss

    cfg, params, tokens, carry = problem(cell)
    logits, final = lstm_fn.apply(params, cfg, tokens, carry)
    plain = tuple(tuple(np.asarray(a) for a in layer) for layer in carry)
    assert_close(lstm_fn.apply(params, cfg, tokens.tolist(), plain)[0], logits)
    _, ref_carry = ref.forward(jax.tree.map(np.asarray, params), cfg.architecture(),
                               np.asarray(tokens[:, :5]))
    whole = lstm_fn.apply(params, cfg, tokens[:, 5:], ref_carry)[0]
    assert_close(whole, lstm_fn.apply(params, cfg, tokens, None)[0][:, 5:])
    targets = jnp.roll(tokens, -1, axis=1)
    assert_close(manual_loss(params, cfg, tokens, targets.tolist(), None)[0],
                 lstm_fn.loss(params, cfg, tokens, targets)[0])


@pytest.mark.parametrize("tokens, carry, message", [
    (np.zeros(5, np.int32), None,
     r"tokens must be integer ids \[B, T\] with B, T >= 1, got int32 \[5\]"),
    (np.zeros((1, 5), np.float32), None, "tokens must be integer ids"),
    (np.zeros((2, 0), np.int32), None, r"B, T >= 1, got int32 \[2, 0\]"),
    (np.full((1, 5), 11, np.int32), None, r"tokens must be ids in \[0, 11\), got 11..11"),
    ([[-1, 3]], None, r"got -1..3"),
    (np.zeros((1, 5), np.int32), (), "carry has 0 layer states, the model has 2"),
    (np.zeros((2, 5), np.int32), "batch of 3", r"carry\[0\].h has shape \[3, 8\], the tokens "
                                               r"and the model need \[2, 8\]"),
])
def test_bad_inputs_are_named(tokens, carry, message):
    cfg, params, _, batch_of_3 = problem("lstm")
    carry = batch_of_3 if carry == "batch of 3" else carry
    with pytest.raises(ValueError, match=message):
        lstm_fn.apply(params, cfg, tokens, carry)
    h = jnp.zeros((1, cfg.hidden_size))
    with pytest.raises(ValueError, match=r"carry\[0\] has 1 arrays; a lstm layer's state is "
                                         r"\(h, c\)"):
        lstm_fn.apply(params, cfg, np.zeros((1, 5), np.int32), ((h,), (h, h)))


def test_model_config_takes_numpy_numbers():
    cfg = ModelConfig("gru", np.int64(7), np.int32(3), np.uint16(4), np.int8(1), np.float32(0.25))
    assert cfg == ModelConfig("gru", 7, 3, 4, 1, 0.25)
    assert type(cfg.vocab_size) is int and type(cfg.dropout) is float


@pytest.mark.parametrize("field, value", [("cell", "tcn"), ("num_layers", 0), ("hidden_size", -3),
                                          ("dropout", 1.0), ("vocab_size", 1)])
def test_model_config_refuses_bad_values_by_name(field, value):
    with pytest.raises(ValueError, match=field if field != "cell" else "model.cell must be one of rnn, lstm, gru"):
        ModelConfig(**{field: value})


def test_targets_and_mask_must_fit_the_tokens():
    """Shapes are checked; padding under a zero mask may hold any id (-1, V, 99) and
    changes neither the loss nor its gradient, while an out-of-range target that is
    weighted makes the loss nan (an id past V read nan and made every loss nan)."""
    from lstm_fn.nn.bptt import manual_loss

    cfg, params, tokens, _ = problem("gru")
    B, T = tokens.shape
    for loss in (lambda *a, **k: lstm_fn.loss(params, cfg, *a, **k),
                 lambda *a, **k: manual_loss(params, cfg, *a, **k)):
        with pytest.raises(ValueError, match=rf"targets must have the shape of the tokens, "
                                             rf"\[{B}, {T}\], got \[1, {T}\]"):
            loss(tokens, tokens[:1])
        with pytest.raises(ValueError, match=r"mask must have the shape"):
            loss(tokens, tokens, mask=np.ones((B, T + 1)))
        mask = np.zeros((B, T)).tolist()  # a list is taken like tokens and targets are
        assert float(loss(tokens, tokens, mask=mask)[0]) == 0.0
        with pytest.raises(ValueError, match=r"targets must be ids in \[0, 11\), got -1"):
            loss(tokens, tokens.at[:, -1].set(-1))
    # both losses end in model.cross_entropy
    weights = np.ones((B, T)) - np.eye(T)[-1]
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda p, targets: lstm_fn.loss(p, cfg, tokens, targets, mask=weights)[0]))
    want, want_grads = value_and_grad(params, tokens)
    for pad in (-1, cfg.vocab_size, 99):
        got, grads = value_and_grad(params, tokens.at[:, -1].set(pad))
        assert float(got) == float(want), pad
        assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()),
                                                grads, want_grads))), pad
    assert np.isnan(float(value_and_grad(params, tokens.at[0, 0].set(cfg.vocab_size))[0]))
    with pytest.raises(ValueError, match="manual|B, T >= 1"):
        manual_loss(params, cfg, tokens[:, :0], tokens[:, :0])


def test_any_float_dtype_initializes_and_keeps_its_dtype():
    """init in half precision (the orthogonal blocks are drawn in float32); with bfloat16
    matmuls, loss and both gradients keep the params' dtype (bfloat16 params ran into a
    scan carry of another dtype, float64 ones got float32 manual gradients; float16 ones
    times a bfloat16-rounded w_h must not promote the carry to float32)."""
    from lstm_fn.nn.bptt import manual_loss

    cfg = ModelConfig("lstm", 7, 3, 4, 2)
    for dtype in (jnp.bfloat16, jnp.float16):
        assert {a.dtype for a in jax.tree.leaves(lstm_fn.init(jax.random.key(0), cfg, dtype))} \
            == {jnp.dtype(dtype)}
    tokens = jnp.array([[1, 2, 3, 0], [4, 4, 2, 1]])
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float64):
        with jax.enable_x64(dtype == jnp.float64):
            params = lstm_fn.init(jax.random.key(0), cfg, dtype)
            for loss in (lambda p: lstm_fn.loss(p, cfg, tokens, tokens, precision="bfloat16")[0],
                         lambda p: manual_loss(p, cfg, tokens, tokens,
                                               precision="bfloat16")[0]):
                if dtype == jnp.float16:  # the forward alone (its carry's dtype)
                    value = jax.jit(loss)(params)
                    assert value.dtype == dtype and np.isfinite(float(value))
                    continue
                value, grads = jax.jit(jax.value_and_grad(loss))(params)
                assert value.dtype == dtype and np.isfinite(float(value))
                assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(dtype)}
    # a given carry is taken in the params' dtype (initial_state's default is float32)
    params = lstm_fn.init(jax.random.key(0), cfg, jnp.bfloat16)
    _, carry = lstm_fn.apply(params, cfg, tokens, lstm_fn.initial_state(cfg, 2))
    assert {a.dtype for a in jax.tree.leaves(carry)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_init_scales_and_distinct_gate_blocks(cell):
    """PyTorch's bound 1/sqrt(H) for w_x whatever its input size, and each gate's block of
    w_h drawn on its own (each is orthogonal, so a shared key would pass that check)."""
    cfg = ModelConfig(cell, vocab_size=13, embed_size=7, hidden_size=16, num_layers=2)
    params = lstm_fn.init(jax.random.key(0), cfg)
    bound = 1 / 16 ** 0.5  # 1/sqrt(H)
    for layer in params["layers"]:
        w_x = np.asarray(layer["w_x"])
        assert np.abs(w_x).max() <= bound and np.abs(w_x).max() > 0.8 * bound
        blocks = np.split(np.asarray(layer["w_h"]), spec.num_gates(cell), axis=1)
        for a in range(len(blocks)):
            for b in range(a + 1, len(blocks)):
                assert not np.allclose(blocks[a], blocks[b])


def test_dropout_masks_values_rate_and_independence():
    """Inverted dropout: zeros at rate p, kept units scaled by 1/(1-p), a mask per layer. The
    numpy twin and the manual path take the same masks, so only this test sees them."""
    cfg = ModelConfig("lstm", 9, 8, 16, 2, dropout=0.3)
    masks = [np.asarray(m) for m in dropout_masks(jax.random.key(0), cfg, 32, 64)]
    for m in masks:
        assert m.shape == (32, 64, 16)
        assert set(np.unique(m)) <= {0.0, np.float32(1 / 0.7)}
        assert abs((m == 0).mean() - 0.3) < 0.02
        assert abs(m.mean() - 1.0) < 0.03
    assert np.mean((masks[0] > 0) == (masks[1] > 0)) < 0.7


def test_one_forward_pass_serves_autodiff_bptt_evaluation_and_sampling(monkeypatch):
    """The layer stack and the head are written once (``lstm_fn.nn.model.forward``): a
    head that gives every character the same logit reaches the plain scan, the hand-written
    BPTT, exact evaluation and generation alike (uniform: log V nats; greedy picks id 0)."""
    from lstm_fn.nn import model
    from lstm_fn.nn.bptt import manual_loss
    from lstm_fn.training.evaluate import evaluate

    cfg = ModelConfig("gru", vocab_size=7, embed_size=3, hidden_size=5, num_layers=2)
    params = lstm_fn.init(jax.random.key(3), cfg)
    tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, cfg.vocab_size)
    uniform = np.log(cfg.vocab_size)
    jax.clear_caches()  # the programs compiled below must see the new head
    monkeypatch.setattr(model, "head", lambda p, top, precision="float32":
                        jnp.zeros(top.shape[:-1] + p["b"].shape, top.dtype))
    try:
        logits, _ = lstm_fn.apply(params, cfg, tokens)
        assert np.all(np.asarray(logits) == 0)
        assert_close(lstm_fn.loss(params, cfg, tokens, tokens)[0], uniform)
        assert_close(manual_loss(params, cfg, tokens, tokens)[0], uniform)
        assert_close(evaluate(params, cfg, np.arange(40) % cfg.vocab_size, 2, 8), uniform)
        ids = np.concatenate(list(lstm_fn.generate(params, cfg, [1, 2], 6, greedy=True)), 1)
        np.testing.assert_array_equal(ids, np.zeros((1, 6)))
    finally:
        jax.clear_caches()


def test_the_traced_pass_gives_every_steps_states_and_gates():
    """``forward`` with the traced layer pass: the same logits, and per layer the states and
    gate activations of each step, those of a Python loop over the cell's step."""
    from lstm_fn.nn.cells import CELLS as REGISTRY
    from lstm_fn.nn.model import forward
    from lstm_fn.nn.scan import TRACED

    cfg, params, tokens, carry = problem("lstm", steps=6)
    logits, _ = lstm_fn.apply(params, cfg, tokens, carry)
    traced = forward(params, "lstm", tokens, carry, TRACED)
    assert_close(traced.logits, logits)
    first = traced.traces[0]
    assert set(first) == {"h", "c", "i", "f", "g", "o"} and first["c"].shape == (6, 3, 8)
    state, p = carry[0], params["layers"][0]
    for t in range(tokens.shape[1]):
        gx = params["embed"][tokens[:, t]] @ p["w_x"] + p["b_x"]
        state, h, saved = REGISTRY["lstm"].forward(state, gx, state.h @ p["w_h"] + p["b_h"])
        assert_close(first["h"][t], h)
        assert_close(first["c"][t], state.c)
        assert_close(first["f"][t], REGISTRY["lstm"].gates(saved)["f"])


def test_params_of_another_model_are_named_before_any_math():
    cfg = small("lstm")
    gru = lstm_fn.init(jax.random.key(0), small("gru"))
    tokens = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match=r"params layers\[0\].w_x has shape \[5, 24\], a lstm "
                                         r"model .* needs \[5, 32\]"):
        lstm_fn.apply(gru, cfg, tokens)
    with pytest.raises(ValueError, match="params has 1 layers, the config 2"):
        lstm_fn.apply(lstm_fn.init(jax.random.key(0), small("lstm", 1)), cfg, tokens)
    with pytest.raises(ValueError, match="params must be a dict with 'embed'"):
        lstm_fn.apply({"layers": []}, cfg, tokens)
    with pytest.raises(ValueError, match="w_x has shape"):
        next(lstm_fn.generate(gru, cfg, [1], 3, greedy=True))
