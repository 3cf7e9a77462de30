"""The process around a command: closed standard streams (the shell's ``>&-``), the
environment variables the CLI reads, an unwritable compilation cache, a missing matplotlib,
paths given as ``~/x``, the progress and scoring lines and the device and cache settings."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from reference_numpy.weights import read_weights
from conftest import TINY, invoke, lstm_fn, lstm_fn_command


def shell(*args, redirect: str, **kwargs):
    """The real console command run by the shell with ``redirect`` (``>&-``: stdout closed,
    not /dev/null); output captured where it is not redirected."""
    return subprocess.run(shlex.join(lstm_fn_command(*args)) + " " + redirect, shell=True,
                          text=True, capture_output=True, timeout=300, **kwargs)


def test_a_result_for_a_closed_stdout_ends_as_a_closed_pipe(model_file, short_corpus):
    for args in (["eval", short_corpus, "--from", model_file],
                 ["sample", "--from", model_file, "--length", "5"]):
        result = shell(*args, redirect=">&-")
        assert result.returncode == 141 and result.stderr == "", (args, result.stderr)


def test_a_latin1_stdout_still_gets_the_text_whole_as_utf8(tmp_path):
    """With a stdout that cannot encode Japanese (PYTHONIOENCODING=latin-1; a redirected
    stdout on Windows is alike), a sample is written as UTF-8 as it is under LC_ALL=C,
    instead of failing at its first such character with a codec's message."""
    import jax

    import lstm_fn as package

    vocab = package.Vocab.from_text("日本語 café\n")
    cfg = package.ModelConfig("rnn", len(vocab), embed_size=2, hidden_size=2, num_layers=1)
    model = tmp_path / "ja.json"
    package.save_weights(model, package.init(jax.random.key(0), cfg), cfg, vocab)
    result = subprocess.run(lstm_fn_command("sample", "--from", model, "--prime", "日本 café",
                                            "--length", "0"),
                            capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONIOENCODING": "latin-1"})
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert result.stdout.decode("utf-8") == "日本 café\n"


def test_a_file_name_that_is_not_utf8_is_printed_as_its_bytes(tmp_path):
    """Under a UTF-8 locale stdout is strict, and a name holding a Latin-1 byte ("caf\\xe9",
    a lone surrogate once decoded) made the line that names it a codec error, exit 2: the
    result of eval, the last line of a whole training run, plot's path. It is written as
    the name's own bytes, as ls writes it."""
    run = tmp_path / os.fsdecode(b"caf\xe9")
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 10, "train_loss": 2.0, "val_loss": 2.1}\n')
    result = subprocess.run(lstm_fn_command("plot", run), capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert result.stdout == os.fsencode(run / "loss.png") + b"\n"


def test_training_with_a_closed_stderr_runs_on_unlogged(short_corpus, tmp_path):
    result = shell("pretrain", short_corpus, *TINY, "--steps", "4", "--eval-every", "2",
                   "--run-dir", tmp_path / "run", "--out", tmp_path / "model.json",
                   redirect="2>&-")
    assert result.returncode == 0 and "best model:" in result.stdout, result.stdout
    read_weights(tmp_path / "model.json")


def test_training_whose_log_reader_leaves_stops_with_a_checkpoint(short_corpus, tmp_path):
    """`lstm-fn pretrain ... 2>&1 | head -2`: as on SIGTERM, a checkpoint at the step in
    flight and exit 141, not a death at the next log line with the steps since the last
    checkpoint lost."""
    child = subprocess.Popen(lstm_fn_command(
        "pretrain", short_corpus, *TINY, "--steps", "100000", "--eval-every", "5",
        "--checkpoint-every", "100000", "--run-dir", tmp_path / "run", "--out",
        tmp_path / "model.json"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in child.stderr:
        if line.startswith("first step"):
            break
    child.stderr.close()  # the reader leaves
    assert child.wait(timeout=300) == 141
    steps = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
             if p.name.isdigit()]
    assert steps and max(steps) >= 1
    resumed = invoke("pretrain", "--resume", "--run-dir", tmp_path / "run", "--steps",
                     str(max(steps) + 1))
    assert resumed.exit_code == 0, resumed.output


@pytest.mark.parametrize("closed", ["<&- >&- 2>&-", ">&-"])
def test_closed_descriptors_are_not_handed_to_the_files_a_command_opens(tmp_path, closed):
    opened = subprocess.run(
        f"{shlex.quote(sys.executable)} -c 'import sys; from lstm_fn.cli.setup import "
        f"standard_streams; standard_streams(); print(open(sys.argv[1], \"w\").fileno(), "
        f"file=open(sys.argv[2], \"w\"))' {tmp_path / 'a'} {tmp_path / 'fd'} {closed}",
        shell=True, timeout=60)
    assert opened.returncode == 0
    assert int((tmp_path / "fd").read_text()) > 2


def test_a_jax_platform_that_cannot_start_is_one_line(model_file):
    result = lstm_fn("info", model_file, env={**os.environ, "JAX_PLATFORMS": "nosuchplatform"})
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("Error: JAX_PLATFORMS='nosuchplatform': JAX cannot start")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_an_unwritable_compilation_cache_is_one_warning(model_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = lstm_fn("sample", "--from", model_file, "--length", "3",
                     env={**os.environ, "LSTM_FN_CACHE": str(blocker / "cache")})
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"warning: compilation cache '{blocker / 'cache'}' is not writable "
                             "(Not a directory); compiling without it\n")


def test_the_compilation_cache_folder_may_start_with_a_tilde(model_file, tmp_path):
    result = lstm_fn("sample", "--from", model_file, "--length", "3", cwd=tmp_path,
                     env={**os.environ, "HOME": str(tmp_path / "home"), "LSTM_FN_CACHE": "~/c"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert any((tmp_path / "home" / "c").iterdir()) and not (tmp_path / "~").exists()


def test_every_path_may_start_with_a_tilde(short_corpus, tmp_path, monkeypatch):
    """``--out=~/x`` reaches the program unexpanded (the shell expands only a separate ~)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (home / "c.json").write_text(json.dumps({"train": {"steps": 2, "eval_every": 2}}))
    (home / "p.txt").write_text("the ")
    shutil.copy(short_corpus, home / "text.txt")
    trained = invoke("pretrain", "~/text.txt", *TINY, "--config=~/c.json", "--run-dir=~/run",
                     "--out=~/m.json")
    assert trained.exit_code == 0, trained.output
    tuned = invoke("fine-tune", "~/text.txt", *TINY[8:], "--steps", "1", "--from=~/m.json",
                   "--run-dir=~/tune", "--out=~/t.json", "--data-dir=~/data")
    assert tuned.exit_code == 0, tuned.output
    for args in (["sample", "--from=~/t.json", "--prime=@~/p.txt", "--length", "2"],
                 ["eval", "text.txt", "--from=~/m.json", "--data-dir=~"],
                 ["info", "~/m.json"], ["plot", "~/run"]):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    assert {"m.json", "t.json", "run", "tune"} <= {p.name for p in home.iterdir()}
    assert not any(work.iterdir())


def test_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a failed import leaves
    result = invoke("plot", tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith("Error: loss plot not written: ")
    assert "matplotlib" in result.stderr and len(result.stderr.splitlines()) == 1


def test_help_starts_without_jax():
    """``--help`` answers before JAX is imported (it took seconds to load), and the package's
    public names still import on use."""
    code = ("import sys, lstm_fn, lstm_fn.cli\n"
            "assert 'jax' not in sys.modules, 'jax imported'\n"
            "assert lstm_fn.ModelConfig is lstm_fn.nn.config.ModelConfig\n"
            "assert callable(lstm_fn.load_weights) and 'jax' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_package_is_one_line(model_file):
    """`python cli.py info ...` with a Python that lacks jax says so, without a traceback."""
    code = ("import sys; sys.modules['jax'] = None  # as if not installed\n"
            f"sys.argv = ['lstm-fn', 'info', {str(model_file)!r}]\n"
            "from lstm_fn.cli import main; main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == ("Error: the Python package 'jax' is not installed here; "
                                     "`pip install -e .` installs what lstm_fn needs")


def test_the_progress_line_counts_down_to_the_nearer_limit(capsys):
    """The ETA is the sooner of --steps (at the pace so far) and --minutes, never below 0,
    in minutes and seconds below an hour, hours and minutes from one hour on; before the
    first timed step there is no pace to show."""
    from lstm_fn.cli.console import Progress

    def eta(total, minutes, step, elapsed):
        Progress(total, minutes).show(step, 1.0, 1000.0, 1e-3, elapsed)
        return capsys.readouterr().err.rstrip("\n").rsplit(" | ETA ", 1)[-1]

    Progress(100, None).show(25, 1.5, 1234.4, 2e-3, 1.0)
    assert capsys.readouterr().err == "step 25/100 | loss 1.5000 | 1,234 chars/s | lr 2.00e-03 " \
                                      "| ETA 0m03s\n"
    assert eta(100, None, 25, 1200.0) == "1h00m"  # 75 steps left at 48 s each
    assert eta(100, None, 10, 411.2) == "1h01m"
    assert eta(100, 1, 50, 50.0) == "0m10s"  # the minute runs out before the steps
    assert eta(None, 1, 5, 90.0) == "0m00s"  # past the limit: the step in flight ends it
    # a process's first step compiles: no pace and no time left by steps until one is timed
    Progress(100, None).show(1, 4.2, None, 1e-3, 0.0)
    assert capsys.readouterr().err == "step 1/100 | loss 4.2000 | lr 1.00e-03\n"
    Progress(100, 2).show(1, 4.2, None, 1e-3, 30.0)
    assert capsys.readouterr().err == "step 1/100 | loss 4.2000 | lr 1.00e-03 | ETA 1m30s\n"


def test_the_scoring_line_waits_ten_seconds_then_shows_the_pace(capsys, monkeypatch):
    """Off a terminal: nothing for the first 10 s (a short text says nothing), then one line
    per 10 s with the share done, the pace and the time left; nothing more at the end."""
    from lstm_fn.cli import console

    clock = iter([100.0, 105.0, 111.0, 115.0, 122.0, 140.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    show = console.ScoringProgress(4_000, "test split: scored")  # starts at 100 s
    for done in (500, 1_100, 1_500, 2_200, 4_000):
        show(done)
    assert capsys.readouterr().err == (
        "test split: scored 1,100/4,000 characters (28%) | 100 chars/s | ETA 0m29s\n"
        "test split: scored 2,200/4,000 characters (55%) | 100 chars/s | ETA 0m18s\n")


def test_a_device_count_of_256_and_the_cache_folder_settings(monkeypatch, tmp_path, capsys):
    """256 devices is allowed; the cache goes under $XDG_CACHE_HOME when set; a folder that
    exists but takes no files (its permission bits may say otherwise) leaves it off."""
    import jax

    from lstm_fn.cli import setup as cli_setup
    from lstm_fn.training import parallel

    counts, settings = [], {}
    monkeypatch.setattr(parallel, "use_cpu_cores", counts.append)
    monkeypatch.setenv("LSTM_FN_CPU_DEVICES", "256")
    cli_setup.use_cpu_devices()
    assert counts == [256]
    monkeypatch.setattr(jax.config, "update", settings.__setitem__)
    monkeypatch.delenv("LSTM_FN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cli_setup.enable_compilation_cache()
    assert settings["jax_compilation_cache_dir"] == str(tmp_path / "xdg" / "lstm_fn" / "jax")
    if os.path.isdir("/sys") and sys.platform == "linux":  # no files can be made there
        settings.clear()
        monkeypatch.setenv("LSTM_FN_CACHE", "/sys")
        cli_setup.enable_compilation_cache()
        assert settings == {}
        assert capsys.readouterr().err.startswith("warning: compilation cache '/sys' is not "
                                                  "writable (")


def test_debug_shows_the_traceback_and_ctrl_c_is_one_line(tmp_path, model_file, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert invoke("info", bad).exit_code == 2
    result = invoke("--debug", "info", bad)
    assert result.exit_code == 1 and isinstance(result.exception, ValueError), result.output
    import lstm_fn.runs.models

    def interrupted(path, step=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(lstm_fn.runs.models, "open_model", interrupted)
    result = invoke("info", model_file)
    assert result.exit_code == 130 and result.stderr == "interrupted\n", result.output


@pytest.mark.parametrize("error", [ValueError("operands could not be broadcast"),
                                   KeyError("w_x"), ZeroDivisionError()])
def test_an_unexpected_exception_is_named_as_a_bug(model_file, monkeypatch, error):
    """Bad input is exit 2; anything lstm_fn did not expect (a ValueError from deep inside
    JAX included) is a bug: one line saying so and how to see the traceback, exit 1."""
    import lstm_fn.runs.models

    def broken(path, step=None):
        raise error

    monkeypatch.setattr(lstm_fn.runs.models, "open_model", broken)
    result = invoke("info", model_file)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: internal error, a bug in lstm_fn: " + type(error).__name__)
    assert line.endswith("rerun with --debug for the traceback")
    assert isinstance(invoke("--debug", "info", model_file).exception, type(error))


def test_an_operating_system_error_is_one_line_naming_the_file(model_file, monkeypatch):
    import errno

    import lstm_fn.runs.models

    def unreadable(path, step=None):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(lstm_fn.runs.models, "open_model", unreadable)
    result = invoke("info", model_file)
    assert result.exit_code == 2
    assert result.stderr == f"Error: Permission denied ({model_file})\n"
