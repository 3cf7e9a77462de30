"""What the machine offers that a run's settings may depend on."""

from __future__ import annotations

from pathlib import Path

import jax

# CPU instructions that multiply bfloat16 operands with float32 sums (x86: AVX-512 BF16,
# AMX): with them, a training step with bfloat16 matmuls runs faster than with float32.
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def fast_bfloat16() -> bool:
    """Whether bfloat16 matmul operands are faster here: an accelerator, or a CPU with the
    instructions of :data:`BFLOAT16_FLAGS` (Linux only: read from ``/proc/cpuinfo``)."""
    if jax.default_backend() != "cpu":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in BFLOAT16_FLAGS)


def resolved_precision(precision: str) -> str:
    """``"auto"`` as this machine takes it; another precision as it is."""
    if precision != "auto":
        return precision
    return "bfloat16" if fast_bfloat16() else "float32"
