"""Matmuls in the precision a computation asks for: full float32, or bfloat16 operands with
float32 sums (faster on CPUs with AMX and on GPUs' tensor cores)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from reference_numpy import spec


def check_precision(precision: str) -> None:
    """ValueError for a precision other than ``"float32"`` or ``"bfloat16"``."""
    if precision not in spec.MATMUL_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(spec.MATMUL_PRECISIONS)}, "
                         f"got {precision!r}")


def lowered(w: jax.Array, precision: str) -> jax.Array:
    """``w`` as a matmul operand: unchanged for ``"float32"`` (full precision, whatever the
    params' dtype), rounded to bfloat16 for ``"bfloat16"``. Weights are cast once, outside a
    scan, with this."""
    check_precision(precision)
    return w if precision == "float32" else w.astype(jnp.bfloat16)


def matmul(a: jax.Array, b: jax.Array, precision: str = "float32") -> jax.Array:
    """``a @ b``. ``"float32"`` is full float32 (``Precision.HIGHEST``: on GPUs JAX's default
    would round operands to TF32). With ``"bfloat16"`` both operands are rounded to bfloat16
    and the products summed in float32; the result has the operands' dtype (``b`` may
    already be :func:`lowered`)."""
    if precision == "float32":
        return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    out = a.dtype if b.dtype == jnp.bfloat16 else jnp.result_type(a, b)
    return jnp.matmul(lowered(a, precision), lowered(b, precision),
                      preferred_element_type=jnp.float32).astype(out)


def sum_outer(a: jax.Array, b: jax.Array, precision: str = "float32") -> jax.Array:
    """``sum_t a_t^T b_t`` for ``a [T, B, I]``, ``b [T, B, G]``: ``[I, G]``, one matmul.

    float32 runs it on 2-D views, ``[T*B, I]^T x [T*B, G]``; bfloat16 as an ``einsum``
    over both leading axes: on the CPU each form is the one XLA runs fastest for its
    operand type (``benchmarks/README.md``)."""
    if precision == "float32":
        return matmul(a.reshape(-1, a.shape[-1]).T, b.reshape(-1, b.shape[-1]))
    return jnp.einsum("tbi,tbg->ig", lowered(a, precision), lowered(b, precision),
                      preferred_element_type=jnp.float32).astype(jnp.result_type(a, b))
