"""Sampling against numbers: a step-by-step argmax loop over `apply`, the numpy twin's
`next_token_probs`, empirical frequencies against the softmax, chunked against whole."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_fn
from lstm_fn.nn import generate as sample
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.generate import filter_logits, generate, generate_chunk, warm_up
from lstm_fn.sampling import sample_text
from lstm_fn.errors import CorpusError
from lstm_fn.text.vocab import Vocab
from reference_numpy.sample import next_token_probs
from conftest import CELLS

VOCAB = 11
PRIME = np.array([1, 4, 2, 7], np.int32)
# 4000 draws from V = 11 categories: the expected total variation of the empirical
# distribution is about sum_i sqrt(p_i (1 - p_i) / n) / 2 * sqrt(2 / pi) < 0.02; a wrong
# distribution (wrong temperature, a token dropped or kept by mistake) is off by >= 0.1.
TV_TOL = 0.05


def small(cell, num_layers=2):
    return ModelConfig(cell, vocab_size=VOCAB, embed_size=8, hidden_size=16,
                       num_layers=num_layers)


def model(cell, seed=0, scale=3.0):
    """A small model whose head is scaled up so its distributions are far from uniform."""
    cfg = small(cell)
    params = lstm_fn.init(jax.random.key(seed), cfg)
    params["head"]["w"] = params["head"]["w"] * scale
    return cfg, params


def ids_of(chunks):
    return np.concatenate(list(chunks), axis=1)


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_equals_argmax_loop_over_growing_sequence(cell):
    cfg, params = model(cell)
    length = 12
    got = ids_of(generate(params, cfg, PRIME, length, greedy=True, chunk_size=4))  # no key
    # Recompute the whole sequence from scratch each step (no carry to get wrong). The
    # model is causal, so a fixed-size buffer padded with zeros past the end gives the same
    # logits at the last filled position and one compiled `apply` serves every step.
    forward = jax.jit(lstm_fn.apply, static_argnames="cfg")
    sequence = np.zeros((1, len(PRIME) + length), np.int32)
    sequence[0, :len(PRIME)] = PRIME
    for t in range(len(PRIME), len(PRIME) + length):
        logits, _ = forward(params, cfg, jnp.asarray(sequence))
        sequence[0, t] = int(jnp.argmax(logits[0, t - 1]))
    np.testing.assert_array_equal(got[0], sequence[0, len(PRIME):])


def test_warm_up_matches_apply():
    cfg, params = model("lstm")
    carry, last = warm_up(params, cfg, jnp.asarray(PRIME), 3)
    logits, ref_carry = lstm_fn.apply(params, cfg, jnp.asarray(PRIME)[None])
    assert last.shape == (3, VOCAB)
    np.testing.assert_allclose(last, np.repeat(logits[:, -1], 3, axis=0), rtol=1e-6, atol=1e-6)
    for part, ref_part in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry)):
        np.testing.assert_allclose(part, np.repeat(ref_part, 3, axis=0), rtol=1e-6, atol=1e-6)


OPTIONS = [
    dict(temperature=1.0, top_k=None, top_p=None),
    dict(temperature=0.7, top_k=None, top_p=None),
    dict(temperature=1.3, top_k=3, top_p=None),
    dict(temperature=1.0, top_k=1, top_p=None),
    dict(temperature=1.0, top_k=50, top_p=None),
    dict(temperature=0.9, top_k=None, top_p=0.5),
    dict(temperature=1.0, top_k=None, top_p=1e-9),
    dict(temperature=1.0, top_k=None, top_p=1.0),
    dict(temperature=2.0, top_k=4, top_p=0.8),
    dict(temperature=0.5, top_k=6, top_p=0.95),
]


def test_top_p_one_keeps_even_the_tiniest_tokens():
    logits = jnp.array([[10.0, 0.0, -10.0, -12.0]])  # float32 cumsum is 1.0 after two
    for top_p in (1.0, jnp.float32(1.0)):
        assert np.isfinite(filter_logits(logits, temperature=1.0, top_k=None, top_p=top_p)).all()
    assert np.isinf(filter_logits(logits, temperature=1.0, top_k=None, top_p=0.9)).sum() == 3
    assert (next_token_probs(np.array([50.0, 0.0, -30.0, -80.0]), top_p=1.0) > 0).all()


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_filter_probs_match_reference(options):
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 2.0, (6, VOCAB))
    logits[0, [2, 5, 9]] = logits[0].max()  # ties keep the lower id first
    logits[1, :] = 0.5  # all tied
    # four tokens of probability exactly 1/4: a running sum that hits top_p = 0.5 exactly
    # must stop there (the set "reaches" top_p), and -inf logits get probability 0
    logits[2, :] = -np.inf
    logits[2, [3, 8, 1, 6]] = 0.0
    # float64 on both sides: the nucleus cut compares a running sum with top_p, and only
    # identical precision makes a cut near the boundary land on the same token.
    with jax.enable_x64(True):
        probs = jax.nn.softmax(filter_logits(jnp.asarray(logits), **options), axis=-1)
        probs = np.asarray(probs)
    expected = np.stack([next_token_probs(row, **options) for row in logits])
    np.testing.assert_allclose(probs, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cell", CELLS)
def test_output_does_not_depend_on_chunk_size(cell, monkeypatch):
    cfg, params = model(cell)
    options = dict(key=jax.random.key(3), num_samples=2, temperature=0.8, top_k=5, top_p=0.9)
    chunks = list(generate(params, cfg, PRIME, 30, chunk_size=7, **options))
    assert [c.shape for c in chunks] == [(2, 7)] * 4 + [(2, 2)]  # the remainder comes last
    assert all(c.dtype == np.int32 for c in chunks)
    # chunk_size 2 reuses the remainder's program (each new chunk length compiles anew);
    # chunk_size 256 (one chunk) is compared in the sample_text test
    pairs = list(generate(params, cfg, PRIME, 30, chunk_size=2, **options))
    assert len(pairs) == 15
    np.testing.assert_array_equal(ids_of(chunks), ids_of(pairs))
    # many samples of a large vocabulary: chunks shrink to keep the noise within budget
    monkeypatch.setattr(sample, "NOISE_BUDGET", 2 * 2 * cfg.vocab_size)
    pairs = list(generate(params, cfg, PRIME, 30, chunk_size=7, **options))
    assert [c.shape for c in pairs] == [(2, 2)] * 15
    np.testing.assert_array_equal(ids_of(chunks), ids_of(pairs))


def test_a_noise_budget_below_one_step_still_takes_one_step_per_chunk(monkeypatch):
    cfg, params = model("rnn")
    monkeypatch.setattr(sample, "NOISE_BUDGET", 1)
    chunks = list(generate(params, cfg, PRIME, 3, key=jax.random.key(0), num_samples=2))
    assert [c.shape for c in chunks] == [(2, 1)] * 3


def test_samples_differ_per_row_and_repeat_per_seed():
    cfg, params = model("gru", scale=1.0)
    draw = lambda seed: ids_of(generate(params, cfg, PRIME, 20, key=jax.random.key(seed),
                                        num_samples=4))
    first = draw(0)
    assert first.shape == (4, 20)
    assert len({tuple(row) for row in first}) == 4
    np.testing.assert_array_equal(first, draw(0))
    assert not np.array_equal(first, draw(1))


@pytest.mark.parametrize("cell, options", [(cell, dict()) for cell in CELLS] + [
    ("lstm", dict(temperature=1.5, top_k=6, top_p=0.8)), ("gru", dict(temperature=0.5))], ids=str)
def test_first_token_frequencies_match_softmax(cell, options):
    cfg, params = model(cell, scale=1.5)
    n = 4000
    ids = ids_of(generate(params, cfg, PRIME, 1, key=jax.random.key(7), num_samples=n,
                          **options))
    empirical = np.bincount(ids[:, 0], minlength=VOCAB) / n
    logits, _ = lstm_fn.apply(params, cfg, jnp.asarray(PRIME)[None])
    expected = next_token_probs(np.asarray(logits[0, -1]), **options)
    assert 0.5 * np.abs(empirical - expected).sum() < TV_TOL
    assert np.all(empirical[expected == 0] == 0)  # filtered tokens are never drawn


@pytest.mark.parametrize("cell", CELLS)
def test_top_k_one_tiny_top_p_and_tiny_temperature_equal_greedy(cell):
    cfg, params = model(cell)
    greedy = ids_of(generate(params, cfg, PRIME, 20, key=None, greedy=True, num_samples=2,
                             chunk_size=10))
    for options in (dict(top_k=1), dict(top_p=1e-7), dict(top_k=1, temperature=3.0),
                    dict(temperature=1e-38)):  # logits / T would overflow
        sampled = ids_of(generate(params, cfg, PRIME, 20, key=jax.random.key(5), num_samples=2,
                                  chunk_size=10, **options))
        np.testing.assert_array_equal(sampled, greedy)


def test_a_temperature_below_the_smallest_normal_float32_is_greedy_too():
    """On the device such a temperature flushed to 0, and 0 / 0 is NaN."""
    cfg, params = model("lstm")
    greedy = ids_of(generate(params, cfg, PRIME, 20, key=None, greedy=True, num_samples=2,
                             chunk_size=10))
    for options in (dict(temperature=1e-39, top_k=3), dict(temperature=1e-300, top_p=0.5)):
        sampled = ids_of(generate(params, cfg, PRIME, 20, key=jax.random.key(5), num_samples=2,
                                  chunk_size=10, **options))
        np.testing.assert_array_equal(sampled, greedy)


def test_compiled_programs_are_reused():
    cfg, params = model("rnn")
    run = lambda **kw: ids_of(generate(params, cfg, PRIME, 8, chunk_size=4, num_samples=2,
                                       top_p=0.9, **kw))
    run(key=jax.random.key(0), temperature=1.0)
    size = generate_chunk._cache_size()
    run(key=jax.random.key(1), temperature=0.5)  # traced options: the same program
    assert generate_chunk._cache_size() == size
    greedy = lambda **kw: ids_of(generate(params, cfg, PRIME, 8, chunk_size=4, greedy=True,
                                          **kw))
    greedy()
    size = generate_chunk._cache_size()
    greedy(top_k=3, top_p=0.5, temperature=0.1)  # ignored when greedy: the same program
    assert generate_chunk._cache_size() == size


@pytest.mark.parametrize("bad, message", [
    (dict(length=-1), "length"),
    (dict(length=2.0), "length"),
    (dict(num_samples=0), "num_samples"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(prime_ids=[]), "prime"),
    (dict(prime_ids=[0, VOCAB]), "prime"),
    (dict(key=None), "key"),
], ids=str)
def test_bad_options_raise_when_called(bad, message):
    cfg, params = model("rnn")
    args = dict(prime_ids=PRIME, length=5, key=jax.random.key(0)) | bad
    with pytest.raises(ValueError, match=message):
        generate(params, cfg, **args)  # raises before the first chunk is asked for


def test_greedy_ignores_temperature_and_length_zero_yields_nothing():
    cfg, params = model("rnn")
    assert list(generate(params, cfg, PRIME, 0, key=jax.random.key(0))) == []
    a = ids_of(generate(params, cfg, PRIME, 5, key=None, greedy=True, temperature=0.0))
    b = ids_of(generate(params, cfg, PRIME, 5, key=None, greedy=True))
    np.testing.assert_array_equal(a, b)


def test_sample_text_chars_unknown_character_and_chunk_independence():
    vocab = Vocab.from_text("abcdefghij ")
    cfg, params = model("lstm")
    with pytest.raises(CorpusError, match="'z'"):
        sample_text(params, cfg, vocab, "az", 5, key=jax.random.key(0))
    texts = ["".join(sample_text(params, cfg, vocab, "bad cab", 39, key=jax.random.key(2),
                                 temperature=0.9, chunk_size=size)) for size in (3, 256)]
    assert texts[0] == texts[1] and len(texts[0]) == 39
    assert set(texts[0]) <= set(vocab.symbols)


def cycle_model(successor: dict[int, int]) -> tuple[ModelConfig, dict]:
    """A bytes-vocabulary rnn that deterministically emits ``successor[last byte]``.

    One-hot embedding times 10 through ``w_x = I``: ``h = tanh(10) e_b`` for input byte b;
    the head maps ``e_b`` to a logit of 20 on ``successor[b]`` and 0 elsewhere.
    """
    V = 256
    cfg = ModelConfig("rnn", vocab_size=V, embed_size=V, hidden_size=V, num_layers=1)
    head = np.zeros((V, V), np.float32)
    for b, nxt in successor.items():
        head[b, nxt] = 20.0
    params = {
        "embed": 10.0 * jnp.eye(V),
        "layers": [{"w_x": jnp.eye(V), "w_h": jnp.zeros((V, V)), "b_x": jnp.zeros(V),
                    "b_h": jnp.zeros(V)}],
        "head": {"w": jnp.asarray(head), "b": jnp.zeros(V)},
    }
    return cfg, params


def test_bytes_streaming_keeps_split_characters_whole():
    vocab = Vocab.bytes()
    c3, a9 = "é".encode()  # b"\xc3\xa9"
    cfg, params = cycle_model({c3: a9, a9: c3})
    ids = ids_of(generate(params, cfg, vocab.encode("é"), 4, key=None, greedy=True))
    np.testing.assert_array_equal(ids[0], [c3, a9, c3, a9])
    pieces = list(sample_text(params, cfg, vocab, "é", 4, key=jax.random.key(0), top_k=1,
                              chunk_size=1))
    assert pieces == ["é", "é"]  # each byte its own chunk, yet no replacement characters
    # an odd length leaves half a character: the final flush turns it into U+FFFD
    odd = list(sample_text(params, cfg, vocab, "é", 3, key=None, greedy=True, chunk_size=1))
    assert odd == ["é", "\ufffd"]
