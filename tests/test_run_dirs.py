"""Run directories and their inputs stay intact: refusals that leave a run directory
usable, an --out that would overwrite an input, a config.json the run did not write, a
damaged run record on --resume, file names that are not UTF-8, and the lock that keeps a
second process out."""

import json
import os
import shutil

import pytest

from conftest import SHORT_TEXT, TINY, assert_refused, invoke, listing, two_step_run
from lstm_fn.runs.lock import RunDirLock


def test_a_refused_option_leaves_the_run_directory_usable(tmp_path, short_corpus):
    """Checks that need the model or the corpus (a frozen layer it lacks, a batch longer
    than the text) come before anything is written, and a run that wrote only its config
    can be started again."""
    run = ["--run-dir", tmp_path / "run", "--out", tmp_path / "m.json"]
    assert_refused(invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--freeze", "5", *run),
                   "--freeze names layer 5")
    assert_refused(invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--batch-size",
                          "1000", *run), "one batch needs")
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    record = {"corpus": None, "model": {}, "train": {}, "vocab": [], "encoding": "chars"}
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))  # killed before progress
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--eval-every", "2", *run)
    assert result.exit_code == 0, result.output


def test_out_never_overwrites_an_input_or_names_a_folder(tmp_path, short_corpus, model_file):
    victim = tmp_path / "victim.txt"
    victim.write_text(SHORT_TEXT, encoding="utf-8")
    assert_refused(invoke("pretrain", victim, *TINY, "--steps", "2", "--run-dir",
                          tmp_path / "r1", "--out", victim), "is the corpus")
    assert victim.read_text(encoding="utf-8") == SHORT_TEXT
    before = model_file.read_bytes()
    assert_refused(invoke("fine-tune", short_corpus, "--from", model_file, "--steps", "2",
                          "--run-dir", tmp_path / "r2", "--out", model_file), "base model")
    assert model_file.read_bytes() == before
    assert_refused(invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--run-dir",
                          tmp_path / "r3", "--out", str(tmp_path / "newdir") + "/"), "folder")
    config = tmp_path / "c.json"
    config.write_text('{"train": {"steps": 2}}')
    assert_refused(invoke("pretrain", short_corpus, *TINY, "--config", config, "--run-dir",
                          tmp_path / "r4", "--out", config), "the --config file")
    assert_refused(invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--run-dir",
                          tmp_path / "r5", "--out", tmp_path / "r5" / "metrics.jsonl"),
                   "metrics.jsonl")
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("content, needle", [
    ("", "Expecting value"), ('{"corpus": "x", "model": {', "Expecting"), ("[1]", "a JSON list"),
    ("{}", "no corpus, model, train, vocab, encoding"), (b"\xff\xfe", "UTF-16 byte order mark"),
    ('{"corpus": null, "model": {}, "train": {}, "vocab": 5, "encoding": "chars"}', "type"),
    ('{"corpus": null, "model": {}, "train": {"knob": 1}, "vocab": [], "encoding": "chars"}',
     "train.knob, which this version of lstm_fn does not know"),
])
def test_resume_names_a_config_json_that_is_not_a_run_record(finished_run, short_corpus,
                                                               tmp_path, content, needle):
    shutil.copytree(finished_run / "run", tmp_path / "run")
    config = tmp_path / "run" / "config.json"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = listing(tmp_path)
    result = invoke("pretrain", "--resume", "--run-dir", tmp_path / "run", "--steps", "4")
    assert_refused(result, "config.json", *(("is not a lstm_fn run record",) if "knob" not in
                                            str(content) else ()), needle)
    assert listing(tmp_path) == before


def test_a_run_never_overwrites_a_config_json_or_corpus_it_did_not_write(tmp_path, short_corpus):
    folder = tmp_path / "exp"
    folder.mkdir()
    config = folder / "config.json"
    config.write_text('{"model": {"cell": "gru"}, "train": {"steps": 2}}')
    before = listing(tmp_path)
    run = ["--run-dir", folder, "--out", tmp_path / "m.json"]
    assert_refused(invoke("pretrain", short_corpus, *TINY, "--config", config, *run),
                   "is not a lstm_fn run record", "would overwrite it")
    assert_refused(invoke("pretrain", short_corpus, *TINY, "--steps", "2", *run),
                   "is not a lstm_fn run record", "would overwrite it")
    assert listing(tmp_path) == before
    record = {"corpus": None, "model": {}, "train": {}, "vocab": [], "encoding": "bytes"}
    config.write_text(json.dumps(record))  # a run's own record, of a run killed before progress
    assert_refused(invoke("pretrain", config, *TINY, "--steps", "2", *run, "--vocab", "bytes"),
                   "the corpus", "is the run's config.json")
    assert json.loads(config.read_text()) == record


def test_a_file_name_that_is_not_utf8_is_recorded_and_resumed(tmp_path):
    corpus = tmp_path / os.fsdecode(b"lat\xe9.txt")
    corpus.write_text(SHORT_TEXT, encoding="utf-8")
    run = two_step_run(tmp_path, corpus)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["corpus"] == str(corpus)
    result = invoke("pretrain", "--resume", *run, "--steps", "4")
    assert result.exit_code == 0 and "resumed from checkpoint 2" in result.stderr, result.output


def test_a_corpus_name_that_is_not_utf8_gives_a_run_directory_checkpoints_can_use(tmp_path):
    """The default run directory is named after the corpus: from "lat\\xe9.txt" (Latin-1)
    it was not UTF-8, and orbax failed at the first checkpoint with a traceback after
    training had started. The byte becomes U+FFFD in the name; a --run-dir that is not
    UTF-8 is refused before anything is written."""
    from lstm_fn.cli.options import default_run_dir

    corpus = tmp_path / os.fsdecode(b"lat\xe9.txt")
    corpus.write_text(SHORT_TEXT, encoding="utf-8")
    name = default_run_dir(str(corpus)).name
    assert name.startswith("lat\ufffd-") and name.encode("utf-8")
    run_dir = tmp_path / os.fsdecode(b"run\xfe")
    assert_refused(invoke("pretrain", corpus, *TINY, "--steps", "2", "--run-dir", run_dir,
                          "--out", tmp_path / "m.json"), "is not a UTF-8 path", "--run-dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == [corpus.name]


def test_a_run_directory_in_use_is_refused(tmp_path, short_corpus):
    (tmp_path / "run").mkdir()
    lock = RunDirLock(tmp_path / "run")
    lock.acquire()  # as another process would hold it
    try:
        result = invoke("pretrain", short_corpus, *TINY, "--steps", "2",
                        "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
        assert_refused(result, "is in use by another lstm-fn process")
        assert listing(tmp_path / "run") == {} and not (tmp_path / "m.json").exists()
    finally:
        lock.release()
