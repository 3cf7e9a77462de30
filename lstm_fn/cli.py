"""The ``lstm-fn`` command line: thin click commands over the library functions."""

from __future__ import annotations

import sys

import click

from lstm_fn.cli_options import Command, UserPath, run_command, run_options
from lstm_fn.cli_study import gradcheck, gradnorms


# Train defaults of the commands where they differ from TrainConfig's (steps only applies
# without another stopping rule).
PRETRAIN_DEFAULTS = {"steps": 5000}
FINE_TUNE_DEFAULTS = {"steps": 1000, "learning_rate": 5e-4}


class BadInput(click.ClickException):
    """Bad input from the user: one line on stderr, exit code 2."""

    exit_code = 2


# Errors that mean "the input is wrong", shown as one line unless --debug (CorpusError,
# WeightsError, ConfigError and CheckpointError are ValueErrors).
INPUT_ERRORS = (ValueError, OSError)


class App(click.Group):
    """Turns input errors into one-line messages; ``--debug`` shows the traceback instead."""

    command_class = Command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader left (`lstm-fn sample | head`): stop quietly
            _silence_stdout()
            sys.exit(141)  # as a process ended by SIGPIPE
        except KeyboardInterrupt:  # before training's own handling starts (or after it)
            click.echo("interrupted", err=True)
            sys.exit(130)
        except INPUT_ERRORS as error:
            if ctx.params.get("debug"):
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BadInput(message) from None


def _silence_stdout():
    """Point stdout at /dev/null, so the flush at exit does not fail on the closed pipe."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (tests capture it)
        pass


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"],
                                        "show_default": True})
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.version_option(package_name="lstm-fn")
def cli(debug: bool):
    """Character-level RNN, LSTM and GRU language models in JAX."""


cli.add_command(gradcheck)
cli.add_command(gradnorms)


@cli.command()
@click.option("--out", type=UserPath(dir_okay=False),
              help="Where the best model is written as JSON weights [default: model.json; "
                   "on --resume, the run's own].")
@run_options(PRETRAIN_DEFAULTS)
def pretrain(corpus, config_path, run_dir, out, resume, data_dir, **options):
    """Train a model from scratch on CORPUS.

    CORPUS is a text file, a file name under --data-dir, 'tinyshakespeare' (fetched once and
    verified), or nothing for the built-in offline corpus (Python's own documentation text).
    """
    run_command("pretrain", corpus, config_path, run_dir, out, resume, data_dir, None,
                PRETRAIN_DEFAULTS, options)


@cli.command("fine-tune")
@click.option("--from", "base_path", type=UserPath(exists=True, dir_okay=False),
              help="The JSON weights to start from (required; on --resume, the run's own).")
@click.option("--out", type=UserPath(dir_okay=False),
              help="Where the best fine-tuned model is written [default: tuned.json; on "
                   "--resume, the run's own].")
@run_options(FINE_TUNE_DEFAULTS, {"vocab": "the base model's", "cell": "the base model's",
                                   "embed_size": "the base model's",
                                   "hidden_size": "the base model's",
                                   "num_layers": "the base model's"})
def fine_tune(corpus, base_path, config_path, run_dir, out, resume, data_dir, **options):
    """Continue training the model in --from on CORPUS.

    Characters the model has never seen are added to its vocabulary (old ids keep their
    meaning); the default learning rate is lower than pretraining's.
    """
    if base_path is None and not resume:
        raise click.UsageError("Missing option '--from'.")
    run_command("fine-tune", corpus, config_path, run_dir, out, resume, data_dir, base_path,
                FINE_TUNE_DEFAULTS, options)


def _read_prime(prime: str | None, vocab) -> str | bytes:
    """The prime as text, or as bytes for a bytes model (any byte the shell passes).

    ``@FILE`` (``@~/FILE`` too) reads a file, as a corpus is read: a UTF-8 BOM dropped and
    Windows newlines made "\\n" (unless the model has "\\r" as a symbol). The default is a
    newline (or the first symbol)."""
    import os
    from pathlib import Path

    from lstm_fn.data import plain_newlines

    if prime is None:
        return "\n" if "\n" in vocab.symbols else vocab.symbols[0]
    if prime == "":
        raise BadInput("--prime is empty; give some text or leave the option out")
    if not prime.startswith("@"):  # undecodable bytes of argv arrive as lone surrogates
        if vocab.encoding == "bytes":
            return os.fsencode(prime)
        try:  # UTF-8 text under an ASCII locale (LC_ALL=C) arrives as surrogates too
            return os.fsencode(prime).decode("utf-8")
        except UnicodeError:  # not UTF-8: the surrogates are named as unknown characters
            return prime
    path = Path(prime[1:]).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise BadInput(f"cannot read the --prime file {str(path)!r}: {error.strerror}") from None
    if not raw:
        raise BadInput(f"the --prime file {str(path)!r} is empty")
    if vocab.encoding == "bytes":
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(f"the --prime file {str(path)!r} is not UTF-8 text (byte {error.start})"
                       ) from None
    text = text.removeprefix("\ufeff") if "\r" in vocab.symbols else plain_newlines(text)
    if not text:
        raise BadInput(f"the --prime file {str(path)!r} holds only a byte order mark")
    return text


@cli.command()
@click.option("--from", "model_path", type=UserPath(exists=True, dir_okay=False), required=True,
              help="JSON weights of the model.")
@click.option("--prime", help="Text to start from, or @FILE [default: a newline, or the "
                              "first symbol of a vocabulary without one].")
@click.option("--length", type=click.IntRange(0), default=500, help="Characters to generate.")
@click.option("--temperature", type=float, default=1.0, help="Below 1: safer, above 1: wilder.")
@click.option("--top-k", type=click.IntRange(1), help="Sample among the k most likely only.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True),
              help="Sample from the smallest set with this much probability.")
@click.option("--greedy", is_flag=True, help="Always take the most likely character.")
@click.option("--num-samples", type=click.IntRange(1), default=1, help="Independent samples.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1),
              help="Random seed [default: a fresh one each run].")
def sample(model_path, prime, length, temperature, top_k, top_p, greedy, num_samples, seed):
    """Generate text from a model.

    One sample is streamed to stdout as it is produced; with --num-samples above 1, the
    samples are printed when all of them are done.
    """
    import secrets

    import jax

    from lstm_fn.sample import generate
    from lstm_fn.weights import load_weights

    params, cfg, vocab = load_weights(model_path)
    prime_data = _read_prime(prime, vocab)
    if missing := vocab.missing(prime_data):
        shown = ", ".join(map(repr, missing[:20]))
        raise BadInput(f"--prime has {len(missing)} character(s) not in the model's "
                       f"vocabulary: {shown}")
    prime_ids = vocab.encode(prime_data)
    key = jax.random.key(secrets.randbits(31) if seed is None else seed)
    chunks = generate(params, cfg, prime_ids, length, key=key, num_samples=num_samples,
                      temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    if num_samples == 1:
        # one decoder for prime and continuation: a bytes model may end the prime inside a
        # UTF-8 character that the first generated bytes complete
        decode = vocab.streaming_decoder()
        # click.echo writes UTF-8 where stdout claims ASCII (LC_ALL=C) and flushes each
        # chunk; color=True: escape sequences the model produced are text, not stripped
        click.echo(decode(prime_ids), nl=False, color=True)
        for ids in chunks:
            click.echo(decode(ids[0]), nl=False, color=True)
        click.echo(decode([], final=True), color=True)
        return
    rows = [prime_ids.tolist() for _ in range(num_samples)]
    for ids in chunks:
        for row, part in zip(rows, ids):
            row.extend(part.tolist())
    for i, row in enumerate(rows):
        click.echo(f"--- sample {i + 1} ---\n{vocab.decode(row)}", color=True)


@cli.command("eval")
@click.argument("corpus", required=False)
@click.option("--from", "model_path", type=UserPath(exists=True, dir_okay=False), required=True,
              help="JSON weights of the model.")
@click.option("--data-dir", type=UserPath(file_okay=False), default="data",
              help="Where corpus names are looked up and fetched to.")
@click.option("--batch-size", type=click.IntRange(1), default=32,
              help="Streams the text is cut into, scored in parallel, each from a zero state: "
                   "1 reads it as one stream (exact, slowest).")
@click.option("--seq-len", type=click.IntRange(1), default=256,
              help="Window length; the state is carried across windows, so it changes "
                   "speed and memory only.")
def evaluate_command(corpus, model_path, data_dir, batch_size, seq_len):
    """Loss, bits per character and perplexity of a model on all of CORPUS.

    CORPUS is read as pretrain reads it: a text file, a file name under --data-dir,
    'tinyshakespeare', or nothing for the built-in corpus (Python's own documentation text).
    Every character after the first is predicted once. The text is cut into --batch-size
    contiguous streams, each starting from a zero state, so the figure depends slightly on
    it; --batch-size 1 scores the text as one stream.
    """
    from lstm_fn import data
    from lstm_fn.train import evaluate
    from lstm_fn.weights import load_weights

    params, cfg, vocab = load_weights(model_path)
    text = data.load_corpus(corpus, data_dir=data_dir, encoding=vocab.encoding,
                            remedy="use a model trained with --vocab bytes")
    ids = vocab.encode(text.content)
    if len(ids) < 2:
        raise BadInput("the corpus needs at least 2 characters to predict one")
    metrics = data.nats_to_metrics(evaluate(params, cfg, ids, batch_size, seq_len,
                                            on_window=_eval_progress(len(ids) - 1)))
    streams = min(batch_size, len(ids) - 1)  # as evaluate clips it
    click.echo(f"{text.name}: {len(ids) - 1:,} predictions in {streams} stream(s) | loss "
               f"{metrics['loss']:.4f} "
               f"nats/char | {metrics['bpc']:.4f} bits/char | perplexity "
               f"{metrics['perplexity']:.3f}")


def _eval_progress(total: int):
    """A status line on stderr while a long text is scored (in place on a terminal, every
    10 s otherwise); nothing for a text scored within the first seconds."""
    import time

    tty = sys.stderr.isatty()
    started = last = time.monotonic()
    shown = False

    def show(done: int):
        nonlocal last, shown
        now = time.monotonic()
        if done == total:
            if shown and tty:
                click.echo(err=True)  # end the line that was rewritten in place
            return
        if now - last < (0.5 if tty else 10.0):
            return
        last, shown = now, True
        rate = done / max(now - started, 1e-9)
        line = (f"scored {done:,}/{total:,} characters ({done / total:.0%}) | {rate:,.0f} "
                f"chars/s | ETA {(total - done) / max(rate, 1e-9):.0f} s")
        click.echo(f"\r{line}\033[K" if tty else line, err=True, nl=not tty)
    return show


@cli.command()
@click.argument("model_path", type=UserPath(exists=True, dir_okay=False))
def info(model_path):
    """Architecture, parameter count and vocabulary of a weights file."""
    from lstm_fn.weights import load_weights

    _, cfg, vocab = load_weights(model_path)
    click.echo(f"cell: {cfg.cell}\nlayers: {cfg.num_layers}\nhidden size: {cfg.hidden_size}\n"
               f"embedding size: {cfg.embed_size}\nparameters: {cfg.num_params:,}\n"
               f"vocabulary: {len(vocab)} ({vocab.encoding})")
    if vocab.encoding == "chars":
        click.echo("symbols: " + "".join("␠" if s == " " else s if s.isprintable()
                                         else repr(s)[1:-1] for s in vocab.symbols))


@cli.command()
@click.argument("run_dir", type=UserPath(file_okay=False))
def plot(run_dir):
    """Write RUN_DIR/loss.png: training and validation loss against step."""
    from lstm_fn.plot import plot_run

    try:
        click.echo(plot_run(run_dir))
    except ImportError as error:  # no matplotlib: one line, as training reports it
        raise click.ClickException(f"loss plot not written: {error}") from None


def main():
    from lstm_fn.cli_setup import prepare_jax, prepare_process

    try:
        prepare_process()
        cli(prog_name="lstm-fn", obj=prepare_jax)
    except KeyboardInterrupt:  # Ctrl-C while starting up, before the commands run
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
