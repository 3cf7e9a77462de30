#!/usr/bin/env bash
# The speed comparison on a GPU, in under 5 minutes: lstm_fn on JAX's GPU backend against
# torch's cuDNN nn.RNN / nn.LSTM / nn.GRU, same configs, alternating rounds, one process.
#
#   bash benchmarks/gpu.sh            # markdown table on stdout
#   bash benchmarks/gpu.sh --json     # the same as JSON
#
# Needs a Python with jax (CUDA build: pip install -e ".[gpu]"), optax, numpy and a CUDA
# build of torch; set PYTHON to choose it. Nothing is downloaded here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY'
import importlib.util, sys
missing = [m for m in ("jax", "optax", "numpy", "torch") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing modules: {', '.join(missing)} (pip install -e '.[gpu]' torch)")
import jax, torch
if jax.default_backend() != "gpu" or not torch.cuda.is_available():
    sys.exit(f"no GPU: jax backend {jax.default_backend()}, torch cuda {torch.cuda.is_available()}")
print(f"{jax.devices()[0].device_kind}: jax {jax.__version__}, torch {torch.__version__}",
      file=sys.stderr)
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
# GPUs default to TF32 matmuls in both frameworks; keep float32 so the comparison is fair.
export JAX_DEFAULT_MATMUL_PRECISION=float32
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 290 "$PYTHON" benchmarks/speed.py --quick --gpu "$@"
