"""Gradients by central differences, and the error measure used to compare gradients."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .model import loss


def relative_error(a, b) -> float:
    """Largest absolute difference, relative to the largest magnitude of either array.

        relative_error(a, b) = max|a - b| / max(max|a|, max|b|, 1e-300)

    One number per tensor: an element whose true gradient is ~0 does not blow it up, and
    it is 0 for two all-zero arrays. Symmetric in a and b.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)


def numerical_gradient(f: Callable[[], float], arrays: list, eps: float = 1e-6) -> list:
    """d f / d array for each array, by central differences on every element.

    ``f`` takes no arguments and reads ``arrays``, which are perturbed in place (and
    restored): ``(f(a + eps) - f(a - eps)) / (2 eps)`` per element.
    """
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            orig = a[idx]
            a[idx] = orig + eps
            f_plus = f()
            a[idx] = orig - eps
            f_minus = f()
            a[idx] = orig
            g[idx] = (f_plus - f_minus) / (2.0 * eps)
        grads.append(g)
    return grads


def copy_tree(tree):
    """Deep copy of a tree of dicts / lists / tuples of arrays (arrays copied)."""
    if isinstance(tree, dict):
        return {k: copy_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(copy_tree(v) for v in tree)
    return np.array(tree)


def tree_leaves(tree) -> list:
    """The arrays of a tree in a fixed order (dict insertion order, then list order)."""
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in tree_leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in tree_leaves(v)]
    return [tree]


def _unflatten_like(tree, leaves):
    it = iter(leaves)

    def rebuild(node):
        if isinstance(node, dict):
            return {k: rebuild(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(rebuild(v) for v in node)
        return next(it)

    return rebuild(tree)


def finite_difference_grads(
    params, model, tokens, targets, carry=None, dropout_masks=None, loss_mask=None, eps=1e-6
):
    """dL/dparams by central differences on every parameter element (slow; tiny models only).

    Same arguments as ``loss_and_grads``; ``params`` is not modified. Returns the params tree.
    """
    params = copy_tree(params)

    def f():
        return loss(params, model, tokens, targets, carry, dropout_masks, loss_mask)

    return _unflatten_like(params, numerical_gradient(f, tree_leaves(params), eps))
