"""The command line's option tables and types: every :class:`TrainConfig` field and every
model field is an option of ``pretrain`` and ``fine-tune`` (default None, meaning "keep the
config file's value"), so the CLI, the config files and the dataclasses cannot drift apart.
"""

from __future__ import annotations

import click

from lstm_fn.text.corpus import DATA_DIR


# The options of a run of several processes, taken before the command starts (JAX joins the
# other processes before anything else: lstm_fn.cli.setup.join_cluster).
CLUSTER_OPTIONS = ("coordinator", "num_processes", "process_id")


def cluster_options() -> list:
    return [
        click.option("--coordinator", metavar="HOST:PORT",
                     help="A run of several processes (hosts): where process 0 listens; "
                          "every process is given the same [env: LSTM_FN_COORDINATOR; "
                          "SLURM and Open MPI jobs are detected]."),
        click.option("--num-processes", type=click.IntRange(1),
                     help="How many processes the run has [env: LSTM_FN_NUM_PROCESSES]."),
        click.option("--process-id", type=click.IntRange(0),
                     help="This process's number, 0 to --num-processes - 1; process 0 writes "
                          "the run's files [env: LSTM_FN_PROCESS_ID]."),
    ]


class Command(click.Command):
    """A command that runs the set-up its entry point passes as ``obj`` (JAX's devices and
    compilation cache) just before it starts, so ``--help`` never imports JAX."""

    def invoke(self, ctx: click.Context):
        cluster = {k: ctx.params.pop(k) for k in CLUSTER_OPTIONS if k in ctx.params}
        prepare = ctx.find_root().obj
        if callable(prepare):
            prepare(**cluster)
        return super().invoke(ctx)


class UserPath(click.Path):
    """A path option or argument with a leading ``~`` expanded, as the shell does for a
    separate word but not in ``--out=~/x`` (which would make a folder named ``~``)."""

    def convert(self, value, param, ctx):
        import os

        return super().convert(os.path.expanduser(value), param, ctx)


# Command-line spelling and help of TrainConfig fields; every field is an option.
TRAIN_HELP = {
    "batch_size": ("--batch-size", "Parallel streams per step (B)."),
    "seq_len": ("--seq-len", "Characters per window, the BPTT length (T)."),
    "steps": ("--steps", "Stop after this many updates in total."),
    "epochs": ("--epochs", "Stop after this many passes over the training split."),
    "chars": ("--chars", "Stop after training on this many characters (--batch-size x "
              "--seq-len a step)."),
    "minutes": ("--minutes", "Stop after this many minutes of training (a resumed run's "
                "earlier time counts); a decaying --schedule plans to end within them."),
    "optimizer": ("--optimizer", "adam, adamw, sgd (with momentum) or rmsprop."),
    "learning_rate": ("--lr", "Peak learning rate."),
    "weight_decay": ("--weight-decay", "Weight decay: decoupled with adamw, L2 (added to the "
                     "gradient, as torch.optim does) with the others."),
    "momentum": ("--momentum", "Momentum (sgd only)."),
    "grad_clip": ("--grad-clip", "Clip gradients to this global norm (0: off)."),
    "schedule": ("--schedule", "constant; cosine or linear (down to --min-lr-ratio at the last "
                 "step); wsd (constant, then linearly down over the last --decay-fraction); "
                 "exponential; plateau. The decaying ones need a limit."),
    "warmup_steps": ("--warmup-steps", "Linear warmup length, before any schedule."),
    "min_lr_ratio": ("--min-lr-ratio", "cosine, linear, wsd: final rate as a fraction of the "
                     "peak."),
    "decay_fraction": ("--decay-fraction", "wsd: the share of the run spent decaying."),
    "decay_rate": ("--decay-rate", "exponential: factor per --decay-steps."),
    "decay_steps": ("--decay-steps", "exponential: steps per decay."),
    "plateau_factor": ("--plateau-factor", "plateau: factor when validation stalls."),
    "plateau_patience": ("--plateau-patience", "plateau: evaluations without improvement."),
    "patience": ("--patience", "Stop early after this many evaluations without improvement."),
    "eval_every": ("--eval-every", "Evaluate on the validation split every N steps."),
    "eval_chars": ("--eval-chars", "At most this many validation characters per evaluation, "
                   "spread over the split (0: all)."),
    "checkpoint_every": ("--checkpoint-every", "Save a checkpoint every N steps."),
    "keep_checkpoints": ("--keep-checkpoints", "How many recent checkpoints to keep."),
    "sample_every": ("--sample-every", "Print a sample every N steps (0: never)."),
    "sample_length": ("--sample-length", "Length of those samples."),
    "val_fraction": ("--val-fraction", "Share of the corpus held out for validation."),
    "test_fraction": ("--test-fraction", "Share held out for the final test."),
    "vocab": ("--vocab", "chars (distinct characters) or bytes (256 byte values)."),
    "gradients": ("--gradients", "autodiff (jax.grad) or manual (hand-written BPTT)."),
    "matmul_precision": ("--matmul-precision",
                         "float32, bfloat16 (operands, with float32 sums: faster on CPUs with "
                         "bfloat16 instructions and on GPUs), or auto (bfloat16 where this "
                         "machine has them)."),
    "freeze": ("--freeze", "Keep a part fixed: embed, head or a layer number (repeatable)."),
    "seed": ("--seed", "Random seed (init, dropout, samples)."),
}
# Command-line spelling and help of the model fields a config may set.
MODEL_HELP = {
    "cell": ("--cell", "Cell type."),
    "embed_size": ("--embed-size", "Embedding size E."),
    "hidden_size": ("--hidden-size", "Hidden size H."),
    "num_layers": ("--layers", "Number of stacked layers."),
    "dropout": ("--dropout", "Dropout on each layer's output while training."),
}


def _model_options(command, shown: dict):
    """Add one option per model field, default None (= keep the config file's value); the
    help shows ``shown`` where given, else ModelConfig's own default."""
    import dataclasses

    from lstm_fn.config import MODEL_FIELDS
    from lstm_fn.nn.config import ModelConfig
    from reference_numpy.spec import CELLS

    builtin = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
    for name, (flag, text) in reversed(MODEL_HELP.items()):
        kind = click.Choice(CELLS) if name == "cell" else MODEL_FIELDS[name]
        command = click.option(flag, name, type=kind, show_default=False,
                               help=f"{text} [default: {shown.get(name, builtin[name])}]")(command)
    return command


def _train_options(command, defaults: dict):
    """Add one option per TrainConfig field, default None (= keep the config file's value);
    the help shows ``defaults`` (the command's own, see :func:`run_options`) where given."""
    import dataclasses
    import typing

    from lstm_fn.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for field in reversed(dataclasses.fields(TrainConfig)):
        flag, text = TRAIN_HELP[field.name]
        kind = hints[field.name]
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        multiple = typing.get_origin(kind) is tuple
        default = defaults.get(field.name, "none" if field.default is None else (
            "" if multiple else field.default))
        if field.name == "steps" and "steps" in defaults:
            default = f"{default} when no other limit is given"
        command = click.option(
            flag, field.name, type=str if multiple else base, multiple=multiple,
            default=None, show_default=False,
            help=f"{text} [default: {default}]" if default != "" else text)(command)
    return command


def given_train(options: dict) -> dict:
    """The training options as typed, by field name (None: not given, also a repeatable
    option given no times)."""
    return {k: (v or None) if isinstance(v, tuple) else v for k, v in options.items()}


def train_options(defaults: dict):
    """One option per TrainConfig field (see :func:`_train_options`)."""
    return lambda command: _train_options(command, defaults)


def run_options(command_name: str, shown: dict | None = None):
    """The options of a training command (its own train defaults shown in the help, see
    :data:`lstm_fn.config.COMMAND_DEFAULTS`; ``shown``: help-only defaults, e.g.
    fine-tune's vocabulary and architecture)."""
    from lstm_fn.config import COMMAND_DEFAULTS

    defaults = COMMAND_DEFAULTS[command_name]

    def decorate(command):
        command = _model_options(command, {**defaults["model"], **(shown or {})})
        for option in reversed([
            click.argument("corpus", required=False),
            click.option("--config", "config_path", type=UserPath(),
                         help="JSON config with 'model' and 'train' sections, or a built-in "
                              "one by name (quick, shakespeare); options override it."),
            click.option("--run-dir", type=UserPath(file_okay=False),
                         help="Run directory [default: runs/<corpus>-<time>-<process id>]."),
            click.option("--resume", is_flag=True, help="Continue the run in --run-dir exactly."),
            click.option("--data-dir", type=UserPath(file_okay=False), default=DATA_DIR,
                         help="Where corpus names are looked up and fetched to."),
            *cluster_options(),
        ]):
            command = option(command)
        return _train_options(command, {**defaults["train"], **(shown or {})})
    return decorate


def default_run_dir(corpus: str | None):
    """``runs/<corpus>-<time>-<process id>``; the process id keeps runs started in the same
    second apart (a grid search). A corpus file name that is not UTF-8 ("lat\\xe9.txt" from
    a Latin-1 system) has U+FFFD for its bytes there: checkpoints need a UTF-8 path."""
    import os
    import time
    from pathlib import Path

    name = os.fsencode(Path(corpus).stem).decode("utf-8", "replace") if corpus else "pydoc"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def flag(key: str) -> str:
    """The option of a setting named as in a config file (``train.learning_rate``: ``--lr``)."""
    section, name = key.split(".", 1)
    return (TRAIN_HELP if section == "train" else MODEL_HELP)[name][0]


def command_line() -> str:
    """The command as the user typed it: :func:`invoked_as` and this command's arguments."""
    import shlex

    argv = click.get_current_context().meta.get("argv", [])
    return shlex.join([*shlex.split(invoked_as()), *argv])


def invoked_as() -> str:
    """How the user called lstm-fn, for the commands that messages suggest: the script as
    typed (``.venv/bin/lstm-fn``), ``python -m lstm_fn`` or ``python cli.py`` as run;
    ``lstm-fn`` otherwise (the commands called from Python)."""
    import os
    import shlex
    import sys

    script = sys.argv[0] if sys.argv else ""
    original = list(getattr(sys, "orig_argv", []))
    name = os.path.basename(script)
    if name == "__main__.py" and "-m" in original and \
            original[original.index("-m") + 1:][:1] == ["lstm_fn"]:
        return shlex.join(original[:original.index("-m") + 2])
    if name in ("lstm-fn", "cli.py") and script in original:
        return shlex.join(original[:original.index(script) + 1] if name == "cli.py" else [script])
    return "lstm-fn"
