"""Checkpoint round trip, pruning, damage fallback, foreign folders and a real kill -9."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from lstm_fn.training import checkpoint

REPO = Path(__file__).resolve().parents[1]
META = {"data_position": 1234, "config": {"cell": "lstm", "hidden_size": 16},
        "vocab": "ab\n é"}


def make_state(seed: int, vocab_size: int = 40, hidden_size: int = 16, num_layers: int = 2):
    """A training state shaped like the trainer's: params, optax chain state, carries, key."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    params = {
        "embed": normal(vocab_size, hidden_size),
        "layers": [{"W": normal(2 * hidden_size, 4 * hidden_size), "b": normal(4 * hidden_size)}
                   for _ in range(num_layers)],
    }
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = optimizer.init(params)
    grads = jax.tree.map(lambda p: jnp.sin(p), params)  # one real update: mu, nu, count != 0
    _, opt_state = optimizer.update(grads, opt_state, params)
    carry = tuple((normal(3, hidden_size), normal(3, hidden_size)) for _ in range(num_layers))
    return {"params": params, "opt_state": opt_state, "carry": carry,
            "key": jax.random.key_data(jax.random.key(seed)), "step": jnp.int32(seed)}


ABSTRACT = jax.eval_shape(lambda: make_state(0))


def assert_bitwise_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)  # NamedTuples stay NamedTuples
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def step_dir(directory: Path, step: int) -> Path:
    return directory / f"{step:0{checkpoint.STEP_DIGITS}d}"


def damage(path: Path, how: str) -> None:
    """Damages a finished step dir the way a disk, a user or a crash might."""
    if how == "remove_item":
        shutil.rmtree(path / "state")
        return
    if how == "garble_meta":
        (path / "meta" / "metadata").write_text('{"format": 1, "dig')
        return
    if how == "forge_digest":  # the data reads back fine but is not what was saved
        meta = json.loads((path / "meta" / "metadata").read_text())
        meta["digest"] = "0" * len(meta["digest"])
        (path / "meta" / "metadata").write_text(json.dumps(meta))
        return
    if how == "forge_format":  # a meta item of another layout
        meta = json.loads((path / "meta" / "metadata").read_text())
        (path / "meta" / "metadata").write_text(json.dumps(dict(meta, format=2)))
        return
    files = [p for p in path.rglob("*") if p.is_file()]
    if how == "flip_bytes":  # inside array data, where orbax itself checks nothing
        files = [p for p in files if p.parent.name == "d"]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    if how == "truncate":
        del data[len(data) // 3:]
    elif how == "flip_bytes":
        middle = len(data) // 2
        data[middle:middle + 16] = bytes(x ^ 0xFF for x in data[middle:middle + 16])
    target.write_bytes(bytes(data))


def save_steps(directory: Path, steps, keep: int = 3) -> None:
    with checkpoint.open_manager(directory, keep=keep) as manager:
        for step in steps:
            checkpoint.save(manager, step, make_state(step), dict(META, step=step))


def test_round_trip_is_bitwise(tmp_path):
    save_steps(tmp_path, [4, 5])
    got = checkpoint.restore(tmp_path, ABSTRACT)
    assert (got.step, got.skipped) == (5, [])
    assert got.meta == dict(META, step=5)
    assert_bitwise_equal(got.state, make_state(5))
    assert isinstance(got.state["opt_state"][1][0], optax.ScaleByAdamState)
    older = checkpoint.restore(tmp_path, ABSTRACT, step=4)
    assert_bitwise_equal(older.state, make_state(4))
    assert checkpoint.tree_digest(older.state) != checkpoint.tree_digest(got.state)


def test_digest_covers_tree_paths_and_dtypes():
    zeros = np.zeros(4, np.float32)
    digests = {checkpoint.tree_digest(tree) for tree in (
        {"a": zeros}, {"b": zeros}, {"a": zeros.view(np.int32)}, {"a": zeros.reshape(2, 2)})}
    assert len(digests) == 4


def test_missing_or_empty_folder_means_no_checkpoint(tmp_path):
    assert checkpoint.restore(tmp_path / "absent", ABSTRACT) is None
    assert checkpoint.restore(tmp_path, ABSTRACT) is None
    assert checkpoint.all_steps(tmp_path) == []
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint for step 3"):
        checkpoint.restore(tmp_path, ABSTRACT, step=3)  # a step asked for by number
    assert not (tmp_path / "absent").exists()  # reading creates nothing


def test_keeps_newest_n(tmp_path, caplog):
    save_steps(tmp_path, [1, 2, 3, 4, 5], keep=2)
    with caplog.at_level("DEBUG"):
        assert checkpoint.all_steps(tmp_path) == [4, 5]
    # reading opens read-only managers on purpose: orbax's notice of it is not shown
    assert not [r for r in caplog.records if "read only" in r.getMessage()]


# Flipped bytes inside array data either decode to wrong values, which only the digest
# catches, or break tensorstore's decoding of a chunk: both must fall back.
@pytest.mark.parametrize("how, reason", [("truncate", ""), ("remove_item", "state"),
                                         ("garble_meta", "JSONDecodeError"),
                                         ("forge_digest", "digest mismatch"),
                                         ("forge_format", "checkpoint format 2"),
                                         ("flip_bytes", "digest mismatch|error while reading")])
def test_damaged_newest_falls_back_and_reports(tmp_path, how, reason):
    save_steps(tmp_path, [1, 2])
    damage(step_dir(tmp_path, 2), how)
    got = checkpoint.restore(tmp_path, ABSTRACT)
    assert got.step == 1
    assert_bitwise_equal(got.state, make_state(1))
    [(skipped_step, why)] = got.skipped
    assert skipped_step == 2 and re.search(reason, why) and "\n" not in why


def test_a_state_of_another_layout_is_named(tmp_path):
    """Intact checkpoints whose optimizer state has another shape of tree (a changed
    optimizer setting): one clear message, not a list of per-step tree dumps."""
    save_steps(tmp_path, [1, 2])
    other = jax.eval_shape(lambda: {**make_state(0), "opt_state": optax.sgd(0.1).init(
        make_state(0)["params"])})
    with pytest.raises(checkpoint.CheckpointError, match="another layout") as error:
        checkpoint.restore(tmp_path, other)
    assert "\n" not in str(error.value)
    damage(step_dir(tmp_path, 2), "remove_item")  # one of them damaged too: listed as such
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint"):
        checkpoint.restore(tmp_path, other)


def test_all_damaged_raises(tmp_path):
    save_steps(tmp_path, [1, 2])
    damage(step_dir(tmp_path, 1), "truncate")
    damage(step_dir(tmp_path, 2), "flip_bytes")
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint") as info:
        checkpoint.restore(tmp_path, ABSTRACT)
    assert "step 1:" in str(info.value) and "step 2:" in str(info.value)


@pytest.mark.parametrize("bad", [jnp.nan, -jnp.inf])
def test_non_finite_params_refused_and_nothing_written(tmp_path, bad):
    state = make_state(3)
    state["params"]["layers"][1]["b"] = state["params"]["layers"][1]["b"].at[0].set(bad)
    with checkpoint.open_manager(tmp_path) as manager:
        with pytest.raises(FloatingPointError, match="step 3"):
            checkpoint.save(manager, 3, state, META)
    assert os.listdir(tmp_path) == []


def write_with_other_step_names(directory: Path) -> None:
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(directory, options=options) as manager:
        manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(make_state(7))))


@pytest.mark.parametrize("write, name", [
    (write_with_other_step_names, "'7'"),
    (lambda directory: (directory / "notes.txt").write_text("hi"), "notes.txt"),
])
def test_foreign_content_is_refused_by_name(tmp_path, write, name):
    write(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=name):
        checkpoint.restore(tmp_path, ABSTRACT)


def interrupt_save(directory: Path, step: int) -> Path:
    """Leaves what a kill -9 mid-save leaves: a half-written orbax temporary dir."""
    save_steps(directory, [step])
    tmp_dir = directory / f"{step_dir(directory, step).name}.orbax-checkpoint-tmp"
    step_dir(directory, step).rename(tmp_dir)
    damage(tmp_dir, "truncate")
    return tmp_dir


def test_stale_tmp_dir_is_ignored_and_step_saved_again(tmp_path):
    """Restoring (read-only) leaves a stale temporary dir alone; a writer removes it."""
    stale = interrupt_save(tmp_path, 1)
    assert checkpoint.restore(tmp_path, ABSTRACT) is None  # an interrupted first save
    assert stale.exists()
    save_steps(tmp_path, [1])
    interrupt_save(tmp_path, 2)
    assert checkpoint.restore(tmp_path, ABSTRACT).step == 1
    save_steps(tmp_path, [2])
    got = checkpoint.restore(tmp_path, ABSTRACT)
    assert (got.step, got.skipped) == (2, [])
    assert_bitwise_equal(got.state, make_state(2))
    stale = interrupt_save(tmp_path, 3)
    save_steps(tmp_path, [4])
    assert not stale.exists()


def test_saving_over_damaged_steps_after_fallback(tmp_path):
    save_steps(tmp_path, [1, 2, 3])
    damage(step_dir(tmp_path, 2), "truncate")
    damage(step_dir(tmp_path, 3), "remove_item")
    with checkpoint.open_manager(tmp_path) as manager:
        got = checkpoint.restore(manager, ABSTRACT)
        assert got.step == 1 and [s for s, _ in got.skipped] == [3, 2]
        new_state = make_state(20)
        checkpoint.save(manager, 2, new_state, META)  # below the damaged latest step 3
        got = checkpoint.restore(manager, ABSTRACT)
        assert got.step == 2 and [s for s, _ in got.skipped] == [3]
        assert_bitwise_equal(got.state, new_state)
        checkpoint.save(manager, 3, make_state(30), META)
    got = checkpoint.restore(tmp_path, ABSTRACT)
    assert (got.step, got.skipped) == (3, [])
    assert_bitwise_equal(got.state, make_state(30))


KILL_CHILD = r"""
import sys
import jax.numpy as jnp
import numpy as np
from lstm_fn.training import checkpoint

def big_state(step):  # 50 MB of incompressible float32
    w = np.random.default_rng(step).standard_normal(12_500_000, dtype=np.float32)
    return {"params": {"w": jnp.asarray(w)}, "step": jnp.int32(step)}

with checkpoint.open_manager(sys.argv[1], keep=2) as manager:
    checkpoint.save(manager, 1, big_state(1), {"step": 1})
    print("saved 1", flush=True)
    for step in range(2, 1000):
        checkpoint.save(manager, step, big_state(step), {"step": step})
"""


@pytest.mark.timeout(120)
def test_kill_9_during_save_keeps_last_complete_step(tmp_path):
    directory = tmp_path / "ckpt"
    with open(tmp_path / "child.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(directory)], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert child.stdout.readline() == "saved 1\n", (tmp_path / "child.log").read_text()
        tmp_dirs = []
        deadline = time.monotonic() + 60
        while not tmp_dirs and time.monotonic() < deadline:  # a save is in progress
            tmp_dirs = [p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    interrupted = [p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
    assert interrupted, "the kill did not land during a save"

    abstract = {"params": {"w": jax.ShapeDtypeStruct((12_500_000,), jnp.float32)},
                "step": jax.ShapeDtypeStruct((), jnp.int32)}
    got = checkpoint.restore(directory, abstract)
    assert got.skipped == [] and got.meta == {"step": got.step}
    want = np.random.default_rng(got.step).standard_normal(12_500_000, dtype=np.float32)
    assert np.asarray(got.state["params"]["w"]).tobytes() == want.tobytes()

    next_step = got.step + 1  # the interrupted step: saving it again must work
    with checkpoint.open_manager(directory, keep=2) as manager:
        checkpoint.save(manager, next_step, got.state, {"step": next_step})
    assert checkpoint.restore(directory, abstract).step == next_step
