"""Property-based tests: random mutations of a valid weights file or config file are either
loaded correctly or refused with the loader's own error (WeightsError / ConfigError),
never another exception."""

import copy
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstm_fn
from lstm_fn.config import ConfigError, TrainConfig, read_config_file, resolve
from lstm_fn.nn.config import ModelConfig
from lstm_fn.weights import WeightsError, load_weights
from reference_numpy import spec
from reference_numpy.weights import read_weights


# ------------------------------------------------- property-based: weights never crash

def _small_weights_text() -> str:
    vocab = lstm_fn.Vocab.from_text("ab c\n")
    cfg = lstm_fn.ModelConfig("gru", len(vocab), embed_size=2, hidden_size=2, num_layers=2)
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    path = folder / f"lstm_fn_small_weights_{os.getpid()}.json"
    lstm_fn.save_weights(path, lstm_fn.init(jax.random.key(1), cfg), cfg, vocab)
    try:
        return path.read_text(encoding="utf-8")
    finally:
        path.unlink()


SMALL_WEIGHTS = _small_weights_text()

JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.just(10 ** 400), st.just(-(10 ** 30)),
    st.floats(allow_nan=True, allow_infinity=True), st.just(1e39), st.text(max_size=4),
    st.lists(st.floats(-2, 2), max_size=4), st.lists(st.lists(st.integers(0, 2), max_size=3),
                                                     max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2))


def _paths(tree, prefix=()):
    """Every path (tuple of keys / indices) below the root of a JSON tree."""
    items = tree.items() if isinstance(tree, dict) else (
        enumerate(tree) if isinstance(tree, list) else ())
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@st.composite
def mutated_document(draw, base: dict):
    """``base`` with 1-3 random deletions, replacements (numbers to strings, NaN, huge...)
    or added keys at random depths."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        by_depth = {}
        for path in _paths(doc):
            by_depth.setdefault(len(path), []).append(path)
        if not by_depth:
            break
        depth = draw(st.sampled_from(sorted(by_depth)))  # shallow keys as often as deep ones
        path = draw(st.sampled_from(by_depth[depth]))
        parent, key = _at(doc, path[:-1]), path[-1]
        action = draw(st.sampled_from(["delete", "replace", "stringify", "add key"]))
        if action == "delete":
            del parent[key]
        elif action == "replace":
            parent[key] = draw(JSON_VALUES)
        elif action == "stringify":
            parent[key] = json.dumps(parent[key])[:20]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(JSON_VALUES)
        else:
            parent.insert(key, draw(JSON_VALUES))
    return doc


@st.composite
def mutated_text(draw, text: str):
    """``text`` cut at a random offset, or with random characters or bytes replaced."""
    action = draw(st.sampled_from(["truncate", "flip", "bytes"]))
    if action == "truncate":
        return text[:draw(st.integers(0, len(text)))].encode("utf-8")
    raw = bytearray(text.encode("utf-8"))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw) - 1))
        if action == "bytes":
            raw[at] = draw(st.integers(0, 255))
        else:
            raw[at:at + 1] = draw(st.sampled_from(list('{}[],:"0-.eE \\') + ["NaN", "1e99",
                                                                          "true", "\u00e9"])).encode()
    return bytes(raw)


def _check_weights_outcome(path: Path):
    """Loaded whole and consistent, or refused with WeightsError; nothing else."""
    try:
        params, model, vocab, _ = read_weights(path)
    except WeightsError:
        with pytest.raises(WeightsError):
            load_weights(path)
        return
    shapes = spec.param_shapes(model)
    for array, shape in zip(jax.tree.leaves(params),
                            jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))):
        assert array.shape == shape and array.dtype == np.float32 and np.isfinite(array).all()
    assert len(vocab) == len(set(vocab)) == model["vocab_size"]
    try:
        loaded, cfg, lvocab = load_weights(path)
    except WeightsError:
        assert model["vocab_size"] < 2  # loadable in numpy, but no language model to run
        return
    assert cfg.architecture() == model and list(lvocab.symbols) == vocab


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("scratch")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated_document(json.loads(SMALL_WEIGHTS)))
def test_mutated_weights_documents_load_or_raise_weights_error(scratch, doc):
    path = scratch / "mutated.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    _check_weights_outcome(path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mutated_text(SMALL_WEIGHTS))
def test_mutated_weights_text_loads_or_raises_weights_error(scratch, raw):
    path = scratch / "mutated.json"
    path.write_bytes(raw)
    _check_weights_outcome(path)


# -------------------------------------------------- property-based: configs never crash

VALID_CONFIG = {
    "model": {"cell": "gru", "embed_size": 16, "hidden_size": 32, "num_layers": 2,
              "dropout": 0.1},
    "train": {"batch_size": 8, "seq_len": 32, "steps": 100, "epochs": 2.5,
              "optimizer": "adamw", "learning_rate": 0.003, "weight_decay": 0.01,
              "schedule": "cosine", "warmup_steps": 10, "patience": 3,
              "freeze": ["embed", "1"], "val_fraction": 0.1, "seed": 7},
}


def _check_config_outcome(path: Path):
    """A usable TrainConfig (and a model section ModelConfig accepts or refuses with a
    ValueError), or ConfigError; nothing else."""
    try:
        doc = read_config_file(path)
        run = resolve("pretrain", doc, {}, {})
    except ConfigError:
        return
    assert isinstance(run.train, TrainConfig)
    assert set(run.model) == {"cell", "embed_size", "hidden_size", "num_layers", "dropout"}
    try:
        ModelConfig(**run.model, vocab_size=10)
    except ConfigError:
        pass
    # The same sections given as overrides (as the command line does) behave alike.
    try:
        resolve("fine-tune", {"model": {}, "train": {}}, dict(doc["model"]), dict(doc["train"]))
    except ConfigError:
        pass


@settings(max_examples=80, deadline=None)
@given(doc=mutated_document(VALID_CONFIG))
def test_mutated_config_documents_resolve_or_raise_config_error(scratch, doc):
    path = scratch / "config.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    _check_config_outcome(path)


@settings(max_examples=80, deadline=None)
@given(raw=mutated_text(json.dumps(VALID_CONFIG, indent=1)))
def test_mutated_config_text_resolves_or_raises_config_error(scratch, raw):
    path = scratch / "config.json"
    path.write_bytes(raw)
    _check_config_outcome(path)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError) and issubclass(WeightsError, ValueError)
