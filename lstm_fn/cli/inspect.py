"""``lstm-fn inspect``: one HTML page of what a model does on a text."""

from __future__ import annotations

import click

from lstm_fn.cli.errors import BadInput
from lstm_fn.cli.model import model_options
from lstm_fn.cli.options import Command, UserPath

DEFAULT_CHARS = 10_000


@click.command(cls=Command)
@click.argument("text_file", required=False, type=UserPath(exists=True, dir_okay=False))
@model_options
@click.option("--text", help="The text itself, instead of TEXT_FILE.")
@click.option("--out", type=UserPath(dir_okay=False), default="inspect.html",
              help="The page to write.")
@click.option("--chars", type=click.IntRange(2), default=DEFAULT_CHARS,
              help="Inspect the first this many characters (a longer text is cut, with a "
                   "note on the page).")
@click.option("--layer", type=click.IntRange(0), help="Show this layer only [default: all].")
@click.option("--window", type=click.IntRange(1), default=128,
              help="T of the gradient flow: windows of this many characters.")
@click.option("--png", "png_dir", type=UserPath(file_okay=False),
              help="Also write the charts as PNG files into this folder.")
@click.option("--npz", "npz_path", type=UserPath(dir_okay=False),
              help="Also write the arrays (surprisal, states, gates, correlations) here.")
def inspect(text_file, model_path, step, text, out, chars, layer, window, png_dir, npz_path):
    """Write one self-contained HTML page of what the model does on a text: each
    character's surprise and the model's top predictions, every unit's activations with the
    units that follow simple features of the text, how often the gates saturate, and how
    far back the gradient reaches. It needs no server nor network: open it in a browser."""
    from pathlib import Path

    from lstm_fn.inspect import figures
    from lstm_fn.inspect.analysis import inspect as measure
    from lstm_fn.inspect.page import write_page
    from lstm_fn.runs.checks import check_out_is_a_file, writable_folder
    from lstm_fn.runs.models import open_model
    from lstm_fn.text.corpus import load_corpus
    from reference_numpy.atomic import atomic_write

    if (text_file is None) == (text is None):
        raise BadInput("give a text: a TEXT_FILE or --text (one of them)")
    params, cfg, vocab, provenance = open_model(model_path, step)
    content, source = _text(text_file, text, vocab, load_corpus)
    if len(content) < 2:
        raise BadInput(f"{source} has {len(content)} character(s); at least 2 are needed")
    ids = vocab.encode(content)  # unknown characters are named
    cut = len(ids) > chars
    ids = ids[:chars]
    if layer is not None and layer >= cfg.num_layers:
        raise BadInput(f"--layer {layer}: the model has {cfg.num_layers} layer(s)")
    check_out_is_a_file(Path(out))
    for folder in (Path(out).parent, png_dir and Path(png_dir),
                   npz_path and Path(npz_path).parent):
        if folder:
            writable_folder(folder)  # before the work, not after it
    result = measure(params, cfg, ids, vocab.decode(ids) if vocab.encoding == "chars" else None,
                     window)
    if layer is not None:
        result = result._replace(states=[result.states[layer]], gates=[result.gates[layer]],
                                 correlations=[result.correlations[layer]],
                                 saturation=[result.saturation[layer]])
    header = _header(cfg, vocab, provenance, source, len(ids), cut, layer, model_path)
    atomic_write(Path(out), write_page(result, list(vocab.symbols), header))
    written = [out]
    if npz_path:
        figures.write_arrays(Path(npz_path), result)
        written.append(npz_path)
    if png_dir:
        written += [str(p) for p in figures.write_charts(Path(png_dir), result)]
    mean = float(result.surprisal.mean())
    click.echo(f"{source}: {len(ids) - 1:,} characters predicted, {mean:.3f} bits "
               f"({mean * 0.6931471805599453:.4f} nats) per character")
    for path in written:
        click.echo(f"wrote {path}")


def _text(text_file, text, vocab, load_corpus):
    """The text and where it came from, read as the model's vocabulary reads it."""
    if text is not None:
        return (text.encode("utf-8") if vocab.encoding == "bytes" else text), "--text"
    corpus = load_corpus(text_file, encoding=vocab.encoding,
                         remedy="use a model trained with --vocab bytes")
    return corpus.content, text_file


def _header(cfg, vocab, provenance, source, length, cut, layer, model_path) -> dict:
    from lstm_fn.cli.options import command_line

    rows = [["model", f"{cfg.cell}, {cfg.num_layers} layer(s) of {cfg.hidden_size}, "
                      f"embedding {cfg.embed_size}, {cfg.num_params:,} parameters"],
            ["vocabulary", f"{len(vocab)} symbols ({vocab.encoding})"],
            ["from", str(model_path) + (f" (run {provenance['run_dir']}, step "
                                        f"{provenance.get('step')})" if provenance.get("run_dir")
                                        else "")],
            ["text", f"{source}: {length:,} characters" + (
                " (cut to the first ones; --chars reads more)" if cut else "")],
            ["command", command_line()]]
    if layer is not None:
        rows.insert(1, ["layer", f"{layer} only"])
    return {"source": str(source), "rows": rows}
