"""reference_numpy against numbers: finite differences, itself chunked, PyTorch, argmax."""

from __future__ import annotations

import numpy as np
import pytest

import reference_numpy as rn
from reference_numpy import gradcheck, spec
from reference_numpy.model import _loss_with_offsets

CELLS = spec.CELLS
VOCAB, EMBED, HIDDEN = 7, 5, 6
BATCH, STEPS = 2, 20

# Central differences in float64 with eps = 1e-5 are accurate to ~1e-9 relative here
# (round-off ~1e-16 / eps, truncation ~eps^2); eps = 1e-6 is round-off bound at ~2e-7 for a
# 3-layer lstm, too close to the bound. A wrong term in a backward pass gives >= 1e-3.
FD_EPS = 1e-5
GRAD_TOL = 1e-6
# Two float64 implementations of the same recurrences differ only by summation order.
TORCH_TOL = 1e-10


def make_model(cell, num_layers):
    return {
        "cell": cell,
        "vocab_size": VOCAB,
        "embed_size": EMBED,
        "hidden_size": HIDDEN,
        "num_layers": num_layers,
    }


def init_params(model, rng, scale=0.5):
    """Random normal params of the shapes in spec.param_shapes."""

    def build(shapes):
        if isinstance(shapes, dict):
            return {k: build(v) for k, v in shapes.items()}
        if isinstance(shapes, list):
            return [build(v) for v in shapes]
        return rng.normal(0.0, scale, shapes)

    return build(spec.param_shapes(model))


def random_carry(model, batch, rng):
    parts = spec.CARRY[model["cell"]]
    return tuple(
        tuple(rng.normal(0.0, 0.5, (batch, HIDDEN)) for _ in parts)
        for _ in range(model["num_layers"])
    )


def random_masks(num_layers, batch, steps, rng, rate=0.3):
    return [(rng.random((batch, steps, HIDDEN)) >= rate) / (1.0 - rate) for _ in range(num_layers)]


def problem(cell, num_layers, seed, dropout=True, steps=STEPS):
    """A tiny model with random params, data, non-zero carry, and (optionally) dropout and
    a non-uniform loss mask with some zeros."""
    rng = np.random.default_rng(seed)
    model = make_model(cell, num_layers)
    params = init_params(model, rng)
    tokens = rng.integers(0, VOCAB, (BATCH, steps))
    targets = rng.integers(0, VOCAB, (BATCH, steps))
    carry = random_carry(model, BATCH, rng)
    masks = random_masks(num_layers, BATCH, steps, rng) if dropout else None
    loss_mask = rng.random((BATCH, steps)) * (rng.random((BATCH, steps)) > 0.2) if dropout else None
    return model, params, tokens, targets, carry, masks, loss_mask


# ------------------------------------------------------------------ (1) gradient check


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers,dropout", [(1, False), (1, True), (3, True)])
def test_grads_match_finite_differences(cell, num_layers, dropout):
    model, params, tokens, targets, carry, masks, loss_mask = problem(cell, num_layers, 0, dropout)
    args = (params, model, tokens, targets, carry, masks, loss_mask)
    loss, grads, dcarry = rn.loss_and_grads(*args)
    assert loss == pytest.approx(rn.loss(*args), rel=1e-14)

    numeric = rn.finite_difference_grads(*args, eps=FD_EPS)
    names = ["embed"] + [
        f"layers[{l}].{k}" for l in range(num_layers) for k in spec.LAYER_KEYS
    ] + ["head.w", "head.b"]
    pairs = zip(gradcheck.tree_leaves(grads), gradcheck.tree_leaves(numeric))
    errors = {name: rn.relative_error(a, b) for name, (a, b) in zip(names, pairs)}
    assert max(errors.values()) <= GRAD_TOL, errors

    carry_copy = gradcheck.copy_tree(carry)

    def loss_of_carry():
        return rn.loss(params, model, tokens, targets, carry_copy, masks, loss_mask)

    numeric_dcarry = gradcheck.numerical_gradient(
        loss_of_carry, gradcheck.tree_leaves(carry_copy), FD_EPS
    )
    for exact, approx in zip(gradcheck.tree_leaves(dcarry), numeric_dcarry):
        assert np.abs(approx).max() > 1e-4  # the carry really matters here
        assert rn.relative_error(exact, approx) <= GRAD_TOL


def test_relative_error_definition():
    assert rn.relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rn.relative_error([1.0, 2.0], [1.0, 2.5]) == pytest.approx(0.5 / 2.5)
    assert rn.relative_error([4.0], [-4.0]) == pytest.approx(2.0)


# ------------------------------------------------------------ (2) chunked == whole


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 3])
def test_forward_in_two_chunks_equals_whole(cell, num_layers):
    model, params, tokens, _, carry, masks, _ = problem(cell, num_layers, 1, steps=2 * STEPS)
    logits, final = rn.forward(params, model, tokens, carry, masks)
    first, second = slice(0, STEPS), slice(STEPS, 2 * STEPS)
    logits_a, mid = rn.forward(params, model, tokens[:, first], carry, [m[:, first] for m in masks])
    logits_b, end = rn.forward(params, model, tokens[:, second], mid, [m[:, second] for m in masks])
    np.testing.assert_allclose(np.concatenate([logits_a, logits_b], axis=1), logits, atol=1e-12)
    for whole, chunked in zip(gradcheck.tree_leaves(final), gradcheck.tree_leaves(end)):
        np.testing.assert_allclose(chunked, whole, atol=1e-12)
    # and the carry does matter: a zero start gives different logits
    assert not np.allclose(rn.forward(params, model, tokens[:, second], None, None)[0],
                           rn.forward(params, model, tokens[:, second], mid, None)[0])


# ------------------------------------------------------------------- (3) PyTorch


@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch(cell):
    torch = pytest.importorskip("torch")
    if cell not in rn.interop.TORCH_CLASSES:
        pytest.skip(f"PyTorch has no {cell} module")
    num_layers = 2
    model, params, tokens, _, carry, _, _ = problem(cell, num_layers, 2, dropout=False)
    extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    net = getattr(torch.nn, rn.interop.TORCH_CLASSES[cell])(
        EMBED, HIDDEN, num_layers=num_layers, batch_first=True, dtype=torch.float64, **extra)
    with torch.no_grad():
        for k, p in enumerate(params["layers"]):
            getattr(net, f"weight_ih_l{k}").copy_(torch.from_numpy(p["w_x"].T))
            getattr(net, f"weight_hh_l{k}").copy_(torch.from_numpy(p["w_h"].T))
            getattr(net, f"bias_ih_l{k}").copy_(torch.from_numpy(p["b_x"]))
            getattr(net, f"bias_hh_l{k}").copy_(torch.from_numpy(p["b_h"]))
        # torch wants each carry part stacked over layers: [L, B, H]
        state = tuple(torch.from_numpy(np.stack(part)) for part in zip(*carry))
        x = torch.from_numpy(params["embed"][tokens])
        top, torch_final = net(x, state if cell == "lstm" else state[0])
    torch_final = torch_final if cell == "lstm" else (torch_final,)

    logits, final = rn.forward(params, model, tokens, carry)
    # head.w [H, V] with H < V has full column rank, so equal logits mean equal top h_t
    torch_logits = top.numpy() @ params["head"]["w"] + params["head"]["b"]
    np.testing.assert_allclose(logits, torch_logits, atol=TORCH_TOL, rtol=0)
    for k, name in enumerate(spec.CARRY[cell]):
        for l in range(num_layers):
            np.testing.assert_allclose(final[l][k], torch_final[k][l].numpy(), atol=TORCH_TOL,
                                       rtol=0, err_msg=f"layer {l} {name}")


# --------------------------------------------------- (4) loss mask and hidden grads


def test_loss_mask_weights_positions():
    model, params, tokens, targets, carry, masks, loss_mask = problem("lstm", 2, 3)
    logits, _ = rn.forward(params, model, tokens, carry, masks)
    log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    nll = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    expected = (loss_mask * nll).sum() / loss_mask.sum()
    assert rn.loss(params, model, tokens, targets, carry, masks, loss_mask) == pytest.approx(
        expected, rel=1e-12)
    # all ones == None; scaling the mask changes nothing
    plain = rn.loss_and_grads(params, model, tokens, targets, carry, masks)
    ones = rn.loss_and_grads(params, model, tokens, targets, carry, masks, np.ones_like(nll))
    scaled = rn.loss_and_grads(params, model, tokens, targets, carry, masks, 3.0 * loss_mask)
    weighted = rn.loss_and_grads(params, model, tokens, targets, carry, masks, loss_mask)
    assert plain[0] == pytest.approx(nll.mean(), rel=1e-12)
    for a, b in zip(gradcheck.tree_leaves(plain), gradcheck.tree_leaves(ones)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    for a, b in zip(gradcheck.tree_leaves(weighted), gradcheck.tree_leaves(scaled)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # an all-zero mask weighs nothing: loss 0 and no gradient (not 0 / 0)
    value, grads, dcarry = rn.loss_and_grads(params, model, tokens, targets, carry, masks,
                                             np.zeros_like(nll))
    assert value == 0.0
    assert not any(np.any(leaf) for leaf in gradcheck.tree_leaves((grads, dcarry)))


@pytest.mark.parametrize("cell", CELLS)
def test_hidden_grads_match_finite_differences(cell):
    """hidden_grads[l][t] == dL/d(delta) where delta is added to h^l_t (up and onward)."""
    num_layers = 2
    model, params, tokens, targets, carry, masks, loss_mask = problem(cell, num_layers, 4)
    exact = rn.hidden_grads(params, model, tokens, targets, carry, masks, loss_mask)
    offsets = [np.zeros((STEPS, BATCH, HIDDEN)) for _ in range(num_layers)]

    def loss_of_offsets():
        return _loss_with_offsets(params, model, tokens, targets, carry, masks, loss_mask, offsets)

    numeric = gradcheck.numerical_gradient(loss_of_offsets, offsets, FD_EPS)
    for l in range(num_layers):
        assert exact[l].shape == (STEPS, BATCH, HIDDEN)
        assert rn.relative_error(exact[l], numeric[l]) <= GRAD_TOL, l


def last_step_hidden_grad_norms(cell, steps=30):
    """||dL/dh_t|| of a 1-layer model with small weights, loss on the last step only."""
    rng = np.random.default_rng(5)
    model = make_model(cell, 1)
    params = init_params(model, rng, scale=0.1)
    if cell == "lstm":  # forget gates mostly open, so the cell state carries gradient back
        params["layers"][0]["b_x"][spec.gate_slice("lstm", "f", HIDDEN)] += 3.0
    tokens = rng.integers(0, VOCAB, (BATCH, steps))
    targets = rng.integers(0, VOCAB, (BATCH, steps))
    last_only = np.zeros((BATCH, steps))
    last_only[:, -1] = 1.0
    (grads,) = rn.hidden_grads(params, model, tokens, targets, loss_mask=last_only)
    return np.linalg.norm(grads.reshape(steps, -1), axis=1)  # [T]


def test_gradients_vanish_in_rnn_and_survive_in_lstm():
    rnn = last_step_hidden_grad_norms("rnn")
    lstm = last_step_hidden_grad_norms("lstm")
    assert np.all(np.diff(rnn) > 0)  # shrinking at every step back in time
    assert rnn[0] / rnn[-1] < 1e-10
    assert lstm[0] / lstm[-1] > 1e-4


# ------------------------------------------------------------------------ (5) sample


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_is_argmax_of_forward_step_by_step(cell):
    model, params, *_ = problem(cell, 2, 6, dropout=False)
    prime = [3, 1, 4]
    ids = rn.sample(params, model, prime, 15, greedy=True)
    assert ids == rn.sample(params, model, prime, 15, greedy=True, temperature=0.3)
    sequence = list(prime)
    for next_id in ids:  # recompute from scratch, no carry passing
        logits, _ = rn.forward(params, model, np.array([sequence]))
        assert next_id == int(np.argmax(logits[0, -1]))
        sequence.append(next_id)


def test_sampling_filters_and_seeds():
    model, params, *_ = problem("gru", 1, 7, dropout=False)
    prime, n = [2, 5], 40
    greedy = rn.sample(params, model, prime, n, greedy=True)
    rng = np.random.default_rng
    assert rn.sample(params, model, prime, n, top_k=1, rng=rng(0)) == greedy
    assert rn.sample(params, model, prime, n, top_p=1e-9, rng=rng(0)) == greedy
    first = rn.sample(params, model, prime, n, temperature=1.5, rng=rng(11))
    assert first == rn.sample(params, model, prime, n, temperature=1.5, rng=rng(11))
    assert first != greedy and len(set(first)) > 2
    # every draw under top_k=2 is one of the two most likely ids after the prefix so far
    drawn = rn.sample(params, model, prime, n, top_k=2, temperature=2.0, rng=rng(3))
    for t, next_id in enumerate(drawn):
        logits, _ = rn.forward(params, model, np.array([prime + drawn[:t]]))
        assert next_id in np.argsort(-logits[0, -1])[:2]
    with pytest.raises(ValueError):
        rn.sample(params, model, [], 5)


def test_next_token_probs_top_p():
    from reference_numpy.sample import next_token_probs

    logits = np.log([0.1, 0.5, 0.15, 0.25])
    top_two = np.array([0, 0.5, 0, 0.25]) / 0.75
    top_three = np.array([0, 0.5, 0.15, 0.25]) / 0.9
    np.testing.assert_allclose(next_token_probs(logits, top_p=0.7), top_two)
    np.testing.assert_allclose(next_token_probs(logits, top_p=0.76), top_three)
    np.testing.assert_allclose(next_token_probs(logits, top_k=3, top_p=1.0), top_three)
    np.testing.assert_allclose(next_token_probs(logits, top_k=2), top_two)


def test_next_token_probs_at_a_tiny_temperature_is_the_argmax():
    """The logits are shifted by their max before the division: at temperature 1e-3 the
    largest of logits 800 apart is certain, with no overflow to inf / inf."""
    from reference_numpy.sample import next_token_probs

    np.testing.assert_array_equal(next_token_probs([0.0, 800.0, 1.0], temperature=1e-3),
                                  [0.0, 1.0, 0.0])


def test_unknown_cell_is_rejected():
    model, params, tokens, *_ = problem("rnn", 1, 8, dropout=False)
    with pytest.raises(ValueError, match="unknown cell"):
        rn.forward(params, {**model, "cell": "transformer"}, tokens)
