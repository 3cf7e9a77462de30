"""A training run in a run directory: pretrain, fine-tune and resume are this one path.

``run_dir`` holds ``config.json``, ``metrics.jsonl`` and ``end.json``
(:mod:`lstm_fn.runs.records`), ``train.log``, ``checkpoints/`` (orbax, for exact resume),
``model.json`` (the best model by validation loss, with where it came from) and
``loss.png``; ``--out`` gets a copy of each new best model.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path
from typing import NamedTuple

import jax

from lstm_fn.errors import LstmFnError, RunError
from lstm_fn.nn.model import init, log_frequencies
from lstm_fn.runs import checks, records
from lstm_fn.runs.lock import RunDirLock
from lstm_fn.runs.plan import RunPlan, RunRequest, existing_run, plan_run
from lstm_fn.runs.recorder import Recorder
from lstm_fn.training import cluster
from lstm_fn.training.loop import RunResult, Training, train_loop
from lstm_fn.training.report import Reporter


class RunEnd(NamedTuple):
    """How a run ended, and the lines that say so (also the last lines of ``train.log``)."""

    result: RunResult
    closing: list


def run(request: RunRequest, reporter: Reporter | None = None) -> RunEnd:
    """Train (or fine-tune, or resume) as ``request`` says, reporting to ``reporter``.

    Everything is checked before anything is written (:func:`lstm_fn.runs.plan.plan_run`);
    while the run uses its directory it holds its lock.
    """
    reporter = reporter or Reporter()
    lock = RunDirLock(request.run_dir)
    try:
        if request.run_dir.is_dir() and cluster.primary():
            lock.acquire()  # a second process is refused before it reads anything
        plan = planned_everywhere(request)
        if not cluster.primary():
            return follow_run(plan, reporter)
        return start_run(plan, lock, reporter)
    finally:
        lock.release()


def planned_everywhere(request: RunRequest) -> RunPlan:
    """:func:`plan_run`; in a run of several processes, on each (all stop when one refuses,
    that one saying why), and all must read the same corpus. Nothing is written before
    every process has planned."""
    if cluster.processes() == 1:
        return plan_run(request)
    try:
        plan, error = plan_run(request), None
    except LstmFnError as refused:
        plan, error = None, refused
    failed = cluster.failed(error is None)
    if error is not None:
        raise error
    if failed:
        raise RunError(f"process {failed[0]} refused the run (its own message says why)")
    cluster.check_same_corpus(plan.digest)
    return plan


def follow_run(plan: RunPlan, reporter: Reporter) -> RunEnd:
    """A process other than 0 of a run of several: it trains its part and writes nothing
    but its part of the checkpoints (process 0 writes the rest)."""
    share_run_dir(plan.request.run_dir)
    return RunEnd(train_loop(*training_of(plan), reporter), [])


def share_run_dir(run_dir: Path) -> None:
    """Every process of a run must see the run directory process 0 writes: the checkpoints
    are written into it by all of them."""
    cluster.barrier("run directory written")
    unseen = cluster.failed((run_dir / records.CONFIG).exists())
    if unseen:
        raise RunError(f"process {unseen[0]} does not see {str(run_dir / records.CONFIG)!r}, "
                       "which process 0 wrote: every process of a run needs the run "
                       "directory on a filesystem they share")


def start_run(plan: RunPlan, lock: RunDirLock, reporter: Reporter) -> RunEnd:
    """Make the run's folders, take the lock, write its record, train, and record the end."""
    request, run_dir = plan.request, plan.request.run_dir
    checks.make_output_folders(plan.out or run_dir / records.BEST_MODEL, run_dir)
    checks.check_output_room(run_dir, plan.cfg, plan.tcfg.keep_checkpoints)
    lock.acquire()  # the folder exists now; before anything in it is touched
    if plan.record is None:
        existing_run(request)  # again: another run may have started and ended since
    checks.remove_stale_temp_files(*(p for p in (plan.out, run_dir / records.BEST_MODEL,
                                                 run_dir / records.CONFIG,
                                                 run_dir / records.METRICS) if p is not None))
    (run_dir / records.END).unlink(missing_ok=True)
    recorder = Recorder(run_dir, reporter, (plan.out,) if plan.out else ())
    try:
        return _train(plan, lock, recorder)
    finally:
        recorder.close()


def _train(plan: RunPlan, lock: RunDirLock, recorder: Recorder) -> RunEnd:
    run_dir = plan.request.run_dir
    for line in (lock.warning, f"run directory: {run_dir}", plan.out_note):
        if line:
            recorder.note(line)  # after the checks: a refusal stays one line
    best = run_dir / records.BEST_MODEL
    if plan.record is not None and plan.out is not None and best.exists():
        recorder.copy_best(best)  # a new --out starts with the run's own best so far
    # Written again on a resume: a later plain --resume keeps its --out and stopping rules.
    records.write_record(run_dir / records.CONFIG, record_of(plan))
    if cluster.processes() > 1:
        share_run_dir(run_dir)
    report_start(plan, recorder)
    result = train_loop(*training_of(plan), recorder)
    plot = _plot(run_dir, recorder)
    records.write_end(run_dir, end_of(result))
    closing = closing_lines(result, plan, plot)
    for line in closing:
        recorder.to_log(line)
    return RunEnd(result, closing)


def training_of(plan: RunPlan) -> tuple[Training, dict]:
    """What the loop trains, and the parameters it starts from (a fresh run's: drawn from
    its seed, the head bias at the training split's character frequencies)."""
    run_dir = plan.request.run_dir
    train_ids, val_ids, test_ids = plan.splits
    params = plan.params
    if params is None:
        params = init(jax.random.key(plan.tcfg.seed), plan.cfg,
                      head_bias=log_frequencies(train_ids, plan.cfg.vocab_size))
    provenance = {"run_dir": str(run_dir.resolve()), "corpus_sha256": plan.digest,
                  "command": plan.request.command_line or plan.request.command}
    job = Training(plan.cfg, plan.tcfg, plan.vocab, train_ids, val_ids, test_ids,
                   plan.total_steps, run_dir / "checkpoints", run_dir / records.BEST_MODEL,
                   plan.request.resume, provenance)
    return job, params


def _plot(run_dir: Path, reporter: Reporter) -> Path | None:
    try:
        from lstm_fn.runs.plot import plot_run

        return plot_run(run_dir)
    except Exception as error:  # a missing plot never fails a finished run
        reporter.note(f"loss plot not written: {error}")
        return None


def end_of(result: RunResult) -> dict:
    """The run's ``end.json``: finished (a limit reached) or stopped, and why."""
    return {"status": "finished" if result.reason in ("steps", "minutes") else "stopped",
            "reason": result.reason, "step": result.step, "best_val": result.best_val,
            "test": None if result.test is None else result.test.loss,
            "seconds": round(result.seconds, 2), "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def closing_lines(result: RunResult, plan: RunPlan, plot: Path | None) -> list[str]:
    """What the run says last: where its model and plot are and how to sample from it, or
    how to continue an interrupted run."""
    request = plan.request
    if result.status == "interrupted":
        return [f"interrupted at step {result.step}: checkpoint saved; continue with "
                f"`{request.resume_command()}`"]
    if result.status != "done":
        return [result.message]
    if not result.model.exists() and result.best_val is None:
        return [f"no model written: no evaluation has run (the run's checkpoints: "
                f"{request.run_dir / 'checkpoints'})"]
    if not result.model.exists():
        return [f"no model at {result.model}: it was removed after the run's best evaluation "
                f"({result.best_val:.4f} nats/char); the next evaluation of a resumed run "
                "writes one"]
    copied = f", copied to {plan.out}" if plan.out is not None else ""
    lines = [f"best model: {result.model} (validation {result.best_val:.4f} nats/char){copied}"]
    if plot is not None:
        lines.append(f"loss plot: {plot}")
    lines.append(f"sample from it: {request.program} sample --from "
                 f"{shlex.quote(str(request.run_dir))}")
    return lines


def record_of(plan: RunPlan) -> dict:
    """The run's ``config.json``."""
    base = (records.absolute(plan.base_path) if plan.base_path else
            (plan.record or {}).get("base"))
    return {"command": plan.request.command, "command_line": plan.request.command_line,
            "corpus": plan.corpus_at, "corpus_sha256": plan.digest,
            "out": records.absolute(plan.out), "base": base, "model": plan.cfg.section(),
            "train": dataclasses.asdict(plan.tcfg), "sources": plan.config.sources,
            "vocab": list(plan.vocab.symbols), "encoding": plan.vocab.encoding}


def report_start(plan: RunPlan, reporter: Reporter) -> None:
    """The run's first lines: the corpus and model, and what the user should know."""
    cfg, tcfg = plan.cfg, plan.tcfg
    train_ids, val_ids, test_ids = plan.splits
    reporter.note(f"corpus {plan.corpus.name}: {sum(map(len, plan.splits)):,} symbols, "
                  f"vocabulary {len(plan.vocab)}, splits {len(train_ids):,}/{len(val_ids):,}/"
                  f"{len(test_ids):,}; model {cfg.cell} {cfg.num_layers}x{cfg.hidden_size}, "
                  f"{cfg.num_params:,} parameters")
    if plan.added:
        more = f" and {len(plan.added) - 40} more" if len(plan.added) > 40 else ""
        reporter.note(f"vocabulary: added {len(plan.added)} new character(s): "
                      + " ".join(repr(c) for c in plan.added[:40]) + more)
    if plan.added and "head" in tcfg.freeze:
        reporter.note(f"warning: --freeze head keeps the output weights of the "
                      f"{len(plan.added)} new character(s) at their start, so the model will "
                      "rarely produce them")
    if len(val_ids) < 2:
        reporter.note("warning: the validation split is empty, so the best model is chosen "
                      "by the training loss; raise --val-fraction or use a longer corpus")
