"""The CLI pipeline end to end on tiny models: pretrain, sample, eval, info, plot,
fine-tune with new characters, and resume after SIGTERM (kill -9: test_faults.py)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import reference_numpy as ref
from lstm_fn.cli.app import cli
from lstm_fn.config import resolve
from lstm_fn.nn.config import ModelConfig
from conftest import TINY, corpus_text, lstm_fn, lstm_fn_command
from reference_numpy.weights import read_weights

@pytest.mark.parametrize("command", ["pretrain", "fine-tune", "sample", "eval", "info", "plot",
                                     "gradcheck", "gradnorms"])
def test_every_command_answers_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_python_dash_m_runs_the_command_line(model_file):
    result = subprocess.run([sys.executable, "-m", "lstm_fn", "info", model_file], text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0 and "cell: lstm" in result.stdout, result.stderr


def test_help_states_every_default():
    """Options whose value may come from --config show the built-in default in words."""
    def help_of(command):
        output = CliRunner().invoke(cli, [command, "--help"], terminal_width=400).output
        return " ".join(output.split())

    bare = resolve("pretrain", {"model": {}, "train": {}}, {}, {})  # what a bare run takes
    pretrain, fine_tune = help_of("pretrain"), help_of("fine-tune")
    for flag, key in [("--cell", "cell"), ("--embed-size", "embed_size"),
                      ("--hidden-size", "hidden_size"), ("--layers", "num_layers"),
                      ("--dropout", "dropout")]:
        value = bare.model[key]
        assert f"[default: {value}]" in pretrain.split(flag + " ")[1].split(" --")[0], flag
        base = "0.0" if flag == "--dropout" else "the base model's"
        assert f"[default: {base}]" in fine_tune.split(flag + " ")[1].split(" --")[0], flag
    evaluate = help_of("eval")
    assert "nothing for the built-in corpus" in evaluate
    assert "--data-dir DIRECTORY Where corpus names are looked up" in evaluate
    assert "with --num-samples above 1, the samples are printed when" in help_of("sample")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """One pretrained tiny model shared by the tests below."""
    work = tmp_path_factory.mktemp("trained")
    result = lstm_fn("pretrain", corpus, *TINY, "--steps", "60", "--eval-every", "20",
                     "--run-dir", work / "run", "--out", work / "model.json")
    assert result.returncode == 0, result.stderr
    return work


def test_pretrain_writes_the_run_directory(trained):
    run = trained / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["cell"] == "lstm" and config["train"]["steps"] == 60
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60]
    assert {"train_loss", "val_loss", "val_bpc", "chars_per_sec", "lr", "seconds"} <= set(rows[0])
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] < np.log(len(config["vocab"]))
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    params, model, vocab, _ = read_weights(trained / "model.json")
    assert model["vocab_size"] == len(vocab) == len(config["vocab"])


def test_sample_eval_info(trained, corpus):
    model = trained / "model.json"
    out = lstm_fn("sample", "--from", model, "--prime", "ab", "--length", "50", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ab") and len(out.stdout.rstrip("\n")) >= 50
    again = lstm_fn("sample", "--from", model, "--prime", "ab", "--length", "50", "--seed", "3")
    assert again.stdout == out.stdout
    greedy = lstm_fn("sample", "--from", model, "--greedy", "--length", "20", "--num-samples", "2")
    parts = greedy.stdout.split("--- sample 2 ---")
    assert greedy.returncode == 0 and parts[0].split("---\n")[1].strip() == parts[1].strip()
    bad = lstm_fn("sample", "--from", model, "--prime", "xyz!")
    assert bad.returncode == 2 and "'!', 'x', 'y', 'z'" in bad.stderr
    assert "Traceback" not in bad.stderr
    info = lstm_fn("info", model)
    assert "cell: lstm" in info.stdout and "parameters:" in info.stdout
    ev = lstm_fn("eval", corpus, "--from", model)
    assert ev.returncode == 0 and "bits/char" in ev.stdout


def test_info_lists_the_architecture_and_every_symbol(model_file):
    result = CliRunner().invoke(cli, ["info", str(model_file)])
    assert result.exit_code == 0 and result.stdout == (
        "cell: lstm\nlayers: 2\nhidden size: 32\nembedding size: 8\nparameters: 14,439\n"
        "vocabulary: 15 (chars)\nsymbols: \\n␠,.acdeghmnost\n"), result.stdout


def test_info_escapes_symbols_that_would_draw_onto_their_neighbours(tmp_path):
    """A combining accent (a corpus with "e" + U+0301 next to "é"), an emoji's variation
    selector, a skin-tone modifier and regional indicators are symbols of their own, but
    printed raw they draw together with the symbol next to them (two regional indicators
    side by side are a flag); they are listed as escapes, as are a literal backslash and
    "␠" (the space's stand-in), so the listing reads back one way."""
    import jax

    import lstm_fn

    vocab = lstm_fn.Vocab.from_symbols([" ", "\\", "n", "e", "é", "\u0301", "\u200d",
                                        "\u2420", "\ufe0f", "\U0001f1e7", "\U0001f1ec",
                                        "\U0001f3cc", "\U0001f3fb", "\U0001f600"])
    cfg = ModelConfig("rnn", len(vocab), embed_size=2, hidden_size=2, num_layers=1)
    lstm_fn.save_weights(tmp_path / "m.json", lstm_fn.init(jax.random.key(0), cfg), cfg, vocab)
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "symbols: ␠\\\\neé\\u0301\\u200d\\u2420\\ufe0f\\U0001f1e7\\U0001f1ec\U0001f3cc"
        "\\U0001f3fb\U0001f600")


def test_plot_of_a_run_named_in_japanese_or_with_dollars_is_quiet(tmp_path):
    """A run directory named after a corpus in Japanese: matplotlib's default font has no
    glyphs for it, and its warnings (three lines per character) must not reach stderr; a
    name with ``$...$`` is text, not mathtext (``$\\frac$`` failed as an empty error), and
    one that is not UTF-8 is drawn with U+FFFD (it failed with a traceback)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lstm_fn.runs.plot import drawable, plot_run

    run = tmp_path / "日本語$\\frac$-run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 10, "train_loss": 2.0, "val_loss": 2.1}\n')
    result = lstm_fn("plot", run)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert (run / "loss.png").stat().st_size > 0
    latin1 = run.rename(tmp_path / os.fsdecode(b"caf\xe9"))  # lone surrogates: a TypeError
    assert plot_run(latin1) == latin1 / "loss.png" and (latin1 / "loss.png").exists()
    with matplotlib.rc_context({"font.family": "DejaVu Sans"}):  # no CJK (ships with it)
        fig, ax = plt.subplots()
        title = drawable(run.name, ax.title.get_fontproperties())
    plt.close(fig)
    assert title == "\\u65e5\\u672c\\u8a9e$\\frac$-run"


def test_fine_tune_adds_new_characters(trained, tmp_path):
    new_text = corpus_text(seed=1, n=3000).replace("a", "é").replace("b", "Z")
    (tmp_path / "new.txt").write_text(new_text, encoding="utf-8")
    base_params, _, base_vocab, _ = read_weights(trained / "model.json")
    result = lstm_fn("fine-tune", tmp_path / "new.txt", "--from", trained / "model.json",
                     "--out", tmp_path / "tuned.json", "--run-dir", tmp_path / "run",
                     "--steps", "20", "--eval-every", "10", "--batch-size", "4", "--seq-len", "16",
                     "--freeze", "0", "--sample-every", "0")
    assert result.returncode == 0, result.stderr
    assert "added 2 new character(s): 'Z' 'é'" in result.stderr
    params, model, vocab, _ = read_weights(tmp_path / "tuned.json")
    assert vocab[:len(base_vocab)] == base_vocab and vocab[len(base_vocab):] == ["Z", "é"]
    assert model["vocab_size"] == len(base_vocab) + 2
    # Frozen layer 0 is unchanged; the numpy twin samples from the tuned file.
    np.testing.assert_array_equal(params["layers"][0]["w_h"], base_params["layers"][0]["w_h"])
    assert not np.array_equal(params["layers"][1]["w_h"], base_params["layers"][1]["w_h"])
    ids = ref.sample(params, model, [vocab.index("é")], 10, rng=np.random.default_rng(0))
    assert len(ids) == 10 and max(ids) < len(vocab)


def test_fine_tune_refuses_a_different_architecture(trained, corpus, tmp_path):
    result = lstm_fn("fine-tune", corpus, "--from", trained / "model.json", "--hidden-size", "64",
                     "--run-dir", tmp_path / "run", "--out", tmp_path / "t.json")
    assert result.returncode == 2 and "model.hidden_size = 32" in result.stderr


def run_args(corpus, work, steps, eval_every=None):
    return ["pretrain", corpus, *TINY, "--steps", steps, "--eval-every", eval_every or steps,
            "--checkpoint-every", "50", "--dropout", "0.1", "--run-dir", work / "run",
            "--out", work / "model.json"]


@pytest.mark.slow
def test_sigterm_checkpoints_then_resume_finishes(corpus, tmp_path):
    tmp_path = tmp_path / "a folder"  # the printed command must survive a paste into a shell
    args = run_args(corpus, tmp_path, 100000, eval_every=1000)
    proc = subprocess.Popen(lstm_fn_command(*args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "checkpoints" / "00000050").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted at step" in stderr and "--resume" in stderr
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                   if p.name.isdigit())
    stopped = int(stderr.split("interrupted at step ")[1].split(":")[0])
    assert steps[-1] == stopped  # a final checkpoint at the step it stopped
    printed = shlex.split(stderr.split("continue with `")[1].split("`")[0])
    assert printed == [sys.executable, "-m", "lstm_fn", "pretrain", "--resume", "--run-dir",
                       str(tmp_path / "run")]  # the command as it was invoked
    resumed = subprocess.run([*printed, "--steps", str(stopped + 10)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from checkpoint {stopped}" in resumed.stderr


def test_a_second_run_in_the_same_directory_is_refused(trained, corpus):
    result = lstm_fn("pretrain", corpus, *TINY, "--steps", "5", "--run-dir", trained / "run",
                     "--out", trained / "other.json")
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert not (trained / "other.json").exists()


def test_a_second_run_compiles_nothing(corpus, tmp_path):
    """With the persistent compilation cache, a repeated run adds no compiled program; and
    within a run, the training and evaluation steps are each compiled once (a step that
    compiled again after an evaluation took seconds counted as training time)."""
    env = dict(os.environ, LSTM_FN_CACHE=str(tmp_path / "cache"))
    args = [corpus, *TINY, "--steps", "10", "--eval-every", "5"]
    first = lstm_fn("pretrain", *args, "--run-dir", tmp_path / "r1", "--out", tmp_path / "1.json",
                    env=dict(env, JAX_LOG_COMPILES="1"))
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("Compiling jit(step)") == 1, first.stderr
    assert first.stderr.count("Compiling jit(_eval_step)") == 1, first.stderr
    programs = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(name.startswith("jit_step") for name in programs)
    second = lstm_fn("pretrain", *args, "--run-dir", tmp_path / "r2", "--out", tmp_path / "2.json",
                     env=env)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == programs
