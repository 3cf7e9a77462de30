"""Faults during training, through the real command: kill -9 at random moments, damaged
checkpoints, a loss that becomes NaN, a full disk at resume and Ctrl-C. In every case nothing
already saved is lost (refusals before a fresh run starts are in test_preflight.py).

Subprocess tests share one persistent compile cache (``LSTM_FN_CACHE``), so only the first
process compiles; checks that fail before training run in-process (CliRunner).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from reference_numpy.weights import read_weights
from conftest import TINY, assert_refused, invoke, listing, lstm_fn, lstm_fn_command

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment: one persistent compile cache for the whole module."""
    cache = os.environ.get("LSTM_FN_CACHE") or str(tmp_path_factory.mktemp("jaxcache"))
    return {**os.environ, "LSTM_FN_CACHE": cache}


class Child:
    """The console command in a subprocess, its stderr lines collected with time stamps."""

    def __init__(self, args, env):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(lstm_fn_command(*args), env=env, text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines = []  # (seconds since start, line)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic() - self.started, line))

    def wait_for(self, text, timeout=120.0) -> float | None:
        """Seconds since start at which a stderr line holding ``text`` appeared; None if the
        process ended first."""
        deadline = time.monotonic() + timeout
        while True:
            for at, line in list(self.lines):
                if text in line:
                    return at
            if self.proc.poll() is not None:
                self.reader.join(5)
                hits = [at for at, line in self.lines if text in line]
                return hits[0] if hits else None
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.stderr}"
            time.sleep(0.005)

    def sleep_until(self, seconds_since_start: float) -> None:
        """Sleep until then, or until the process ends."""
        while time.monotonic() - self.started < seconds_since_start and self.proc.poll() is None:
            time.sleep(0.002)

    def finish(self, timeout=300) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.exists() else []


def metrics(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r["val_loss"], r["best"]) for r in rows]


# ------------------------------------------------------------------------- kill -9, many

KILL_STEPS = 120
# Where the 12 kills aim, in an order shuffled by a seeded RNG: a random moment of start-up
# (imports, corpus, config) or of restore and compilation; the moment a JSON export or a
# checkpoint save is seen in progress; a random moment of training.
KILL_AIMS = ["startup"] * 2 + ["restore"] * 2 + ["export"] * 3 + ["save"] * 3 + ["train"] * 2


def kill_run_args(corpus, work):
    return ["pretrain", corpus, *TINY, "--dropout", "0.1", "--steps", KILL_STEPS,
            "--eval-every", "5", "--checkpoint-every", "5", "--keep-checkpoints", "2",
            "--run-dir", work / "run", "--out", work / "out" / "model.json"]


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _writing_into(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` has a file in ``folder`` open (e.g. a JSON export being
    written, named or not yet)."""
    prefix = str(folder) + os.sep
    for fd in _names(Path(f"/proc/{pid}/fd")):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            pass
    return False


def _wait_until(child: Child, present, timeout: float) -> None:
    """Poll (sub-millisecond) until ``present()``, the process ends, or ``timeout``."""
    end = time.monotonic() + timeout
    while child.proc.poll() is None and time.monotonic() < end and not present():
        time.sleep(0.0002)


@pytest.mark.slow
def test_many_kill_9_then_resume_ends_bit_identical(corpus, env, tmp_path):
    """12 kill -9 (start-up, restore, training steps, checkpoint saves, JSON exports), each
    followed by ``--resume`` (or a fresh start while no run was recorded yet): after every
    kill ``--out`` is absent or a whole valid weights file and nothing else is beside it; at
    the end no temp file or unfinished checkpoint is left, and ``--out`` and the metrics equal
    those of an uninterrupted run, bit for bit."""
    straight = Child(kill_run_args(corpus, tmp_path / "a"), env)
    assert straight.finish() == 0, straight.stderr
    # Calibrate on this machine: start-up time and seconds per step (evaluations, exports
    # and checkpoint saves included).
    t_corpus, t_step1 = straight.wait_for("corpus "), straight.wait_for("| loss")
    per_step = (straight.wait_for(f"step {KILL_STEPS}:") - t_step1) / (KILL_STEPS - 1)

    work = tmp_path / "b"
    out, ckpts = work / "out" / "model.json", work / "run" / "checkpoints"
    rng = random.Random(20240611)
    aims = list(KILL_AIMS)
    rng.shuffle(aims)
    landed = {"startup": 0, "checkpoint save": 0, "json export": 0}
    resumed_from, kills = set(), 0
    for attempt in range(len(aims) + 1):
        resume = ["--resume"] if (work / "run" / "config.json").exists() else []
        child = Child(kill_run_args(corpus, work) + resume, env)
        if attempt == len(aims):
            assert child.finish() == 0, child.stderr
            break
        done = (checkpoint_steps(work / "run") or [0])[-1]
        aim = aims[attempt] if done < KILL_STEPS - 40 else "startup"  # never finish early
        if aim == "startup":
            child.sleep_until(rng.uniform(0.0, t_corpus))
        elif aim == "restore":
            seen = child.wait_for("corpus ")
            if seen is not None:
                child.sleep_until(seen + rng.uniform(0.0, 1.0))
        elif aim in ("export", "save"):
            child.wait_for("| loss")  # stale temp files of earlier kills are gone by now
            if aim == "export":
                _wait_until(child, lambda: _writing_into(child.proc.pid, out.parent), 5.0)
                time.sleep(rng.uniform(0.0, 0.0003))
                landed["json export"] += _writing_into(child.proc.pid, out.parent)
            else:
                _wait_until(child, lambda: any(".orbax-checkpoint-tmp" in n
                                               for n in _names(ckpts)), 5.0)
                time.sleep(rng.uniform(0.0, 0.002))
        else:  # a random moment of training after this process's first checkpoint, so
            # that the run progresses whatever the other kills hit (each save and export
            # kill may land in a process's first save, before any checkpoint is whole)
            _wait_until(child, lambda: (checkpoint_steps(work / "run") or [0])[-1] > done,
                        60.0)
            most = min(KILL_STEPS / 25, (KILL_STEPS - done) / 4)
            time.sleep(rng.uniform(0.0, per_step * most))
        assert child.proc.poll() is None, f"the run ended before kill {kills + 1}:\n" \
            + child.stderr
        child.proc.send_signal(signal.SIGKILL)
        child.finish()
        kills += 1
        if "resumed from checkpoint" in child.stderr:
            resumed_from.add(child.stderr.split("resumed from checkpoint ")[1].split()[0])

        # After every kill: --out is absent or a whole valid file, and no partial file is
        # beside it. (An export is written unnamed until whole, see atomic_write; a kill in
        # the microseconds between naming and renaming it leaves a whole temp file, which
        # the next start removes.)
        for name in _names(out.parent):
            assert name == out.name or name.startswith(".model.json."), name
            read_weights(out.parent / name)
        landed["checkpoint save"] += any(".orbax-checkpoint-tmp" in n for n in _names(ckpts))
        landed["startup"] += f"/{KILL_STEPS} | loss" not in child.stderr

    print(f"\n{kills} kills; landed in {landed}; resumed from checkpoints {sorted(resumed_from)}")
    assert kills >= 11 and "resumed from checkpoint" in child.stderr
    assert landed["checkpoint save"] >= 1, landed
    if os.path.isdir("/proc/self/fd"):
        assert landed["json export"] >= 1, landed
    # No partial file anywhere: temp files of cut-short writes are gone, no unfinished saves.
    assert sorted(_names(out.parent)) == ["model.json"]
    leftovers = [str(p) for p in work.rglob("*") if p.name.endswith(".tmp")
                 or ".orbax-checkpoint-tmp" in p.name]
    assert leftovers == []
    assert out.read_bytes() == (tmp_path / "a" / "out" / "model.json").read_bytes()
    assert metrics(work / "run") == metrics(tmp_path / "a" / "run")


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
    assert rows and all(np.isfinite(val) for _, _, val, _ in rows), rows
    assert max(step for step, *_ in rows) <= stopped


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
