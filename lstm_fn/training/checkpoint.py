"""Checkpoints for exact resume: the only module that touches orbax.

A checkpoint is one orbax step directory with two items:

* ``state``: a pytree of arrays (in training: :meth:`lstm_fn.training.state.TrainState.as_tree`:
  params, optimizer state, carries, step, learning-rate scale), written by ``StandardSave``
  as tensorstore arrays.
* ``meta``: JSON ``{"format": FORMAT, "digest": <sha256 of state>, "layout": <sha256 of its
  tree paths, dtypes and shapes>, "meta": <caller's dict>}`` (``layout`` since lstm_fn 0.2).

orbax writes each step into ``<step>.orbax-checkpoint-tmp*`` and renames it when complete, so a
kill -9 mid-save leaves the previous steps readable. It stores no checksums and does not fsync,
so ``save`` adds a content digest and fsyncs the finished step, and ``restore`` verifies the
digest and falls back to older steps when the newest is damaged, reporting what it skipped.

Example:
    abstract = jax.eval_shape(lambda: state)  # shapes and dtypes of the state to restore
    with open_manager(run_dir / "checkpoints") as manager:
        got = restore(manager, abstract)
        for step_, reason in got.skipped if got else []:
            print(f"skipped damaged checkpoint {step_}: {reason}")
        ...
        save(manager, step, state, {"seconds": 12.5})
"""

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from lstm_fn.errors import CheckpointError
from lstm_fn.training import cluster

FORMAT = 1  # bump when the layout of the `meta` item changes
STEP_DIGITS = 8  # step dirs are `00000042`; every manager must agree (see `open_manager`)
_NAME_FORMAT = ocp.step.standard_name_format(step_format_fixed_length=STEP_DIGITS)
_TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's suffix for unfinished saves


def os_error_code(error: BaseException) -> int | None:
    """The errno of ``error``: an OSError's own, or the one tensorstore (orbax's writer)
    reports. Tensorstore raises a plain ValueError for a failed write, with no type or
    attribute for it; its text carries the code as ``[os_error_code='28']``."""
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"\[os_error_code='(\d+)'\]", str(error))
    return int(found.group(1)) if found else None


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` (an OSError, or tensorstore's report of one) is ENOSPC."""
    return os_error_code(error) == errno.ENOSPC


class _Quiet(logging.Filter):
    """Drops two orbax messages that landed on stderr next to our one-line errors: that a
    manager is read-only (we open them so on purpose, to list and restore), and the
    traceback of a save that filled the disk (the loop names that in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and disk_full(record.exc_info[1]):
            return False
        return not record.getMessage().startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_Quiet())


class Restored(NamedTuple):
    """What `restore` found.

    Attributes:
        state: the restored pytree, with the structure and dtypes of `abstract_state`.
        meta: the caller's JSON dict as saved (tuples come back as lists).
        step: the step restored.
        skipped: newer steps that were damaged, newest first, as (step, one-line reason).
    """

    state: Any
    meta: dict
    step: int
    skipped: list[tuple[int, str]]


def open_manager(directory: str | os.PathLike, *, keep: int = 3,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """Returns the CheckpointManager for `directory`; use it as a context manager.

    Every manager comes from here so that step naming always matches: a manager with other
    naming options sees an existing folder as empty. Saves are synchronous (an async save is
    lost if the process exits before `close`), and only the newest `keep` steps are kept.
    A read-only manager never deletes anything, stale temporary dirs included.
    """
    options = ocp.CheckpointManagerOptions(
        step_format_fixed_length=STEP_DIGITS,
        preservation_policy=checkpoint_managers.LatestN(n=keep),
        enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        save_interval_steps=0 if read_only else 1,  # what read_only implies, said up front
        create=not read_only,  # (orbax warns when it has to change them itself)
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def abstract_of(make: Callable[[], Any]):
    """The shapes and dtypes of the tree ``make()`` would build (nothing is computed), placed
    on one device: what :func:`restore` takes. A state restored so can then be laid out for
    any number of devices."""
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device),
                        jax.eval_shape(make))


def tree_layout(state) -> str:
    """SHA-256 over every leaf's tree path, dtype and shape, in tree order: two states with
    the same layout can be restored into each other."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        dtype = "key" if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf.dtype
        digest.update(f"{jax.tree_util.keystr(path)}\0{dtype}\0{tuple(leaf.shape)}\0".encode())
    return digest.hexdigest()


def tree_digest(state) -> str:
    """SHA-256 over every leaf's tree path, dtype, shape and bytes, in tree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        array = _host_array(leaf)
        header = f"{jax.tree_util.keystr(path)}\0{array.dtype}\0{array.shape}\0"
        digest.update(header.encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def save(manager, step: int, state, meta: dict) -> None:
    """Writes `state` and `meta` as checkpoint `step`, replacing any existing `step`.

    Replacing is deliberate: after a resume from an older step (the newer ones damaged) the
    trainer reaches those step numbers again, and the new state is the one to keep. Newer
    steps than `step` are left alone. A kill between removing the old `step` and finishing
    the new one loses that step number only; older steps stay restorable.

    Args:
        manager: a writable manager from `open_manager`.
        step: the training step, >= 0.
        state: pytree of jax or numpy arrays (no Python scalars: their dtype is ambiguous).
        meta: JSON-able dict (data position, config, vocab, ...).

    Raises:
        FloatingPointError: a floating leaf of `state["params"]` is not finite; nothing is
            written.
        TypeError: `meta` is not JSON-able or a leaf is not an array; nothing is written.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if not hasattr(leaf, "dtype"):
            raise TypeError(f"state leaf {jax.tree_util.keystr(path)} is not an array: {leaf!r}")
    params = state.get("params", {}) if isinstance(state, dict) else {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = _host_array(leaf)
        if jax.numpy.issubdtype(array.dtype, jax.numpy.floating) and not np.isfinite(array).all():
            raise FloatingPointError(f"refusing to checkpoint step {step}: params"
                                     f"{jax.tree_util.keystr(path)} has NaN or Inf")
    document = {"format": FORMAT, "digest": tree_digest(state), "layout": tree_layout(state),
                "meta": meta}
    json.dumps(document)  # raises TypeError now rather than halfway through a save

    step_dir = manager.directory / _NAME_FORMAT.build_name(step)
    if step in manager.all_steps():
        manager.delete(step)
    elif step_dir.exists() and cluster.primary():  # on disk, not in the manager's step list
        shutil.rmtree(step_dir)
    cluster.barrier(f"checkpoint {step} cleared")
    latest = manager.latest_step()
    saved = manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(document)),
        force=latest is not None and step < latest,  # orbax skips steps below the latest
    )
    if not saved:
        raise CheckpointError(f"orbax skipped saving step {step} in {manager.directory}"
                              " (is the manager read-only?)")
    if cluster.primary():
        _fsync_tree(Path(step_dir))


def restore(directory_or_manager, abstract_state, step: int | None = None) -> Restored | None:
    """Restores the newest intact checkpoint (or exactly `step`).

    Args:
        directory_or_manager: a checkpoint folder (opened read-only) or a manager.
        abstract_state: pytree of `jax.ShapeDtypeStruct` (from `jax.eval_shape`) that gives the
            exact structure, NamedTuples included, and dtypes to restore into.
        step: restore this step, with no fallback; None tries newest first.

    Returns:
        `Restored`, or None when the folder has no checkpoints and nothing else (a missing or
        empty folder, or only temporary dirs of interrupted saves).

    Raises:
        CheckpointError: checkpoints exist but none is intact (the reasons are listed), `step`
            is missing or damaged, or the folder holds entries that are not checkpoints this
            manager can read, e.g. steps named by another naming scheme.
    """
    if isinstance(directory_or_manager, ocp.CheckpointManager):
        return _restore_with(directory_or_manager, abstract_state, step)
    if not Path(directory_or_manager).exists():
        return None
    with open_manager(directory_or_manager, read_only=True) as manager:
        return _restore_with(manager, abstract_state, step)


def all_steps(directory: str | os.PathLike) -> list[int]:
    """Returns the finished steps in `directory`, oldest first (not verified)."""
    if not Path(directory).exists():
        return []
    with open_manager(directory, read_only=True) as manager:
        return sorted(manager.all_steps())


def _restore_with(manager, abstract_state, step: int | None) -> Restored | None:
    manager.reload()  # another process may have saved since the manager was opened
    steps = sorted(manager.all_steps(), reverse=True)
    directory = manager.directory
    if not steps:
        entries = directory.iterdir() if directory.exists() else []
        foreign = sorted(p.name for p in entries if _TMP_MARK not in p.name)
        if foreign:
            raise CheckpointError(
                f"{directory} holds {foreign[:5]} but no checkpoint readable with"
                f" {STEP_DIGITS}-digit step names; refusing to treat it as empty (move them"
                " away or choose another checkpoint folder)")
        if step is None:
            return None
    if step is not None and step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {directory}; steps: {steps}")
    skipped, other_layout = [], []
    for candidate in steps if step is None else [step]:
        try:
            state, meta = _restore_step(manager, abstract_state, candidate)
        except Exception as error:  # any failure to read a step means the step is unusable
            skipped.append((candidate, _one_line(error)))
            other_layout.append(isinstance(error, _OtherLayout))
            continue
        return Restored(state, meta, candidate, skipped)
    if all(other_layout):
        raise CheckpointError(f"the checkpoints in {directory} hold a training state of "
                              "another layout (another optimizer setting, or an older "
                              "lstm_fn): start a new run, or fine-tune from its best model")
    reasons = "; ".join(f"step {s}: {reason}" for s, reason in skipped)
    raise CheckpointError(f"no intact checkpoint in {directory}: {reasons}")


class _OtherLayout(CheckpointError):
    """The step holds a state whose tree differs from the one asked for."""


def _restore_step(manager, abstract_state, step: int):
    if not (manager.directory / _NAME_FORMAT.build_name(step) / "state").is_dir():
        raise CheckpointError("its state item is missing")
    document = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else document
        raise CheckpointError(f"checkpoint format {found!r}, this code reads {FORMAT}")
    if document.get("layout", tree_layout(abstract_state)) != tree_layout(abstract_state):
        raise _OtherLayout("the state's tree differs from the one asked for")
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state))).state
    if tree_digest(state) != document["digest"]:
        raise CheckpointError("content digest mismatch (corrupted data, or abstract_state"
                              " differs from what was saved)")
    return state, document["meta"]


def _host_array(leaf) -> np.ndarray:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return cluster.host_value(leaf)


def _one_line(error: Exception) -> str:
    message = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else error
    text = str(message).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _fsync_tree(step_dir: Path) -> None:
    """Flushes the finished step's files and dirs to disk (orbax does not fsync).

    The rename that finalized the step already happened, so a power cut just before this can
    still leave a finished-looking step with missing data; the digest then catches it and
    `restore` falls back. The cost is a few milliseconds for a handful of files.
    """
    for root, _, files in os.walk(step_dir):
        for path in [*(os.path.join(root, name) for name in files), root]:
            _fsync(path)
    _fsync(step_dir.parent)  # the rename into the final name is an entry of the parent


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
