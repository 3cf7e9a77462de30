"""Generation of token ids as compiled JAX programs: temperature, top-k, nucleus (top-p),
greedy. Ids in, ids out: the callers turn text into ids and back.

The prime runs through the model once (:func:`warm_up`); new tokens then come from
:func:`generate_chunk`, one jit-compiled ``lax.scan`` per chunk that draws a token from the
current logits and feeds it back through :func:`lstm_fn.nn.model.forward` with the layer
pass :data:`ONE_STEP`. :func:`generate` strings chunks together and yields each as soon as
it is computed, so an arbitrarily long ``length`` streams in constant memory.

Randomness: the token at absolute step ``t`` (0 = first token after the prime) is drawn with
``jax.random.fold_in(key, t)``, so a fixed key gives the same text whatever the chunk size.
All ``S`` samples of a step share that key; ``jax.random.categorical`` draws the rows
independently (its Gumbel-max form, ``argmax(z + gumbel(key, [S, V]))``, with the noise of a
whole chunk drawn before the loop).

The filtering semantics are those of :func:`reference_numpy.next_token_probs`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lstm_fn.nn.cells import get_cell
from lstm_fn.nn.config import ModelConfig
from lstm_fn.nn.model import apply, check_params, forward, input_table
from lstm_fn.nn.precision import matmul
from lstm_fn.nn.scan import LayerPass


# The smallest positive normal float32; lower temperatures act as this one (greedy in effect).
SMALLEST_TEMPERATURE = float(np.finfo(np.float32).tiny)


def filter_logits(logits: jax.Array, *, temperature: jax.typing.ArrayLike,
                  top_k: int | None, top_p: jax.typing.ArrayLike | None) -> jax.Array:
    """Logits of the distribution a sampler draws from: scaled, then top-k, then nucleus.

    ``z = (logits - max(logits)) / temperature`` (the shift leaves ranks and ``softmax(z)``
    as they are, and keeps a tiny temperature from overflowing to ``inf``, where every token
    would tie); tokens are ranked by ``z``, most likely first, ties by the
    lower id (as ``np.argsort(kind="stable")``). A token is kept when its rank is below
    ``min(top_k, reach)``, where ``reach`` is one plus the number of ranks whose running
    probability ``cumsum(softmax(z)[order])`` is still below ``top_p``: the smallest set of
    most likely tokens whose mass reaches ``top_p``, never empty. Dropped tokens get
    ``-inf``, so ``softmax`` of the result is :func:`reference_numpy.next_token_probs`.

    Args:
      logits: float ``[S, V]``.
      temperature: scalar > 0 (may be traced); below :data:`SMALLEST_TEMPERATURE` it is
        taken as that.
      top_k: int >= 1 or None (static: it is compared against ranks at trace time).
      top_p: scalar in ``(0, 1]`` or None (may be traced).

    Returns:
      float ``[S, V]``: ``z`` where kept, ``-inf`` elsewhere.
    """
    # below the smallest normal float32 a temperature would flush to 0 and make 0 / 0
    temperature = jnp.maximum(temperature, SMALLEST_TEMPERATURE)
    scaled = (logits - logits.max(axis=-1, keepdims=True)) / temperature
    if top_k is None and top_p is None:
        return scaled
    order = jnp.argsort(-scaled, axis=-1, stable=True)  # [S, V] ids, most likely first
    rank = jnp.argsort(order, axis=-1)  # [S, V] rank of each id
    keep = jnp.full(scaled.shape[:-1] + (1,), scaled.shape[-1])  # [S, 1]
    if top_k is not None:
        keep = jnp.minimum(keep, top_k)
    if top_p is not None:
        sorted_probs = jax.nn.softmax(jnp.take_along_axis(scaled, order, axis=-1), axis=-1)
        mass = jnp.cumsum(sorted_probs, axis=-1)  # [S, V]
        reach = jnp.sum(mass < top_p, axis=-1, keepdims=True) + 1  # [S, 1]
        # top_p 1 keeps every token: a float32 cumsum reaches 1 before the tiniest ones
        reach = jnp.where(top_p >= 1.0, scaled.shape[-1], reach)
        keep = jnp.minimum(keep, reach)
    return jnp.where(rank < keep, scaled, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("cfg", "num_samples"))
def warm_up(params: dict, cfg: ModelConfig, prime_ids: jax.Array,
            num_samples: int) -> tuple[tuple, jax.Array]:
    """Run the prime through the model and copy the result for ``S`` samples.

    The prime is run once with batch 1 and its carry and last logits broadcast to ``S``
    rows: the same numbers as a batch of ``S`` identical copies, at ``1/S`` of the cost.

    Args:
      prime_ids: int ``[P]``, ``P >= 1``.
      num_samples: ``S`` (static).

    Returns:
      ``(carry, last_logits [S, V])``; carry is per layer, each part ``[S, H]``.
    """
    logits, carry = apply(params, cfg, prime_ids[None, :])  # [1, P, V]
    copies = lambda a: jnp.broadcast_to(a, (num_samples,) + a.shape[1:])
    return jax.tree.map(copies, carry), copies(logits[:, -1])


def _one_step(cell: str, p: dict, gxs: jax.Array, carry, precision: str):
    """The recurrence of a single step: ``gxs [1, S, G*H]`` -> ``(hs [1, S, H], carry)``."""
    carry, h = get_cell(cell).step(p, carry, gxs[0] + p["b_x"], precision)
    return h[None], carry, None


# The layer pass of lstm_fn.nn.model.forward for one step of generation, with the first
# layer's projection read from the table that generate_chunk computes once per chunk.
ONE_STEP = LayerPass(matmul, _one_step)


@functools.partial(jax.jit, static_argnames=("cfg", "length", "top_k", "greedy"))
def generate_chunk(params: dict, cfg: ModelConfig, carry: tuple, logits: jax.Array,
                   key: jax.Array, length: int, *, temperature: jax.typing.ArrayLike = 1.0,
                   top_k: int | None = None, top_p: jax.typing.ArrayLike | None = None,
                   greedy: bool = False, start: jax.typing.ArrayLike = 0,
                   ) -> tuple[jax.Array, tuple, jax.Array]:
    """Draw ``length`` tokens in one compiled ``lax.scan``, feeding each back in.

    Step ``i`` draws ``id = argmax(logits)`` when ``greedy``, else
    ``categorical(fold_in(key, start + i), filter_logits(logits))``, then advances the carry
    and logits by one model step. The Gumbel noise of all steps is drawn before the scan
    (float ``[length, S, V]``: 4 MiB at 256 x 64 x 65) and the first layer's input projection
    is a ``[V, G*H]`` table computed once per chunk (:func:`lstm_fn.nn.model.input_table`);
    the ids are those of the per-step form. Compiled once per ``(cfg, length, top_k, greedy)`` and shapes;
    ``temperature``, ``top_p`` and ``start`` are traced (changing them reuses the program;
    ``top_p=None`` and a number are two programs).

    Args:
      carry, logits: state after the previous token (from :func:`warm_up` or a previous
        chunk); logits ``[S, V]``.
      key: PRNG key (unused when ``greedy``).
      length: number of tokens (static).
      start: absolute index of this chunk's first step, for the per-step keys.

    Returns:
      ``(ids int32 [S, length], carry, logits [S, V])`` ready for the next chunk.
    """
    table = input_table(params)
    noise = None
    if not greedy:
        # categorical(k, z) is argmax(z + gumbel(k, z.shape)), so the noise of every step,
        # drawn here at once from the same per-step keys, gives the ids categorical would,
        # without a key derivation and a small random draw inside each step.
        draw = lambda t: jax.random.gumbel(jax.random.fold_in(key, t), logits.shape, logits.dtype)
        noise = jax.vmap(draw)(start + jnp.arange(length, dtype=jnp.int32))  # [length, S, V]

    def body(state, g):
        carry, logits = state
        if greedy:
            ids = jnp.argmax(logits, axis=-1)
        else:
            filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            ids = jnp.argmax(filtered + g, axis=-1)
        ids = ids.astype(jnp.int32)  # [S]
        logits, carry, _ = forward(params, cfg.cell, ids[:, None], carry, ONE_STEP, table=table)
        return (carry, logits[:, 0]), ids

    (carry, logits), ids = lax.scan(body, (carry, logits), noise, length=length)
    return ids.T, carry, logits


def _check_options(cfg: ModelConfig, prime_ids: np.ndarray, length, num_samples, temperature,
                   top_k, top_p, greedy, chunk_size, key) -> None:
    """ValueError naming the first bad option."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(length) or length < 0:
        raise ValueError(f"length must be an integer >= 0, got {length!r}")
    if not is_int(num_samples) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if not is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p!r}")
    if not greedy and not 0 < temperature < np.inf:
        raise ValueError(f"temperature must be > 0 and finite unless greedy, got "
                         f"{temperature!r}")
    if not greedy and key is None:
        raise ValueError("key is required unless greedy")
    if prime_ids.ndim != 1 or prime_ids.size == 0:
        raise ValueError(f"prime must be a non-empty 1-d sequence of ids, got shape "
                         f"{prime_ids.shape}")
    if prime_ids.min() < 0 or prime_ids.max() >= cfg.vocab_size:
        raise ValueError(f"prime ids must be in [0, {cfg.vocab_size}), got "
                         f"{prime_ids.min()}..{prime_ids.max()}")


# Gumbel noise values drawn ahead per chunk, at most (64 MiB in float32).
NOISE_BUDGET = 2**24


def generate(params: dict, cfg: ModelConfig, prime_ids, length: int, *,
             key: jax.Array | None = None,
             num_samples: int = 1, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, greedy: bool = False,
             chunk_size: int = 256) -> Iterator[np.ndarray]:
    """Continue a prime with ``length`` tokens per sample, yielded chunk by chunk.

    Options are checked when called (ValueError naming the option), before anything runs.
    Chunks have ``chunk_size`` steps (fewer where ``S * V`` is so large that a chunk's noise
    would pass :data:`NOISE_BUDGET` values) except the last, which is the remainder,
    and compiled as its own shape (so at most two programs per call, both cached): nothing is
    computed past ``length``. The next chunk is dispatched before the current one is copied
    to the host, so the device keeps working while the caller writes out text.

    Args:
      prime_ids: int ``[P]``, ``P >= 1``, ids in ``[0, V)``.
      length: number of new tokens per sample, ``>= 0`` (0 yields nothing).
      key: PRNG key; may be None when ``greedy``.
      num_samples: ``S >= 1`` independent continuations of the same prime.
      temperature: > 0 unless ``greedy`` (then ignored, as are ``top_k`` and ``top_p``).
      top_k: int >= 1 or None. top_p: in ``(0, 1]`` or None.
      greedy: take the argmax instead of sampling.
      chunk_size: steps per compiled chunk; the output does not depend on it.

    Yields:
      int32 ``np.ndarray [S, n]`` with ``n <= chunk_size``, the new ids in order.
    """
    check_params(params, cfg)
    prime_ids = np.asarray(prime_ids)
    if prime_ids.size and not np.issubdtype(prime_ids.dtype, np.integer):
        raise ValueError(f"prime ids must be integers, got dtype {prime_ids.dtype}")
    _check_options(cfg, prime_ids, length, num_samples, temperature, top_k, top_p, greedy,
                   chunk_size, key)
    if greedy:  # one program for every greedy call, whatever the sampling options
        key, temperature, top_k, top_p = jax.random.key(0), 1.0, None, None
    temperature = max(float(temperature), SMALLEST_TEMPERATURE)  # float32 on the device
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    return _chunks(params, cfg, prime_ids.astype(np.int32), length, key, num_samples,
                   chunk_size, options)


def _chunks(params, cfg, prime_ids, length, key, num_samples, chunk_size,
            options) -> Iterator[np.ndarray]:
    """The generator behind :func:`generate` (options already checked)."""
    if length == 0:
        return
    carry, logits = warm_up(params, cfg, jnp.asarray(prime_ids), num_samples)
    # a chunk's noise is [steps, S, V]: many samples of a large vocabulary take shorter chunks
    chunk_size = max(1, min(chunk_size, NOISE_BUDGET // (num_samples * cfg.vocab_size)))
    pending = None
    for start in range(0, length, chunk_size):
        steps = min(chunk_size, length - start)
        ids, carry, logits = generate_chunk(params, cfg, carry, logits, key, steps,
                                            start=start, **options)
        if pending is not None:
            yield np.asarray(pending)
        pending = ids
    yield np.asarray(pending)
