"""The training loop: restore or start, step, evaluate and export the best model, checkpoint,
stop, score the test split.

It knows nothing of run directories or consoles: :class:`Training` says what to train and
where the checkpoints and the best model go, and a :class:`~lstm_fn.training.report.Reporter`
hears what happens. Its host-side bookkeeping is one :class:`LoopState`, the only place that
knows the schema of a checkpoint's ``meta``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from lstm_fn.config import TrainConfig
from lstm_fn.errors import RunError
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.generate import generate
from lstm_fn.text.streams import train_batch
from lstm_fn.text.vocab import Vocab
from lstm_fn.training import checkpoint, cluster
from lstm_fn.training.evaluate import Score, score
from lstm_fn.training.optim import ValTracker
from lstm_fn.training.parallel import batch_mesh
from lstm_fn.training.report import Evaluation, Reporter, StepReport, duration
from lstm_fn.training.schedule import (MEASURED_STEPS, REPACE_STEPS, Plan, fixed_plan,
                                       follow_pace, plan_budget, planned, rate, repaced, replan)
from lstm_fn.training.state import SAMPLE_STREAM, TrainState, stream_key
from lstm_fn.training.step import make_train_step, state_layout
from lstm_fn.weights import load_weights, save_weights

# The temperature of the samples shown in the log during training.
LOG_SAMPLE_TEMPERATURE = 0.8
# Why a run stops (RunResult.reason), as the processes of a run tell each other by number.
STOP_REASONS = ("steps", "minutes", "patience", "signal", "nonfinite")


@dataclasses.dataclass(frozen=True)
class Training:
    """What to train: the model and its settings, the splits (int ids ``[N]`` each), how
    many steps in all (None: no step limit), the checkpoint folder, where the best model is
    exported (JSON weights, with ``provenance`` and the step and validation loss it was
    saved at), and whether to resume from the newest checkpoint."""

    cfg: ModelConfig
    tcfg: TrainConfig
    vocab: Vocab
    train_ids: np.ndarray
    val_ids: np.ndarray
    test_ids: np.ndarray
    total_steps: int | None
    checkpoints: Path
    best_model: Path
    resume: bool = False
    provenance: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunResult:
    """How a run ended: ``status`` "done", "interrupted" (by ``signal``) or "nonfinite"
    (``message`` says what, and what was kept); ``reason`` why it stopped ("steps",
    "minutes", "patience", "signal" or "nonfinite"); ``model`` is where the best model is."""

    status: str
    reason: str
    step: int
    best_val: float | None
    model: Path
    test: Score | None = None
    message: str = ""
    signal: int | None = None
    last_checkpoint: int | None = None
    seconds: float = 0.0  # of training in all, earlier processes of a resumed run included


@dataclasses.dataclass
class LoopState:
    """The loop's host-side bookkeeping, saved in every checkpoint's ``meta``.

    ``tracker``: best validation loss, evaluations since, the plateau scale; ``saved_best``:
    the validation loss of the exported model (any evaluation, scheduled or not);
    ``evaluated_at``: the step of the last evaluation; ``losses``: training losses since the
    last scheduled evaluation; ``seconds_before``: training time of earlier processes;
    ``last_checkpoint``: the step of the newest checkpoint; ``plan``: the schedule's length
    and decay, once decided. ``timed`` (update steps and their seconds since the last
    evaluation) is this process's alone.
    """

    tracker: ValTracker
    saved_best: float | None = None
    evaluated_at: int | None = None
    losses: list = dataclasses.field(default_factory=list)
    seconds_before: float = 0.0
    last_checkpoint: int | None = None
    plan: Plan | None = None
    timed: list = dataclasses.field(default_factory=lambda: [0, 0.0])

    def to_meta(self, step: int, seconds: float) -> dict:
        """The ``meta`` of a checkpoint at ``step`` after ``seconds`` of training in all."""
        return {"tracker": self.tracker.as_dict(), "saved_best": self.saved_best,
                "evaluated_at": self.evaluated_at, "position": step, "losses": self.losses,
                "seconds": seconds, "plan": None if self.plan is None else self.plan.as_meta()}

    @classmethod
    def from_meta(cls, meta: dict, tcfg: TrainConfig, step: int) -> LoopState:
        """The bookkeeping a checkpoint at ``step`` saved; the keys a checkpoint of an older
        version lacks take what that version meant."""
        tracker = ValTracker(tcfg, **meta["tracker"])
        losses = meta.get("losses", [])
        return cls(tracker, saved_best=meta.get("saved_best", tracker.best),
                   evaluated_at=meta.get("evaluated_at", None if losses else step),
                   losses=losses, seconds_before=meta["seconds"], last_checkpoint=step,
                   plan=Plan.from_meta(meta.get("plan")))


def train_loop(job: Training, params: dict, reporter: Reporter | None = None,
               clock: Callable[[], float] | None = None) -> RunResult:
    """Train ``job`` from ``params`` (or from its newest checkpoint when it resumes) until a
    stopping rule, a signal the reporter passes on, or a non-finite loss.

    ``clock`` gives seconds (default ``time.monotonic``); a test may pass its own.
    """
    reporter, clock = reporter or Reporter(), clock or time.monotonic
    with checkpoint.open_manager(job.checkpoints, keep=job.tcfg.keep_checkpoints) as manager:
        loop = _Loop(job, manager, reporter, clock)
        # copies: the step donates the state's buffers, which must not be the caller's
        loop.restore_or_start(TrainState.fresh(
            jax.tree.map(lambda a: jax.numpy.array(a, copy=True), params), job.cfg, job.tcfg))
        with reporter.stop_signals() as received:
            loop.run(received)
            loop.finish(received)
    reporter.finished()
    result = loop.result()
    if result.status == "done":  # by every process of a run of several, each its share
        result.test = score_test_split(job, reporter)
    return result


def score_test_split(job: Training, reporter: Reporter) -> Score | None:
    """The exported best model's score on the test split (None where there is nothing to
    score: no such split, or no model)."""
    if not cluster.from_primary(float(job.best_model.exists())):  # as process 0 sees it
        return None
    if len(job.test_ids) < 2 and job.tcfg.test_fraction == 0:
        reporter.note("no test split (test fraction 0): score a held-out text with "
                      "`lstm-fn eval TEXT --from RUN_DIR`")
        return None
    if len(job.test_ids) < 2:
        reporter.note(f"test split: {len(job.test_ids)} character(s), nothing to score; raise "
                      "--test-fraction or use a longer corpus")
        return None
    params, _, _ = load_weights(job.best_model)
    test = score(params, job.cfg, job.test_ids, job.tcfg.batch_size, job.tcfg.seq_len,
                 on_window=reporter.scoring(len(job.test_ids) - 1, "test split: scored"))
    reporter.note(f"test split (best model): {test.loss:.4f} nats/char, {test.bpc:.3f} bpc, "
                  f"perplexity {test.perplexity:.2f}")
    return test


class _Loop:
    """One process's part of a run: the training state on its devices and the bookkeeping,
    changed step by step by the methods below (each one step of the algorithm)."""

    def __init__(self, job: Training, manager, reporter: Reporter, clock: Callable[[], float]):
        self.job, self.manager, self.reporter, self.clock = job, manager, reporter, clock
        self.book = LoopState(ValTracker(job.tcfg))
        self.status, self.message, self.signal, self.last_lr = "done", "", None, 0.0
        self.reason = "steps"
        self.started, self.step_timed, self.pace_from = clock(), False, None
        self.plan_from = None  # (step, clock) where this process planned a budget's decay

    @property
    def step(self) -> int:
        return int(self.state.step)

    def seconds(self) -> float:
        """Training time in all, earlier processes of a resumed run included."""
        return self.book.seconds_before + self.clock() - self.started

    def restore_or_start(self, fresh: TrainState) -> None:
        """Take the newest intact checkpoint (on a resume), else ``fresh``; compile the step
        for this process's devices and put the state there."""
        state, job = fresh, self.job
        if job.resume:
            state = self._restored(fresh)
        self.mesh = mesh = batch_mesh(job.tcfg.batch_size)
        if mesh is not None:
            across = (f" of {cluster.processes()} processes" if cluster.processes() > 1
                      else "")
            self.reporter.note(f"batch of {job.tcfg.batch_size} split over {mesh.size} "
                               f"devices{across}")
        self.rows = cluster.local_rows(mesh, job.tcfg.batch_size)
        self.train_step = make_train_step(job.cfg, job.tcfg, mesh)
        if cluster.processes() > 1:  # placed from host values, the same on every process
            state = jax.device_get(state)
        # Committed to its devices from the first step: jit compiles again when an argument
        # changes from uncommitted to committed, as the step's outputs and lr_scale do.
        self.state = jax.device_put(state, _one_device() if mesh is None else state_layout(mesh))
        self.book.plan = (fixed_plan(job.tcfg, job.total_steps) if self.book.plan is None
                          else replan(job.tcfg, self.book.plan, self.step, self.seconds(),
                                      job.total_steps))
        self.reporter.started(self.step, self.total_steps(), job.tcfg.minutes)

    def total_steps(self) -> int | None:
        """Where the run ends, in steps, when that is known: its step limit, or the end its
        time budget's plan chose."""
        return self.job.total_steps if self.book.plan is None else self.book.plan.total_steps

    def _restored(self, fresh: TrainState) -> TrainState:
        # Restored onto one device whatever layout it was saved from, then laid out for this
        # run's devices: a run may resume on another number of devices.
        restored = checkpoint.restore(self.manager, checkpoint.abstract_of(fresh.as_tree))
        if restored is None:
            self.reporter.note("no checkpoint to resume from yet: starting at step 0")
            return fresh
        for step, reason in restored.skipped:
            self.reporter.note(f"checkpoint {step} is damaged ({reason}); using an older one")
        self.book = LoopState.from_meta(restored.meta, self.job.tcfg, restored.step)
        self.reporter.note(f"resumed from checkpoint {restored.step}")
        return TrainState.from_tree(restored.state)

    def run(self, received: Callable[[], int | None]) -> None:
        """Step until a stopping rule, a signal or a non-finite value."""
        tcfg = self.job.tcfg
        while (decision := self.decide(received))[0] is None:
            if not self.train_one_step(decision[1]):
                return
            if self.step % tcfg.eval_every == 0 and not self.evaluate_and_export():
                return
            if tcfg.sample_every and self.step % tcfg.sample_every == 0:
                self.show_sample()
            if self.step % tcfg.checkpoint_every == 0:
                self.save_checkpoint()
            self.plan_schedule()
        self.reason = decision[0]
        if self.reason == "signal":
            self.status = "interrupted"

    def decide(self, received: Callable[[], int | None]) -> tuple[str | None, float]:
        """Why training stops before the next step (None: go on), and the next step's
        learning rate. In a run of several processes, process 0 decides both for all (its
        clock plans the schedule and ends the budget), and a signal any process received
        stops them all."""
        reason = self.stop_reason(received)
        lr = rate(self.job.tcfg, self.book.plan, self.step)
        signal = received() or 0
        if cluster.processes() > 1:
            rows = cluster.gather([STOP_REASONS.index(reason) if reason else -1, signal, lr])
            signal = cluster.first_signal(rows[:, 1])
            reason = "signal" if signal else (STOP_REASONS[int(rows[0, 0])]
                                             if rows[0, 0] >= 0 else None)
            lr = float(rows[0, 2])
        if reason == "signal":
            self.signal = signal
        return reason, lr

    def stop_reason(self, received: Callable[[], int | None]) -> str | None:
        """Why training stops before the next step, or None to go on."""
        tcfg = self.job.tcfg
        if self.book.tracker.out_of_patience:  # also a resumed run that had stopped early
            self.reporter.note(f"no improvement in {tcfg.patience} evaluations: stopping early")
            return "patience"
        end = self.total_steps()
        if end is not None and self.step >= end:
            planned = self.book.plan is not None and self.book.plan.minutes is not None
            return "minutes" if planned and end != self.job.total_steps else "steps"
        if tcfg.minutes is not None and self.seconds() >= tcfg.minutes * 60:
            self.reporter.note(f"time budget of {tcfg.minutes} minutes reached")
            return "minutes"
        if received() is not None:
            return "signal"
        return None

    def train_one_step(self, lr: float) -> bool:
        """One update at rate ``lr``; False (nothing kept) when the loss or a parameter is
        not finite. This process builds the windows of its own streams only."""
        tcfg = self.job.tcfg
        inputs, targets, reset = train_batch(self.job.train_ids, tcfg.batch_size, tcfg.seq_len,
                                             self.step, self.rows)
        inputs, targets = (cluster.global_batch(self.mesh, part) for part in (inputs, targets))
        began = self.clock()
        self.state, metrics = self.train_step(self.state, inputs, targets, reset,
                                              np.float32(lr))
        loss, self.last_lr = float(metrics["loss"]), float(metrics["lr"])  # waits for the step
        if not math.isfinite(loss) or not bool(metrics["params_finite"]):
            self.stop_nonfinite(f"loss became {loss}" if not math.isfinite(loss)
                                else "the parameters became non-finite")
            return False
        self.book.losses.append(loss)
        self._time_step(began)
        timed_steps, timed_seconds = self.book.timed
        pace = (tcfg.batch_size * tcfg.seq_len * timed_steps / max(timed_seconds, 1e-9)
                if timed_steps else None)
        self.reporter.step(StepReport(self.step, loss, pace, self.last_lr, self.seconds()))
        return True

    def _time_step(self, began: float) -> None:
        """Count the step's seconds towards the pace, except a process's first step, which
        compiles."""
        if self.step_timed:
            self.book.timed[0] += 1
            self.book.timed[1] += self.clock() - began
        else:
            self.step_timed = True
            self.reporter.note(f"first step (compilation included): "
                               f"{self.clock() - self.started:.1f} s")

    def plan_schedule(self) -> None:
        """Once it is time: fix the length of a decaying schedule that a time budget bounds,
        from the pace of this process's steps since its first (evaluations, checkpoints and
        samples included), and say what was planned; during the decay, follow a pace that
        changed; and for a run of known length, say once how long it should take."""
        job, book = self.job, self.book
        if self.pace_from is None:  # the first step of a process compiles: measured from here
            self.pace_from = self.plan_from = (self.step, self.clock())
        if self.step <= self.pace_from[0]:
            return
        timed = self.step - self.pace_from[0]
        per_step = (self.clock() - self.pace_from[1]) / timed
        if job.tcfg.minutes is not None and (book.plan is None
                                             or book.plan.seconds_per_step is None):
            plan = plan_budget(job.tcfg, self.step, self.seconds(), per_step, job.total_steps,
                               timed)
            if plan is not None and (book.plan is None or (
                    plan.total_steps < book.plan.total_steps and self.step < book.plan.decay_from)):
                book.plan, self.plan_from = plan, (self.step, self.clock())  # the budget ends first
                self.reporter.note(planned(job.tcfg, plan))
        elif book.plan is not None and self.step - self.plan_from[0] >= REPACE_STEPS:
            in_decay = (self.clock() - self.plan_from[1]) / (self.step - self.plan_from[0])
            plan = follow_pace(job.tcfg, book.plan, self.step, self.seconds(), in_decay,
                               job.total_steps)
            if plan is not None:
                book.plan = plan
                self.reporter.note(repaced(job.tcfg, plan))
        if timed == MEASURED_STEPS and (end := self.total_steps()) is not None:
            self.reporter.note(f"at the pace of the last {timed} steps, the {end - self.step:,} "
                               f"steps left take about {duration(per_step * (end - self.step))}")

    def evaluate_and_export(self, scheduled: bool = True) -> bool:
        """Evaluate, report, and export the model when it beats the exported one; False
        (nothing saved) on a non-finite validation loss.

        Only evaluations on the ``eval_every`` schedule feed the tracker (early stopping,
        plateau) and restart the running training loss: the one after a run's last step,
        off the schedule, must not change what a resumed run with a larger limit does.
        """
        job, book = self.job, self.book
        book.evaluated_at = self.step
        train_loss = float(np.mean(book.losses)) if book.losses else float("nan")
        val = (score(cluster.local(self.state.params), job.cfg, job.val_ids,
                     job.tcfg.batch_size, job.tcfg.seq_len, job.tcfg.eval_chars or None)
               if len(job.val_ids) > 1 else Score.of(train_loss))
        if cluster.processes() > 1:  # process 0's number for all (the same, split or not)
            val = Score.of(cluster.from_primary(val.loss))
        if not math.isfinite(val.loss):
            self.stop_nonfinite(f"validation loss became {val.loss}")
            return False
        if scheduled:
            book.tracker.update(val.loss)
            # placed as before: an uncommitted array would make jit compile the step again
            self.state = self.state._replace(lr_scale=jax.device_put(
                np.float32(book.tracker.scale), self.state.lr_scale.sharding))
            book.losses.clear()
        # a best model that is gone (removed, or a run of lstm_fn 0.1.0, which kept it at
        # --out only) is written again by the next evaluation
        improved = (book.saved_best is None or val.loss < book.saved_best
                    or cluster.primary() and not job.best_model.exists())
        if improved:
            if cluster.primary():
                self.export(val.loss)
            book.saved_best = val.loss
        timed_steps, timed_seconds = book.timed
        chars = job.tcfg.batch_size * job.tcfg.seq_len * timed_steps
        evaluation = Evaluation(self.step, round(self.seconds(), 2),
                                round(chars / max(timed_seconds, 1e-9)), train_loss, val.loss,
                                val.bpc, self.last_lr, improved)
        book.timed = [0, 0.0]
        self.reporter.evaluated(evaluation, len(job.val_ids) < 2,
                                str(job.best_model) if improved else None)
        return True

    def export(self, val_loss: float) -> None:
        """Write the model as the best so far, with where it came from; a write that fails
        (a full disk) is a RunError naming the file."""
        job = self.job
        provenance = {**job.provenance, "step": self.step, "val_loss": val_loss,
                      "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            save_weights(job.best_model, cluster.local(self.state.params), job.cfg, job.vocab,
                         provenance)
        except OSError as error:
            raise RunError(f"cannot write the best model {str(job.best_model)!r} "
                           f"({error.strerror or error}); the checkpoints are whole: free "
                           "some space and continue", resumable=True) from None

    def show_sample(self) -> None:
        """Report a sample that continues the training text's first symbol (ids, not text:
        in "bytes" mode that may be part of a character)."""
        if not cluster.primary():
            return
        job, prime = self.job, np.asarray(self.job.train_ids[:1])
        key = jax.random.fold_in(stream_key(job.tcfg.seed, SAMPLE_STREAM), self.step)
        chunks = generate(cluster.local(self.state.params), job.cfg, prime,
                          job.tcfg.sample_length, temperature=LOG_SAMPLE_TEMPERATURE, key=key)
        self.reporter.sampled(self.step, job.vocab.decode(
            np.concatenate([prime, *(chunk[0] for chunk in chunks)])))

    def save_checkpoint(self) -> None:
        """A checkpoint at this step (none when there is one already); a full disk is a
        RunError naming the folder and the last complete checkpoint."""
        book = self.book
        if book.last_checkpoint == self.step:
            return
        try:
            checkpoint.save(self.manager, self.step, self.state.as_tree(),
                            book.to_meta(self.step, self.seconds()))
        except Exception as error:
            if not checkpoint.disk_full(error):
                raise
            last = ("none yet" if book.last_checkpoint is None
                    else f"checkpoint {book.last_checkpoint}")
            raise RunError(f"disk full while saving checkpoint {self.step} in "
                           f"{str(self.job.checkpoints)!r} (the last complete one: {last}); "
                           "free some space and continue", resumable=True) from None
        book.last_checkpoint = self.step

    def stop_nonfinite(self, what: str) -> None:
        book, job = self.book, self.job
        where = (f"checkpoint {book.last_checkpoint} in {str(job.checkpoints)!r}"
                 if book.last_checkpoint is not None else "no checkpoint yet")
        best = (f"{job.best_model} keeps the best model" if job.best_model.exists()
                else "no model was written")
        self.status = self.reason = "nonfinite"
        self.message = (f"{what} at step {self.step}; stopped without saving. Last good: "
                        f"{where}; {best}. A resume would repeat the same steps: start a new "
                        "run with a lower --lr or --grad-clip")

    def finish(self, received: Callable[[], int | None]) -> None:
        """After the last step: a last evaluation when the schedule did not just make one
        (not for an interrupted run, which stops at once), and a checkpoint. A signal that
        arrives meanwhile makes the run interrupted: the test split is not scored."""
        if self.status == "done" and self.book.evaluated_at != self.step:
            self.evaluate_and_export(scheduled=False)
        if self.status != "nonfinite":
            self.save_checkpoint()
        # a signal that this process, or any process of the run, received
        signal = cluster.first_signal(cluster.gather([received() or 0])[:, 0])
        if self.status == "done" and signal:
            self.status, self.reason, self.signal = "interrupted", "signal", signal

    def result(self) -> RunResult:
        return RunResult(self.status, self.reason, self.step, self.book.saved_best,
                         self.job.best_model, None, self.message, self.signal,
                         self.book.last_checkpoint, self.seconds())


def _one_device():
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
