"""The commands that use what training made: ``sample``, ``eval`` and ``info`` on a model
(a weights file, a run directory or a checkpoint of one), ``plot`` on a run directory."""

from __future__ import annotations

import click

from lstm_fn.cli.errors import BadInput
from lstm_fn.cli.options import Command, UserPath
from lstm_fn.text.corpus import DATA_DIR


def _read_prime(prime: str | None, vocab) -> str | bytes:
    """The prime as text, or as bytes for a bytes model (any byte the shell passes).

    ``@FILE`` (``@~/FILE`` too) reads a file, as a corpus is read: a UTF-8 BOM dropped and
    Windows newlines made "\\n" (unless the model has "\\r" as a symbol). The default is a
    newline (or the first symbol)."""
    import os
    from pathlib import Path

    from lstm_fn.text.corpus import plain_newlines

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


def _fitting_normal_form(text: str, vocab) -> tuple[str, str] | None:
    """``(form, text in that form)`` for the first of NFC and NFD that has no character
    outside the vocabulary where ``text`` itself has some; else None. "café" typed with a
    precomposed "é" then continues a corpus that wrote "e" + U+0301, and the other way
    round."""
    import unicodedata

    if not vocab.missing(text):
        return None
    for form in ("NFC", "NFD"):
        normal = unicodedata.normalize(form, text)
        if not vocab.missing(normal):
            return form, normal
    return None


FROM_HELP = ("The model: a weights file, a run directory (its best model) or one of its "
             "checkpoint folders.")
STEP_HELP = "With a run directory: the parameters of its checkpoint at this step."


def model_options(command):
    """``--from MODEL`` and ``--step N``."""
    command = click.option("--step", type=click.IntRange(0), help=STEP_HELP)(command)
    return click.option("--from", "model_path", type=UserPath(exists=True), required=True,
                        help=FROM_HELP)(command)


def _open(model_path, step):
    from lstm_fn.runs.models import open_model

    return open_model(model_path, step)


@click.command(cls=Command)
@model_options
@click.option("--prime", help="Text to start from, or @FILE; accents are matched to the "
                              "vocabulary's Unicode form (NFC or NFD) [default: a newline, "
                              "or the first symbol of a vocabulary without one].")
@click.option("--length", type=click.IntRange(0), default=500, help="Characters to generate.")
@click.option("--temperature", type=float, default=1.0,
              help="Below 1: safer, above 1: wilder; 0: the most likely character (--greedy).")
@click.option("--top-k", type=click.IntRange(1), help="Sample among the k most likely only.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True),
              help="Sample from the smallest set with this much probability.")
@click.option("--greedy", is_flag=True, help="Always take the most likely character.")
@click.option("--num-samples", type=click.IntRange(1), default=1, help="Independent samples.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1),
              help="Random seed [default: a fresh one each run].")
@click.pass_context
def sample(ctx, model_path, step, prime, length, temperature, top_k, top_p, greedy,
           num_samples, seed):
    """Generate text from a model.

    One sample is streamed to stdout as it is produced; with --num-samples above 1, the
    samples are printed when all of them are done (with a progress line on stderr).
    """
    import secrets

    import jax

    from lstm_fn.cli.console import ScoringProgress, log
    from lstm_fn.sampling import sample_text, sample_texts

    params, cfg, vocab, _ = _open(model_path, step)
    greedy = _greedy(ctx, greedy, temperature, log)
    prime = _read_prime(prime, vocab)
    if isinstance(prime, str) and (fitting := _fitting_normal_form(prime, vocab)):
        prime = fitting[1]
    if missing := vocab.missing(prime):
        shown = ", ".join(map(repr, missing[:20]))
        raise BadInput(f"--prime has {len(missing)} character(s) not in the model's "
                       f"vocabulary: {shown}")
    if not greedy and not 0 < temperature < float("inf"):
        raise BadInput(f"--temperature must be >= 0 and finite, got {temperature}")
    options = dict(key=jax.random.key(secrets.randbits(31) if seed is None else seed),
                   temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    if num_samples == 1:
        # click.echo writes UTF-8 where stdout claims ASCII (LC_ALL=C) and flushes each
        # piece; color=True: escape sequences the model produced are text, not stripped
        for piece in sample_text(params, cfg, vocab, prime, length, echo_prime=True, **options):
            click.echo(piece, nl=False, color=True)
        click.echo(color=True)
        return
    progress = ScoringProgress(length * num_samples, "sampled")
    texts = sample_texts(params, cfg, vocab, prime, length, num_samples,
                         on_chunk=lambda done: progress(done * num_samples), **options)
    for i, text in enumerate(texts):
        click.echo(f"--- sample {i + 1} ---\n{text}", color=True)


def _greedy(ctx, greedy: bool, temperature: float, warn) -> bool:
    """``--greedy``, or ``--temperature 0``: the most likely character each time; a
    temperature, top-k or top-p given with ``--greedy`` is warned about (it does nothing)."""
    from click.core import ParameterSource

    given = [f"--{name.replace('_', '-')}" for name in ("temperature", "top_k", "top_p")
             if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if greedy and given:
        warn(f"warning: --greedy takes the most likely character; {', '.join(given)} "
             "ignored")
    return greedy or temperature == 0


@click.command("eval", cls=Command)
@click.argument("corpus", required=False)
@model_options
@click.option("--data-dir", type=UserPath(file_okay=False), default=DATA_DIR,
              help="Where corpus names are looked up and fetched to.")
@click.option("--batch-size", type=click.IntRange(1), default=32,
              help="At most this many streams, scored in parallel, each from a zero state "
                   "and at least 50,000 characters long (1: one stream in any case).")
@click.option("--seq-len", type=click.IntRange(1), default=256,
              help="Window length; the state is carried across windows, so it changes "
                   "speed and memory only.")
def evaluate_command(corpus, model_path, step, data_dir, batch_size, seq_len):
    """Loss, bits per character and perplexity of a model on all of CORPUS.

    CORPUS is read as pretrain reads it: a text file, a file name under --data-dir,
    'tinyshakespeare', or nothing for the built-in corpus (Python's own documentation text).
    Every character after the first is predicted once, with the state carried. A text under
    100,000 characters is read as one stream, exactly; a longer one is cut into contiguous
    streams of at least 50,000 characters (at most --batch-size), each from a zero state,
    which adds at most ~5e-4 nats/char.
    """
    from lstm_fn.cli.console import ScoringProgress
    from lstm_fn.errors import CorpusError
    from lstm_fn.text.corpus import load_corpus
    from lstm_fn.training.evaluate import score

    params, cfg, vocab, _ = _open(model_path, step)
    text = load_corpus(corpus, data_dir=data_dir, encoding=vocab.encoding,
                       remedy="use a model trained with --vocab bytes")
    try:
        ids = vocab.encode(text.content)
    except CorpusError as error:  # accents written in the other Unicode form: say so
        fitting = None if text.text is None else _fitting_normal_form(text.text, vocab)
        if fitting is None:
            raise
        raise BadInput(f"{error}; in Unicode form {fitting[0]} every character of the text is "
                       f"in the model's vocabulary: convert the text to {fitting[0]}") from None
    if len(ids) < 2:
        raise BadInput("the corpus needs at least 2 characters to predict one")
    result = score(params, cfg, ids, batch_size, seq_len,
                   on_window=ScoringProgress(len(ids) - 1))
    click.echo(f"{text.name}: {result.predictions:,} predictions in {result.streams} stream(s) "
               f"| loss {result.loss:.4f} nats/char | {result.bpc:.4f} bits/char | "
               f"perplexity {result.perplexity:.3f}")


@click.command(cls=Command)
@click.argument("model_path", type=UserPath(exists=True))
@click.option("--step", type=click.IntRange(0), help=STEP_HELP)
def info(model_path, step):
    """Architecture, parameter count, vocabulary and origin of a model: MODEL_PATH is a
    weights file, a run directory (its best model) or one of its checkpoint folders."""
    _, cfg, vocab, provenance = _open(model_path, step)
    click.echo(f"cell: {cfg.cell}\nlayers: {cfg.num_layers}\nhidden size: {cfg.hidden_size}\n"
               f"embedding size: {cfg.embed_size}\nparameters: {cfg.num_params:,}\n"
               f"vocabulary: {len(vocab)} ({vocab.encoding})")
    if vocab.encoding == "chars":
        click.echo("symbols: " + "".join(map(_shown_symbol, vocab.symbols)))
    shown = {"run_dir": "run directory", "step": "step", "val_loss": "validation loss",
             "corpus_sha256": "corpus sha256", "command": "command", "saved_at": "saved at"}
    for key, label in shown.items():
        if provenance.get(key) is not None:
            value = provenance[key]
            click.echo(f"{label}: {value:.4f} nats/char" if key == "val_loss" else
                       f"{label}: {value}")


def _shown_symbol(symbol: str) -> str:
    """A symbol as ``info`` lists it: one visible glyph or an escape. The space is "␠"; a
    character without a glyph of its own is escaped as Python writes it (``\\n``,
    ``\\u200d``): unprintable ones, and those that draw together with the symbol next to
    them: combining marks and variation selectors (Unicode category M*: "é" + U+0301 looked
    like one symbol), skin-tone modifiers (🏌 + U+1F3FB) and regional indicators (U+1F1E7
    U+1F1EC, listed side by side, is a flag the corpus need not have). The backslash and "␠"
    are escaped too, so a listing reads back one way."""
    import unicodedata

    if symbol == " ":
        return "␠"
    joins = (unicodedata.category(symbol).startswith("M")
             or "\U0001f1e6" <= symbol <= "\U0001f1ff" or "\U0001f3fb" <= symbol <= "\U0001f3ff")
    if symbol.isprintable() and symbol not in "\\␠" and not joins:
        return symbol
    escaped = repr(symbol)[1:-1]
    if escaped != symbol:
        return escaped
    return f"\\u{ord(symbol):04x}" if ord(symbol) <= 0xFFFF else f"\\U{ord(symbol):08x}"


@click.command(cls=Command)
@click.argument("run_dir", type=UserPath(file_okay=False))
def plot(run_dir):
    """Write RUN_DIR/loss.png: training and validation loss against step."""
    from lstm_fn.runs.plot import plot_run

    try:
        click.echo(plot_run(run_dir))
    except ImportError as error:  # no matplotlib: one line, as training reports it
        raise click.ClickException(f"loss plot not written: {error}") from None
