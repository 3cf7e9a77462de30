"""JSON weights: bit-exact round trip, refusal by key, and one file giving identical logits
in lstm_fn, reference_numpy and PyTorch."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import lstm_fn
import reference_numpy as ref
from lstm_fn import Vocab, WeightsError
from reference_numpy import spec
from reference_numpy.weights import read_weights
from conftest import CELLS, assert_close

VOCAB = Vocab.from_text("hello, world!\nHELLO")


def saved_model(tmp_path, cell="lstm", num_layers=2, seed=0):
    cfg = lstm_fn.ModelConfig(cell, len(VOCAB), embed_size=6, hidden_size=10, num_layers=num_layers)
    params = lstm_fn.init(jax.random.key(seed), cfg)
    path = tmp_path / "model.json"
    lstm_fn.save_weights(path, params, cfg, VOCAB)
    return path, params, cfg


@pytest.mark.parametrize("cell", CELLS)
def test_round_trip_is_bit_exact(tmp_path, cell):
    path, params, cfg = saved_model(tmp_path, cell)
    loaded, cfg2, vocab2 = lstm_fn.load_weights(path)
    assert cfg2 == cfg and vocab2 == VOCAB
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    doc = json.loads(path.read_text())
    assert doc["format"] == "lstm_fn-weights" and doc["version"] == 1
    assert doc["model"] == cfg.architecture() and doc["vocab"] == list(VOCAB.symbols)


def test_extreme_float32_values_round_trip(tmp_path):
    path, params, cfg = saved_model(tmp_path)
    tiny = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).tiny, 1e-45, -0.0,
                     0.1, 1 / 3], np.float32)
    params["head"]["b"] = params["head"]["b"].at[:tiny.size].set(tiny)
    lstm_fn.save_weights(path, params, cfg, VOCAB)
    loaded, _, _ = lstm_fn.load_weights(path)
    assert np.asarray(loaded["head"]["b"]).tobytes() == np.asarray(params["head"]["b"]).tobytes()


def mutate(doc, mutation):
    """Apply one named damage to a decoded weights document."""
    kind, *args = mutation
    if kind == "set":
        target = doc
        *parents, last = args[0]
        for key in parents:
            target = target[key]
        target[last] = args[1]
    elif kind == "delete":
        target = doc
        *parents, last = args[0]
        for key in parents:
            target = target[key]
        del target[last]
    return doc


@pytest.mark.parametrize("mutation, message", [
    (("set", ["format"], "keras"), "format"),
    (("set", ["version"], 3), "version 3 is newer"),
    (("set", ["provenance"], [1]), "provenance must be an object"),
    (("set", ["provenance"], {"step": "ten"}), "provenance.step must be an integer"),
    (("delete", ["vocab"]), "'vocab'"),
    (("set", ["extra"], 1), "unknown key 'extra'"),
    (("delete", ["model", "hidden_size"]), "hidden_size"),
    (("set", ["model", "dropout"], 0.1), "model has unknown key 'dropout'"),
    (("set", ["model", "cell"], "tcn"), "model.cell"),
    (("set", ["model", "num_layers"], 3), r"params.layers must be a list of 3"),
    (("set", ["model", "hidden_size"], 11), r"params.embed|params.layers\[0\].w_x"),
    (("set", ["vocab"], list("abc")), "vocab has 3 entries"),
    (("set", ["vocab", 1], "\n"), r"vocab\[1\] '\\n' is a duplicate"),
    (("delete", ["params", "layers", 0, "b_h"]), r"params.layers\[0\] is missing key 'b_h'"),
    (("set", ["params", "head", "bias"], [0.0]), "params.head has unknown key 'bias'"),
    (("set", ["params", "head", "b"], [0.0]), r"params.head.b has shape \[1\]"),
    (("set", ["params", "embed", 0, 0], "x"), "params.embed is not a rectangular array"),
    (("set", ["params", "embed", 0, 0], 1e39), "params.embed holds a value that is not a finite"),
    (("set", ["encoding"], "utf-16"), "encoding 'utf-16' is not one of"),  # numpy's check
    (("set", ["encoding"], "bytes"), "vocab of a bytes-encoded model"),  # numpy's check
    (("set", ["model", "vocab_size"], "14"), "model.vocab_size must be a positive integer"),
    (("set", ["vocab", 1], "\ud800"), "lone surrogate"),  # numpy reads it, Vocab refuses it
])
def test_malformed_files_are_refused_by_key(tmp_path, mutation, message):
    path, _, _ = saved_model(tmp_path)
    doc = mutate(json.loads(path.read_text()), mutation)
    path.write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match=message):
        lstm_fn.load_weights(path)


def test_a_bytes_model_loads_with_its_bytes_vocabulary(tmp_path):
    cfg = lstm_fn.ModelConfig("rnn", 256, embed_size=2, hidden_size=3, num_layers=1)
    lstm_fn.save_weights(tmp_path / "b.json", lstm_fn.init(jax.random.key(0), cfg), cfg,
                         Vocab.bytes())
    assert lstm_fn.load_weights(tmp_path / "b.json")[2] == Vocab.bytes()


@pytest.mark.parametrize("text, message", [
    ("not json at all", "not valid JSON"),
    ('{"format": "lstm_fn-weights", "version": 1, "model": {"cell"', "not valid JSON"),
    ('{"a": NaN}', "non-finite number NaN"),
    ("[1, 2]", "not a JSON object"),
])
def test_unparseable_files_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(WeightsError, match=message):
        lstm_fn.load_weights(path)


@pytest.mark.parametrize("mark, name", [
    (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"), (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32")])
@pytest.mark.parametrize("padding", [0, 1])  # json.loads(bytes) guessed by the length
def test_a_file_in_another_unicode_encoding_is_named_whatever_its_length(tmp_path, mark, name,
                                                                         padding):
    """Weights are read as UTF-8 text: a UTF-16 or UTF-32 byte order mark is named, the same
    for a file of odd or even length (``json.loads`` given bytes decoded one as UTF-16 and
    refused the other, so the message depended on the model's size)."""
    path, _, _ = saved_model(tmp_path)
    text = path.read_text(encoding="utf-8") + " " * padding
    path.write_bytes(mark + text.encode("utf-8"))
    with pytest.raises(WeightsError, match=f"starts with a {name} byte order mark"):
        lstm_fn.load_weights(path)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # UTF-8's own mark is fine
    lstm_fn.load_weights(path)


@pytest.mark.parametrize("symbols", [list("hel, wordHEO!\n"), "hel, wordHEO!\n",
                                     tuple("hel, wordHEO!\n")])
def test_save_weights_takes_a_vocab_or_any_sequence_of_characters(tmp_path, symbols):
    cfg = lstm_fn.ModelConfig("gru", len(symbols), embed_size=3, hidden_size=4, num_layers=1)
    params = lstm_fn.init(jax.random.key(0), cfg)
    lstm_fn.save_weights(tmp_path / "m.json", params, cfg, symbols)
    _, loaded_cfg, vocab = lstm_fn.load_weights(tmp_path / "m.json")
    assert vocab == Vocab(tuple(symbols), "chars") and loaded_cfg == cfg
    for bad, message in [(["a", "bc"] + list("defghijklmno"), "not one character"),
                         (list("aabcdefghijklm"), "appears twice"), (list("abc"), "vocab has 3")]:
        with pytest.raises(WeightsError, match=message):
            lstm_fn.save_weights(tmp_path / "bad.json", params, cfg, bad)
    assert not (tmp_path / "bad.json").exists()


def test_non_finite_params_are_not_written_and_old_file_survives(tmp_path):
    path, params, cfg = saved_model(tmp_path)
    before = path.read_bytes()
    params["embed"] = params["embed"].at[0, 0].set(np.nan)
    with pytest.raises(WeightsError, match="params.embed"):
        lstm_fn.save_weights(path, params, cfg, VOCAB)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temp file left


@pytest.mark.parametrize("cell", CELLS)
def test_one_file_same_logits_in_jax_numpy_and_torch(tmp_path, cell):
    """One file in three frameworks, with a non-zero initial state: the same logits and
    final state; torch's state dict converts back bit for bit."""
    torch = pytest.importorskip("torch")
    if cell not in ref.interop.TORCH_CLASSES:
        pytest.skip(f"PyTorch has no {cell} module")
    path, _, _ = saved_model(tmp_path, cell, num_layers=2, seed=3)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, len(VOCAB), (3, 17))
    np_params, model, _, _ = read_weights(path)
    fields = spec.CARRY[cell]
    carry = [tuple(rng.normal(size=(3, model["hidden_size"])).astype(np.float32) for _ in fields)
             for _ in range(model["num_layers"])]

    params, cfg, _ = lstm_fn.load_weights(path)
    jax_logits, jax_final = lstm_fn.apply(params, cfg, tokens, carry)
    np_logits, np_final = ref.forward(np_params, model, tokens, carry)

    net = ref.torch_module(model, np_params)  # loads with strict names and shapes
    state = tuple(torch.from_numpy(np.stack([c[i] for c in carry]))  # torch: [L, B, H]
                  for i in range(len(fields)))
    with torch.no_grad():
        torch_logits, torch_final = net(torch.from_numpy(tokens),
                                        state if cell == "lstm" else state[0])
    torch_final = torch_final if cell == "lstm" else (torch_final,)

    assert_close(jax_logits, np_logits, atol=1e-5, rtol=0)
    assert_close(torch_logits.numpy(), np_logits, atol=1e-5, rtol=0)
    for i in range(len(fields)):
        expected = np.stack([c[i] for c in np_final])
        assert_close(np.stack([c[i] for c in jax_final]), expected, atol=1e-5, rtol=0)
        assert_close(torch_final[i].numpy(), expected, atol=1e-5, rtol=0)
    back = ref.from_torch(net.state_dict(), model)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(np_params)):
        np.testing.assert_array_equal(a, b)


def test_numpy_alone_reads_and_runs_a_file(tmp_path):
    """reference_numpy's promise: a weights file loads and samples in a process where
    neither JAX nor PyTorch is ever imported."""
    path, _, _ = saved_model(tmp_path, "lstm", num_layers=2, seed=1)
    program = (
        "import sys, numpy as np, reference_numpy as ref\n"
        "from reference_numpy.weights import read_weights\n"
        f"params, model, vocab, _ = read_weights({str(path)!r})\n"
        "ids = ref.sample(params, model, [0], 5, rng=np.random.default_rng(0))\n"
        "ref.to_torch(params, model)\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'torch'})\n"
        "print(len(ids), loaded)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout == "5 []\n", result.stderr


def test_torch_names_refuse_a_state_dict_that_does_not_fit():
    model = {"cell": "gru", "vocab_size": 5, "embed_size": 3, "hidden_size": 4, "num_layers": 1}
    params = ref.from_torch(ref.to_torch(_params(model), model), model)
    state = ref.to_torch(params, model)
    del state["rnn.bias_hh_l0"]
    with pytest.raises(WeightsError, match="no 'rnn.bias_hh_l0'"):
        ref.from_torch(state, model)
    state = ref.to_torch(params, model)
    state["head.weight"] = state["head.weight"][:, :3]
    with pytest.raises(WeightsError, match=r"params.head.w has shape \[3, 5\]"):
        ref.from_torch(state, model)


def _params(model):
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda shape: rng.normal(size=shape).astype(np.float32),
                        spec.param_shapes(model), is_leaf=lambda s: isinstance(s, tuple))


def test_written_files_follow_the_umask_and_keep_an_existing_mode(tmp_path):
    from reference_numpy.atomic import atomic_write

    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
    kept = tmp_path / "kept.json"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write(kept, "new")
    assert kept.read_text() == "new" and kept.stat().st_mode & 0o777 == 0o640


def test_writing_through_a_symbolic_link_keeps_the_link(tmp_path):
    from reference_numpy.atomic import atomic_write

    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    atomic_write(tmp_path / "link.json", "new")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"
