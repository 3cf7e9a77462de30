"""`lstm-fn sample` at the edges of its input: primes outside the vocabulary, from files with
a BOM or Windows newlines, any bytes for a bytes model, length 0, and a length too large to
produce before printing (the output streams); an ASCII stdout and locale. Refusals are one
line, exit code 2."""

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import jax
from click.testing import CliRunner

import lstm_fn
from lstm_fn.cli.app import cli
from conftest import SHORT_TEXT, assert_refused, invoke, lstm_fn_command


def lstm_fn_popen(*args, **kwargs):
    """The real console command in a subprocess (persistent compile cache as configured)."""
    cache_dir = kwargs.pop("cache_dir")
    env = {**os.environ, "LSTM_FN_CACHE": os.environ.get("LSTM_FN_CACHE") or str(cache_dir)}
    return subprocess.Popen(lstm_fn_command(*args), env=env, **kwargs)


def test_prime_outside_the_vocabulary_is_named(model_file, tmp_path):
    assert_refused(invoke("sample", "--from", model_file, "--prime", "the QUIZ"),
                   "4 character(s) not in the model's vocabulary", "'I', 'Q', 'U', 'Z'")
    prime = tmp_path / "prime.txt"
    prime.write_text("the cat\u00e9", encoding="utf-8")
    assert_refused(invoke("sample", "--from", model_file, "--prime", f"@{prime}"), "'é'")
    assert_refused(invoke("sample", "--from", model_file, "--prime", "@" + str(tmp_path / "no")),
                   "No such file")
    assert_refused(invoke("sample", "--from", model_file, "--prime", ""), "--prime is empty")


def test_a_prime_with_accents_in_the_other_unicode_form_is_matched_to_the_vocabulary(tmp_path):
    """"café" typed with a precomposed "é" (NFC, what keyboards give) primes a model whose
    corpus wrote "e" + U+0301 (NFD, as macOS file names and some exports do), and the
    other way round: the two are the same text, and the error named an "é" that looked
    exactly like the model's."""
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    for corpus, prime in ((nfd + " the\u0301", nfc), (nfc + " th\u00e9", nfd)):
        vocab = lstm_fn.Vocab.from_text(corpus)
        cfg = lstm_fn.ModelConfig("rnn", len(vocab), embed_size=2, hidden_size=2, num_layers=1)
        model = tmp_path / "accents.json"
        lstm_fn.save_weights(model, lstm_fn.init(jax.random.key(0), cfg), cfg, vocab)
        result = invoke("sample", "--from", model, "--prime", prime, "--length", "0")
        assert result.exit_code == 0, result.output
        assert result.stdout == corpus.split()[0] + "\n"  # the prime, in the corpus's form
    # no form of "cafè" is in the vocabulary of "café thé"
    assert_refused(invoke("sample", "--from", model, "--prime", "cafe\u0300"),
                   "not in the model's vocabulary", "'\u0300'")


def test_prime_file_with_a_bom_and_a_seed_out_of_range(model_file, tmp_path):
    prime = tmp_path / "bom.txt"
    prime.write_bytes("\ufeffthe cat".encode("utf-8"))
    result = invoke("sample", "--from", model_file, "--prime", f"@{prime}", "--length", "3")
    assert result.exit_code == 0 and result.stdout.startswith("the cat"), result.output
    result = invoke("sample", "--from", model_file, "--seed", str(2**70))
    assert result.exit_code == 2 and "Traceback" not in result.output and "--seed" in result.output


def test_prime_file_with_windows_newlines_reads_like_a_corpus(model_file, tmp_path):
    prime = tmp_path / "crlf.txt"
    prime.write_bytes(b"the cat\r\nthe dog\r\n")
    result = invoke("sample", "--from", model_file, "--prime", f"@{prime}", "--length", "3")
    assert result.exit_code == 0 and result.stdout.startswith("the cat\nthe dog\n"), \
        result.output


def test_a_bytes_model_takes_any_prime_bytes(tmp_path):
    vocab = lstm_fn.Vocab.bytes()
    cfg = lstm_fn.ModelConfig("gru", len(vocab), embed_size=4, hidden_size=8, num_layers=1)
    model = tmp_path / "bytes.json"
    lstm_fn.save_weights(model, lstm_fn.init(jax.random.key(0), cfg), cfg, vocab)
    # a byte that is not UTF-8 reaches Python's argv as a lone surrogate
    result = invoke("sample", "--from", model, "--prime", "caf\udce9", "--length", "0")
    assert result.exit_code == 0 and result.stdout == "caf\ufffd\n", result.output
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert_refused(invoke("sample", "--from", model, "--prime", f"@{empty}"), "is empty")


def test_length_zero_prints_just_the_prime(model_file):
    result = invoke("sample", "--from", model_file, "--prime", "the cat", "--length", "0",
                    "--seed", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "the cat\n"


def test_the_default_prime_is_a_newline_when_the_vocabulary_has_one(tmp_path):
    vocab = lstm_fn.Vocab.from_text("b\ta\nc")  # a tab sorts before the newline
    cfg = lstm_fn.ModelConfig("rnn", len(vocab), embed_size=4, hidden_size=8, num_layers=1)
    model = tmp_path / "tab.json"
    lstm_fn.save_weights(model, lstm_fn.init(jax.random.key(0), cfg), cfg, vocab)
    assert invoke("sample", "--from", model, "--length", "0").stdout == "\n\n"


def test_huge_length_streams(model_file, tmp_path):
    """A billion characters could never be produced before printing: text that arrives while
    the process runs proves the output streams (chunk by chunk), and memory stays flat."""
    errors = (tmp_path / "stderr.txt").open("w")
    proc = lstm_fn_popen("sample", "--from", model_file, "--prime", "the ", "--seed", "0",
                         "--length", str(10 ** 9), cache_dir=tmp_path / "cache",
                         stdout=subprocess.PIPE, stderr=errors)
    try:
        received, deadline = b"", time.monotonic() + 120
        while len(received) < 20_000:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "no streamed output within 120 s"
            if select.select([proc.stdout], [], [], 1.0)[0]:
                received += os.read(proc.stdout.fileno(), 65536)
        rss_kib = int(next(line.split()[1] for line in
                           Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                           if line.startswith("VmHWM:"))) if sys.platform == "linux" else 0
        assert proc.poll() is None  # still generating: the output came out as it was made
        proc.stdout.close()  # as `| head` does: the process stops quietly
        assert proc.wait(timeout=60) == 141
    finally:
        proc.kill()
        proc.wait()
        errors.close()
    assert (tmp_path / "stderr.txt").read_text() == ""
    assert received.startswith(b"the ")
    assert set(received.decode("utf-8", errors="strict")) <= set(SHORT_TEXT)
    assert rss_kib < 2 * 1024 * 1024, f"peak memory {rss_kib} KiB"


def test_a_character_split_between_prime_and_sample_comes_out_whole(tmp_path):
    """A bytes model primed with the first byte of 'é' (0xC3) that always answers 0xA9."""
    vocab = lstm_fn.Vocab.bytes()
    cfg = lstm_fn.ModelConfig("rnn", len(vocab), embed_size=2, hidden_size=2, num_layers=1)
    params = jax.tree.map(lambda a: a * 0, lstm_fn.init(jax.random.key(0), cfg))
    params["head"]["b"] = params["head"]["b"].at[0xA9].set(10.0)
    model = tmp_path / "always_a9.json"
    lstm_fn.save_weights(model, params, cfg, vocab)
    prime = tmp_path / "prime.bin"
    prime.write_bytes(b"caf\xc3")
    result = invoke("sample", "--from", model, "--prime", f"@{prime}", "--length", "1", "--greedy")
    assert result.exit_code == 0 and result.stdout == "caf\u00e9\n", result.output
    result = invoke("sample", "--from", model, "--prime", f"@{prime}", "--length", "1", "--greedy",
                    "--num-samples", "2")
    expected = "--- sample 1 ---\ncaf\u00e9\n--- sample 2 ---\ncaf\u00e9\n"
    assert result.stdout == expected, result.output


def test_an_ascii_stdout_and_an_ascii_locale_s_argv_still_give_utf8(tmp_path):
    """Under LC_ALL=C stdout claims ASCII (the text goes out as UTF-8, as click.echo writes
    it) and the prime 'café' arrives as 'caf' and two surrogate-escaped bytes."""
    vocab = lstm_fn.Vocab.from_text("the café\n")
    cfg = lstm_fn.ModelConfig("gru", len(vocab), embed_size=4, hidden_size=8, num_layers=1)
    model = tmp_path / "cafe.json"
    lstm_fn.save_weights(model, lstm_fn.init(jax.random.key(0), cfg), cfg, vocab)
    args = ["sample", "--from", str(model), "--prime", "caf\udcc3\udca9", "--length", "5"]
    for count in ("1", "2"):
        result = CliRunner(charset="ascii").invoke(cli, [*args, "--num-samples", count])
        assert result.exit_code == 0, result.output
        assert "café" in result.stdout_bytes.decode("utf-8")
    # bytes that are not UTF-8 stay unknown characters, named as such
    assert_refused(invoke("sample", "--from", model, "--prime", "caf\udce9"), "'\\udce9'")


def test_escape_sequences_in_the_text_are_kept(tmp_path):
    vocab = lstm_fn.Vocab.bytes()
    cfg = lstm_fn.ModelConfig("rnn", len(vocab), embed_size=2, hidden_size=2, num_layers=1)
    model = tmp_path / "bytes.json"
    lstm_fn.save_weights(model, lstm_fn.init(jax.random.key(0), cfg), cfg, vocab)
    args = ["sample", "--from", model, "--prime", "\x1b[1mbold", "--length", "0"]
    assert invoke(*args).stdout == "\x1b[1mbold\n"
    assert invoke(*args, "--num-samples", "2").stdout.count("\x1b[1mbold\n") == 2
