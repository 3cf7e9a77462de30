"""What the command line sets up before a command runs: the standard streams, JAX's devices
and backend, and the persistent compilation cache.

A setting that cannot be used is one line on stderr and exit code 2, as bad input to a
command is.
"""

from __future__ import annotations

import contextlib
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


def prepare_jax(**cluster) -> None:
    """What a command needs before its first JAX computation, in the order JAX needs it;
    ``cluster``: a training command's ``--coordinator``, ``--num-processes`` and
    ``--process-id`` (see :func:`join_cluster`)."""
    use_cpu_devices()  # before JAX fixes its devices
    join_cluster(**cluster)  # before JAX starts its backend
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


# Seconds to reach the coordinator and the other processes of a run; without a heartbeat
# from a process before the others give it up; and at exit, for the others to finish
# (process 0 scores the test split alone) (JAX's defaults: 300, 100 and 300).
JOIN_TIMEOUT, HEARTBEAT_TIMEOUT, EXIT_TIMEOUT = 25, 30, 1800
# Seconds a process that ends on an error waits for the others to end with it.
LEAVE_TIMEOUT = 10


def join_cluster(coordinator: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None) -> None:
    """Join a run of several processes (``jax.distributed.initialize``), as the options, or
    ``LSTM_FN_COORDINATOR``, ``LSTM_FN_NUM_PROCESSES`` and ``LSTM_FN_PROCESS_ID``, say; with
    none of them, a job that SLURM or Open MPI started as several tasks is joined as JAX
    detects it. Nothing to do for one process. CPU devices talk over gloo (TCP)."""
    import jax

    coordinator = coordinator or os.environ.get("LSTM_FN_COORDINATOR") or None
    num_processes = num_processes or _whole_number("LSTM_FN_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _whole_number("LSTM_FN_PROCESS_ID")
    given = {"--coordinator": coordinator, "--num-processes": num_processes,
             "--process-id": process_id}
    if all(value is None for value in given.values()):
        if not _launched_as_tasks():
            return
        where, settings = "the cluster's launcher", {}
    else:
        missing = [name for name, value in given.items() if value is None]
        if missing:
            refuse(f"a run of several processes needs --coordinator, --num-processes and "
                   f"--process-id (or their LSTM_FN_ variables): {', '.join(missing)} missing")
        if not 0 <= process_id < num_processes:
            refuse(f"--process-id {process_id} is not one of 0..{num_processes - 1} "
                   f"(--num-processes {num_processes})")
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            refuse(f"--coordinator {coordinator!r} is not HOST:PORT")
        if num_processes == 1:
            return
        _check_coordinator(host, int(port), process_id)
        where = f"{coordinator} as process {process_id} of {num_processes}"
        settings = {"coordinator_address": coordinator, "num_processes": num_processes,
                    "process_id": process_id}
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a JAX whose CPU collectives need no choosing
        pass
    try:
        jax.distributed.initialize(**settings, initialization_timeout=JOIN_TIMEOUT,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT,
                                   shutdown_timeout_seconds=EXIT_TIMEOUT)
    except Exception as error:  # unreachable, a port in use, a process that never came
        from lstm_fn.cli.errors import first_line

        refuse(f"cannot join the run at {where}: {first_line(error)[:300]}")
    from lstm_fn.training import cluster

    if coordinator:
        cluster.COORDINATOR["address"] = coordinator
    # The first collective connects the processes, and gloo says so on stdout: not there.
    with _stdout_to_null():
        cluster.barrier("joined")


def leave_cluster(code: int) -> None:
    """Before a process of a run of several exits on an error: leave the run with the
    others if they end too (the same error everywhere); else, after :data:`LEAVE_TIMEOUT`
    seconds, exit at once (``os._exit``) rather than wait at JAX's exit for processes that
    wait for this one, so that their collectives fail and they stop."""
    import threading

    jax = sys.modules.get("jax")  # a run is joined after JAX is imported, never before
    if jax is None or not jax.distributed.is_initialized():
        return
    left = threading.Event()

    def leave():
        jax.distributed.shutdown()
        left.set()

    threading.Thread(target=leave, daemon=True).start()
    if not left.wait(LEAVE_TIMEOUT):
        from lstm_fn.cli import interrupts

        interrupts.leave(code)


def _check_coordinator(host: str, port: int, process_id: int) -> None:
    """Refuse what JAX's runtime would answer with an abort or a crash: process 0's port
    taken by another program; no process 0 listening, for the others (they wait up to
    :data:`JOIN_TIMEOUT` seconds for it)."""
    import socket
    import time

    if process_id == 0:
        try:
            with socket.create_server(("", port), reuse_port=False):
                pass
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            refuse(f"--coordinator port {port} cannot be listened on here ({reason}): "
                   "process 0 listens there; choose a free port")
        return
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        try:
            socket.create_connection((host.strip("[]"), port), timeout=2).close()
            return
        except OSError as error:
            if time.monotonic() > deadline:
                refuse(f"nothing answers at --coordinator {host}:{port} after {JOIN_TIMEOUT} s "
                       f"({error.strerror or error}): start process 0 there, or check the "
                       "address")
            time.sleep(0.5)


@contextlib.contextmanager
def _stdout_to_null():
    """File descriptor 1 points at /dev/null meanwhile (what C++ code writes there, too)."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _whole_number(variable: str) -> int | None:
    value = os.environ.get(variable)
    if not value:
        return None
    if not value.isdigit():
        refuse(f"{variable} must be a whole number, got {value!r}")
    return int(value)


def _launched_as_tasks() -> bool:
    """Whether SLURM (``srun``) or Open MPI (``mpirun``) started this as one of several
    tasks."""
    for variable in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 1 and (variable != "SLURM_NTASKS"
                                                   or os.environ.get("SLURM_STEP_ID")):
            return True
    return False


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
