"""A run owns its outputs: its best model lives in its run directory with where it came
from, --out is a copy that never replaces the only copy of another model, commands read a
run directory or a checkpoint, `lstm-fn runs` lists the runs, and the log is kept."""

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import lstm_fn
from lstm_fn.nn.config import ModelConfig
from reference_numpy import spec
from reference_numpy.weights import WeightsError, read_weights_file
from conftest import SHORT_TEXT, TINY, assert_refused, invoke, metrics

STEPS = ["--steps", "4", "--eval-every", "2", "--checkpoint-every", "2"]


def train(corpus, run_dir, *extra):
    result = invoke("pretrain", corpus, *TINY, *STEPS, "--run-dir", run_dir, *extra)
    assert result.exit_code == 0, result.output
    return result


def test_the_best_model_lives_in_the_run_directory_and_says_where_it_came_from(
        tmp_path, short_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train(short_corpus, "run")
    best = read_weights_file(tmp_path / "run" / "model.json")
    assert not (tmp_path / "model.json").exists()  # no copy was asked for
    provenance = best.provenance
    assert provenance["run_dir"] == str(tmp_path / "run") and provenance["step"] == 4
    assert provenance["val_loss"] == metrics(tmp_path / "run")[-1]["val_loss"]
    assert provenance["corpus_sha256"] == json.loads(
        (tmp_path / "run" / "config.json").read_text())["corpus_sha256"]
    assert "pretrain" in provenance["command"] and "--steps 4" in provenance["command"]
    assert json.loads((tmp_path / "run" / "model.json").read_text())["version"] == 2
    assert result.stdout.splitlines() == [
        f"best model: run/model.json (validation {provenance['val_loss']:.4f} nats/char)",
        "loss plot: run/loss.png", "sample from it: lstm-fn sample --from run"]
    info = invoke("info", "run").stdout
    assert "run directory: " + str(tmp_path / "run") in info and "step: 4" in info
    assert f"validation loss: {provenance['val_loss']:.4f} nats/char" in info


def test_version_1_files_load_and_an_older_reader_refuses_version_2(tmp_path, short_corpus,
                                                                      monkeypatch):
    fixture = Path(__file__).parent / "fixtures" / "run-0.1.0" / "model.json"
    assert json.loads(fixture.read_text())["version"] == 1
    assert lstm_fn.load_weights(fixture)[1].cell == "gru"
    assert invoke("info", fixture).exit_code == 0
    cfg = ModelConfig("rnn", 5, embed_size=2, hidden_size=3, num_layers=1)
    lstm_fn.save_weights(tmp_path / "plain.json", lstm_fn.init(jax.random.key(0), cfg), cfg,
                         "abcde")  # no provenance: version 1, which every reader reads
    assert json.loads((tmp_path / "plain.json").read_text())["version"] == 1
    train(short_corpus, tmp_path / "run")
    monkeypatch.setattr(spec, "VERSION", 1)  # the reader of lstm_fn 0.1.0
    with pytest.raises(WeightsError, match="version 2 is newer than this reader supports"):
        lstm_fn.load_weights(tmp_path / "run" / "model.json")


def test_the_main_command_twice_in_one_folder_keeps_both_models(tmp_path, short_corpus,
                                                               monkeypatch):
    """Two runs with the same --out: the second replaces the copy (saying so; the first
    run keeps its model), `lstm-fn runs` lists both, and each samples from its run."""
    monkeypatch.chdir(tmp_path)
    train(short_corpus, "runs/a", "--out", "model.json")
    second = train(short_corpus, "runs/b", "--out", "model.json", "--hidden-size", "16")
    assert "replacing a copy of the model of run " + repr(str(tmp_path / "runs" / "a")) in \
        second.stderr
    assert read_weights_file("model.json").provenance["run_dir"] == str(tmp_path / "runs/b")
    listed = json.loads(invoke("runs", "--json").stdout)
    assert [(run["name"], run["status"], run["steps"]) for run in listed] == [
        ("a", "finished", 4), ("b", "finished", 4)]
    assert listed[0]["model"] == str(Path("runs") / "a" / "model.json")
    table = invoke("runs").stdout.splitlines()
    assert table[0].split()[:4] == ["name", "command", "status", "steps"] and len(table) == 3
    for name in ("a", "b"):
        result = invoke("sample", "--from", f"runs/{name}", "--length", "20", "--seed", "1")
        assert result.exit_code == 0 and len(result.stdout) == 1 + 20 + 1, result.output


def test_an_out_holding_the_only_copy_of_a_model_is_refused(tmp_path, short_corpus, model_file):
    """A weights file that says nothing of its run, or whose run has lost its model, is the
    only copy of that model: refused before training, naming the option that allows it."""
    out = tmp_path / "precious.json"
    shutil.copy(model_file, out)
    before = out.read_bytes()
    refused = invoke("pretrain", short_corpus, *TINY, *STEPS, "--run-dir", tmp_path / "r1",
                     "--out", out)
    assert_refused(refused, "holds the only copy of a model that does not say which run",
                   "--replace-out")
    assert out.read_bytes() == before and not (tmp_path / "r1").exists()
    train(short_corpus, tmp_path / "r1", "--out", out, "--replace-out")
    assert read_weights_file(out).provenance["run_dir"] == str(tmp_path / "r1")
    (tmp_path / "r1" / "model.json").unlink()  # now out is the only copy of r1's model
    assert_refused(invoke("pretrain", short_corpus, *TINY, *STEPS, "--run-dir",
                          tmp_path / "r2", "--out", out),
                   f"only copy of the model of run {str(tmp_path / 'r1')!r} (step 4)")
    assert_refused(invoke("pretrain", short_corpus, *TINY, *STEPS, "--run-dir",
                          tmp_path / "r3", "--out", tmp_path / "r1" / "config.json"),
                   "is not a lstm_fn weights file")


def test_the_test_split_is_scored_from_the_runs_own_model(tmp_path, short_corpus,
                                                          monkeypatch):
    """Whatever happens to --out (here another run's model lands there after each copy), the
    run scores its test split with its own best model."""
    from lstm_fn.runs.recorder import Recorder
    from lstm_fn.training.evaluate import evaluate

    other = tmp_path / "other.json"
    cfg = ModelConfig("lstm", 15, embed_size=8, hidden_size=32, num_layers=2)
    lstm_fn.save_weights(other, lstm_fn.init(jax.random.key(9), cfg), cfg,
                         lstm_fn.Vocab.from_text(SHORT_TEXT))
    copy_best = Recorder.copy_best
    monkeypatch.setattr(Recorder, "copy_best", lambda self, best: (
        copy_best(self, best), shutil.copy(other, self.copies[0])))
    result = train(short_corpus, tmp_path / "run", "--out", tmp_path / "out.json")
    shown = float(result.stderr.split("test split (best model): ")[1].split()[0])
    params, cfg, vocab = lstm_fn.load_weights(tmp_path / "run" / "model.json")
    test_ids = vocab.encode(SHORT_TEXT)[round(0.95 * len(SHORT_TEXT)):]
    assert shown == pytest.approx(evaluate(params, cfg, test_ids, 1, 16), abs=1e-4)


def test_commands_read_a_run_directory_or_one_of_its_checkpoints(tmp_path, short_corpus):
    run = tmp_path / "run"
    train(short_corpus, run, "--keep-checkpoints", "3", "--warmup-steps", "0")  # step 2 differs
    best = invoke("sample", "--from", run, "--length", "30", "--seed", "3").stdout
    assert best == invoke("sample", "--from", run / "model.json", "--length", "30",
                          "--seed", "3").stdout
    at_2 = invoke("sample", "--from", run, "--step", "2", "--length", "30", "--seed", "3")
    assert at_2.exit_code == 0 and at_2.stdout != best, at_2.output
    folder = invoke("sample", "--from", run / "checkpoints" / "00000002", "--length", "30",
                    "--seed", "3")
    assert folder.stdout == at_2.stdout
    info = invoke("info", run, "--step", "2").stdout
    assert "step: 2" in info and f"validation loss: {metrics(run)[0]['val_loss']:.4f}" in info
    evaluated = invoke("eval", short_corpus, "--from", run, "--step", "4")
    assert evaluated.exit_code == 0 and "nats/char" in evaluated.stdout
    assert_refused(invoke("sample", "--from", run, "--step", "3"), "no checkpoint 3",
                   "its checkpoints: 2, 4")
    assert_refused(invoke("sample", "--from", run / "model.json", "--step", "2"),
                   "--step 2 needs a run directory")
    assert_refused(invoke("info", tmp_path), "is a folder, but not a run directory")
    (run / "model.json").unlink()
    assert_refused(invoke("info", run), "has no best model yet", "pass --step N")


def test_the_runs_log_is_kept_without_terminal_controls(tmp_path, short_corpus):
    result = invoke("pretrain", short_corpus, *TINY, *STEPS, "--sample-every", "2",
                    "--sample-length", "20", "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    log = (tmp_path / "run" / "train.log").read_text()
    for line in ("run directory: ", "step 2: train ", "--- sample at step 2 ---",
                 "test split (best model): ", "best model: ", "sample from it: "):
        assert line in log, line
    assert "step 1/4 | loss" in log  # the first progress line (then one a minute)
    assert "\r" not in log and "\x1b" not in log


def test_runs_lists_what_each_run_became(tmp_path, short_corpus, finished_run):
    runs = tmp_path / "runs"
    train(short_corpus, runs / "done")
    early = invoke("pretrain", short_corpus, *TINY, "--steps", "40", "--eval-every", "1",
                   "--lr", "1.0", "--patience", "1", "--run-dir", runs / "early")
    assert early.exit_code == 0 and "stopping early" in early.stderr, early.output
    shutil.copytree(runs / "done", runs / "killed")
    (runs / "killed" / "end.json").unlink()  # as a kill -9 leaves it
    (runs / "notes").mkdir()  # not a run: left out
    listed = {run["name"]: run for run in json.loads(invoke("runs", runs, "--json").stdout)}
    assert sorted(listed) == ["done", "early", "killed"]
    assert (listed["done"]["status"], listed["done"]["best_val"]) == (
        "finished", min(r["val_loss"] for r in metrics(runs / "done")))
    assert (listed["early"]["status"], listed["early"]["why"]) == ("stopped", "early stop")
    assert listed["killed"]["status"] == "incomplete"
    assert listed["done"]["corpus"] == short_corpus.name
    (tmp_path / "empty").mkdir()
    assert invoke("runs", tmp_path / "empty").stdout == f"no runs in {tmp_path / 'empty'}\n"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused_by_name(tmp_path, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    assert_refused(invoke("pretrain", device, "--steps", "1", "--run-dir", tmp_path / "run"),
                   f"corpus path {device!r} is a character device")


def test_a_pipe_is_read_as_a_corpus_up_to_a_bound(tmp_path, monkeypatch):
    import threading

    from lstm_fn.text import corpus

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write(text: str):
        with open(fifo, "w", encoding="utf-8") as f:
            f.write(text)

    writer = threading.Thread(target=write, args=(SHORT_TEXT,))
    writer.start()
    assert corpus.load_corpus(str(fifo)).text == SHORT_TEXT
    writer.join()
    monkeypatch.setattr(corpus, "MAX_PIPE_BYTES", 100)
    monkeypatch.setattr(corpus, "PIPE_CHUNK", 64)
    writer = threading.Thread(target=write, args=(SHORT_TEXT,))
    writer.start()
    with pytest.raises(lstm_fn.CorpusError, match="is a pipe that gave more than 100 bytes"):
        corpus.load_corpus(str(fifo))
    writer.join(10)


def test_a_full_disk_while_the_best_model_is_written_names_it_and_the_way_back(
        tmp_path, short_corpus, monkeypatch):
    import errno

    from lstm_fn.training import loop

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(loop, "save_weights", full)
    result = invoke("pretrain", short_corpus, *TINY, *STEPS, "--run-dir", tmp_path / "run")
    assert_refused(result, f"cannot write the best model {str(tmp_path / 'run' / 'model.json')!r}"
                   " (No space left on device)", "lstm-fn pretrain --resume --run-dir")


def test_fine_tune_lists_forty_new_characters_and_counts_the_rest(tmp_path, model_file):
    new = "".join(chr(c) for c in range(0x3b1, 0x3b1 + 45))  # 45 Greek letters
    corpus = tmp_path / "greek.txt"
    corpus.write_text((SHORT_TEXT + new) * 3, encoding="utf-8")
    result = invoke("fine-tune", corpus, "--from", model_file, *STEPS[:2], "--batch-size", "4",
                    "--seq-len", "16", "--sample-every", "0", "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "added 45 new character(s): " in result.stderr and " and 5 more" in result.stderr


def test_many_samples_show_their_progress(model_file, monkeypatch):
    import itertools

    from lstm_fn.cli import console

    ticks = itertools.count(0.0, 20.0)  # every reading of the clock: 20 s later
    monkeypatch.setattr(console.time, "monotonic", lambda: next(ticks))
    result = invoke("sample", "--from", model_file, "--length", "300", "--num-samples", "3",
                    "--seed", "0")
    assert result.exit_code == 0, result.output
    assert "sampled 768/900 characters (85%)" in result.stderr
    assert result.stdout.count("--- sample ") == 3
