"""Data parallelism over CPU devices, in a fresh process with two of them (JAX fixes its
device count at start-up)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY, assert_same_model, lstm_fn

# Three updates of the same model from the same data on one device and with the batch
# split over two, dropout on.
PROGRAM = """
import json
from lstm_fn.training.parallel import batch_mesh, use_cpu_cores
use_cpu_cores(2)
import jax, jax.numpy as jnp, numpy as np
import lstm_fn
from lstm_fn.config import TrainConfig
from lstm_fn.training.state import TrainState
from lstm_fn.training.step import make_train_step

out = {"devices": len(jax.devices()),
       "meshes": [None if (m := batch_mesh(b)) is None else m.size for b in (32, 16, 12, 7, 17)]}
cfg = lstm_fn.ModelConfig("lstm", vocab_size=11, embed_size=6, hidden_size=16, num_layers=2,
                          dropout=0.2)
batches = np.random.default_rng(0).integers(0, 11, (3, 2, 16, 20)).astype(np.int32)
init = lstm_fn.init(jax.random.key(0), cfg)
for gradients in ("manual",):  # the split wraps value_and_grad, whichever gradients it has
    tcfg = TrainConfig(batch_size=16, seq_len=20, steps=3, gradients=gradients)
    states, losses = {}, {}
    for name, mesh in (("one", None), ("split", batch_mesh(16))):
        step = make_train_step(cfg, tcfg, mesh)
        state = TrainState.fresh(jax.tree.map(jnp.copy, init), cfg, tcfg)  # donated
        for k, (x, y) in enumerate(batches):
            state, metrics = step(state, x, y, jnp.asarray(k == 0), tcfg.learning_rate)
        states[name] = jax.tree.map(np.asarray, state)
        losses[name] = float(metrics["loss"])  # the mean over the whole batch
    one, split = (jax.tree.leaves(states[k]) for k in ("one", "split"))
    carry = state.carry[0].h
    out[gradients] = {
        "loss_diff": abs(losses["one"] - losses["split"]),
        "diff": max(float(np.abs(a - b).max()) for a, b in zip(one, split)),
        "moved": max(float(np.abs(np.asarray(a) - b).max()) for a, b in
                     zip(jax.tree.leaves(init), jax.tree.leaves(states["split"].params))),
        "carry_rows_per_device": sorted(s.data.shape[0] for s in carry.addressable_shards)}
print(json.dumps(out))
"""


def test_split_batch_equals_one_device():
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["devices"] == 2
    # 32 and 16 streams split in two; 12 or 7 would leave a device fewer than 8, and 17 does
    # not split evenly
    assert out["meshes"] == [2, 2, None, None, None]
    for gradients in ("manual",):
        got = out[gradients]
        assert got["carry_rows_per_device"] == [8, 8], got
        assert got["moved"] > 1e-3, got  # the steps trained
        # float32, different summation order of the batch mean: measured ~1e-7
        assert got["diff"] < 1e-5 and got["loss_diff"] < 1e-5, got


def test_cli_run_split_over_two_devices_resumes_exactly(corpus, tmp_path):
    """The whole loop on the split path: evaluation, samples, checkpoints and export with
    replicated weights and a split carry; stopped at step 10 and resumed to 20, the same
    weights file, bit for bit, as 20 steps straight."""
    env = {**os.environ, "LSTM_FN_CPU_DEVICES": "2"}
    options = [*TINY, "--batch-size", "16", "--eval-every", "5", "--checkpoint-every", "5",
               "--sample-every", "10", "--sample-length", "20"]

    def pretrain(work, steps, *extra, env=env):
        result = lstm_fn("pretrain", corpus, *options, "--steps", steps, "--run-dir",
                         work / "run", "--out", work / "model.json", *extra, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    assert "batch of 16 split over 2 devices" in pretrain(tmp_path / "straight", 20).stderr
    pretrain(tmp_path / "resumed", 10)
    resumed = pretrain(tmp_path / "resumed", 20, "--resume")
    assert "resumed from checkpoint 10" in resumed.stderr
    assert_same_model(tmp_path / "resumed" / "model.json", tmp_path / "straight" / "model.json")
    # The checkpoints restore onto whatever devices the next run has: one, then two again.
    one_device = {k: v for k, v in os.environ.items() if k != "LSTM_FN_CPU_DEVICES"}
    assert "resumed from checkpoint 20" in pretrain(tmp_path / "resumed", 25, "--resume",
                                                    env=one_device).stderr
    assert "resumed from checkpoint 25" in pretrain(tmp_path / "resumed", 30,
                                                    "--resume").stderr


@pytest.mark.parametrize("count", ["two", "0", "257"])
def test_cli_refuses_a_bad_device_count(count, model_file):
    """99999 devices took minutes and 19 GB to set up: the count is bounded (``--help``
    sets up nothing, so a command that runs is needed)."""
    result = lstm_fn("info", model_file, env={**os.environ, "LSTM_FN_CPU_DEVICES": count})
    assert result.returncode == 2 and "LSTM_FN_CPU_DEVICES" in result.stderr
    assert "from 1 to 256" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
