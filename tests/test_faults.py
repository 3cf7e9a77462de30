"""Faults during training, through the real command: damaged checkpoints, a loss that
becomes NaN, a full disk at resume and Ctrl-C. In every case nothing already saved is lost
(kill -9 at random moments: test_kill.py; refusals before a fresh run starts:
test_preflight.py).

Subprocess tests share one persistent compile cache (``LSTM_FN_CACHE``), so only the first
process compiles; checks that fail before training run in-process (CliRunner).
"""

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from reference_numpy.weights import read_weights
from conftest import (TINY, Child, assert_refused, checkpoint_steps, invoke, listing, lstm_fn,
                      metrics)

# ---------------------------------------------------------- damaged newest checkpoint

@pytest.fixture(scope="module")
def short_run(tmp_path_factory, corpus, env):
    """A finished 15-step run with checkpoints at 5, 10 and 15."""
    work = tmp_path_factory.mktemp("short")
    result = lstm_fn("pretrain", corpus, *TINY, "--steps", "15", "--eval-every", "5",
                     "--checkpoint-every", "5", "--run-dir", work / "run",
                     "--out", work / "model.json", env=env)
    assert result.returncode == 0, result.stderr
    assert checkpoint_steps(work / "run") == [5, 10, 15]
    return work


def _truncate_files(step_dir: Path):
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            with path.open("r+b") as f:
                f.truncate(path.stat().st_size // 2)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated files", "item folder removed"])
def test_resume_skips_a_damaged_newest_checkpoint(short_run, corpus, env, tmp_path, damage):
    shutil.copytree(short_run, tmp_path, dirs_exist_ok=True)
    newest = tmp_path / "run" / "checkpoints" / "00000015"
    if damage == "truncated files":
        _truncate_files(newest)
    else:
        shutil.rmtree(newest / "state")
    result = lstm_fn("pretrain", corpus, "--resume", "--steps", "20",
                     "--run-dir", tmp_path / "run", "--out", tmp_path / "model.json", env=env)
    assert result.returncode == 0, result.stderr
    assert "checkpoint 15 is damaged" in result.stderr and "using an older one" in result.stderr
    assert "resumed from checkpoint 10" in result.stderr
    assert "Traceback" not in result.stderr
    assert checkpoint_steps(tmp_path / "run")[-1] == 20
    read_weights(tmp_path / "model.json")


# ------------------------------------------------------------------- non-finite loss

def test_nan_loss_stops_with_exit_3_and_keeps_the_best_model(corpus, env, tmp_path):
    """adamw with weight decay 1 at lr 10 multiplies every weight by 1 - 10 = -9 per step: a
    real overflow within a few dozen steps. The run stops at once, names the step and the last
    good checkpoint, and neither the best model nor any checkpoint gets non-finite weights."""
    args = ["pretrain", corpus, "--cell", "rnn", "--embed-size", "8", "--hidden-size", "16",
            "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--sample-every", "0",
            "--optimizer", "adamw", "--weight-decay", "1", "--lr", "10", "--grad-clip", "0",
            "--eval-every", "5", "--checkpoint-every", "5",
            "--run-dir", tmp_path / "run", "--out", tmp_path / "best.json"]
    first = lstm_fn(*args, "--steps", "5", env=env)
    assert first.returncode == 0, first.stderr
    best_before = (tmp_path / "best.json").read_bytes()
    read_weights(tmp_path / "best.json")

    result = lstm_fn(*args, "--steps", "500", "--resume", env=env)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "became" in line and "stopped without saving" in line, result.stderr
    stopped = int(line.split(" at step ")[1].split(";")[0])
    last_good = int(line.split("Last good: checkpoint ")[1].split(" ")[0])
    assert 5 <= last_good < stopped < 500
    assert (tmp_path / "best.json").read_bytes() == best_before
    # Nothing saved from the broken step (checkpoint.save also refuses non-finite params),
    # and every evaluation logged up to the last good checkpoint was finite.
    assert checkpoint_steps(tmp_path / "run")[-1] == last_good
    rows = metrics(tmp_path / "run")
    assert rows and all(np.isfinite(row["val_loss"]) for row in rows), rows
    assert max(row["step"] for row in rows) <= stopped


# ----------------------------------------------------------------- full disk on resume

@pytest.mark.slow
def test_full_disk_refuses_a_resume_and_leaves_the_run_intact(short_run, corpus, tmp_path,
                                                              monkeypatch):
    shutil.copytree(short_run, tmp_path, dirs_exist_ok=True)
    before = listing(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    result = invoke("pretrain", corpus, "--resume", "--steps", "30",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "model.json")
    assert_refused(result, "not enough disk space")
    assert listing(tmp_path) == before


# ------------------------------------------------------------------------------ Ctrl-C

@pytest.mark.slow
def test_sigint_checkpoints_exits_130_then_resume_works(corpus, env, tmp_path):
    def args(steps):
        return ["pretrain", corpus, *TINY, "--steps", steps, "--eval-every", "1000",
                "--checkpoint-every", "1000", "--run-dir", tmp_path / "run",
                "--out", tmp_path / "model.json"]

    child = Child(args(100000), env)
    assert child.wait_for("step 1/") is not None, child.stderr
    time.sleep(0.3)
    child.proc.send_signal(signal.SIGINT)
    assert child.finish(timeout=120) == 130, child.stderr
    assert "Traceback" not in child.stderr and "KeyboardInterrupt" not in child.stderr
    assert "interrupted at step" in child.stderr and "--resume" in child.stderr
    stopped = int(child.stderr.split("interrupted at step ")[1].split(":")[0])
    assert checkpoint_steps(tmp_path / "run") == [stopped]  # the final checkpoint, only
    # Stopping is prompt: no evaluation, so no export before the first --eval-every.
    assert not (tmp_path / "model.json").exists()

    resumed = lstm_fn(*args(stopped + 5), "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from checkpoint {stopped}" in resumed.stderr
    assert checkpoint_steps(tmp_path / "run")[-1] == stopped + 5
