"""How a run stops when something happens between two steps, in-process: parameters that
became non-finite under a finite loss, and SIGTERM (the subprocess cases, kill -9, a NaN
loss and Ctrl-C, are in test_kill.py and test_faults.py)."""

import os
import signal

import numpy as np

from conftest import TINY, checkpoint_steps, invoke, metrics


def _after_step(monkeypatch, at: int, act) -> None:
    """Make the training loop's step call ``act(metrics)`` after update ``at`` and return
    what it returns as the step's metrics."""
    from lstm_fn.training import loop

    make_train_step = loop.make_train_step

    def wrapped(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def run(state, *batch):
            state, step_metrics = step(state, *batch)
            return state, (act(step_metrics) if int(state.step) == at else step_metrics)
        return run

    monkeypatch.setattr(loop, "make_train_step", wrapped)


def test_parameters_that_became_non_finite_stop_the_run_like_a_nan_loss(tmp_path, short_corpus,
                                                                        monkeypatch):
    """A step whose loss is finite but whose update left a non-finite parameter
    (``params_finite`` false) stops the run at once, as a NaN loss does: exit 3, the step
    named, nothing saved from it. The flag is forced here at step 3."""
    _after_step(monkeypatch, 3, lambda step_metrics: {**step_metrics, "params_finite": np.False_})
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "6", "--eval-every", "2",
                    "--checkpoint-every", "2", "--run-dir", tmp_path / "run",
                    "--out", tmp_path / "m.json")
    assert result.exit_code == 3, result.output
    assert "the parameters became non-finite at step 3; stopped without saving. Last good: " \
           "checkpoint 2" in result.stderr, result.stderr
    assert checkpoint_steps(tmp_path / "run") == [2]
    assert [row["step"] for row in metrics(tmp_path / "run")] == [2]


def test_an_interrupted_run_checkpoints_and_stops_without_evaluating(tmp_path, short_corpus,
                                                                     monkeypatch):
    """SIGTERM between steps (sent here by the process to itself after step 3): a checkpoint
    at that step, exit 128 + 15, and no evaluation or test-split scoring after the last
    step, which a finished run does (the run stops at once)."""
    def terminate(step_metrics):
        os.kill(os.getpid(), signal.SIGTERM)  # recorded by the loop's handler
        return step_metrics

    _after_step(monkeypatch, 3, terminate)
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "6", "--eval-every", "2",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "interrupted at step 3: checkpoint saved" in result.stderr, result.stderr
    assert checkpoint_steps(tmp_path / "run") == [3]
    assert [row["step"] for row in metrics(tmp_path / "run")] == [2]
    assert "test split" not in result.stderr
