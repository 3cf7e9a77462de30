"""A run of several processes on JAX's distributed runtime: two processes on 127.0.0.1, one
CPU device each, their collectives over gloo."""

import socket
import subprocess
import time
import types

import jax
import numpy as np
import pytest

from conftest import assert_close, checkpoint_steps, lstm_fn, lstm_fn_command, metrics
from lstm_fn.runs.models import open_model
from lstm_fn.text.streams import train_batch
from lstm_fn.training.cluster import local_rows

pytestmark = pytest.mark.slow

SMALL = ["--cell", "lstm", "--embed-size", "8", "--hidden-size", "16", "--batch-size", "16",
         "--seq-len", "16", "--sample-every", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(corpora, args, env) -> list[subprocess.Popen]:
    """One process per corpus, process i reading corpora[i]."""
    where = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(len(corpora))]
    return [subprocess.Popen(lstm_fn_command("pretrain", corpus, *args, *where,
                                             "--process-id", str(i)),
                             env={k: v for k, v in env.items() if k != "LSTM_FN_CPU_DEVICES"},
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i, corpus in enumerate(corpora)]


def finish(processes, timeout=240) -> list[tuple[int, str, str]]:
    ends = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        ends.append((process.returncode, out, err))
    return ends


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    from conftest import corpus_text

    path = tmp_path_factory.mktemp("cluster") / "text.txt"
    path.write_text(corpus_text(seed=3, n=20_000), encoding="utf-8")
    return path


def test_two_processes_train_as_one_and_only_process_0_writes(tmp_path, text, env):
    run = ["--steps", "6", "--eval-every", "3", "--checkpoint-every", "3", *SMALL]
    (code0, out0, err0), (code1, out1, err1) = finish(
        launch([text, text], [*run, "--run-dir", tmp_path / "two"], env))
    assert (code0, code1) == (0, 0), err0 + err1
    assert "split over 2 devices of 2 processes" in err0
    assert "best model:" in out0
    assert (out1, err1) == ("", "")  # process 1 prints nothing
    single = lstm_fn("pretrain", text, *run, "--run-dir", tmp_path / "one", env=env)
    assert single.returncode == 0, single.stderr
    # every record written once (process 0 alone writes them)
    assert [m["step"] for m in metrics(tmp_path / "two")] == [3, 6]
    log = (tmp_path / "two" / "train.log").read_text(encoding="utf-8")
    assert log.count("step 6:") == 1
    for step in (3, 6):
        two, one = open_model(tmp_path / "two", step), open_model(tmp_path / "one", step)
        for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params)):
            assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_lost_process_stops_the_other_and_the_run_resumes(tmp_path, text, env):
    run_dir = tmp_path / "run"
    args = ["--steps", "100000", "--eval-every", "50", "--checkpoint-every", "20", *SMALL,
            "--run-dir", run_dir]
    first, second = launch([text, text], args, env)
    deadline = time.monotonic() + 120
    while len(checkpoint_steps(run_dir)) < 2:
        assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()
        time.sleep(0.2)
    second.kill()
    killed = time.monotonic()
    code, _, err = finish([first], timeout=90)[0]
    finish([second])
    assert time.monotonic() - killed < 60
    assert code == 4, err
    [line] = [line for line in err.splitlines() if line.startswith("Error:")]
    assert "process 1 of the run is gone" in line and "--resume --run-dir" in line
    last = checkpoint_steps(run_dir)[-1]
    resumed = finish(launch([text, text], ["--resume", "--run-dir", run_dir,
                                           "--steps", str(last + 20)], env))
    assert [code for code, _, _ in resumed] == [0, 0], resumed[0][2] + resumed[1][2]
    assert f"resumed from checkpoint {last}" in resumed[0][2]
    assert checkpoint_steps(run_dir)[-1] == last + 20


def test_a_corpus_that_differs_is_refused_by_every_process(tmp_path, text, env):
    other = tmp_path / "other.txt"
    other.write_text(text.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    ends = finish(launch([text, other], ["--steps", "2", *SMALL, "--run-dir", tmp_path / "r"],
                         env))
    for code, _, err in ends:
        assert code == 2, err
        assert "Error: the corpus differs between processes: process 1 reads" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("options, needle", [
    (["--coordinator", "127.0.0.1:9", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2 is not one of 0..1"),
    (["--num-processes", "2", "--process-id", "0"], "--coordinator"),
    (["--coordinator", "nowhere", "--num-processes", "2", "--process-id", "0"],
     "is not HOST:PORT"),
])
def test_incomplete_cluster_options_are_refused(tmp_path, text, env, options, needle):
    result = lstm_fn("pretrain", text, "--steps", "1", *options, "--run-dir", tmp_path / "r",
                     env=env, timeout=60)
    assert result.returncode == 2 and needle in result.stderr, result.stderr


def test_a_coordinator_port_in_use_is_refused(tmp_path, text, env):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = lstm_fn("pretrain", text, "--steps", "1", "--coordinator",
                         f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0",
                         "--run-dir", tmp_path / "r", env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"--coordinator port {port} cannot be listened on" in result.stderr


def test_each_process_builds_only_its_own_streams(monkeypatch):
    """With the batch split over the devices of two processes, process 1 holds streams
    8..15 of 16, and train_batch builds those rows alone."""
    devices = [types.SimpleNamespace(process_index=p) for p in (0, 0, 1, 1)]
    mesh = types.SimpleNamespace(devices=np.array(devices), size=4)
    rows = {}
    for process in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda: process)  # noqa: B023
        rows[process] = local_rows(mesh, 16)
    assert rows == {0: slice(0, 8), 1: slice(8, 16)}
    ids = np.arange(5000) % 61
    whole = train_batch(ids, 16, 32, 7)
    part = train_batch(ids, 16, 32, 7, rows[1])
    assert part[0].shape == (8, 32)
    np.testing.assert_array_equal(part[0], whole[0][8:])
    np.testing.assert_array_equal(part[1], whole[1][8:])
    assert part[2] == whole[2]


def test_a_long_validation_split_is_scored_in_shares_with_the_same_result(tmp_path, env):
    """103,500 validation characters: two streams of evaluation, one a process; their sums
    add up to the loss one process computes over both."""
    from conftest import corpus_text

    text = tmp_path / "long.txt"
    text.write_text(corpus_text(seed=4, n=230_000), encoding="utf-8")
    run = ["--steps", "2", "--eval-every", "2", "--val-fraction", "0.45", *SMALL]
    ends = finish(launch([text, text], [*run, "--run-dir", tmp_path / "two"], env))
    assert [code for code, _, _ in ends] == [0, 0], ends[0][2] + ends[1][2]
    single = lstm_fn("pretrain", text, *run, "--run-dir", tmp_path / "one", env=env)
    assert single.returncode == 0, single.stderr
    [two], [one] = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
