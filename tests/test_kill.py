"""kill -9 at random moments of training (start-up, restore, training steps, checkpoint
saves, JSON exports), each followed by ``--resume``: nothing already saved is lost, and the
run ends bit for bit as an uninterrupted one (the other faults: test_faults.py)."""

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from reference_numpy.weights import read_weights
from conftest import TINY, Child, assert_same_model, checkpoint_steps


def metrics(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r["val_loss"], r["best"]) for r in rows]


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
    assert_same_model(out, tmp_path / "a" / "out" / "model.json")
    assert_same_model(work / "run" / "model.json", out)
    assert metrics(work / "run") == metrics(tmp_path / "a" / "run")
