"""Ctrl-C at any moment: the SIGINT handler of the command line.

Python raises ``KeyboardInterrupt`` wherever the main thread is when the signal is handled,
and some places lose it:

- a garbage-collector callback or a ``__del__`` method: Python prints "Exception ignored
  in: ..." and carries on. JAX registers such a callback (``_xla_gc_callback``, run at every
  collection); during start-up, with its many collections, an interrupt landed there about
  half of the time, and the run went on to the end;
- the loading of a compiled extension module: jaxlib's and numpy's modules call back into
  Python as they initialise, and an exception there crashed the process from C++ (a
  segmentation fault or an abort, nothing printed), became an ``ImportError``, or vanished;
- C and C++ code that clears the errors of the Python it calls (binding libraries trying
  one overload after another do), so the exception never arrives.

So this handler raises the interrupt only outside the first two kinds of frame; inside one
it has the signal sent again a moment later, from another thread, and it is handled then.
And an interrupt it raised is owed until the code that catches it says so (:func:`taken`):
if a second later nothing has, it was lost on the way, and the signal is sent again.
"""

from __future__ import annotations

import gc
import os
import signal
import sys

# How long a deferred interrupt waits before it is raised again (a gc callback takes
# microseconds), and how long a raised one may take to reach the code that ends the
# process before it counts as lost.
RETRY_S = 0.01
LOST_S = 1.0

EXIT_CODE = 128 + signal.SIGINT  # 130, as a shell reports a process ended by Ctrl-C


def install() -> None:
    """Take over SIGINT, unless the process was started with it ignored (a background job
    of a script): that stays as it is."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_interrupt)


# owed: an interrupt has not reached the code that ends the process yet; timer: a sending
# again is set
_state = {"owed": False, "timer": False}


def on_interrupt(signum, frame) -> None:
    waiting = _must_wait(frame)
    _state["owed"] = True
    if not _state["timer"]:
        # Not from here: a signal asked for in the handler is handled at once, still inside.
        import threading  # only now: nothing but built-in modules before the handler

        _state["timer"] = True
        timer = threading.Timer(RETRY_S if waiting else LOST_S, _send_again, (signum,))
        timer.daemon = True  # never keeps a process that is ending
        timer.start()
    if not waiting:
        raise KeyboardInterrupt


def taken() -> None:
    """The interrupt has reached the code that ends the process: it is no longer owed."""
    _state["owed"] = False


def _send_again(signum: int) -> None:
    _state["timer"] = False
    if _state["owed"]:
        _state["owed"] = False  # the handler owes it again if it is ours that takes it
        # A real signal, to the main thread: it also wakes a wait there (a sleep, a lock),
        # which _thread.interrupt_main does not.
        import threading

        signal.pthread_kill(threading.main_thread().ident, signum)


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
    """End the process now, its output flushed, without Python's finalization: an interrupt
    can leave JAX's runtime half set up, and tearing that down crashed the process (a
    segmentation fault after "interrupted"); a run of several processes that lost one
    would wait at JAX's shutdown for it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
