"""The training loop: steps, evaluation, best-model export, checkpoints, samples, signals."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import time
import unicodedata
from pathlib import Path

import jax
import numpy as np

from lstm_fn import checkpoint, data
from lstm_fn.console import Progress, ScoringProgress, Signals, log
from lstm_fn.optim import ValTracker
from lstm_fn.parallel import batch_mesh
from lstm_fn.train import (SAMPLE_STREAM, evaluate, make_train_step, state_layout,
                           stream_key)
from lstm_fn.weights import save_weights
from reference_numpy.atomic import atomic_write


@dataclasses.dataclass
class RunResult:
    status: str  # "done", "interrupted", "nonfinite"
    step: int
    best_val: float | None
    test: dict | None = None
    message: str = ""
    signal: int | None = None  # the signal that interrupted the run
    out: Path | None = None  # where the best model is written

    @property
    def exit_code(self) -> int:
        """0 when finished, 128 + signal number when interrupted, 3 on a non-finite loss."""
        return {"done": 0, "nonfinite": 3}.get(self.status, 128 + (self.signal or 0))


def resume_command(command: str, run_dir) -> str:
    """The command line that continues a run, quoted for the shell."""
    return f"lstm-fn {command} --resume --run-dir {shlex.quote(str(run_dir))}"


def _metrics_log(path, restored_step: int):
    """Open metrics.jsonl for appending, first dropping entries past the restored step (they
    belong to the part of the run that the resume repeats)."""
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                if _step_of(line) is not None and _step_of(line) <= restored_step]
        atomic_write(path, "".join(line + "\n" for line in kept))  # a kill keeps the old file
    return path.open("a", encoding="utf-8")


def _step_of(line: str) -> int | None:
    """The step of a metrics.jsonl line; None for a line cut short by a kill."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, TypeError, KeyError):
        return None
    return step if isinstance(step, int) else None


def train_loop(spec, cfg, tcfg, vocab, state, train_ids, val_ids, test_ids, total_steps):
    """Run updates until a stopping rule, a signal or a non-finite loss; see run.run."""
    ckpt_dir = spec.run_dir / "checkpoints"
    # Restored onto one device whatever layout it was saved from, then laid out for this
    # run's devices: a run may resume on another number of devices.
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device),
                            jax.eval_shape(lambda: state))
    tracker, seconds_before, losses = ValTracker(tcfg), 0.0, []
    saved_best = None  # validation loss of the model at --out (any evaluation, see run_eval)
    evaluated_at = None  # the step of the last evaluation
    with checkpoint.open_manager(ckpt_dir, keep=tcfg.keep_checkpoints) as manager:
        restored = checkpoint.restore(manager, abstract) if spec.resume else None
        if spec.resume and restored is None:
            log("no checkpoint to resume from yet: starting at step 0")
        if restored is not None:
            for step, reason in restored.skipped:
                log(f"checkpoint {step} is damaged ({reason}); using an older one")
            state = restored.state
            tracker = ValTracker(tcfg, **restored.meta["tracker"])
            saved_best = restored.meta.get("saved_best", tracker.best)
            seconds_before = restored.meta["seconds"]
            losses = restored.meta.get("losses", [])  # since the last evaluation
            evaluated_at = restored.meta.get("evaluated_at",
                                             None if losses else restored.step)
            log(f"resumed from checkpoint {restored.step}")
        step = int(state["step"])
        last_ckpt = restored.step if restored is not None else None
        mesh = batch_mesh(tcfg.batch_size)
        if mesh is not None:
            log(f"batch of {tcfg.batch_size} split over {mesh.size} devices")
        train_step = make_train_step(cfg, tcfg, total_steps, mesh)
        # Committed to its devices from the first step: jit compiles again when an argument
        # changes from uncommitted to committed, as the step's outputs and lr_scale do.
        state = jax.device_put(state, one_device if mesh is None else state_layout(mesh))
        metrics_file = _metrics_log(spec.run_dir / "metrics.jsonl", step)
        progress = Progress(total_steps, tcfg.minutes)
        chars_per_step = tcfg.batch_size * tcfg.seq_len
        started, compiled = time.monotonic(), False
        timed = [0, 0.0]  # update steps and their seconds since the last evaluation
        status, message, received = "done", "", None

        def save_checkpoint():
            nonlocal last_ckpt
            if last_ckpt == step:
                return
            meta = {"tracker": tracker.as_dict(), "saved_best": saved_best,
                    "evaluated_at": evaluated_at, "position": step, "losses": losses,
                    "seconds": seconds_before + time.monotonic() - started}
            try:
                checkpoint.save(manager, step, state, meta)
            except Exception as error:
                if not checkpoint.disk_full(error):
                    raise
                last = "none yet" if last_ckpt is None else f"checkpoint {last_ckpt}"
                raise OSError(f"disk full while saving checkpoint {step} in {str(ckpt_dir)!r} "
                              f"(the last complete one: {last}); free some space and continue "
                              f"with `{resume_command(spec.command, spec.run_dir)}`") from None
            last_ckpt = step

        def stop_nonfinite(what: str):
            nonlocal status, message
            status = "nonfinite"
            where = (f"checkpoint {last_ckpt} in {str(ckpt_dir)!r}" if last_ckpt is not None
                     else "no checkpoint yet")
            best = (f"{spec.out} keeps the best model" if spec.out.exists()
                    else "no model was written")
            message = (f"{what} at step {step}; stopped without saving. Last good: {where}; "
                       f"{best}. A resume would repeat the same steps: start a new run "
                       "with a lower --lr or --grad-clip")

        def run_eval(scheduled: bool = True):
            """Evaluate, log, and export the model when it beats the one at --out; False
            (nothing saved) on a non-finite validation loss.

            Only evaluations on the ``eval_every`` schedule feed the tracker (early stopping,
            plateau) and restart the running training loss: the one after a run's last step,
            off the schedule, must not change what a resumed run with a larger limit does.
            """
            nonlocal saved_best, evaluated_at
            evaluated_at = step
            train_loss = float(np.mean(losses)) if losses else float("nan")
            streams = data.eval_streams(len(val_ids) - 1, tcfg.batch_size)
            val = (evaluate(state["params"], cfg, val_ids, streams, tcfg.seq_len,
                            tcfg.eval_chars or None) if len(val_ids) > 1 else train_loss)
            if not math.isfinite(val):
                stop_nonfinite(f"validation loss became {val}")
                return False
            if scheduled:
                tracker.update(val)
                # placed as before: an uncommitted array would make jit compile the step again
                state["lr_scale"] = jax.device_put(jax.numpy.float32(tracker.scale),
                                                   state["lr_scale"].sharding)
                losses.clear()
            improved = saved_best is None or val < saved_best
            if improved:
                save_weights(spec.out, state["params"], cfg, vocab)
                saved_best = val
            elapsed = seconds_before + time.monotonic() - started
            record = {"step": step, "seconds": round(elapsed, 2),
                      "chars_per_sec": round(chars_per_step * timed[0] / max(timed[1], 1e-9)),
                      "train_loss": train_loss, "val_loss": val, "val_bpc": val / math.log(2),
                      "lr": float(last_lr), "best": improved}
            timed[:] = [0, 0.0]
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            progress.newline()
            scored = "val" if len(val_ids) > 1 else "val (no validation split: the training loss)"
            log(f"step {step}: train {train_loss:.4f}, {scored} {val:.4f} nats/char "
                f"({val / math.log(2):.3f} bpc){' *best, saved ' + str(spec.out) if improved else ''}")
            return True

        last_lr = 0.0
        with Signals() as signals:
            while True:
                elapsed = seconds_before + time.monotonic() - started
                if tracker.out_of_patience:  # also a resumed run that had stopped early
                    log(f"no improvement in {tcfg.patience} evaluations: stopping early")
                    break
                if total_steps is not None and step >= total_steps:
                    break
                if tcfg.minutes is not None and time.monotonic() - started >= tcfg.minutes * 60:
                    log(f"time budget of {tcfg.minutes} minutes reached")
                    break
                if signals.received is not None:
                    status, received = "interrupted", signals.received
                    break
                inputs, targets, reset = data.train_batch(train_ids, tcfg.batch_size,
                                                          tcfg.seq_len, step)
                step_started = time.monotonic()
                state, metrics = train_step(state, inputs, targets, reset)
                step += 1
                loss, last_lr = float(metrics["loss"]), float(metrics["lr"])  # waits for it
                if not math.isfinite(loss) or not bool(metrics["params_finite"]):
                    stop_nonfinite(f"loss became {loss}" if not math.isfinite(loss)
                                   else "the parameters became non-finite")
                    break
                losses.append(loss)
                if compiled:
                    timed[0] += 1
                    timed[1] += time.monotonic() - step_started
                else:  # the first step includes compilation
                    compiled = True
                    log(f"first step (compilation included): {time.monotonic() - started:.1f} s")
                rate = chars_per_step * timed[0] / max(timed[1], 1e-9) if timed[0] else None
                progress.show(step, loss, rate, last_lr, elapsed)
                if step % tcfg.eval_every == 0 and not run_eval():
                    break
                if tcfg.sample_every and step % tcfg.sample_every == 0:
                    _show_sample(state["params"], cfg, vocab, train_ids, tcfg, step)
                if step % tcfg.checkpoint_every == 0:
                    save_checkpoint()
            if status == "done" and evaluated_at != step:  # an interrupted run stops at once
                run_eval(scheduled=False)
            if status != "nonfinite":
                save_checkpoint()
        progress.newline()
        metrics_file.close()
    if status == "interrupted":
        message = (f"interrupted at step {step}: checkpoint saved; continue with "
                   f"`{resume_command(spec.command, spec.run_dir)}`")
    test = None
    if status == "done" and len(test_ids) > 1 and spec.out.exists():
        from lstm_fn.weights import load_weights
        best_params, _, _ = load_weights(spec.out)
        streams = data.eval_streams(len(test_ids) - 1, tcfg.batch_size)
        scoring = ScoringProgress(len(test_ids) - 1, "test split: scored")
        test = data.nats_to_metrics(evaluate(best_params, cfg, test_ids, streams, tcfg.seq_len,
                                             on_window=scoring))
        log(f"test split (best model): {test['loss']:.4f} nats/char, {test['bpc']:.3f} bpc, "
            f"perplexity {test['perplexity']:.2f}")
    elif status == "done" and spec.out.exists():
        log(f"test split: {len(test_ids)} character(s), nothing to score; raise "
            "--test-fraction or use a longer corpus")
    try:
        from lstm_fn.plot import plot_run
        plot_run(spec.run_dir)
    except Exception as error:  # a missing plot never fails a finished run
        log(f"loss plot not written: {error}")
    return RunResult(status, step, saved_best, test, message, received, spec.out)


def _show_sample(params, cfg, vocab, train_ids, tcfg, step):
    """Log a sample that continues the training text's first symbol (ids, not text: in
    "bytes" mode that may be part of a character). Control characters other than newline and
    tab are logged as escapes (``\\x1b``): a corpus of terminal output would otherwise send
    escape sequences to the terminal that shows the log (clearing it, moving the cursor), and
    a carriage return would overwrite the line. ``lstm-fn sample`` writes them as they are."""
    from lstm_fn.sample import generate

    prime = np.asarray(train_ids[:1])
    chunks = generate(params, cfg, prime, tcfg.sample_length, temperature=0.8,
                      key=jax.random.fold_in(stream_key(tcfg.seed, SAMPLE_STREAM), step))
    ids = np.concatenate([prime, *(chunk[0] for chunk in chunks)])
    text = "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" and c not in "\n\t" else c
                   for c in vocab.decode(ids))
    log(f"--- sample at step {step} ---\n{text}\n---")
