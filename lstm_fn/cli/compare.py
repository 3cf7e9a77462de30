"""``lstm-fn compare``: cells, depths and widths trained under one budget on one split, and
scored on one held-out text."""

from __future__ import annotations

import click

from lstm_fn.cli.options import (Command, UserPath, flag, given_train, invoked_as,
                                 train_options)
from lstm_fn.text.corpus import DATA_DIR


def _list(kind):
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            items = tuple(kind(part) for part in value.split(",") if part.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list") from None
        if not items:
            raise click.BadParameter("the list is empty")
        return items
    return convert


@click.command(cls=Command)
@click.argument("corpus", required=False)
@click.option("--cells", default="rnn,gru,lstm", callback=_list(str),
              help="Cells to compare, comma-separated.")
@click.option("--layers", "layer_counts", default="2", callback=_list(int),
              help="Numbers of layers, comma-separated.")
@click.option("--hidden-size", "hidden_sizes", default="256", callback=_list(int),
              help="Widths, comma-separated.")
@click.option("--embed-size", type=click.IntRange(1), default=64, help="Embedding size E.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Dropout on each layer's output while training.")
@click.option("--match-params", is_flag=True,
              help="Choose each variant's width so that its parameter count matches the "
                   "first variant's.")
@click.option("--seeds", type=click.IntRange(1, 100), default=1, help="Seeds per variant.")
@click.option("--held-out", type=UserPath(exists=True, dir_okay=False),
              help="Score every run on this text [default: each run's test split].")
@click.option("--out-dir", type=UserPath(file_okay=False), default="compare",
              help="Where the runs and compare.md, compare.json, compare.png go; a variant "
                   "finished there is not trained again.")
@click.option("--config", "config_path", type=UserPath(),
              help="JSON config (a train section; its model section is left out), or a "
                   "built-in one by name.")
@click.option("--data-dir", type=UserPath(file_okay=False), default=DATA_DIR,
              help="Where corpus names are looked up and fetched to.")
@train_options({"minutes": 3})
def compare(corpus, cells, layer_counts, hidden_sizes, embed_size, dropout, match_params, seeds,
            held_out, out_dir, config_path, data_dir, **options):
    """Train every combination of --cells, --layers and --hidden-size under the same budget
    (--minutes or --chars, each run) on the same split of CORPUS, over --seeds seeds, and
    score all on the same held-out text; writes OUT_DIR/compare.md, compare.json and
    compare.png (held-out bits/char against characters seen and against seconds)."""
    from pathlib import Path

    from lstm_fn.cli.console import Console
    from lstm_fn.config import config_file, read_config_file
    from lstm_fn.errors import ConfigError
    from lstm_fn.nn.config import ModelConfig
    from lstm_fn.runs import compare as comparing
    from lstm_fn.runs.plan import RunRequest

    for cell in cells:
        ModelConfig(cell)  # an unknown cell is named before anything runs
    given = given_train(options)
    if not any(given.get(rule) for rule in ("steps", "epochs", "chars")):
        given["minutes"] = given.get("minutes") or 3.0
    config_path = config_path and config_file(config_path)
    document = read_config_file(config_path)
    document = {"model": {}, "train": document["train"]}
    base = RunRequest("pretrain", corpus, Path(out_dir), data_dir=Path(data_dir),
                      config_path=config_path, config_file=document,
                      given_model={"embed_size": embed_size, "dropout": dropout},
                      given_train=given, program=invoked_as())
    comparison = comparing.Comparison(cells, layer_counts, hidden_sizes, seeds, Path(out_dir),
                                      base, match_params, held_out and Path(held_out))
    vocab_size = _vocab_size(corpus, data_dir, given.get("vocab") or "chars")
    chosen = comparing.variants(comparison, vocab_size, embed_size)
    budget = (f"{given['minutes']:g} minutes" if given.get("minutes") else "its limit")
    click.echo(f"{len(chosen)} variant(s) x {seeds} seed(s): {len(chosen) * seeds} runs of "
               f"{budget} each into {out_dir}", err=True)
    try:
        results = comparing.run_all(comparison, vocab_size, embed_size,
                                    lambda label: Console(prefix=f"[{label}] "))
    except ConfigError as error:
        if error.key and error.key.startswith("train."):
            raise ConfigError(error.worded(flag(error.key))) from None
        raise
    held = str(held_out) if held_out else "each run's test split"
    for path in comparing.write(Path(out_dir), results, held):
        click.echo(str(path), err=True)
    click.echo(comparing.markdown(comparing.summary(results), held), nl=False)


def _vocab_size(corpus, data_dir, encoding: str) -> int:
    from lstm_fn.text.corpus import load_corpus
    from lstm_fn.text.vocab import Vocab

    text = load_corpus(corpus, data_dir=data_dir, encoding=encoding)
    return 256 if encoding == "bytes" else len(Vocab.from_text(text.text))
