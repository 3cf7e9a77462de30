"""Shared test set-up: exact float32 matmuls, tolerances stated once, small problems."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# Tests run in two worker processes (pyproject's addopts) and start more: on a GPU, none of
# them may take the usual 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np
import pytest
from click.testing import CliRunner

from reference_numpy import spec

# GPUs default to TF32 matmuls; comparisons of numbers need true float32.
jax.config.update("jax_default_matmul_precision", "float32")

# Tolerances, justified once:
# - float32 forward vs a float64 reference over ~20 steps: rounding of ~1e-7 per op grows
#   a little through the recurrence; 1e-5 absolute on O(1) logits leaves a wide margin
#   over what we see (~1e-6) while catching any real convention error (>= 1e-2).
F32_ATOL = 1e-5
# Two float32 computations of the same quantity in a different order.
F32_RTOL = 1e-5

CELLS = spec.CELLS
SHARED_SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def lr(tcfg, step: int = 0):
    """The learning rate a training step gets at ``step`` of a run of known length (the
    loop computes it on the host; these tests call the step themselves)."""
    from lstm_fn.training.schedule import fixed_plan, rate

    return np.float32(rate(tcfg, fixed_plan(tcfg, tcfg.steps), step))


def assert_close(a, b, atol=F32_ATOL, rtol=F32_RTOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               atol=atol, rtol=rtol)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """CLI subprocesses share one persistent compilation cache for the session, outside
    the user's home."""
    path = os.environ.setdefault("LSTM_FN_CACHE", str(tmp_path_factory.mktemp("jax-cache")))
    return path


# A tiny model for CLI tests: a training step takes a few milliseconds on a CPU.
TINY = ["--cell", "lstm", "--embed-size", "8", "--hidden-size", "32", "--layers", "2",
        "--batch-size", "4", "--seq-len", "16", "--sample-every", "0"]


def corpus_text(seed=0, n=6000, alphabet="abcdefgh \n.,"):
    """A small corpus with structure a tiny model can pick up (repeated words)."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list(alphabet[:8]), size=rng.integers(2, 6))) for _ in range(30)]
    text = []
    while sum(map(len, text)) < n:
        text.append(" ".join(rng.choice(words, size=8)) + rng.choice([".\n", ",\n"]))
    return "".join(text)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return path


def lstm_fn_command(*args) -> list[str]:
    """The real console command, as a subprocess argument list."""
    return [sys.executable, "-m", "lstm_fn", *map(str, args)]


def lstm_fn(*args, timeout=300, **kwargs):
    """Run the real console command in a subprocess; text output captured."""
    return subprocess.run(lstm_fn_command(*args), text=True, capture_output=True,
                          timeout=timeout, **kwargs)


# ------------------------------------------------------- CLI checks run in-process (click)

# One batch of the TINY model needs 4 * 16 + 1 = 65 characters.
SHORT_TEXT = "the cat sat on the mat.\nthe dog ate the hat,\n" * 40


def invoke(*args):
    """Run the click command in-process; stderr is kept apart from stdout."""
    from lstm_fn.cli.app import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_refused(result, *needles):
    """Exit 2, exactly one ``Error:`` line on stderr containing every needle, no traceback."""
    shown = f"exit {result.exit_code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.exit_code == 2, shown + f"\nexception: {result.exception!r}"
    assert isinstance(result.exception, SystemExit), shown  # not an uncaught exception
    assert "Traceback" not in result.output, shown
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, shown
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def listing(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (to show that nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def short_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "good.txt"
    path.write_text(SHORT_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    """An untrained TINY model over SHORT_TEXT's characters (no training needed to load it)."""
    import lstm_fn

    vocab = lstm_fn.Vocab.from_text(SHORT_TEXT)
    cfg = lstm_fn.ModelConfig("lstm", len(vocab), embed_size=8, hidden_size=32, num_layers=2)
    path = tmp_path_factory.mktemp("model") / "model.json"
    lstm_fn.save_weights(path, lstm_fn.init(jax.random.key(0), cfg), cfg, vocab)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, short_corpus):
    """A real (very short) pretraining run: run directory, checkpoint and best model."""
    work = tmp_path_factory.mktemp("run")
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--eval-every", "2",
                    "--run-dir", work / "run", "--out", work / "model.json")
    assert result.exit_code == 0, result.output
    return work


def checkpoint_steps(run_dir) -> list[int]:
    """The steps of a run directory's complete checkpoints, oldest first ([] for none)."""
    folder = run_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.exists() else []


def last_checkpoint(run_dir) -> int:
    """The newest checkpoint step in a run directory."""
    return checkpoint_steps(run_dir)[-1]


def metrics(run) -> list[dict]:
    """The records of a run directory's metrics.jsonl."""
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def two_step_run(tmp_path, corpus) -> list:
    """Train 2 steps (one evaluation, one checkpoint) into tmp_path/run; its run options."""
    run = ["--run-dir", tmp_path / "run", "--eval-every", "2"]
    result = invoke("pretrain", corpus, *TINY, "--steps", "2", *run, "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    return run


# ------------------------------------------------ the console command in a subprocess, live

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment: one persistent compile cache for the whole module, so only
    its first process compiles."""
    cache = os.environ.get("LSTM_FN_CACHE") or str(tmp_path_factory.mktemp("jaxcache"))
    return {**os.environ, "LSTM_FN_CACHE": cache}


def _restore_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def default_sigint():
    """A ``preexec_fn`` that gives a child Ctrl-C at its default disposition where the test
    runner ignores it (a process started with SIGINT ignored keeps ignoring it); None where
    it does not: exec resets a handled signal anyway, and a fork of a process that runs JAX
    is best avoided."""
    import signal

    return _restore_sigint if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else None


class Child:
    """The console command in a subprocess, its stderr lines collected with time stamps."""

    def __init__(self, args, env):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(lstm_fn_command(*args), env=env, text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=default_sigint())
        self.lines = []  # (seconds since start, line)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic() - self.started, line))

    def wait_for(self, text, timeout=120.0) -> float | None:
        """Seconds since start at which a stderr line holding ``text`` appeared; None if the
        process ended first."""
        deadline = time.monotonic() + timeout
        while True:
            for at, line in list(self.lines):
                if text in line:
                    return at
            if self.proc.poll() is not None:
                self.reader.join(5)
                hits = [at for at, line in self.lines if text in line]
                return hits[0] if hits else None
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.stderr}"
            time.sleep(0.005)

    def sleep_until(self, seconds_since_start: float) -> None:
        """Sleep until then, or until the process ends."""
        while time.monotonic() - self.started < seconds_since_start and self.proc.poll() is None:
            time.sleep(0.002)

    def finish(self, timeout=300) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)


def assert_same_model(a, b) -> None:
    """Two weights files hold the same model bit for bit, saved at the same step with the
    same validation loss (their run directories and times may differ)."""
    from reference_numpy.weights import read_weights_file

    first, second = read_weights_file(a), read_weights_file(b)
    assert (first.model, first.vocab, first.encoding) == (second.model, second.vocab,
                                                          second.encoding)
    for x, y in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
        assert x.tobytes() == y.tobytes()
    for key in ("step", "val_loss"):
        assert first.provenance.get(key) == second.provenance.get(key), key
