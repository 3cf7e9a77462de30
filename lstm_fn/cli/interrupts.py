"""Ctrl-C at any moment: the SIGINT handler of the command line.

Python raises ``KeyboardInterrupt`` wherever the main thread is when the signal is handled.
If that is inside a garbage-collector callback or a ``__del__`` method, Python prints
"Exception ignored in: ..." with a traceback and carries on, so the interrupt is lost: JAX
registers such a callback (``jax._src.lib._xla_gc_callback``, run at every collection),
and during start-up, with its many collections, an interrupt landed there about half of the
time, and the run went on to the end. Nor may it be raised while a compiled extension module is
being loaded: jaxlib's modules call back into Python as they initialise, and an exception
there ends the process from C++ (a segmentation fault or an abort, with nothing printed).
This handler raises the interrupt only outside such frames; inside one it has the signal
sent again a moment later, from another thread, and it is handled then, once the finalizer
or the module's loading has returned.
"""

from __future__ import annotations

import _thread
import gc
import os
import signal
import sys

# How long a deferred interrupt waits before it is raised again (a gc callback takes
# microseconds).
RETRY_S = 0.01

EXIT_CODE = 128 + signal.SIGINT  # 130, as a shell reports a process ended by Ctrl-C


def install() -> None:
    """Take over SIGINT, unless the process was started with it ignored (a background job
    of a script): that stays as it is."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_interrupt)


_deferred = []  # holds True while an interrupt waits to be raised again


def on_interrupt(signum, frame) -> None:
    if _must_wait(frame):
        # Not from here: a signal asked for in the handler is handled at once, still inside.
        if not _deferred:
            import threading  # only now: nothing but built-in modules before the handler

            _deferred.append(True)
            timer = threading.Timer(RETRY_S, _raise_again, (signum,))
            timer.daemon = True  # never keeps a process that is ending
            timer.start()
        return
    _deferred.clear()
    raise KeyboardInterrupt


def _raise_again(signum: int) -> None:
    if _deferred:
        _deferred.clear()  # it may land in a finalizer again, and be deferred again
        _thread.interrupt_main(signum)


def _must_wait(frame) -> bool:
    """Whether ``frame`` runs (or is called by) a garbage-collector callback or a
    ``__del__`` method, where an exception would be printed and dropped, or the loading of
    a compiled extension module, where it would crash the process."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        code = frame.f_code
        if code in callbacks or code.co_name == "__del__" or (
                code.co_name in ("create_module", "exec_module")
                and type(frame.f_locals.get("self")).__name__ == "ExtensionFileLoader"):
            return True
        frame = frame.f_back
    return False


def leave(code: int) -> None:
    """End an interrupted process now, its output flushed, without Python's finalization:
    an interrupt can leave JAX's runtime half set up, and tearing that down crashed the
    process (a segmentation fault after "interrupted")."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
