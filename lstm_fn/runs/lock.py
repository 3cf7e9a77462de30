"""The run directory's lock: one process at a time in a run directory."""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock
    fcntl = None

from lstm_fn.errors import RunError


class RunDirLock:
    """An exclusive ``flock`` on the run directory while a run uses it, so a second process
    given the same ``--run-dir`` is refused instead of mixing its checkpoints and metrics
    with the first one's. Released by :meth:`release` (or when the process ends)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.fd, self.warning = run_dir, None, None

    def acquire(self) -> None:
        """Take the lock (the folder must exist); RunError when another process holds it.
        Where the file system cannot lock, :attr:`warning` says so and the run goes on."""
        if self.fd is not None or fcntl is None:
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunError(f"run directory {str(self.run_dir)!r} is in use by another "
                           "lstm-fn process; wait for it or choose another --run-dir") from None
        except OSError as error:  # a file system without flock (some network mounts)
            os.close(fd)
            self.warning = (f"warning: cannot lock run directory {str(self.run_dir)!r} "
                            f"({error.strerror or error}); do not start a second run in it")
            return
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None


def in_use(run_dir: Path) -> bool:
    """Whether a process holds the lock of ``run_dir`` (a run is training in it now)."""
    if fcntl is None or not Path(run_dir).is_dir():
        return False
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no locks on this file system: nothing tells
        return False
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False
