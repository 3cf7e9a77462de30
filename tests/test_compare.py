"""``lstm-fn compare``: every variant trained under one budget, one table, and a second
invocation that trains nothing already finished."""

import json

from conftest import invoke, listing

SMALL = ["--embed-size", "4", "--batch-size", "4", "--seq-len", "16", "--sample-every", "0",
         "--eval-every", "2", "--checkpoint-every", "2"]


def test_compare_trains_each_variant_once_and_writes_its_files(tmp_path, short_corpus):
    out = tmp_path / "cmp"
    args = ["compare", short_corpus, "--cells", "rnn,gru", "--hidden-size", "8",
            "--chars", str(3 * 4 * 16), "--out-dir", out, *SMALL]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    summary = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert [row["variant"] for row in summary["variants"]] == ["rnn-2x8", "gru-2x8"]
    for row in summary["runs"]:
        assert row["steps"] == 3 and row["chars"] == 3 * 4 * 16
        assert row["held_out"] > 0  # each run's test split
    table = (out / "compare.md").read_text(encoding="utf-8")
    assert "| rnn-2x8 |" in table and "| gru-2x8 |" in table and table in first.stdout
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    runs_before = listing(out / "runs")
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert listing(out / "runs") == runs_before  # nothing trained, nothing rewritten
    assert (out / "compare.md").read_text(encoding="utf-8") == table


def test_a_finished_variant_is_kept_and_a_new_one_added(tmp_path, short_corpus):
    out = tmp_path / "cmp"
    common = ["compare", short_corpus, "--hidden-size", "8", "--out-dir", out, *SMALL]
    assert invoke(*common, "--cells", "gru", "--steps", "2").exit_code == 0
    # the gru finished: it is kept as it is; the lstm is new and trains
    result = invoke(*common, "--cells", "gru,lstm", "--steps", "4")
    assert result.exit_code == 0, result.output
    runs = json.loads((out / "compare.json").read_text(encoding="utf-8"))["runs"]
    assert [(r["variant"], r["steps"]) for r in runs] == [("gru-2x8", 2), ("lstm-2x8", 4)]


def test_match_params_sizes_each_variant_like_the_first(tmp_path, short_corpus):
    out = tmp_path / "cmp"
    result = invoke("compare", short_corpus, "--cells", "lstm,rnn", "--hidden-size", "16",
                    "--match-params", "--steps", "1", "--out-dir", out, *SMALL)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "compare.json").read_text(encoding="utf-8"))["variants"]
    lstm, rnn = rows
    assert lstm["variant"] == "lstm-2x16" and rnn["variant"].startswith("rnn-2x")
    assert int(rnn["variant"].split("x")[1]) > 16
    assert abs(rnn["parameters"] - lstm["parameters"]) / lstm["parameters"] < 0.1
