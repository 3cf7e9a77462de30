"""Checks before a run writes anything: memory, room on disk, leftovers of a killed run, and
the run directory's lock against a second process."""

from __future__ import annotations

import glob
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock
    fcntl = None

from lstm_fn.config import ConfigError
from lstm_fn.config import ModelConfig
from reference_numpy.spec import FORMAT as WEIGHTS_FORMAT

if TYPE_CHECKING:
    from lstm_fn.run import RunSpec


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
        raise ConfigError(f"run directory {str(run_dir)!r} is not a UTF-8 path, and checkpoints "
                          "can only be written under one; choose another --run-dir") from None


# Orbax's own files per checkpoint, beyond the arrays (~130 kB measured for a tiny model).
CHECKPOINT_OVERHEAD = 256 << 10


def check_output_room(spec: RunSpec, cfg: ModelConfig) -> None:
    """Fail before training when the outputs cannot be written."""
    for folder in (Path(os.path.realpath(spec.out)).parent, spec.run_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(f"cannot create the output folder {str(folder)!r}: "
                          f"{error.strerror or error}") from None
        if not os.access(folder, os.W_OK):
            raise OSError(f"cannot write to {str(folder)!r}: permission denied")
        try:  # a real file: permission bits alone can mislead (root, read-only mounts)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise OSError(f"cannot write to {str(folder)!r}: {error.strerror or error}") from None
    # JSON ~12 bytes per parameter; each checkpoint ~3 float32 copies (params, Adam moments)
    # plus orbax's files; one more checkpoint is written before the oldest is deleted. What
    # the run already holds is reused.
    checkpoint_size = cfg.num_params * 12 + CHECKPOINT_OVERHEAD
    needed = (cfg.num_params * 12 + checkpoint_size * (spec.train.keep_checkpoints + 1)
              + (1 << 20) - _size_of(spec.run_dir / "checkpoints"))
    free = shutil.disk_usage(spec.run_dir).free
    if free < needed:
        raise OSError(f"not enough disk space in {str(spec.run_dir)!r}: {_amount(free)} free, "
                      f"this run needs about {_amount(needed)} more")


def _size_of(folder: Path) -> int:
    """Bytes in the files under ``folder`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _amount(size: int) -> str:
    return f"{size >> 20:,} MiB" if size >= 1 << 20 else f"{size >> 10:,} KiB"


def remove_stale_temp_files(spec: RunSpec) -> None:
    """Delete the temp files of atomic writes cut short by a kill -9 (``.NAME.*.tmp``)."""
    for target in (spec.out, spec.run_dir / "config.json", spec.run_dir / "metrics.jsonl"):
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
        raise ConfigError(f"--out {str(out)!r} exists and is not a regular file; give a file "
                          "name")
    for fd, name in ((0, "input"), (1, "output"), (2, "error")):
        try:
            std = os.fstat(fd)
        except OSError:
            continue
        if (std.st_dev, std.st_ino) == (info.st_dev, info.st_ino):
            raise ConfigError(f"--out {str(out)!r} is this command's standard {name}; give a "
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
        raise ConfigError(f"--out {str(out)!r} exists and is not a lstm_fn weights file; give "
                          "another file name (or remove that file first)")


class RunDirLock:
    """An exclusive ``flock`` on the run directory while a run uses it, so a second process
    given the same ``--run-dir`` is refused instead of mixing its checkpoints and metrics
    with the first one's. Released by :meth:`release` (or when the process ends)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.fd = run_dir, None

    def acquire(self) -> None:
        if self.fd is not None or fcntl is None:
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"run directory {str(self.run_dir)!r} is in use by another "
                              "lstm-fn process; wait for it or choose another --run-dir") from None
        except OSError as error:  # a file system without flock (some network mounts)
            os.close(fd)
            print(f"warning: cannot lock run directory {str(self.run_dir)!r} "
                  f"({error.strerror or error}); do not start a second run in it",
                  file=sys.stderr)
            return
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None
