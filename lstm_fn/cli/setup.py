"""What the command line sets up before a command runs: the standard streams, JAX's devices
and backend, and the persistent compilation cache.

A setting that cannot be used is one line on stderr and exit code 2, as bad input to a
command is.
"""

from __future__ import annotations

import errno
import io
import os
import sys

# More CPU devices than this only cost start-up time and memory (each has its own buffers).
MAX_CPU_DEVICES = 256


def prepare_process() -> None:
    """What every invocation needs first, ``--help`` too; JAX is not imported."""
    from lstm_fn.cli.host import reuse_freed_memory

    standard_streams()
    reuse_freed_memory()  # before JAX's first computation starts its threads


def prepare_jax() -> None:
    """What a command needs before its first JAX computation, in the order JAX needs it."""
    use_cpu_devices()  # before JAX fixes its devices
    enable_compilation_cache()
    check_backend()


def refuse(message: str) -> None:
    """End the process as a refused command does: ``Error: message`` on stderr, exit 2."""
    from lstm_fn.cli.errors import BAD_INPUT

    print(f"Error: {message}", file=sys.stderr)
    sys.exit(BAD_INPUT)


class ClosedStdout(io.TextIOBase):
    """Stands in for a closed stdout (``lstm-fn eval ... >&-``): writing a result ends the
    command as a closed pipe does, instead of losing it silently."""

    encoding = "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "stdout is closed")


def standard_streams() -> None:
    """Give closed standard streams something to stand for.

    A closed descriptor 0, 1 or 2 gets /dev/null, so that no file opened later receives it
    (and with it whatever a library writes to stdout or stderr). A closed stderr takes the
    logs to /dev/null (training runs on, unlogged); a closed stdout is :class:`ClosedStdout`.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:  # closed; with the lower ones open, the lowest free descriptor is fd
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")
    if sys.stdout is None:
        sys.stdout = ClosedStdout()
    utf8_stdout()


def utf8_stdout() -> None:
    """Write stdout as UTF-8, and a file name's bytes that are not UTF-8 as those bytes.

    Samples and symbol lists of CJK or emoji text failed at their first character on a
    Latin-1 or Windows code-page stdout (``PYTHONIOENCODING=latin-1``), and a name such as
    "lat\\xe9.txt" (lone surrogates once decoded) on a strict UTF-8 one. A UTF-16 or
    UTF-32 stdout is left as it is; stderr keeps its encoding (Python escapes there)."""
    import codecs

    encoding = getattr(sys.stdout, "encoding", None)
    if not isinstance(sys.stdout, io.TextIOWrapper) or not encoding:
        return
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        name = ""
    if name.startswith("utf") and name != "utf-8":
        return
    try:
        sys.stdout.reconfigure(encoding="utf-8", errors="surrogateescape")
    except (OSError, ValueError):  # a stream that cannot change its encoding: leave it
        pass


def use_cpu_devices() -> None:
    """``LSTM_FN_CPU_DEVICES=N``: present N CPU cores to JAX as devices (1 to 256)."""
    from lstm_fn.training.parallel import use_cpu_cores

    devices = os.environ.get("LSTM_FN_CPU_DEVICES")
    if not devices:
        return
    if not devices.isdigit() or not 1 <= int(devices) <= MAX_CPU_DEVICES:
        refuse(f"LSTM_FN_CPU_DEVICES must be a whole number from 1 to {MAX_CPU_DEVICES}, "
               f"got {devices!r}")
    use_cpu_cores(int(devices))


def enable_compilation_cache() -> None:
    """Keep compiled programs on disk so a second run with the same shapes starts at once.

    The folder is ``$LSTM_FN_CACHE`` or ``~/.cache/lstm_fn/jax``; one that cannot be
    written leaves the cache off, with a one-line warning (JAX's own are many lines each)."""
    import tempfile

    import jax

    cache = os.path.expanduser(os.environ.get("LSTM_FN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "lstm_fn", "jax"))
    try:
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache):  # a real file: permission bits can mislead
            pass
    except OSError as error:
        print(f"warning: compilation cache {cache!r} is not writable "
              f"({error.strerror or error}); compiling without it", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def check_backend() -> None:
    """Refuse a ``JAX_PLATFORMS`` that names no platform JAX can start here (JAX's own error
    is a long traceback at the first computation; without the variable it falls back to the
    CPU)."""
    import jax

    platforms = os.environ.get("JAX_PLATFORMS")
    if not platforms:
        return
    try:
        jax.devices()
    except Exception as error:  # RuntimeError, or a bare AssertionError when none is found
        reason = str(error).splitlines()[0] if str(error) else "no such platform here"
        refuse(f"JAX_PLATFORMS={platforms!r}: JAX cannot start a backend ({reason})")
