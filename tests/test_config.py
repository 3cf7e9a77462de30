"""The config loader: documented defaults, config files, the one resolution of a run's
settings (defaults < command defaults < file < command line; a fine-tune's base model; a
resume's record), the bounds of each value, and the configs installed with the package."""

import math

import pytest

from lstm_fn.config import (BUILT_IN_CONFIGS, BaseModel, ConfigError, TrainConfig, config_file,
                            read_config_file, resolve)
from lstm_fn.nn.config import ModelConfig


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
    run = resolve("pretrain", read_config_file(path), {"cell": "gru", "hidden_size": None},
                  {"learning_rate": 0.5, "steps": None})
    assert run.model == {"cell": "gru", "embed_size": 64, "hidden_size": 32, "num_layers": 2,
                         "dropout": 0.0}
    assert (run.train.steps, run.train.learning_rate, run.train.seed) == (7, 0.5, 0)
    for bad, message in [({"train": {"stepz": 1}}, "train.stepz"),
                         ({"train": {"steps": "10"}}, "train.steps must be int"),
                         ({"train": {"steps": 1, "dropout": 0.1}}, "train.dropout"),
                         ({"model": {"vocab_size": 3}}, "comes from the corpus"),
                         ({"train": {"steps": 1, "matmul_precision": "float16"}},
                          "train.matmul_precision must be one of auto, float32, bfloat16")]:
        with pytest.raises(ConfigError, match=message):
            resolve("pretrain", {"model": {}, "train": {}, **bad}, {}, {})
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
    for name in names:  # tuned runs, bounded by time or characters, not steps
        run = resolve("pretrain", read_config_file(config_file(name)), {}, {})
        assert run.model["cell"] == {"quick": "gru", "shakespeare": "lstm"}[name]
        assert run.train.steps is None
        assert (run.train.minutes or run.train.chars) and run.train.schedule == "wsd"
        assert run.train.matmul_precision == "auto"
    (tmp_path / "quick").mkdir()  # a folder of that name does not hide it
    assert config_file("quick") == BUILT_IN_CONFIGS / "quick.json"
    (tmp_path / "quick").rmdir()
    (tmp_path / "quick").write_text("{}")  # a file of that name comes first
    assert str(config_file("quick")) == "quick"
    with pytest.raises(ConfigError, match=r"quik: .*\(built-in configs: quick, shakespeare\)"):
        read_config_file(config_file("quik"))


# The precedence of a fresh run's settings, lowest first: TrainConfig's defaults, the
# command's own, the config file, the command line; the command's default steps only while
# no stopping rule is given anywhere.
PRECEDENCE = [
    # command, config file's train, command line's train, expected, their sources
    ("pretrain", {}, {}, {"steps": 5000, "learning_rate": 2e-3, "schedule": "wsd",
                          "warmup_steps": 20, "matmul_precision": "auto"},
     {"steps": "pretrain default", "learning_rate": "default", "schedule": "pretrain default"}),
    ("fine-tune", {}, {}, {"schedule": "constant", "matmul_precision": "float32"},
     {"schedule": "default"}),
    ("fine-tune", {}, {}, {"steps": 1000, "learning_rate": 5e-4},
     {"steps": "fine-tune default", "learning_rate": "fine-tune default"}),
    ("fine-tune", {"learning_rate": 0.01}, {}, {"learning_rate": 0.01},
     {"learning_rate": "config file"}),
    ("pretrain", {"learning_rate": 0.01}, {"learning_rate": 0.02}, {"learning_rate": 0.02},
     {"learning_rate": "command line"}),
    ("pretrain", {"minutes": 2}, {}, {"steps": None, "minutes": 2.0},
     {"steps": "default", "minutes": "config file"}),
    ("fine-tune", {}, {"epochs": 1.5}, {"steps": None, "epochs": 1.5},
     {"steps": "default", "epochs": "command line"}),
    ("pretrain", {"steps": 10}, {"minutes": 1.0}, {"steps": 10, "minutes": 1.0},
     {"steps": "config file", "minutes": "command line"}),
    ("pretrain", {"steps": 10}, {"steps": None}, {"steps": 10}, {"steps": "config file"}),
]


@pytest.mark.parametrize("command, file, typed, expected, sources", PRECEDENCE)
def test_a_fresh_runs_settings_by_precedence(command, file, typed, expected, sources):
    run = resolve(command, {"model": {}, "train": file}, {}, typed)
    assert {k: getattr(run.train, k) for k in expected} == expected
    assert {k: run.sources[f"train.{k}"] for k in sources} == sources


def test_model_settings_by_precedence():
    run = resolve("pretrain", {"model": {"hidden_size": 32, "cell": "rnn"}, "train": {}},
                  {"cell": "gru", "num_layers": None}, {})
    assert run.model == {"cell": "gru", "embed_size": 64, "hidden_size": 32, "num_layers": 2,
                         "dropout": 0.0}
    assert [run.sources[f"model.{k}"] for k in ("cell", "hidden_size", "embed_size")] == \
        ["command line", "config file", "default"]
    bare = resolve("pretrain", {"model": {}, "train": {}}, {}, {})
    assert bare.model["cell"] == "gru" and bare.sources["model.cell"] == "pretrain default"


BASE = BaseModel(ModelConfig("gru", 30, embed_size=8, hidden_size=16, num_layers=1), "bytes")


def test_a_fine_tune_keeps_its_base_models_architecture_and_vocabulary():
    run = resolve("fine-tune", {"model": {"dropout": 0.1}, "train": {}}, {}, {}, base=BASE)
    assert run.model == {"cell": "gru", "embed_size": 8, "hidden_size": 16, "num_layers": 1,
                         "dropout": 0.1}
    assert run.train.vocab == "bytes" and run.sources["train.vocab"] == "base model"
    same = resolve("fine-tune", {"model": {}, "train": {}}, {"hidden_size": 16},
                   {"vocab": "bytes"}, base=BASE)
    assert same.model["hidden_size"] == 16
    for model, train, message in [({"hidden_size": 32}, {}, "model.hidden_size = 16, 32 was"),
                                  ({"cell": "lstm"}, {}, "model.cell = 'gru', 'lstm' was"),
                                  ({}, {"vocab": "chars"}, "uses vocab 'bytes', not 'chars'")]:
        with pytest.raises(ConfigError, match=message):
            resolve("fine-tune", {"model": {}, "train": {}}, model, train, base=BASE)


RECORD = {"model": {"cell": "lstm", "embed_size": 8, "hidden_size": 32, "num_layers": 2,
                    "dropout": 0.0},
          "train": {"steps": 40, "learning_rate": 0.01, "batch_size": 4, "freeze": ["1"]}}


def test_a_resume_keeps_the_record_and_takes_only_stopping_rules_anew():
    kept = resolve("pretrain", {"model": {}, "train": {}}, {}, {}, record=RECORD)
    assert kept.model == RECORD["model"] and kept.train.steps == 40
    assert kept.train.learning_rate == 0.01 and kept.train.freeze == ("1",)
    assert kept.train.seq_len == 128  # missing from an older record: TrainConfig's default
    assert kept.sources["train.learning_rate"] == "run record"
    more = resolve("pretrain", {"model": {}, "train": {"minutes": 3}}, {"cell": "lstm"},
                   {"steps": 80, "learning_rate": 0.01, "freeze": ("01",)}, record=RECORD)
    assert (more.train.steps, more.train.minutes, more.train.learning_rate) == (80, 3.0, 0.01)
    assert more.sources["train.steps"] == "command line"
    assert more.sources["train.minutes"] == "config file"
    for model, train, key in [({"hidden_size": 16}, {}, "model.hidden_size"),
                              ({}, {"learning_rate": 0.1}, "train.learning_rate"),
                              ({}, {"seq_len": 64}, "train.seq_len")]:
        with pytest.raises(ConfigError, match=f"--resume: {key} is .* in the run") as error:
            resolve("pretrain", {"model": {}, "train": {}}, model, train, record=RECORD)
        assert error.value.key == key
