"""Options shared by ``pretrain`` and ``fine-tune``, and the code that runs them.

Every :class:`TrainConfig` field is an option (default None, meaning "keep the config file's
value"), so the CLI, the config files and the dataclass cannot drift apart.
"""

from __future__ import annotations

import contextlib
import sys

import click


class BadInput(click.ClickException):
    """Bad input from the user: one line on stderr, exit code 2."""

    exit_code = 2


class Command(click.Command):
    """A command that runs the set-up its entry point passes as ``obj`` (JAX's devices and
    compilation cache) just before it starts, so ``--help`` never imports JAX."""

    def invoke(self, ctx: click.Context):
        prepare = ctx.find_root().obj
        if callable(prepare):
            prepare()
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
    "minutes": ("--minutes", "Stop after this much wall-clock time (this invocation)."),
    "optimizer": ("--optimizer", "adam, adamw, sgd (with momentum) or rmsprop."),
    "learning_rate": ("--lr", "Peak learning rate."),
    "weight_decay": ("--weight-decay", "Weight decay: decoupled with adamw, L2 (added to the "
                     "gradient, as torch.optim does) with the others."),
    "momentum": ("--momentum", "Momentum (sgd only)."),
    "grad_clip": ("--grad-clip", "Clip gradients to this global norm (0: off)."),
    "schedule": ("--schedule", "constant, cosine (down to --min-lr-ratio at the last step; "
                 "needs --steps or --epochs), exponential, plateau."),
    "warmup_steps": ("--warmup-steps", "Linear warmup length, before any schedule."),
    "min_lr_ratio": ("--min-lr-ratio", "cosine: final rate as a fraction of the peak."),
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
                         "float32, or bfloat16 operands with float32 sums (faster on AMX CPUs "
                         "and GPUs)."),
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

    from lstm_fn.config import MODEL_FIELDS, ModelConfig

    builtin = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
    for name, (flag, text) in reversed(MODEL_HELP.items()):
        kind = click.Choice(["rnn", "lstm", "gru"]) if name == "cell" else MODEL_FIELDS[name]
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
            default = f"{default} when neither --epochs nor --minutes is given"
        command = click.option(
            flag, field.name, type=str if multiple else base, multiple=multiple,
            default=None, show_default=False,
            help=f"{text} [default: {default}]" if default != "" else text)(command)
    return command


def run_options(defaults: dict, shown: dict | None = None):
    """The options of a training command whose own train defaults are ``defaults``
    (``shown``: help-only defaults, e.g. fine-tune's vocabulary and architecture)."""
    def decorate(command):
        command = _model_options(command, shown or {})
        for option in reversed([
            click.argument("corpus", required=False),
            click.option("--config", "config_path", type=UserPath(),
                         help="JSON config with 'model' and 'train' sections, or a built-in "
                              "one by name (quick, shakespeare); options override it."),
            click.option("--run-dir", type=UserPath(file_okay=False),
                         help="Run directory [default: runs/<corpus>-<time>-<process id>]."),
            click.option("--resume", is_flag=True, help="Continue the run in --run-dir exactly."),
            click.option("--data-dir", type=UserPath(file_okay=False), default="data",
                         help="Where corpus names are looked up and fetched to."),
        ]):
            command = option(command)
        return _train_options(command, {**defaults, **(shown or {})})
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


def run_command(command, corpus, config_path, run_dir, out, resume, data_dir, base_path,
                defaults, options):
    """Resolve config file + options and run the training loop; exits with its code.

    ``defaults`` are the command's own train defaults; its ``steps`` only applies when no
    stopping rule (steps, epochs, minutes) is given anywhere."""
    import os
    from pathlib import Path

    from lstm_fn.config import STOPPING_RULES, ConfigError, config_file, read_config_file, resolve
    from lstm_fn.run import RunSpec, run

    if out is not None and out.endswith(("/", os.sep)):
        raise ConfigError(f"--out {out!r} is a folder; give a file name")
    model_keys = ("cell", "embed_size", "hidden_size", "num_layers", "dropout")
    model_overrides = {k: options.pop(k) for k in model_keys}
    train_overrides = {k: (v or None) if isinstance(v, tuple) else v for k, v in options.items()}
    config_path = config_path and config_file(config_path)
    doc = read_config_file(config_path)
    given = frozenset(k for k, v in train_overrides.items() if v is not None) | set(doc["train"])
    if given & set(STOPPING_RULES):
        defaults = {k: v for k, v in defaults.items() if k != "steps"}
    if run_dir is None:
        if resume:
            raise click.UsageError("--resume needs --run-dir")
        run_dir = default_run_dir(corpus)
    with _named_as_typed({k for k, v in {**model_overrides, **train_overrides}.items()
                          if v is not None}):
        model, train = resolve(doc, model_overrides, train_overrides, defaults)
        result = run(RunSpec(command, corpus, model, train, Path(run_dir), out and Path(out),
                             Path("model.json" if command == "pretrain" else "tuned.json"),
                             resume, Path(data_dir), base_path and Path(base_path),
                             config_path, given))
    if result.message:
        click.echo(result.message, err=True)
    if result.status == "done":
        if result.out.exists():
            click.echo(f"best model: {result.out} (validation {result.best_val:.4f} nats/char)")
        elif result.best_val is None:
            click.echo(f"no model written to {result.out}: no evaluation has run", err=True)
        else:  # removed after the best evaluation, which no later one beat
            click.echo(f"no model at {result.out}: it was removed after the run's best "
                       f"evaluation ({result.best_val:.4f} nats/char), and no evaluation since "
                       "beat it", err=True)
    sys.exit(result.exit_code)


@contextlib.contextmanager
def _named_as_typed(typed: set[str]):
    """Errors about a setting given on the command line name it as its option (``--lr``, not
    ``train.learning_rate``); a config file's settings keep their key."""
    import re

    from lstm_fn.config import ConfigError

    flags = {**{f"train.{k}": v[0] for k, v in TRAIN_HELP.items()},
             **{f"model.{k}": v[0] for k, v in MODEL_HELP.items()}}
    try:
        yield
    except ValueError as error:
        match = re.match(r"(?:train|model)\.(\w+)", str(error))
        if not match or match.group(1) not in typed or match.group(0) not in flags:
            raise
        raise ConfigError(flags[match.group(0)] + str(error)[match.end():]) from None
