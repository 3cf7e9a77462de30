"""Ctrl-C at any moment of a command, in real processes: exit 130 (or death by SIGINT,
which a shell reports as 130 too), at most one line, no traceback, nothing half-written,
never a run that goes on.

The one exception is Python's own start-up, before the first line of lstm_fn runs (its
first ~0.02 s here, longer on a loaded machine): there the interrupt is Python's, which may
print its own traceback ("Fatal Python error: init_import_site", exit 1); the command still
ends.
"""

import json
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import lstm_fn
from conftest import TINY, Child, default_sigint, lstm_fn_command

PACKAGE = str(Path(lstm_fn.__file__).parent)
# From before Python has started to the middle of training (start-up takes ~1-3 s here:
# imports, JAX's set-up, the corpus, the first compile).
DELAYS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0]


def interrupt_after(delay: float, args: list, env: dict) -> tuple[int, str]:
    proc = subprocess.Popen(lstm_fn_command(*args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint())
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
    return proc.returncode, stderr


@pytest.mark.slow
def test_ctrl_c_at_any_moment_stops_a_training_run(tmp_path, short_corpus, env):
    runs = {delay: tmp_path / f"run-{delay}" for delay in DELAYS}
    with ThreadPoolExecutor(2) as pool:
        outcomes = dict(zip(DELAYS, pool.map(
            lambda delay: interrupt_after(delay, ["pretrain", short_corpus, *TINY, "--steps",
                                                  "1000000", "--run-dir", runs[delay]], env),
            DELAYS)))
    for delay, (code, stderr) in outcomes.items():
        shown = f"after {delay} s: exit {code}\n{stderr}"
        assert code != 0 and "Exception ignored" not in stderr, shown
        if "Traceback" in stderr:  # Python's own start-up, before lstm_fn's first line
            assert PACKAGE not in stderr and "KeyboardInterrupt" in stderr, shown
            continue
        assert code in (130, -signal.SIGINT), shown
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        assert last == "" or last == "interrupted" or last.startswith(
            "interrupted at step"), shown
        run = runs[delay]
        assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")], shown
        if (run / "config.json").exists():
            json.loads((run / "config.json").read_text())  # whole
    # and once training runs, whenever that is on this machine
    child = Child(["pretrain", short_corpus, *TINY, "--steps", "1000000", "--run-dir",
                   tmp_path / "training"], env)
    child.wait_for("| loss")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130, child.stderr
    assert child.stderr.splitlines()[-1].startswith("interrupted at step"), child.stderr


def test_ctrl_c_while_sampling_stops_it(finished_run, env):
    code, stderr = interrupt_after(2.0, ["sample", "--from", finished_run / "run",
                                         "--length", "100000000"], env)
    assert code in (130, -signal.SIGINT) and "Traceback" not in stderr, stderr


# Imports JAX with SIGINT raised from inside the first Python function that a compiled
# extension module calls while it initialises (numpy's and jaxlib's build enums there).
INTERRUPTED_WHILE_LOADING_AN_EXTENSION = textwrap.dedent("""
    import os, signal, sys, time
    from lstm_fn.cli import interrupts

    def loading_an_extension(frame):
        while frame is not None:
            if type(frame.f_locals.get("self")).__name__ == "ExtensionFileLoader":
                return True
            frame = frame.f_back
        return False

    def profile(frame, event, arg):
        called_by_the_module = not frame.f_code.co_filename.startswith("<frozen")
        if event == "call" and called_by_the_module and loading_an_extension(frame):
            sys.setprofile(None)
            print("signal sent", file=sys.stderr)
            signal.raise_signal(signal.SIGINT)

    interrupts.install()
    sys.setprofile(profile)
    try:
        import jax
        time.sleep(10)  # as the command would go on: a late interrupt still counts
        print("went on", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        os._exit(130)
""")


def test_ctrl_c_while_an_extension_module_loads_waits_until_it_has_loaded(env):
    """Raised inside a compiled module's initialisation, the interrupt became an ImportError
    or crashed the process from C++ (no line at all); it is raised once the module is in."""
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_WHILE_LOADING_AN_EXTENSION],
                          env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=default_sigint())
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines() == ["signal sent", "interrupted"], done.stderr


LOST_ON_THE_WAY = textwrap.dedent("""
    import os, signal, sys, time
    from lstm_fn.cli import interrupts

    interrupts.install()
    try:
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # as C code that clears the errors of the Python it calls loses it
        print("lost", file=sys.stderr)
        time.sleep(10)
        print("went on", file=sys.stderr)
    except KeyboardInterrupt:
        interrupts.taken()
        print("interrupted", file=sys.stderr)
        os._exit(130)
""")


def test_an_interrupt_lost_on_the_way_is_sent_again():
    done = subprocess.run([sys.executable, "-c", LOST_ON_THE_WAY], capture_output=True,
                          text=True, timeout=60, preexec_fn=default_sigint())
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines() == ["lost", "interrupted"], done.stderr
