"""Resuming a run through the real commands: from another folder, with another --out, for
fine-tune without --from, after its corpus moved, after a stopping rule; and what a resume
may not change."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import lstm_fn
from conftest import (SHORT_TEXT, TINY, assert_refused, assert_same_model, invoke,
                      last_checkpoint, listing, metrics, two_step_run)


@pytest.mark.parametrize("option, needles", [
    (["--hidden-size", "16"], ["--resume: --hidden-size is 32 in the run", "16"]),
    (["--cell", "gru"], ["--cell is 'lstm' in the run", "'gru'"]),
    (["--lr", "0.1"], ["--lr is 0.002 in the run", "0.1"]),
    (["--batch-size", "8"], ["--batch-size is 4 in the run", "8"]),
])
def test_resume_with_another_shape_names_the_field(finished_run, short_corpus, option, needles):
    before = listing(finished_run)
    result = invoke("pretrain", short_corpus, "--resume", "--run-dir", finished_run / "run",
                    "--out", finished_run / "model.json", "--steps", "4", *option)
    assert_refused(result, *needles)
    assert listing(finished_run) == before


def test_resume_from_another_folder_keeps_the_runs_corpus_and_out(tmp_path, short_corpus,
                                                                  monkeypatch):
    """config.json keeps absolute paths; --out defaults to the run's own on a resume, and a
    new --out starts as a copy of the run's own best model (RUN_DIR/model.json), never of
    whatever file is at the old --out."""
    (tmp_path / "tiny.txt").write_bytes(short_corpus.read_bytes())
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    first = invoke("pretrain", "tiny.txt", *TINY, "--steps", "2", "--eval-every", "2",
                   "--run-dir", "run", "--out", "best.json")
    assert first.exit_code == 0, first.output
    monkeypatch.chdir(tmp_path / "sub")
    again = invoke("pretrain", "../tiny.txt", "--resume", "--run-dir", "../run", "--steps", "4")
    assert again.exit_code == 0, again.output
    assert f"copied to {tmp_path / 'best.json'}" in again.stdout
    assert_same_model(tmp_path / "best.json", tmp_path / "run" / "model.json")
    assert not (tmp_path / "sub" / "model.json").exists()
    # another run's model now sits at the old --out: a resume with a new --out ignores it
    lstm_fn.save_weights(tmp_path / "best.json", *lstm_fn.load_weights(tmp_path / "best.json"))
    moved = invoke("pretrain", "--resume", "--run-dir", "../run", "--steps", "4",
                   "--out", "elsewhere.json")  # no step left: the run's best is copied
    assert moved.exit_code == 0, moved.output
    assert (tmp_path / "sub" / "elsewhere.json").read_bytes() == \
        (tmp_path / "run" / "model.json").read_bytes()
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["out"] == str(tmp_path / "sub" / "elsewhere.json")
    assert recorded["train"]["steps"] == 4  # a later plain --resume keeps what was given
    (tmp_path / "other.txt").write_text(SHORT_TEXT.upper(), encoding="utf-8")
    assert_refused(invoke("pretrain", "../other.txt", "--resume", "--run-dir", "../run",
                          "--steps", "6"), "the run trains on")


def test_fine_tune_resumes_without_from_and_refuses_another_base(tmp_path, short_corpus,
                                                                 model_file):
    run = ["--run-dir", tmp_path / "run", "--steps", "2", "--eval-every", "2",
           "--batch-size", "4", "--seq-len", "16", "--sample-every", "0"]
    result = invoke("fine-tune", short_corpus, "--from", model_file, "--out", tmp_path / "t.json",
                    *run)
    assert result.exit_code == 0, result.output
    result = invoke("fine-tune", "--resume", *run[:2], "--steps", "4")
    assert result.exit_code == 0 and str(tmp_path / "t.json") in result.stdout, result.output
    vocab = lstm_fn.Vocab.from_text(SHORT_TEXT)
    other = lstm_fn.ModelConfig("gru", len(vocab), embed_size=8, hidden_size=16, num_layers=1)
    lstm_fn.save_weights(tmp_path / "gru.json", lstm_fn.init(jax.random.key(0), other), other,
                         vocab)
    assert_refused(invoke("fine-tune", "--resume", *run[:2], "--steps", "6", "--from",
                          tmp_path / "gru.json"), "the run fine-tunes", "leave out --from")
    assert_refused(invoke("pretrain", "--resume", *run[:2], "--steps", "6"),
                   "is a fine-tune run", "lstm-fn fine-tune --resume --run-dir")
    assert_refused(invoke("fine-tune", short_corpus, "--steps", "2"), "--from")
    # the base model may go away once the run has a checkpoint, but not be replaced
    base = tmp_path / "base.json"
    base.write_bytes(model_file.read_bytes())
    run2 = ["--run-dir", tmp_path / "run2", *run[2:]]
    assert invoke("fine-tune", short_corpus, "--from", base, "--out", tmp_path / "t2.json",
                  *run2).exit_code == 0
    params, cfg, vocab = lstm_fn.load_weights(model_file)  # same shapes, one symbol differs
    lstm_fn.save_weights(base, params, cfg, lstm_fn.Vocab.from_symbols(
        [*vocab.symbols[:-1], "~"], "chars"))
    assert_refused(invoke("fine-tune", "--resume", *run2[:2], "--steps", "4"),
                   "not the model this run fine-tunes")
    base.write_bytes((tmp_path / "gru.json").read_bytes())
    assert_refused(invoke("fine-tune", "--resume", *run2[:2], "--steps", "4"),
                   "not the model this run fine-tunes")
    base.unlink()
    result = invoke("fine-tune", "--resume", *run2[:2], "--steps", "4")
    assert result.exit_code == 0 and "resumed from checkpoint 2" in result.stderr, result.output


def test_an_older_fine_tune_resumes_given_its_base_by_a_relative_path(tmp_path, short_corpus,
                                                                     model_file, monkeypatch):
    """A fine-tune whose config.json predates its "command" key is still a fine-tune, and
    --from may name the recorded base by a relative path."""
    shutil.copy(model_file, tmp_path / "base.json")
    monkeypatch.chdir(tmp_path)
    run = ["--run-dir", "run", "--eval-every", "2", "--batch-size", "4", "--seq-len", "16",
           "--sample-every", "0"]
    result = invoke("fine-tune", short_corpus, "--from", "base.json", "--steps", "2", *run,
                    "--out", "t.json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    del record["command"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    result = invoke("fine-tune", "--resume", *run, "--from", "base.json", "--steps", "4")
    assert result.exit_code == 0 and "resumed from checkpoint 2" in result.stderr, result.output


def test_resume_accepts_the_runs_own_settings_and_keeps_an_existing_new_out(tmp_path,
                                                                            short_corpus,
                                                                            model_file):
    """Giving a resume the settings the run already has (a repeatable one too) is no change;
    a new --out that holds the only copy of another model is not overwritten."""
    run = ["--run-dir", tmp_path / "run", "--eval-every", "2"]
    first = invoke("pretrain", short_corpus, *TINY, "--freeze", "embed", "--steps", "2", *run,
                   "--out", tmp_path / "m.json")
    assert first.exit_code == 0, first.output
    other = tmp_path / "other.json"
    shutil.copy(model_file, other)
    again = invoke("pretrain", short_corpus, *TINY, "--freeze", "embed", "--resume", *run,
                   "--steps", "2", "--out", other)
    assert_refused(again, "holds the only copy of a model", "--replace-out")
    assert other.read_bytes() == model_file.read_bytes()
    same = invoke("pretrain", short_corpus, *TINY, "--freeze", "embed", "--resume", *run,
                  "--steps", "2")
    assert same.exit_code == 0, same.output


def test_resume_without_a_run_is_refused(tmp_path, short_corpus):
    result = invoke("pretrain", short_corpus, "--resume", "--run-dir", tmp_path / "run",
                    "--steps", "4")
    assert_refused(result, "holds no run")
    assert_refused(invoke("pretrain", short_corpus, "--resume"), "--resume needs --run-dir")


def test_resume_refuses_another_command_and_an_edited_corpus(tmp_path, short_corpus):
    corpus = tmp_path / "c.txt"
    corpus.write_text(SHORT_TEXT, encoding="utf-8")
    run = two_step_run(tmp_path, corpus)
    assert_refused(invoke("fine-tune", "--resume", *run, "--steps", "4"),
                   "is a pretrain run", "lstm-fn pretrain --resume")
    corpus.write_text(SHORT_TEXT.replace("cat", "cow"), encoding="utf-8")
    assert_refused(invoke("pretrain", "--resume", *run, "--steps", "4"),
                   "changed since the run started", "start a new run")
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    record.update(corpus=None, corpus_sha256="0" * 64)  # a run on the built-in corpus
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    assert_refused(invoke("pretrain", corpus, "--resume", *run, "--steps", "4"),
                   "the run trains on the built-in corpus, not")


def test_a_run_recorded_before_a_setting_existed_resumes(tmp_path, short_corpus):
    """config.json of an older version lacks newer train keys: they take their defaults;
    its corpus path, recorded relative to the folder it ran in, is the given corpus."""
    run = two_step_run(tmp_path, short_corpus)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("eval_chars", "command", "corpus_sha256"):
        record.get("train", {}).pop(key, None)
        record.pop(key, None)
    record["corpus"] = short_corpus.name
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    result = invoke("pretrain", short_corpus, "--resume", *run, "--steps", "4")
    assert result.exit_code == 0 and "resumed from checkpoint 2" in result.stderr, result.output


def test_resume_follows_a_moved_corpus_with_the_same_text(tmp_path, short_corpus):
    corpus = tmp_path / "c.txt"
    corpus.write_text(SHORT_TEXT, encoding="utf-8")
    run = two_step_run(tmp_path, corpus)
    moved = corpus.rename(tmp_path / "moved.txt")
    assert_refused(invoke("pretrain", "--resume", *run, "--steps", "4"),
                   f"the run's corpus {str(corpus)!r} is gone", "pass its new path as CORPUS")
    assert_refused(invoke("pretrain", short_corpus.parent / "nope.txt", "--resume", *run),
                   "not found")
    result = invoke("pretrain", moved, "--resume", *run, "--steps", "4")
    assert result.exit_code == 0 and "resumed from checkpoint 2" in result.stderr, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["corpus"] == str(moved)


def test_a_run_stopped_by_its_limit_resumes_as_if_never_stopped(tmp_path, short_corpus):
    """The evaluation after a run's last step is off the eval schedule: it may save a better
    model but must not feed plateau / early stopping or restart the running train loss, so a
    resume with a larger --steps goes on exactly as a run given that limit at first."""
    common = [short_corpus, *TINY, "--eval-every", "5", "--schedule", "plateau",
              "--plateau-patience", "1", "--lr", "0.05"]
    assert invoke("pretrain", *common, "--steps", "12", "--run-dir", tmp_path / "whole",
                  "--out", tmp_path / "whole.json").exit_code == 0
    assert invoke("pretrain", *common, "--steps", "8", "--run-dir", tmp_path / "parts",
                  "--out", tmp_path / "parts.json").exit_code == 0
    result = invoke("pretrain", "--resume", "--run-dir", tmp_path / "parts", "--steps", "12")
    assert result.exit_code == 0, result.output
    whole, parts = metrics(tmp_path / "whole"), metrics(tmp_path / "parts")
    assert [r["step"] for r in whole] == [5, 10, 12]
    assert [r["step"] for r in parts] == [5, 8, 10, 12]
    keys = ("train_loss", "val_loss", "lr", "best")
    for a, b in zip(whole, [parts[0], *parts[2:]]):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    for record in whole:  # update steps only: at least the rate over the whole interval
        assert record["chars_per_sec"] > 0
    again = invoke("pretrain", "--resume", "--run-dir", tmp_path / "parts", "--steps", "12")
    assert again.exit_code == 0 and len(metrics(tmp_path / "parts")) == 4  # nothing to do


def test_a_run_that_stopped_early_stays_stopped_on_resume(tmp_path, short_corpus):
    run = ["--run-dir", tmp_path / "run", "--out", tmp_path / "m.json"]
    first = invoke("pretrain", short_corpus, *TINY, "--lr", "1e-12", "--steps", "20",
                   "--eval-every", "2", "--patience", "1", *run)  # nothing moves: no gain
    assert first.exit_code == 0 and "stopping early" in first.stderr, first.output
    before = listing(tmp_path / "run")
    again = invoke("pretrain", "--resume", *run)
    assert again.exit_code == 0 and "stopping early" in again.stderr, again.output
    assert "step 6" not in again.stderr
    # an equal loss is no improvement: the model of the first evaluation stays at --out
    assert [(r["step"], r["best"]) for r in metrics(tmp_path / "run")] == [(2, True), (4, False)]
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    # and its checkpoint is not written again (the run's seconds would change)
    after = listing(tmp_path / "run")
    assert {k: v for k, v in after.items() if k.startswith("checkpoints")} == \
        {k: v for k, v in before.items() if k.startswith("checkpoints")}


def test_a_resumed_run_compiles_its_step_once(tmp_path, short_corpus, caplog):
    """The plateau scale set at an evaluation keeps the restored state's placement (a fresh
    array made jit compile the step a second time after the first evaluation)."""
    run = two_step_run(tmp_path, short_corpus)
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        result = invoke("pretrain", "--resume", *run, "--steps", "6")
    assert result.exit_code == 0, result.output
    compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(step) ")]
    assert len(compiles) <= 1, [r.getMessage()[:80] for r in compiles]


def test_a_finished_run_resumed_without_limits_keeps_its_own(tmp_path, short_corpus):
    """`--resume` alone continues under the run's recorded --steps, not the default 5,000."""
    run = two_step_run(tmp_path, short_corpus)
    result = invoke("pretrain", "--resume", *run[:2])
    assert result.exit_code == 0, result.output
    assert last_checkpoint(tmp_path / "run") == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"] == 2


def test_a_resumed_run_keeps_its_clock_and_the_score_of_the_model_at_out(tmp_path, short_corpus):
    """A checkpoint's ``seconds`` and ``saved_best`` carry on: the resumed run's metrics count
    the time before the resume, and a model is written to --out only when it beats the one
    there (whose score may come from the evaluation after a run's last step, which the
    tracker's best leaves out). Both are set in the checkpoint to values no run reaches."""
    run = two_step_run(tmp_path, short_corpus)
    best = (tmp_path / "m.json").read_bytes()
    meta_file = tmp_path / "run" / "checkpoints" / "00000002" / "meta" / "metadata"
    document = json.loads(meta_file.read_text())
    assert document["meta"]["saved_best"] == document["meta"]["tracker"]["best"]
    document["meta"].update(seconds=1000.0, saved_best=0.0)
    meta_file.write_text(json.dumps(document))
    result = invoke("pretrain", "--resume", *run, "--steps", "4")
    assert result.exit_code == 0 and "resumed from checkpoint 2" in result.stderr, result.output
    first, second = metrics(tmp_path / "run")
    assert first["seconds"] < 1000 <= second["seconds"]
    assert not second["best"] and (tmp_path / "m.json").read_bytes() == best


FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"


def test_a_run_written_by_release_0_1_0_resumes_exactly(tmp_path, monkeypatch):
    """The run directory of the fixture was written by lstm_fn 0.1.0 (its checkpoint holds
    a state dict of that release, its record has no sources). Resumed to step 5, it matches
    a run of today's code that was never stopped, bit for bit, started as 0.1.0 started its
    runs (a zero head bias, where today's start at the characters' log frequencies)."""
    monkeypatch.setattr("lstm_fn.runs.run.log_frequencies",
                        lambda ids, vocab_size: np.zeros(vocab_size, np.float32))
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    record = old / "run" / "config.json"
    record.write_text(record.read_text().replace("/tmp/lstm_fn-0.1.0-run", str(old)))
    options = ["--cell", "gru", "--embed-size", "4", "--hidden-size", "8", "--layers", "1",
               "--batch-size", "4", "--seq-len", "16", "--sample-every", "0",
               "--eval-every", "2", "--checkpoint-every", "2", "--steps", "5",
               # 0.1.0's defaults
               "--schedule", "constant", "--warmup-steps", "0", "--matmul-precision", "float32"]
    resumed = invoke("pretrain", "--resume", "--run-dir", old / "run", "--steps", "5")
    assert resumed.exit_code == 0 and "resumed from checkpoint 3" in resumed.stderr, \
        resumed.output
    fresh = invoke("pretrain", old / "corpus.txt", *options, "--run-dir", tmp_path / "new",
                   "--out", tmp_path / "new.json")
    assert fresh.exit_code == 0, fresh.output
    late = [{k: row[k] for k in ("step", "train_loss", "val_loss")}
            for row in metrics(old / "run") if row["step"] > 3]
    assert late == [{k: row[k] for k in ("step", "train_loss", "val_loss")}
                    for row in metrics(tmp_path / "new") if row["step"] > 3]
    assert_same_model(old / "run" / "model.json", tmp_path / "new.json")
