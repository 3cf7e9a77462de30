"""JSON weights: bit-exact round trip, refusal by key, and one file giving identical logits
in lstm_fn, reference_numpy and PyTorch."""

import json
import os

import jax
import numpy as np
import pytest

import lstm_fn
import reference_numpy as ref
from lstm_fn import Vocab, WeightsError
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
    (("set", ["version"], 2), "version 2 is newer"),
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
    (("set", ["encoding"], "utf-16"), "encoding"),
])
def test_malformed_files_are_refused_by_key(tmp_path, mutation, message):
    path, _, _ = saved_model(tmp_path)
    doc = mutate(json.loads(path.read_text()), mutation)
    path.write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match=message):
        lstm_fn.load_weights(path)


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
    torch = pytest.importorskip("torch")
    path, _, _ = saved_model(tmp_path, cell, num_layers=2, seed=3)
    tokens = np.random.default_rng(0).integers(0, len(VOCAB), (3, 17))

    params, cfg, _ = lstm_fn.load_weights(path)
    jax_logits, _ = lstm_fn.apply(params, cfg, tokens)

    np_params, model, _, _ = read_weights(path)
    np_logits, _ = ref.forward(np_params, model, tokens)

    rnn_class = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    net = rnn_class(model["embed_size"], model["hidden_size"], model["num_layers"],
                    batch_first=True)
    with torch.no_grad():
        for l, layer in enumerate(np_params["layers"]):  # torch stores x @ W.T: transpose
            getattr(net, f"weight_ih_l{l}").copy_(torch.from_numpy(layer["w_x"].T.copy()))
            getattr(net, f"weight_hh_l{l}").copy_(torch.from_numpy(layer["w_h"].T.copy()))
            getattr(net, f"bias_ih_l{l}").copy_(torch.from_numpy(layer["b_x"]))
            getattr(net, f"bias_hh_l{l}").copy_(torch.from_numpy(layer["b_h"]))
        x = torch.from_numpy(np_params["embed"])[torch.from_numpy(tokens)]
        hs, _ = net(x)
        torch_logits = (hs @ torch.from_numpy(np_params["head"]["w"])
                        + torch.from_numpy(np_params["head"]["b"])).numpy()
    assert_close(jax_logits, np_logits, atol=1e-5, rtol=0)
    assert_close(torch_logits, np_logits, atol=1e-5, rtol=0)


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
