"""Runs through the real commands: stopping rules, refusals of settings, fine-tune's new
characters, the test split and runs without held-out splits (resuming: test_resume.py; run
directories themselves: test_run_dirs.py)."""

import json
import shutil
import time
import unicodedata

import jax
import numpy as np
import pytest

import lstm_fn
from lstm_fn.text.streams import split, windows_per_epoch
from conftest import SHORT_TEXT, TINY, assert_refused, invoke, last_checkpoint, metrics


def test_the_sample_in_the_training_log_escapes_control_characters(capsys):
    """A corpus of terminal output samples escape sequences; in the training log they would
    reach the terminal (ESC [ 2 J clears it, a carriage return overwrites the line), so
    they are logged as escapes, newlines and tabs as they are."""
    from lstm_fn.cli.console import Console

    Console().sampled(5, "\x1b[2J\r\n\tok\x07")
    logged = capsys.readouterr().err
    assert logged == "--- sample at step 5 ---\n\\x1b[2J\\r\n\tok\\x07\n---\n"
    assert not [c for c in logged if unicodedata.category(c) == "Cc" and c not in "\n\t"]


def test_a_model_too_big_for_memory_is_refused(tmp_path, short_corpus):
    result = invoke("pretrain", short_corpus, *TINY, "--hidden-size", str(10**9), "--steps", "2",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert_refused(result, "parameters", "GiB to train", "--hidden-size")
    assert not (tmp_path / "run").exists()


def test_epochs_and_minutes_are_not_capped_by_the_default_steps(tmp_path, short_corpus):
    """--epochs alone runs ceil(epochs * windows) steps of the train split cut by the given
    (unequal) fractions (a part of a window is a whole step); with --steps too, whichever
    comes first."""
    fractions = ["--val-fraction", "0.1", "--test-fraction", "0.02"]
    result = invoke("pretrain", short_corpus, *TINY, *fractions, "--epochs", "0.45",
                    "--eval-every", "1000", "--run-dir", tmp_path / "run", "--out",
                    tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    train = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert train["steps"] is None and train["epochs"] == 0.45
    ids = lstm_fn.Vocab.from_text(SHORT_TEXT).encode(SHORT_TEXT)
    parts = [len(part) for part in split(ids, (0.88, 0.1, 0.02))]
    assert "splits {:,}/{:,}/{:,}".format(*parts) in result.stderr
    windows = windows_per_epoch(parts[0], 4, 16)  # TINY's batch and window
    assert windows == 24 and last_checkpoint(tmp_path / "run") == 11  # 10.8 windows
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
    from lstm_fn.nn.model import grow_vocab

    params, cfg, _ = lstm_fn.load_weights(model_file)
    grown = grow_vocab(params, 50, jax.random.key(0))
    old_b = np.asarray(params["head"]["b"])
    np.testing.assert_array_equal(grown["head"]["b"][:len(old_b)], old_b)
    np.testing.assert_allclose(grown["head"]["b"][len(old_b):], old_b.min() - np.log(50),
                               rtol=1e-6)
    np.testing.assert_array_equal(grown["embed"][:len(old_b)], params["embed"])
    # new embedding rows are drawn at the spread of the old ones (here 10x an untrained one's)
    wide = grow_vocab({**params, "embed": params["embed"] * 10}, 50, jax.random.key(0))
    assert np.std(wide["embed"][len(old_b):]) == pytest.approx(
        np.std(wide["embed"][:len(old_b)]), rel=0.2)
    corpus = tmp_path / "new.txt"
    corpus.write_text(SHORT_TEXT.replace("cat", "CAT"), encoding="utf-8")
    result = invoke("fine-tune", corpus, "--from", model_file, "--freeze", "head",
                    "--steps", "2", "--eval-every", "2", "--batch-size", "4", "--seq-len", "16",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "t.json")
    assert result.exit_code == 0, result.output
    assert "--freeze head keeps the output weights of the 3 new character(s)" in result.stderr
    # a resume grows the base model the same way before restoring the checkpoint into it
    result = invoke("fine-tune", "--resume", "--run-dir", tmp_path / "run", "--steps", "4")
    assert result.exit_code == 0 and "resumed from checkpoint 2" in result.stderr, result.output
    assert lstm_fn.load_weights(tmp_path / "t.json")[1].vocab_size == len(old_b) + 3


def test_a_fine_tune_of_a_bytes_model_reads_its_corpus_as_bytes(tmp_path, short_corpus):
    """Without --vocab a fine-tune reads the corpus as its base model does: a bytes model's
    run is a bytes run (the record says so), with no symbol added."""
    vocab = lstm_fn.Vocab.bytes()
    cfg = lstm_fn.ModelConfig("lstm", len(vocab), embed_size=8, hidden_size=32, num_layers=2)
    lstm_fn.save_weights(tmp_path / "base.json", lstm_fn.init(jax.random.key(0), cfg), cfg,
                         vocab)
    result = invoke("fine-tune", short_corpus, "--from", tmp_path / "base.json", "--steps", "2",
                    "--eval-every", "2", "--batch-size", "4", "--seq-len", "16",
                    "--sample-every", "0", "--run-dir", tmp_path / "run",
                    "--out", tmp_path / "t.json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"]["vocab"] == record["encoding"] == "bytes"
    assert len(record["vocab"]) == 256 and "added" not in result.stderr


def test_a_removed_best_model_is_reported_then_written_again(finished_run, tmp_path):
    shutil.copytree(finished_run / "run", tmp_path / "run")
    (tmp_path / "run" / "model.json").unlink()
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    record["out"] = None
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    result = invoke("pretrain", "--resume", "--run-dir", tmp_path / "run", "--steps", "2")
    # no step left, so no evaluation either
    assert result.exit_code == 0, result.output
    assert "no model at" in result.stdout and "removed after the run's best evaluation" in \
        result.stdout, result.output
    result = invoke("pretrain", "--resume", "--run-dir", tmp_path / "run", "--steps", "4")
    assert result.exit_code == 0 and (tmp_path / "run" / "model.json").exists(), result.output


def test_the_test_split_is_scored_with_the_best_model(tmp_path, short_corpus):
    """A learning rate far too high makes the last model worse than the best one; the
    reported test loss is the best model's, computed here from the saved file."""
    import re

    from lstm_fn.training.evaluate import evaluate

    result = invoke("pretrain", short_corpus, *TINY, "--steps", "6", "--eval-every", "2",
                    "--lr", "1.0", "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert not metrics(tmp_path / "run")[-1]["best"]  # the last model is not the best
    shown = re.search(r"test split \(best model\): ([\d.]+) nats/char", result.stderr)
    params, cfg, vocab = lstm_fn.load_weights(tmp_path / "m.json")
    _, _, test_ids = split(vocab.encode(SHORT_TEXT))
    assert float(shown.group(1)) == pytest.approx(evaluate(params, cfg, test_ids, 1, 16),
                                                  abs=1e-4)


def test_without_held_out_splits_the_training_loss_is_named_as_such(tmp_path, short_corpus):
    """A validation split of one character (0.0006 of the text) predicts nothing: it counts
    as empty, as a test split of none does."""
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--eval-every", "2",
                    "--val-fraction", "0.0006", "--test-fraction", "0",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert "splits 1,799/1/0" in result.stderr
    assert "the validation split is empty" in result.stderr
    assert "val (no validation split: the training loss)" in result.stderr
    assert "no test split (test fraction 0)" in result.stderr
    [record] = metrics(tmp_path / "run")
    assert record["val_loss"] == record["train_loss"]


def test_each_evaluation_reports_the_mean_training_loss_since_the_one_before(tmp_path,
                                                                             short_corpus,
                                                                             monkeypatch):
    """metrics.jsonl's train_loss is the mean of the steps' losses since the previous
    evaluation (not of the whole run, nor the last step's), and val_bpc is val_loss in bits."""
    from lstm_fn.cli import console
    from lstm_fn.cli.console import Progress

    shown = {}  # the loss of each step, as the progress line gets it

    class Recording(Progress):
        def show(self, step, loss, *args, **kwargs):
            shown[step] = loss
            return super().show(step, loss, *args, **kwargs)

    monkeypatch.setattr(console, "Progress", Recording)
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "4", "--eval-every", "2",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    records = metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [2, 4] and sorted(shown) == [1, 2, 3, 4]
    assert [r["train_loss"] for r in records] == pytest.approx(
        [np.mean([shown[1], shown[2]]), np.mean([shown[3], shown[4]])], rel=1e-12)
    assert shown[1] != shown[3]  # else the means could not tell the intervals apart
    for record in records:
        assert record["val_bpc"] == pytest.approx(record["val_loss"] / np.log(2), rel=1e-12)


def test_minutes_stop_the_run_after_that_many_minutes(tmp_path, short_corpus, monkeypatch):
    """--minutes is a budget in minutes of the run's own clock: with a clock that moves one
    second each time the loop reads it, --minutes 0.5 stops after some steps, not at once."""
    import itertools
    import types

    from lstm_fn.training import loop

    ticks = itertools.count(0.0, 1.0)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: next(ticks),
                                                           strftime=time.strftime))
    result = invoke("pretrain", short_corpus, *TINY, "--minutes", "0.5", "--eval-every", "1000",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert "time budget of 0.5 minutes reached" in result.stderr
    assert 2 <= last_checkpoint(tmp_path / "run") < 30
