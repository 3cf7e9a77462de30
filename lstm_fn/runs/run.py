"""A training run in a run directory: pretrain, fine-tune and resume are this one path.

``run_dir`` holds ``config.json`` (:mod:`lstm_fn.runs.records`), ``checkpoints/`` (orbax,
for exact resume), ``metrics.jsonl`` (one evaluation a line) and ``loss.png``; the best
model by validation loss is written as JSON weights to ``out``.
"""

from __future__ import annotations

import dataclasses

import jax

from lstm_fn.nn.model import init
from lstm_fn.runs import checks, records, resume
from lstm_fn.runs.lock import RunDirLock
from lstm_fn.runs.plan import DEFAULT_OUT, RunPlan, RunRequest, existing_run, plan_run
from lstm_fn.training.loop import RunResult, Training, train_loop
from lstm_fn.training.report import Reporter


def run(request: RunRequest, reporter: Reporter | None = None) -> RunResult:
    """Train (or fine-tune, or resume) as ``request`` says, reporting to ``reporter``.

    Everything is checked before anything is written (:func:`lstm_fn.runs.plan.plan_run`);
    while the run uses its directory it holds its lock.
    """
    reporter = reporter or Reporter()
    lock = RunDirLock(request.run_dir)
    try:
        if request.run_dir.is_dir():
            lock.acquire()  # a second process is refused before it reads anything
        return start_run(plan_run(request), lock, reporter)
    finally:
        lock.release()


def start_run(plan: RunPlan, lock: RunDirLock, reporter: Reporter) -> RunResult:
    """Make the run's folders, take the lock, write its record and train."""
    request = plan.request
    run_dir = request.run_dir
    checks.make_output_folders(plan.out, run_dir)
    checks.check_output_room(run_dir, plan.cfg, plan.tcfg.keep_checkpoints)
    lock.acquire()  # the folder exists now; before anything in it is touched
    if lock.warning:
        reporter.note(lock.warning)
    if plan.record is None:
        existing_run(request)  # again: another run may have started and ended since
    checks.remove_stale_temp_files(plan.out, run_dir / records.CONFIG, run_dir / records.METRICS)
    reporter.note(f"run directory: {run_dir}")  # after the checks: a refusal stays one line
    if plan.record is not None and (copied := resume.keep_best_at_new_out(
            plan.out, DEFAULT_OUT[request.command], plan.record)):
        reporter.note(copied)
    # Written again on a resume: a later plain --resume keeps its --out and stopping rules.
    records.write_record(run_dir / records.CONFIG, record_of(plan))
    report_start(plan, reporter)
    params = plan.params if plan.params is not None else init(jax.random.key(plan.tcfg.seed),
                                                                plan.cfg)
    train_ids, val_ids, test_ids = plan.splits
    job = Training(plan.cfg, plan.tcfg, plan.vocab, train_ids, val_ids, test_ids,
                   plan.total_steps, run_dir / "checkpoints", plan.out, request.resume)
    result = train_loop(job, params, records.Recorder(run_dir, reporter))
    try:
        from lstm_fn.runs.plot import plot_run

        plot_run(run_dir)
    except Exception as error:  # a missing plot never fails a finished run
        reporter.note(f"loss plot not written: {error}")
    return result


def record_of(plan: RunPlan) -> dict:
    """The run's ``config.json``."""
    base = (records.absolute(plan.base_path) if plan.base_path else
            (plan.record or {}).get("base"))
    return {"command": plan.request.command, "corpus": plan.corpus_at,
            "corpus_sha256": plan.digest, "out": records.absolute(plan.out), "base": base,
            "model": plan.cfg.section(), "train": dataclasses.asdict(plan.tcfg),
            "sources": plan.config.sources, "vocab": list(plan.vocab.symbols),
            "encoding": plan.vocab.encoding}


def report_start(plan: RunPlan, reporter: Reporter) -> None:
    """The run's first lines: the corpus and model, and what the user should know."""
    cfg, tcfg = plan.cfg, plan.tcfg
    train_ids, val_ids, test_ids = plan.splits
    reporter.note(f"corpus {plan.corpus.name}: {sum(map(len, plan.splits)):,} symbols, "
                  f"vocabulary {len(plan.vocab)}, splits {len(train_ids):,}/{len(val_ids):,}/"
                  f"{len(test_ids):,}; model {cfg.cell} {cfg.num_layers}x{cfg.hidden_size}, "
                  f"{cfg.num_params:,} parameters")
    if plan.added:
        reporter.note(f"vocabulary: added {len(plan.added)} new character(s): "
                      + " ".join(repr(c) for c in plan.added[:40]))
    if plan.added and "head" in tcfg.freeze:
        reporter.note(f"warning: --freeze head keeps the output weights of the "
                      f"{len(plan.added)} new character(s) at their start, so the model will "
                      "rarely produce them")
    if len(val_ids) < 2:
        reporter.note("warning: the validation split is empty, so the best model is chosen "
                      "by the training loss; raise --val-fraction or use a longer corpus")
