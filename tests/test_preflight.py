"""Refusals before training starts (lstm_fn.preflight): an output folder under a file, a
read-only output folder, a full disk, an --out that is not a file; and a disk that fills
during a run. Nothing saved is touched."""
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import lstm_fn

from conftest import TINY, assert_refused, invoke, listing, lstm_fn_command


# the start of a weights file: the only kind of file --out replaces
EARLIER = '{"format": "lstm_fn-weights", "version": 1, "note": "an earlier model"}'


def test_output_folder_under_a_file_is_refused_before_training(corpus, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")
    result = invoke("pretrain", corpus, *TINY, "--steps", "5",
                    "--run-dir", tmp_path / "run", "--out", blocker / "out" / "model.json")
    assert_refused(result, "cannot create the output folder", "not-a-folder")
    assert not (tmp_path / "run").exists() and blocker.read_text() == "a regular file"
    result = invoke("pretrain", corpus, *TINY, "--steps", "5",
                    "--run-dir", blocker / "run", "--out", tmp_path / "o" / "model.json")
    assert_refused(result, "cannot create the output folder", "not-a-folder")
    assert listing(tmp_path / "o") == {}


def test_read_only_output_folder_is_refused_before_training(corpus, tmp_path, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    (folder / "model.json").write_text(EARLIER)
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root writes into read-only folders: let os.access say no
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == folder
                            and mode & os.W_OK else real_access(path, mode, **kw))
    (tmp_path / "link.json").symlink_to(folder / "model.json")  # written where it points
    try:
        for out in (folder / "model.json", tmp_path / "link.json"):
            result = invoke("pretrain", corpus, *TINY, "--steps", "5",
                            "--run-dir", tmp_path / "run", "--out", out)
            assert_refused(result, "cannot write to", "readonly", "permission denied")
            assert listing(folder) == {"model.json": EARLIER.encode()}
            assert not (tmp_path / "run").exists()
    finally:
        folder.chmod(0o700)


def test_full_disk_is_refused_before_training(corpus, tmp_path, monkeypatch):
    out = tmp_path / "model.json"
    out.write_text(EARLIER)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(1 << 30, (1 << 30) - 4096, 4096))
    result = invoke("pretrain", corpus, *TINY, "--steps", "5",
                    "--run-dir", tmp_path / "run", "--out", out)
    assert_refused(result, "not enough disk space", "4 KiB free", "needs about")
    assert out.read_text() == EARLIER
    assert listing(tmp_path / "run") == {}  # no config.json, no checkpoint


def test_out_must_be_a_regular_file_and_not_a_standard_stream(corpus, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = invoke("pretrain", corpus, *TINY, "--steps", "5", "--run-dir", tmp_path / "run",
                    "--out", fifo)
    assert_refused(result, "exists and is not a regular file")
    assert fifo.is_fifo() and not (tmp_path / "run").exists()
    log = tmp_path / "log.txt"
    log.write_text("an earlier line\n")
    with log.open("a") as stdout:  # `lstm-fn ... --out /dev/stdout >> log.txt`
        child = subprocess.run(lstm_fn_command("pretrain", corpus, *TINY, "--steps", "5",
                                               "--run-dir", tmp_path / "run", "--out",
                                               "/dev/stdout"),
                               stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)
    assert child.returncode == 2 and "is this command's standard output" in child.stderr
    assert log.read_text() == "an earlier line\n"


def test_out_replaces_only_a_weights_file(corpus, tmp_path, finished_run):
    """A text, or another run's record, named by mistake as --out is refused, untouched."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    record = finished_run / "run" / "config.json"
    before = record.read_bytes()
    for out, run in ((notes, "r1"), (record, "r2")):
        result = invoke("pretrain", corpus, *TINY, "--steps", "2", "--run-dir", tmp_path / run,
                        "--out", out)
        assert_refused(result, "is not a lstm_fn weights file", out.name)
        assert not (tmp_path / run).exists()
    assert notes.read_text() == "my notes\n" and record.read_bytes() == before
    # a weights file saved by an editor with a byte order mark and a blank line still loads,
    # so it may be replaced
    from lstm_fn.runs.checks import check_out_holds_weights

    edited = tmp_path / "edited.json"
    edited.write_bytes(b"\xef\xbb\xbf\n" + (finished_run / "model.json").read_bytes())
    lstm_fn.load_weights(edited)
    check_out_holds_weights(edited)


def test_room_on_disk_counts_what_the_run_already_holds(corpus, tmp_path, monkeypatch):
    """A resume needs room for what it adds, not for the checkpoints it already has."""
    from lstm_fn.runs import checks as preflight

    (tmp_path / "checkpoints" / "1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "1" / "state").write_bytes(b"x" * (8 << 20))
    cfg = SimpleNamespace(num_params=100_000)  # needs ~7.7 MiB: 4 checkpoints, the JSON, 1 MiB
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20))
    preflight.check_output_room(tmp_path, cfg, 3)  # 1 MiB free + 8 MiB held
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(lstm_fn.RunError, match="1 MiB free, this run needs about 7 MiB more"):
        preflight.check_output_room(tmp_path, cfg, 3)


def test_a_disk_that_fills_during_the_run_is_named_with_the_way_back(corpus, tmp_path,
                                                                      monkeypatch):
    from lstm_fn.training import checkpoint

    real_save, calls = checkpoint.save, []

    def save(manager, step, state, meta):
        calls.append(step)
        if len(calls) > 1:
            raise ValueError("RESOURCE_EXHAUSTED: Error writing \"opt_state\": "
                             "No space left on device [os_error_code='28']")
        real_save(manager, step, state, meta)

    monkeypatch.setattr(checkpoint, "save", save)
    result = invoke("pretrain", corpus, *TINY, "--steps", "4", "--checkpoint-every", "2",
                    "--eval-every", "10", "--run-dir", tmp_path / "run", "--out",
                    tmp_path / "m.json")
    assert_refused(result, "disk full while saving checkpoint 4", "the last complete one: "
                   "checkpoint 2", "lstm-fn pretrain --resume --run-dir")


def test_a_run_directory_lock_that_cannot_be_taken_warns_and_runs(tmp_path, monkeypatch,
                                                                  short_corpus):
    """Some network file systems have no flock: that is not 'in use by another process'."""
    import errno

    from lstm_fn.runs import lock

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_flock)
    run_lock = lock.RunDirLock(tmp_path)
    run_lock.acquire()
    assert run_lock.fd is None and "cannot lock run directory" in run_lock.warning
    run_lock.release()
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "1", "--run-dir",
                    tmp_path / "run", "--out", tmp_path / "m.json")
    assert result.exit_code == 0 and "warning: cannot lock run directory" in result.stderr


def test_a_run_that_started_and_ended_meanwhile_is_seen_once_the_lock_is_held(
        corpus, tmp_path, monkeypatch):
    """Another run may finish (and release the lock) while this one reads its corpus: the
    check for a started run is repeated after the lock is taken."""
    from lstm_fn.runs import checks as preflight

    real_check = preflight.check_output_room

    def other_run_meanwhile(run_dir, cfg, keep):
        real_check(run_dir, cfg, keep)
        (run_dir / "metrics.jsonl").write_text('{"step": 10}\n')

    monkeypatch.setattr(preflight, "check_output_room", other_run_meanwhile)
    result = invoke("pretrain", corpus, *TINY, "--steps", "5", "--run-dir", tmp_path / "run",
                    "--out", tmp_path / "m.json")
    assert_refused(result, "already holds a run")
    assert listing(tmp_path / "run") == {"metrics.jsonl": b'{"step": 10}\n'}


def test_only_this_runs_stale_temp_files_are_removed_and_an_empty_out_is_replaced(tmp_path):
    """The temp files of a killed run's atomic writes (``.NAME.*.tmp``) go; files that only
    look alike stay. An empty --out (``touch model.json``) holds nothing to lose."""
    from lstm_fn.runs import checks as preflight

    (tmp_path / "run").mkdir()
    stale = [tmp_path / ".m.json.x1.tmp", tmp_path / "run" / ".config.json.x2.tmp",
             tmp_path / "run" / ".metrics.jsonl.x3.tmp"]
    kept = [tmp_path / "m.json.x4.tmp", tmp_path / ".notes.txt.x5.tmp",
            tmp_path / "run" / "config.json.x6.tmp"]
    for path in stale + kept:
        path.write_text("")
    preflight.remove_stale_temp_files(tmp_path / "m.json", tmp_path / "run" / "config.json",
                                      tmp_path / "run" / "metrics.jsonl")
    assert [p.exists() for p in stale + kept] == [False] * 3 + [True] * 3
    (tmp_path / "empty.json").write_text("")
    preflight.check_out_holds_weights(tmp_path / "empty.json")


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs a folder that takes no files")
def test_an_output_folder_that_takes_no_files_is_refused(corpus, tmp_path):
    """/sys takes no files, even from root (for whom its permission bits say it does)."""
    result = invoke("pretrain", corpus, *TINY, "--steps", "2", "--run-dir", tmp_path / "run",
                    "--out", "/sys/model.json")
    assert_refused(result, "cannot write to '/sys'")
    assert not (tmp_path / "run").exists()


def test_a_model_is_refused_when_four_float32_copies_exceed_the_memory(monkeypatch):
    """Parameters, gradients and two optimizer moments: 16 bytes per parameter."""
    from lstm_fn.runs import checks as preflight
    from lstm_fn.config import ConfigError

    pages = {"SC_PHYS_PAGES": 2 << 20, "SC_PAGE_SIZE": 4096}  # 8 GiB
    monkeypatch.setattr(os, "sysconf", pages.__getitem__)
    preflight.check_memory(SimpleNamespace(num_params=500_000_000))  # 7.5 GiB
    with pytest.raises(ConfigError, match="about 15 GiB to train; this machine has 8 GiB"):
        preflight.check_memory(SimpleNamespace(num_params=1_000_000_000))
