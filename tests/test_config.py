"""The config loader: documented defaults, config files, precedence of defaults < file <
command line, the bounds of each value, and the configs installed with the package."""

import math

import pytest

from lstm_fn.config import (BUILT_IN_CONFIGS, ConfigError, TrainConfig, config_file,
                            read_config_file, resolve)


def test_documented_defaults():
    """Defaults users rely on (some in the README): --help is built from the same
    dataclass, so only a test with the numbers written out notices when one changes."""
    tcfg = TrainConfig(steps=1)
    assert (tcfg.batch_size, tcfg.seq_len, tcfg.optimizer, tcfg.learning_rate,
            tcfg.grad_clip, tcfg.eval_every, tcfg.eval_chars, tcfg.val_fraction,
            tcfg.test_fraction, tcfg.gradients, tcfg.matmul_precision) == (
        32, 128, "adam", 2e-3, 5.0, 200, 500_000, 0.05, 0.05, "manual", "float32")


def test_a_config_file_may_start_with_a_utf8_bom(tmp_path):
    """Windows editors write one; corpora, primes and weights files already accept it."""
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"train": {"steps": 7}}')
    assert read_config_file(path)["train"] == {"steps": 7}
    path.write_bytes(b'\xef\xbb\xbf{"train": "\xff"}')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 14\)"):
        read_config_file(path)


def test_config_precedence_and_refusals(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"model": {"hidden_size": 32}, "train": {"steps": 7, "learning_rate": 0.1}}')
    model, train = resolve(read_config_file(path), {"cell": "gru", "hidden_size": None},
                           {"learning_rate": 0.5, "steps": None}, {"steps": 99, "seed": 3})
    assert model == {"hidden_size": 32, "cell": "gru"}
    assert (train.steps, train.learning_rate, train.seed) == (7, 0.5, 3)
    for bad, message in [({"train": {"stepz": 1}}, "train.stepz"),
                         ({"train": {"steps": "10"}}, "train.steps must be int"),
                         ({"train": {"steps": 1, "dropout": 0.1}}, "train.dropout"),
                         ({"model": {"vocab_size": 3}}, "comes from the corpus"),
                         ({"train": {"steps": 1, "matmul_precision": "float16"}},
                          "train.matmul_precision must be one of float32, bfloat16")]:
        with pytest.raises(ConfigError, match=message):
            resolve({"model": {}, "train": {}, **bad}, {}, {}, {"steps": 1})
    assert math.isclose(TrainConfig(steps=1, learning_rate=1).learning_rate, 1.0)


@pytest.mark.parametrize("field, message", [
    (dict(test_fraction=0.6), r"train.test_fraction must be in \[0, 0.5\]"),
    (dict(plateau_factor=1.0), r"train.plateau_factor must be in \(0, 1\)"),
    (dict(seed=2**32), r"train.seed must be in \[0, 2\*\*32\)"),
    (dict(steps=True), "train.steps must be int, got True"),
])
def test_config_refuses_values_just_past_an_edge(field, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"steps": 1, **field})


def test_config_accepts_values_at_an_edge_and_normalizes_layer_numbers():
    tcfg = TrainConfig(steps=1, seed=2**32 - 1, sample_length=100_000, freeze=["01", "head"])
    assert (tcfg.seed, tcfg.sample_length, tcfg.freeze) == (2**32 - 1, 100_000, ("1", "head"))


def test_built_in_configs_are_found_by_name_and_are_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = sorted(path.stem for path in BUILT_IN_CONFIGS.glob("*.json"))
    assert names == ["quick", "shakespeare"]
    for name in names:
        model, train = resolve(read_config_file(config_file(name)), {}, {})
        assert model["cell"] == "lstm" and train.steps > 0
    (tmp_path / "quick").mkdir()  # a folder of that name does not hide it
    assert config_file("quick") == BUILT_IN_CONFIGS / "quick.json"
    (tmp_path / "quick").rmdir()
    (tmp_path / "quick").write_text("{}")  # a file of that name comes first
    assert str(config_file("quick")) == "quick"
    with pytest.raises(ConfigError, match=r"quik: .*\(built-in configs: quick, shakespeare\)"):
        read_config_file(config_file("quik"))
