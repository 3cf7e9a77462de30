"""Checks before a run writes anything: the run directory's name, memory, room on disk,
the ``--out`` file, and the leftovers of a killed run."""

from __future__ import annotations

import glob
import os
import shutil
import stat
import tempfile
from pathlib import Path

from lstm_fn.errors import ConfigError, RunError
from lstm_fn.nn.config import ModelConfig
from lstm_fn.runs.lock import in_use
from lstm_fn.runs.records import BEST_MODEL
from reference_numpy.spec import FORMAT as WEIGHTS_FORMAT
from reference_numpy.weights import WeightsError, read_weights_file


def check_memory(cfg: ModelConfig) -> None:
    """Refuse a model whose parameters, gradients and optimizer moments alone (four float32
    copies) would not fit in this machine's memory."""
    needed = cfg.num_params * 16
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(
        os, "sysconf") else None
    if total and needed > total:
        raise ConfigError(f"the model has {cfg.num_params:,} parameters, about "
                          f"{needed / 2**30:,.0f} GiB to train; this machine has "
                          f"{total / 2**30:,.0f} GiB: lower --hidden-size, --embed-size or "
                          "--layers")


def check_run_dir_name(run_dir: Path) -> None:
    """Refuse a run directory whose path is not UTF-8 (a byte such as Latin-1's 0xE9 in it or
    in a folder above it): the checkpoints' writer (orbax, tensorstore) takes paths as UTF-8
    text and failed at the first checkpoint, with a traceback, after training had started."""
    path = os.path.abspath(run_dir)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise RunError(f"run directory {str(run_dir)!r} is not a UTF-8 path, and checkpoints "
                       "can only be written under one; choose another --run-dir") from None


# Orbax's own files per checkpoint, beyond the arrays (~130 kB measured for a tiny model).
CHECKPOINT_OVERHEAD = 256 << 10


def make_output_folders(out: Path, run_dir: Path) -> None:
    """Create the folders of ``--out`` and the run directory; see :func:`writable_folder`."""
    for folder in (Path(os.path.realpath(out)).parent, run_dir):
        writable_folder(folder)


def writable_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) and check that files can be written there (a real
    file: permission bits alone can mislead, as for root or on a read-only mount)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the output folder {str(folder)!r}: "
                       f"{error.strerror or error}") from None
    if not os.access(folder, os.W_OK):
        raise RunError(f"cannot write to {str(folder)!r}: permission denied")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise RunError(f"cannot write to {str(folder)!r}: {error.strerror or error}") from None


def check_output_room(run_dir: Path, cfg: ModelConfig, keep_checkpoints: int) -> None:
    """Refuse a run whose checkpoints and model would not fit on the run directory's disk.

    JSON takes ~12 bytes per parameter; each checkpoint ~3 float32 copies (params, Adam
    moments) plus orbax's files, and one more checkpoint is written before the oldest is
    deleted. What the run already holds is reused."""
    checkpoint_size = cfg.num_params * 12 + CHECKPOINT_OVERHEAD
    needed = (cfg.num_params * 12 + checkpoint_size * (keep_checkpoints + 1)
              + (1 << 20) - _size_of(run_dir / "checkpoints"))
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise RunError(f"not enough disk space in {str(run_dir)!r}: {_amount(free)} free, "
                       f"this run needs about {_amount(needed)} more")


def _size_of(folder: Path) -> int:
    """Bytes in the files under ``folder`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _amount(size: int) -> str:
    return f"{size >> 20:,} MiB" if size >= 1 << 20 else f"{size >> 10:,} KiB"


def remove_stale_temp_files(*targets: Path) -> None:
    """Delete the temp files of atomic writes of ``targets`` cut short by a kill -9
    (``.NAME.*.tmp``)."""
    for target in targets:
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            stale.unlink(missing_ok=True)


def check_out_is_a_file(out: Path) -> None:
    """Refuse an ``--out`` that exists and is not a regular file (a device, a pipe), or that
    is this process's standard input, output or error (``/dev/stdout``, or the file it is
    redirected to): the weights are written beside it and renamed over it."""
    try:
        info = out.stat()
    except OSError:
        return  # not there yet (or unreadable: the write says so)
    if not stat.S_ISREG(info.st_mode):
        raise RunError(f"--out {str(out)!r} exists and is not a regular file; give a file name")
    for fd, name in ((0, "input"), (1, "output"), (2, "error")):
        try:
            std = os.fstat(fd)
        except OSError:
            continue
        if (std.st_dev, std.st_ino) == (info.st_dev, info.st_ino):
            raise RunError(f"--out {str(out)!r} is this command's standard {name}; give a "
                           "file name")


def check_out_holds_weights(out: Path) -> None:
    """Refuse an existing, non-empty ``--out`` that does not start as the weights files this
    package writes: a text, another run's ``config.json`` or another tool's file named by
    mistake would be lost."""
    try:
        if not out.stat().st_size:
            return
        with open(out, "rb") as f:
            head = f.read(256).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return  # not there yet (or unreadable: the write says so)
    if not (head.startswith(b"{") and f'"{WEIGHTS_FORMAT}"'.encode() in head):
        raise RunError(f"--out {str(out)!r} exists and is not a lstm_fn weights file; give "
                       "another file name (or remove that file first)")


def check_out_owner(out: Path, run_dir: Path, recorded_out: str | None,
                    replace: bool) -> str | None:
    """May this run write ``--out``? An existing weights file that is the only copy of a
    model (its run directory no longer has it, or it says nothing of where it came from) is
    never replaced unless ``replace``; a copy of another run's model, which that run still
    has, is. Returns a line saying what is replaced (None: nothing is), RunError otherwise.
    ``recorded_out`` is the ``--out`` of the run being resumed."""
    if not out.is_file() or not out.stat().st_size:
        return None
    check_out_holds_weights(out)
    try:
        provenance = read_weights_file(out).provenance
    except (WeightsError, OSError):  # damaged: no model to lose
        return f"--out {str(out)!r} is a damaged weights file; replacing it"
    owner = provenance.get("run_dir")
    if owner is not None and Path(owner) == Path(run_dir).resolve():
        return None  # this run's own copy
    if owner is None and recorded_out is not None and Path(recorded_out) == out.resolve():
        return None  # this run's --out, written before weights files said where they came from
    if owner is not None and (Path(owner) / BEST_MODEL).is_file() and \
            (Path(owner) / BEST_MODEL).resolve() != out.resolve():
        if in_use(Path(owner)):
            raise RunError(f"--out {str(out)!r} is the copy of the model of run {owner!r}, "
                           "which is training now; choose another --out")
        return (f"--out {str(out)!r}: replacing a copy of the model of run {owner!r} (which "
                f"keeps it in {BEST_MODEL})")
    if replace:
        return f"--out {str(out)!r}: replacing it (--replace-out)"
    if owner is not None and (Path(owner) / BEST_MODEL).resolve() == out.resolve():
        what = f"is the best model of run {owner!r}"
    elif owner is not None:
        what = (f"holds the only copy of the model of run {owner!r} (step "
                f"{provenance.get('step')}), which that run no longer has")
    else:
        what = "holds the only copy of a model that does not say which run made it"
    raise RunError(f"--out {str(out)!r} {what}; choose another --out, or pass --replace-out "
                   "to replace it")
