"""Drawing text from the model one token at a time: temperature, top-k, nucleus, greedy."""

from __future__ import annotations

import numpy as np

from .model import forward


def next_token_probs(logits, *, temperature=1.0, top_k=None, top_p=None) -> np.ndarray:
    """The distribution a sampler draws from, given one step's logits [V].

    ``softmax(logits / temperature)``, then only the ``top_k`` largest kept, then only the
    smallest set of most likely tokens whose probability reaches ``top_p`` (nucleus), then
    renormalized. Ties keep the lowest token id first, as ``np.argmax`` does.

    Returns:
      float64 [V], summing to 1, zero outside the kept set.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = np.asarray(logits, np.float64)
    scaled = (logits - logits.max()) / temperature  # shifted first: no overflow at tiny T
    probs = np.exp(scaled)
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")  # most likely first, ties by lower id
    keep = len(probs)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        keep = min(keep, top_k)
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p is not None and top_p < 1.0:  # 1 keeps every token, however small
        # first position where the running mass reaches top_p, kept inclusive
        reach = np.searchsorted(np.cumsum(probs[order]), top_p, side="left") + 1
        keep = min(keep, int(reach))
    kept = np.zeros_like(probs)
    kept[order[:keep]] = probs[order[:keep]]
    return kept / kept.sum()


def sample(
    params,
    model,
    prime_ids,
    length,
    *,
    temperature=1.0,
    top_k=None,
    top_p=None,
    greedy=False,
    rng=None,
) -> list[int]:
    """Continue a prime with ``length`` new tokens (one sequence, batch 1).

    The prime runs through ``forward`` to warm the state; each new id is then drawn from
    ``next_token_probs`` of the last logits (or is their argmax when ``greedy``) and fed
    back in with the carry.

    Args:
      prime_ids: non-empty sequence of token ids (ValueError when empty).
      length: number of new ids to draw.
      rng: a ``numpy.random.Generator``; default ``np.random.default_rng()``.

    Returns:
      The ``length`` new ids (the prime not included).
    """
    prime = [int(i) for i in prime_ids]
    if not prime:
        raise ValueError("sample needs a non-empty prime_ids to start from")
    rng = np.random.default_rng() if rng is None else rng
    logits, carry = forward(params, model, np.array([prime]))
    new_ids: list[int] = []
    while len(new_ids) < length:
        last = logits[0, -1]  # [V]
        if greedy:
            next_id = int(np.argmax(last))
        else:
            probs = next_token_probs(last, temperature=temperature, top_k=top_k, top_p=top_p)
            next_id = int(rng.choice(len(probs), p=probs))
        new_ids.append(next_id)
        if len(new_ids) < length:
            logits, carry = forward(params, model, np.array([[next_id]]), carry)
    return new_ids
