"""Shared test set-up: exact float32 matmuls, tolerances stated once, small problems."""

from pathlib import Path

import jax
import numpy as np
import pytest

# GPUs default to TF32 matmuls; comparisons of numbers need true float32.
jax.config.update("jax_default_matmul_precision", "float32")

# Tolerances, justified once:
# - float32 forward vs a float64 reference over ~20 steps: rounding of ~1e-7 per op grows
#   a little through the recurrence; 1e-5 absolute on O(1) logits leaves a wide margin
#   over what we see (~1e-6) while catching any real convention error (>= 1e-2).
F32_ATOL = 1e-5
# Two float32 computations of the same quantity in a different order.
F32_RTOL = 1e-5

CELLS = ("rnn", "lstm", "gru")
SHARED_SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def assert_close(a, b, atol=F32_ATOL, rtol=F32_RTOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               atol=atol, rtol=rtol)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """CLI subprocesses share one persistent compilation cache for the session, outside
    the user's home."""
    import os

    path = os.environ.setdefault("LSTM_FN_CACHE", str(tmp_path_factory.mktemp("jax-cache")))
    return path
