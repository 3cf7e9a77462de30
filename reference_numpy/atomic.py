"""Atomic file replacement: a reader (or a crash) never sees a half-written file."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` so that ``path`` is always either the old whole file or the new one.
    The new file keeps the old one's permissions (else the umask's); through a symbolic
    link, the file it points to is replaced and the link kept.

    A temp file in the same folder is written and fsynced, renamed over ``path`` (atomic on
    POSIX and Windows), then the folder is fsynced so the rename survives a power cut. On
    any failure (disk full, exception) the temp file is removed and ``path`` is untouched.
    Where the OS allows (Linux ``O_TMPFILE``) the temp file has no name until it is whole,
    so even a kill -9 mid-write leaves no partial file behind; elsewhere a kill -9 can leave
    a ``.NAME.*.tmp`` file, which the next run removes.
    """
    path = Path(path)
    if path.is_symlink():  # replace the file it points to and keep the link
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    mode = _mode_for(path)
    tmp = _write_unnamed(path, payload) or _write_named(path, payload)
    try:
        os.chmod(tmp, mode)  # temp files are created 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _mode_for(path: Path) -> int:
    """The permission bits the new file gets: those of the file it replaces, else what a
    plain ``open(path, "w")`` would give under the current umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _write_named(path: Path, payload: bytes) -> str:
    """The whole payload in a new fsynced ``.NAME.*.tmp`` file beside ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _write_unnamed(path: Path, payload: bytes) -> str | None:
    """Like :func:`_write_named`, but written as an unnamed ``O_TMPFILE`` that is linked to
    its temp name only once whole; None where the OS or file system cannot do that."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError:  # e.g. a file system without O_TMPFILE
        return None
    with os.fdopen(fd, "wb") as f:  # a failure here (disk full) leaves nothing behind
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
        name = f".{path.name}.{secrets.token_hex(6)}.tmp"
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:  # a dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW), which links the file
            os.link(f"/proc/self/fd/{f.fileno()}", name, dst_dir_fd=dir_fd,
                    follow_symlinks=True)
        except OSError:
            return None
        finally:
            os.close(dir_fd)
    return str(path.parent / name)
