"""Gradient check, float64: ``jax.grad`` of the plain scan against the hand-written BPTT of
:mod:`lstm_fn.nn.bptt` (the training default), numpy's BPTT and finite differences.

Also the per-timestep view of ``||dL_T/dh_t||``: how much the loss at the last step can
still be moved by the hidden state t steps earlier (gradients vanish in a plain rnn).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import reference_numpy as ref
from lstm_fn.nn import model as M
from lstm_fn.nn.bptt import manual_loss
from lstm_fn.nn.config import ModelConfig
from reference_numpy.gradcheck import numerical_gradient

# Budgets on relative_error (max abs difference over the larger max magnitude), float64.
# numpy and autodiff compute the same sums in a different order: they agree to rounding.
AUTODIFF_BUDGET = 1e-9
# Central differences carry O(eps^2) truncation plus O(1e-16 / eps) rounding error.
FINITE_DIFF_BUDGET = 1e-6
# The step that balances the two: measured errors ~1e-8 at 1e-5, ~2e-7 at 1e-6.
FD_EPS = 1e-5


class Row(NamedTuple):
    """One parameter tensor (or carry part) of the check."""

    name: str
    shape: tuple
    numpy_vs_jax: float
    bptt_vs_jax: float
    numpy_vs_fd: float
    jax_vs_fd: float

    @property
    def ok(self) -> bool:
        return (max(self.numpy_vs_jax, self.bptt_vs_jax) <= AUTODIFF_BUDGET
                and max(self.numpy_vs_fd, self.jax_vs_fd) <= FINITE_DIFF_BUDGET)


def named_leaves(tree, prefix: str = "") -> list[tuple[str, object]]:
    """``(name, leaf)`` pairs of a params or carry tree: ``layers[0].w_x``, ``carry[1].c``."""
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in named_leaves(v, f"{prefix}.{k}" if prefix else k)]
    if hasattr(tree, "_fields"):
        return [p for k, v in zip(tree._fields, tree) for p in named_leaves(v, f"{prefix}.{k}")]
    if isinstance(tree, (list, tuple)):
        return [p for i, v in enumerate(tree) for p in named_leaves(v, f"{prefix}[{i}]")]
    return [(prefix, tree)]


def problem(cell: str, num_layers: int, steps: int, *, batch_size: int = 2, vocab_size: int = 7,
            embed_size: int = 5, hidden_size: int = 6, dropout: float = 0.0, seed: int = 0,
            at_init: bool = False):
    """A random float64 problem: ``(cfg, params, tokens, targets, carry, masks)``.

    Every parameter tensor gets its own random offset (so the biases are not zero, and no
    two tensors or carry parts are equal: a swapped ``h``/``c``, layer or bias cannot
    hide), and the initial carry is random so the check covers its gradient too. With
    ``at_init``, the init's own weights and a zero carry instead. With ``dropout`` > 0,
    random masks are drawn once and shared by both implementations.
    """
    cfg = ModelConfig(cell, vocab_size, embed_size, hidden_size, num_layers, dropout)
    k_params, k_offsets, k_carry, k_tokens, k_masks = jax.random.split(jax.random.key(seed), 5)
    with jax.enable_x64(True):
        params = M.init(k_params, cfg, jnp.float64)
        carry = M.initial_state(cfg, batch_size, jnp.float64)
        if not at_init:
            params, carry = (_plus_noise(key, tree, scale) for key, tree, scale in
                             ((k_offsets, params, 0.1), (k_carry, carry, 0.5)))
        tokens, targets = jax.random.randint(k_tokens, (2, batch_size, steps), 0, vocab_size)
        masks = M.dropout_masks(k_masks, cfg, batch_size, steps, jnp.float64)
    return cfg, params, tokens, targets, carry, masks


def _plus_noise(key: jax.Array, tree, scale: float):
    """``tree`` plus ``scale`` times standard normal noise, a different draw per leaf."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
                              for k, leaf in zip(keys, leaves)])


def _numpy(tree):
    """The same tree with numpy copies of its leaves (the numpy twin perturbs them in place);
    NamedTuple carries stay tuples, which is what the twin takes."""
    return jax.tree.map(np.array, tree)


def gradient_check(cell: str, num_layers: int, steps: int, **kwargs) -> list[Row]:
    """Compare the four gradients of the mean loss for every parameter tensor and every
    part of the initial carry; see :func:`problem` for the keyword arguments."""
    cfg, params, tokens, targets, carry, masks = problem(cell, num_layers, steps, **kwargs)
    model = cfg.architecture()
    np_params, np_carry, np_masks = _numpy(params), _numpy(carry), _numpy(masks)
    np_tokens, np_targets = np.asarray(tokens), np.asarray(targets)

    _, np_grads, np_dcarry = ref.loss_and_grads(np_params, model, np_tokens, np_targets,
                                                 np_carry, np_masks)
    with jax.enable_x64(True):
        (jax_grads, jax_dcarry), (bptt_grads, bptt_dcarry) = (jax.device_get(jax.grad(
            lambda p, c: loss(p, cfg, tokens, targets, c, dropout_masks=masks)[0],
            argnums=(0, 1))(params, carry)) for loss in (M.loss, manual_loss))
    fd_grads = ref.finite_difference_grads(np_params, model, np_tokens, np_targets,
                                           np_carry, np_masks, eps=FD_EPS)
    carry_leaves = [leaf for _, leaf in named_leaves(np_carry)]
    fd_dcarry = numerical_gradient(
        lambda: ref.loss(np_params, model, np_tokens, np_targets, np_carry, np_masks),
        carry_leaves, eps=FD_EPS)

    rows = []
    for (_, a), (name, b), (_, m), c in zip(
            named_leaves(np_grads) + named_leaves(np_dcarry),
            named_leaves(jax_grads) + named_leaves(jax_dcarry, "carry"),
            named_leaves(bptt_grads) + named_leaves(bptt_dcarry),
            [leaf for _, leaf in named_leaves(fd_grads)] + fd_dcarry):
        rows.append(Row(name, np.shape(a), ref.relative_error(a, b), ref.relative_error(m, b),
                        ref.relative_error(a, c), ref.relative_error(b, c)))
    return rows


def hidden_grad_norms(cell: str, steps: int, *, num_layers: int = 1, hidden_size: int = 32,
                      batch_size: int = 8, vocab_size: int = 16, seed: int = 0) -> np.ndarray:
    """``||dL_T/dh_t||`` of the top layer for t = 1..T, at initialisation (zero carry).

    ``L_T`` is the loss of the last position only, so each entry says how strongly the state
    t steps back still moves it. Returns ``[T]`` (mean over the batch of the L2 norm).
    """
    cfg, params, tokens, targets, carry, _ = problem(
        cell, num_layers, steps, batch_size=batch_size, vocab_size=vocab_size,
        embed_size=hidden_size, hidden_size=hidden_size, seed=seed, at_init=True)
    last_only = np.zeros((batch_size, steps))
    last_only[:, -1] = 1.0
    dh = ref.hidden_grads(_numpy(params), cfg.architecture(), np.asarray(tokens),
                          np.asarray(targets), _numpy(carry), None, last_only)[-1]  # [T, B, H]
    return np.linalg.norm(dh, axis=-1).mean(axis=-1)
