"""Runs through the real commands: stopping rules, refusals of settings, fine-tune's new
characters, the test split and runs without held-out splits (resuming: test_resume.py; run
directories themselves: test_run_dirs.py)."""

import json
import shutil
import unicodedata

import jax
import numpy as np
import pytest

import lstm_fn
from conftest import SHORT_TEXT, TINY, assert_refused, invoke, last_checkpoint, metrics


def test_the_sample_in_the_training_log_escapes_control_characters(capsys):
    """A corpus of terminal output (a bytes model here, which can draw any byte) samples
    escape sequences; in the training log they would reach the terminal (ESC [ 2 J clears
    it, a carriage return overwrites the line), so they are logged as escapes, newlines and
    tabs as they are."""
    from lstm_fn.config import TrainConfig
    from lstm_fn.loop import _show_sample

    vocab = lstm_fn.Vocab.bytes()
    cfg = lstm_fn.ModelConfig("rnn", len(vocab), embed_size=2, hidden_size=4, num_layers=1)
    params = lstm_fn.init(jax.random.key(0), cfg)
    train_ids = vocab.encode(b"\x1b[2J\r\n\tok")
    _show_sample(params, cfg, vocab, train_ids, TrainConfig(steps=1, sample_length=200), 5)
    logged = capsys.readouterr().err
    assert logged.startswith("--- sample at step 5 ---\n\\x1b") and logged.endswith("\n---\n")
    assert not [c for c in logged if unicodedata.category(c) == "Cc" and c not in "\n\t"]


def test_a_model_too_big_for_memory_is_refused(tmp_path, short_corpus):
    result = invoke("pretrain", short_corpus, *TINY, "--hidden-size", str(10**9), "--steps", "2",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert_refused(result, "parameters", "GiB to train", "--hidden-size")
    assert not (tmp_path / "run").exists()


def test_epochs_and_minutes_are_not_capped_by_the_default_steps(tmp_path, short_corpus):
    """--epochs alone runs ceil(epochs * windows) steps of the train split cut by the given
    (unequal) fractions; with --steps too, whichever comes first."""
    fractions = ["--val-fraction", "0.1", "--test-fraction", "0.02"]
    result = invoke("pretrain", short_corpus, *TINY, *fractions, "--epochs", "0.5",
                    "--eval-every", "1000", "--run-dir", tmp_path / "run", "--out",
                    tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    train = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert train["steps"] is None and train["epochs"] == 0.5
    ids = lstm_fn.Vocab.from_text(SHORT_TEXT).encode(SHORT_TEXT)
    parts = [len(part) for part in lstm_fn.data.split(ids, (0.88, 0.1, 0.02))]
    assert "splits {:,}/{:,}/{:,}".format(*parts) in result.stderr
    windows = lstm_fn.data.windows_per_epoch(parts[0], 4, 16)  # TINY's batch and window
    assert last_checkpoint(tmp_path / "run") == -(-windows // 2) > 2
    result = invoke("pretrain", short_corpus, *TINY, "--epochs", "0.5", "--steps", "2",
                    "--run-dir", tmp_path / "run2", "--out", tmp_path / "m2.json")
    assert result.exit_code == 0 and last_checkpoint(tmp_path / "run2") == 2
    # a stopping rule (or any setting) from a config file counts as given there
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"train": {"epochs": 0.05, "freeze": ["embed"]}}))
    result = invoke("pretrain", short_corpus, *TINY, "--config", config, "--run-dir",
                    tmp_path / "run3", "--out", tmp_path / "m3.json")
    assert result.exit_code == 0, result.output
    train = json.loads((tmp_path / "run3" / "config.json").read_text())["train"]
    assert (train["steps"], train["epochs"], train["freeze"]) == (None, 0.05, ["embed"])


def test_freezing_every_part_is_refused(tmp_path, short_corpus):
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--freeze", "embed",
                    "--freeze", "head", "--freeze", "0", "--freeze", "1",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert_refused(result, "--freeze names every part", "nothing would train")


def test_a_refused_fine_tune_that_adds_characters_is_still_one_line(tmp_path, model_file):
    corpus = tmp_path / "new.txt"
    corpus.write_text(SHORT_TEXT + "\u00f1\u0416", encoding="utf-8")
    result = invoke("fine-tune", corpus, "--from", model_file, "--run-dir", tmp_path / "run")
    assert_refused(result, "train split has", "one batch needs")  # the default batch: too big
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_new_characters_start_rare_together_and_a_frozen_head_is_warned(tmp_path, model_file):
    from lstm_fn.run import grow_vocab

    params, cfg, _ = lstm_fn.load_weights(model_file)
    grown = grow_vocab(params, cfg, 50, jax.random.key(0))
    old_b = np.asarray(params["head"]["b"])
    np.testing.assert_array_equal(grown["head"]["b"][:len(old_b)], old_b)
    np.testing.assert_allclose(grown["head"]["b"][len(old_b):], old_b.min() - np.log(50),
                               rtol=1e-6)
    np.testing.assert_array_equal(grown["embed"][:len(old_b)], params["embed"])
    corpus = tmp_path / "new.txt"
    corpus.write_text(SHORT_TEXT.replace("cat", "CAT"), encoding="utf-8")
    result = invoke("fine-tune", corpus, "--from", model_file, "--freeze", "head",
                    "--steps", "2", "--eval-every", "2", "--batch-size", "4", "--seq-len", "16",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "t.json")
    assert result.exit_code == 0, result.output
    assert "--freeze head keeps the output weights of the 3 new character(s)" in result.stderr


def test_a_removed_best_model_is_reported_as_removed(finished_run, tmp_path):
    shutil.copytree(finished_run / "run", tmp_path / "run")
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    record["out"] = str(tmp_path / "m.json")  # the run's model, now removed
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    result = invoke("pretrain", "--resume", "--run-dir", tmp_path / "run", "--steps", "2")
    # no step left, so no evaluation either
    assert result.exit_code == 0, result.output
    assert "no model at" in result.stderr and "removed after the run's best evaluation" in \
        result.stderr, result.output


def test_the_test_split_is_scored_with_the_best_model(tmp_path, short_corpus):
    """A learning rate far too high makes the last model worse than the best one; the
    reported test loss is the best model's, computed here from the saved file."""
    import re

    from lstm_fn import data
    from lstm_fn.train import evaluate

    result = invoke("pretrain", short_corpus, *TINY, "--steps", "6", "--eval-every", "2",
                    "--lr", "1.0", "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert not metrics(tmp_path / "run")[-1]["best"]  # the last model is not the best
    shown = re.search(r"test split \(best model\): ([\d.]+) nats/char", result.stderr)
    params, cfg, vocab = lstm_fn.load_weights(tmp_path / "m.json")
    _, _, test_ids = data.split(vocab.encode(SHORT_TEXT))
    assert float(shown.group(1)) == pytest.approx(evaluate(params, cfg, test_ids, 1, 16),
                                                  abs=1e-4)


def test_without_held_out_splits_the_training_loss_is_named_as_such(tmp_path, short_corpus):
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--eval-every", "2",
                    "--val-fraction", "0", "--test-fraction", "0", "--run-dir", tmp_path / "run",
                    "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert "the validation split is empty" in result.stderr
    assert "val (no validation split: the training loss)" in result.stderr
    assert "test split: 0 character(s), nothing to score" in result.stderr
    [record] = metrics(tmp_path / "run")
    assert record["val_loss"] == record["train_loss"]
