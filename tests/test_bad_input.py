"""Bad input through the real commands: every case is one line on stderr that names the
problem, exit code 2, no traceback, and nothing written or damaged.

Most cases run the click command in-process (CliRunner: they fail before anything is
compiled). Random mutations of weights and config files are in test_loader_properties.py;
the sample command's primes and lengths are in test_sample_command.py.
"""

import json
import math
from pathlib import Path

import pytest

from lstm_fn.weights import WeightsError, load_weights
from reference_numpy import spec
from conftest import TINY, assert_refused, invoke


# ------------------------------------------------------------------------------ the corpus

CORPORA = {
    "missing": (None, ["not found", "nope.txt"]),
    "directory": ("DIR", ["is a directory"]),
    "empty": (b"", ["is empty"]),
    "non-utf8": (b"hello world\nabc \xff\xfe def\n" * 10, ["not valid UTF-8 at byte 16",
                                                           "--vocab bytes"]),
    "binary": (bytes(range(256)) * 8, ["binary", "--vocab bytes"]),
    "one character": (b"a" * 5000, ["1 distinct character", "at least 2"]),
    "shorter than a batch": (b"abcdefg hij\n" * 3, ["needs 65", "batch_size 4 x seq_len 16",
                                                    "--batch-size or --seq-len"]),
}


@pytest.mark.parametrize("case", list(CORPORA))
def test_bad_corpus_is_refused_before_anything_is_written(tmp_path, case):
    content, needles = CORPORA[case]
    path = tmp_path / "nope.txt"
    if content == "DIR":
        path = tmp_path / "folder"
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    result = invoke("pretrain", path, *TINY, "--steps", "5", "--run-dir", tmp_path / "run",
                    "--out", tmp_path / "out" / "model.json")
    assert_refused(result, *needles)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_too_short_message_follows_the_chosen_batch_and_window(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("abcdefghij" * 3, encoding="utf-8")
    result = invoke("pretrain", path, "--batch-size", "3", "--seq-len", "10", "--steps", "5",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert_refused(result, "needs 31", "batch_size 3 x seq_len 10")


def test_held_out_fractions_are_named_when_they_leave_too_little(tmp_path, short_corpus):
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "2", "--val-fraction", "0.5",
                    "--test-fraction", "0.5", "--run-dir", tmp_path / "run",
                    "--out", tmp_path / "m.json")
    assert_refused(result, "train split has 0 characters", "hold out 100%", "--val-fraction")


def test_fine_tune_on_a_non_utf8_corpus_gives_advice_that_works(tmp_path, model_file):
    path = tmp_path / "latin1.txt"
    path.write_bytes("the caf\u00e9 sat\n".encode("latin-1") * 20)
    assert_refused(invoke("fine-tune", path, "--from", model_file, "--steps", "2",
                          "--run-dir", tmp_path / "run", "--out", tmp_path / "t.json"),
                   "byte 7", "fine-tune a model trained with --vocab bytes")


def test_eval_refuses_a_non_utf8_corpus(tmp_path, model_file):
    path = tmp_path / "latin1.txt"
    path.write_bytes("the caf\u00e9 sat\n".encode("latin-1"))
    assert_refused(invoke("eval", path, "--from", model_file), "byte 7", "--vocab bytes")


def test_eval_of_a_text_with_accents_in_the_other_unicode_form_says_so(tmp_path):
    """A model of a corpus that wrote "e" + U+0301 (NFD) has no precomposed "é"; a test text
    with it (NFC) is refused naming an "é" that looks exactly like the model's, so the
    message says that the text in NFD would do. Text that no form fits gets no such hint."""
    import jax

    import lstm_fn

    vocab = lstm_fn.Vocab.from_text("the cafe\u0301 sat\n")
    cfg = lstm_fn.ModelConfig("rnn", len(vocab), embed_size=2, hidden_size=2, num_layers=1)
    model = tmp_path / "nfd.json"
    lstm_fn.save_weights(model, lstm_fn.init(jax.random.key(0), cfg), cfg, vocab)
    path = tmp_path / "nfc.txt"
    path.write_text("the caf\u00e9 sat\n", encoding="utf-8")
    assert_refused(invoke("eval", path, "--from", model), "1 character(s) not in the vocabulary",
                   "in Unicode form NFD every character", "convert the text to NFD")
    path.write_text("the caf\u00e9 sat!\n", encoding="utf-8")
    error = assert_refused(invoke("eval", path, "--from", model), "2 character(s)")
    assert "Unicode form" not in error


# ------------------------------------------------------------------------------ the config

@pytest.mark.parametrize("doc, needles", [
    ({"train": {"bogus": 1}}, ["unknown key train.bogus"]),
    ({"model": {"bogus": 1}}, ["unknown key model.bogus", "allowed: cell"]),
    ({"model": {"vocab_size": 9}}, ["model.vocab_size", "comes from the corpus"]),
    ({"training": {}}, ["unknown config section 'training'", "allowed: model, train"]),
    ({"train": {"momentum": "high"}}, ["train.momentum must be float", "'high'"]),
    ({"train": {"steps": 2.5}}, ["train.steps must be int"]),
    ({"train": {"freeze": "embed"}}, ["train.freeze must be a list of strings"]),
    ({"model": {"hidden_size": 3.5}}, ["model.hidden_size must be int"]),
    ({"train": {"learning_rate": 0}}, ["train.learning_rate", "(0, 10]"]),
    ({"train": {"momentum": 1.0}}, ["train.momentum", "[0, 1)"]),
    ({"train": []}, ["section 'train' must be an object"]),
    ("{\"train\": {", ["not valid JSON"]),
    (b"{\"train\": {\"seed\": \xff}}", ["not UTF-8"]),
])
def test_bad_config_file_names_the_key(tmp_path, short_corpus, doc, needles):
    config = tmp_path / "config.json"
    if isinstance(doc, bytes):
        config.write_bytes(doc)
    else:
        config.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    result = invoke("pretrain", short_corpus, "--config", config, "--run-dir", tmp_path / "run",
                    "--out", tmp_path / "m.json")
    assert_refused(result, *needles)
    assert not (tmp_path / "run").exists() and not (tmp_path / "m.json").exists()


def test_missing_config_file_is_named(tmp_path, short_corpus):
    result = invoke("pretrain", short_corpus, "--config", tmp_path / "none.json",
                    "--run-dir", tmp_path / "run")
    assert_refused(result, "cannot read config", "none.json")


@pytest.mark.parametrize("option, needles", [
    (["--lr", "-1"], ["--lr must", "(0, 10]", "-1"]),
    (["--lr", "11"], ["--lr must", "(0, 10]"]),
    (["--layers", "0"], ["--layers must", ">= 1", "got 0"]),
    (["--hidden-size", "-4"], ["--hidden-size must", ">= 1"]),
    (["--dropout", "1.0"], ["--dropout must", "[0, 1)", "1.0"]),
    (["--batch-size", "0"], ["--batch-size must", "> 0"]),
    (["--val-fraction", "0.7"], ["--val-fraction must", "[0, 0.5]"]),
    (["--grad-clip", "-1"], ["--grad-clip must", "[0, inf]"]),
    (["--eval-chars", "-1"], ["--eval-chars must", ">= 0"]),
    (["--optimizer", "lbfgs"], ["--optimizer must", "adam, adamw, sgd, rmsprop"]),
    (["--freeze", "middle"], ["--freeze entries", "'middle'"]),
    (["--warmup-steps", str(2**31)], ["--warmup-steps must", "< 2**31"]),  # int32 on device
    (["--sample-length", "100001"], ["--sample-length must", "<= 100,000"]),
    (["--layers", "257"], ["--layers must", "<= 256"]),
    (["--patience", "0"], ["--patience must", "> 0"]),
])
def test_out_of_range_training_option_names_option_and_range(tmp_path, short_corpus, option,
                                                           needles):
    result = invoke("pretrain", short_corpus, *TINY, "--steps", "5", *option,
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "m.json")
    assert_refused(result, *needles)
    assert not (tmp_path / "run").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("option, needles", [
    (["--top-p", "0"], ["'--top-p'", "0<x<=1", "0.0"]),
    (["--top-p", "1.5"], ["'--top-p'", "0<x<=1", "1.5"]),
    (["--temperature", "inf"], ["--temperature must be >= 0 and finite", "inf"]),
    (["--temperature", "-2"], ["--temperature must be >= 0", "-2"]),
])
def test_out_of_range_sampling_option_names_key_and_range(model_file, option, needles):
    result = invoke("sample", "--from", model_file, "--length", "5", "--seed", "0", *option)
    assert_refused(result, *needles)
    assert result.stdout == ""  # refused before the prime is printed


def test_temperature_zero_is_greedy_and_greedy_warns_of_what_it_ignores(model_file):
    """--temperature 0 means the most likely character, as --greedy does (many users expect
    it); a temperature, top-k or top-p typed with --greedy does nothing, and says so."""
    sample = ["sample", "--from", model_file, "--length", "12", "--prime", "the"]
    greedy = invoke(*sample, "--greedy")
    assert greedy.exit_code == 0 and greedy.stderr == "", greedy.output
    assert greedy.stdout.startswith("the") and len(greedy.stdout) == len("the") + 12 + 1
    zero = invoke(*sample, "--temperature", "0", "--seed", "4")
    assert zero.exit_code == 0 and zero.stdout == greedy.stdout, zero.output
    both = invoke(*sample, "--greedy", "--temperature", "0.5", "--top-k", "3")
    assert both.stdout == greedy.stdout
    assert both.stderr == ("warning: --greedy takes the most likely character; --temperature, "
                           "--top-k ignored\n")


# ---------------------------------------------------------------------- weights files

def _set(path, value):
    def edit(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return edit


def _delete(key):
    return lambda doc: doc.pop(key)


WEIGHTS_DAMAGE = {
    "not JSON": (None, lambda text: "this is not JSON\n", ["not valid JSON"]),
    "truncated JSON": (None, lambda text: text[:len(text) // 2], ["not valid JSON"]),
    "empty file": (None, lambda text: "", ["not valid JSON"]),
    "not UTF-8": (None, lambda text: b"\xff\xfe" + text.encode(), ["not UTF-8"]),
    "a JSON array": (None, lambda text: "[1, 2, 3]", ["not a JSON object"]),
    "wrong format": (_set(["format"], "keras-h5"), None, ["format is 'keras-h5'"]),
    "newer version": (_set(["version"], spec.VERSION + 1), None, ["newer than this reader"]),
    "missing key": (_delete("vocab"), None, ["missing key 'vocab'"]),
    "missing model key": (lambda d: d["model"].pop("hidden_size"), None,
                          ["model is missing key 'hidden_size'"]),
    "extra key": (_set(["optimizer"], "adam"), None, ["unknown key 'optimizer'"]),
    "extra param": (_set(["params", "head", "scale"], [1.0]), None,
                    ["params.head has unknown key 'scale'"]),
    "a billion layers": (_set(["model", "num_layers"], 10**9), None,  # not built to check
                         ["params.layers must be a list of 1000000000 layers"]),
    "shape disagrees": (_set(["model", "hidden_size"], 33), None,
                        ["params.layers[0].w_x has shape [8, 128], the model needs [8, 132]"]),
    "layer count disagrees": (_set(["model", "num_layers"], 3), None,
                              ["params.layers must be a list of 3"]),
    "NaN": (_set(["params", "head", "b", 2], math.nan), None, ["non-finite number NaN"]),
    "Infinity": (_set(["params", "embed", 0, 1], -math.inf), None,
                 ["non-finite number -Infinity"]),
    "beyond float32": (_set(["params", "embed", 0, 1], 1e39), None,
                       ["params.embed holds a value that is not a finite float32"]),
    "number as string": (_set(["params", "head", "b", 0], "0.5"), None,
                         ["params.head.b is not a rectangular array of numbers"]),
    "true among numbers": (_set(["params", "layers", 0, "w_h", 3, 1], True), None,
                           ["params.layers[0].w_h is not a rectangular array of numbers"]),
    "vocab length": (_set(["vocab"], lambda v: v[:-1]), None,
                     ["entries but model.vocab_size is"]),
    "duplicate vocab": (_set(["vocab", 1], lambda _: "t"), None, ["is a duplicate entry"]),
}


def damaged_weights(model_file: Path, folder: Path, case: str) -> Path:
    doc_edit, text_edit, _ = WEIGHTS_DAMAGE[case]
    text = model_file.read_text(encoding="utf-8")
    if doc_edit is not None:
        doc = json.loads(text)
        doc_edit(doc)
        text = json.dumps(doc, ensure_ascii=False)
    if text_edit is not None:
        text = text_edit(text)
    path = folder / "bad.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.mark.parametrize("command", ["info", "sample"])
@pytest.mark.parametrize("case", list(WEIGHTS_DAMAGE))
def test_damaged_weights_file_is_refused_by_key(tmp_path, model_file, command, case):
    path = damaged_weights(model_file, tmp_path, case)
    args = ["info", path] if command == "info" else ["sample", "--from", path, "--length", "3"]
    line = assert_refused(invoke(*args), *WEIGHTS_DAMAGE[case][2])
    assert "bad.json" in line  # the message names the file too
    with pytest.raises(WeightsError):
        load_weights(path)


def test_missing_weights_file_is_named(tmp_path):
    assert_refused(invoke("info", tmp_path / "gone.json"), "MODEL_PATH", "gone.json",
                   "does not exist")
    for command in ("sample", "eval", "fine-tune"):
        assert_refused(invoke(command, "--from", tmp_path / "gone.json"), "'--from'",
                       "gone.json", "does not exist")


# ------------------------------------------------------------------------------ fine-tune

@pytest.mark.parametrize("option, needles", [
    (["--cell", "gru"], ["cannot fine-tune", "model.cell = 'lstm'", "'gru' was given"]),
    (["--hidden-size", "16"], ["model.hidden_size = 32", "16 was given"]),
    (["--layers", "3"], ["model.num_layers = 2", "3 was given"]),
    (["--embed-size", "4"], ["model.embed_size = 8", "4 was given"]),
    (["--vocab", "bytes"], ["base model uses vocab 'chars'", "--vocab chars"]),
])
def test_fine_tune_refuses_an_incompatible_model(tmp_path, model_file, short_corpus, option,
                                                 needles):
    before = model_file.read_bytes()
    result = invoke("fine-tune", short_corpus, "--from", model_file, *option, "--steps", "3",
                    "--batch-size", "4", "--seq-len", "16",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "tuned.json")
    assert_refused(result, *needles)
    assert not (tmp_path / "run").exists() and not (tmp_path / "tuned.json").exists()
    assert model_file.read_bytes() == before


def test_fine_tune_from_a_damaged_file_is_refused(tmp_path, model_file, short_corpus):
    path = damaged_weights(model_file, tmp_path, "truncated JSON")
    result = invoke("fine-tune", short_corpus, "--from", path, "--steps", "3",
                    "--run-dir", tmp_path / "run", "--out", tmp_path / "tuned.json")
    assert_refused(result, "bad.json", "not valid JSON")
    assert not (tmp_path / "run").exists()


def test_plot_skips_lines_a_kill_cut_short(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = {"step": 10, "train_loss": 2.0, "val_loss": 2.1}
    (run / "metrics.jsonl").write_text(json.dumps(good) + "\n" + '{"step": 20, "train_lo')
    result = invoke("plot", run)
    assert result.exit_code == 0 and (run / "loss.png").exists(), result.output
    (run / "metrics.jsonl").write_text('{"step": 20}\n{"step": 30, "train_lo')
    assert_refused(invoke("plot", run), "metrics.jsonl", "no evaluations yet")
    assert_refused(invoke("plot", tmp_path), "metrics.jsonl", "not found: is", "a run directory?")
