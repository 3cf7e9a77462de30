"""Refusals before training starts (lstm_fn.preflight): an output folder under a file, a
read-only output folder, a full disk. Nothing is written and nothing saved is touched."""
import os
import shutil
from pathlib import Path

from conftest import TINY, assert_refused, invoke, listing


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
    (folder / "model.json").write_text("an earlier model")
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root writes into read-only folders: let os.access say no
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == folder
                            and mode & os.W_OK else real_access(path, mode, **kw))
    try:
        result = invoke("pretrain", corpus, *TINY, "--steps", "5",
                        "--run-dir", tmp_path / "run", "--out", folder / "model.json")
        assert_refused(result, "cannot write to", "readonly", "permission denied")
        assert listing(folder) == {"model.json": b"an earlier model"}
        assert not (tmp_path / "run").exists()
    finally:
        folder.chmod(0o700)


def test_full_disk_is_refused_before_training(corpus, tmp_path, monkeypatch):
    out = tmp_path / "model.json"
    out.write_text("an earlier model, kept as it is")
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(1 << 30, (1 << 30) - 4096, 4096))
    result = invoke("pretrain", corpus, *TINY, "--steps", "5",
                    "--run-dir", tmp_path / "run", "--out", out)
    assert_refused(result, "not enough disk space", "0 MiB free", "needs about")
    assert out.read_text() == "an earlier model, kept as it is"
    assert listing(tmp_path / "run") == {}  # no config.json, no checkpoint
