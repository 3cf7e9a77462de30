"""The stacked char-level model in numpy: embedding, layers over time, head, loss, and BPTT.

Written once for every cell; the per-step math comes from ``cells.REGISTRY``.

    x^0_t = embed[tokens[:, t]]                                  [B, E]
    gx^l_t = x^l_t @ w_x + b_x;  (carry^l_t, h^l_t) = step(p_l, carry^l_{t-1}, gx^l_t)
    x^{l+1}_t = h^l_t * dropout_masks[l][:, t]                   [B, H]
    logits_t = x^L_t @ head.w + head.b                            [B, V]
    loss = sum(mask * nll) / sum(mask),  nll = -log softmax(logits)[target]   (nats)

Params are the plain tree of ``spec.param_shapes``; a carry is a tuple over layers of tuples
of [B, H] arrays named by ``spec.CARRY[cell]``. Everything runs in the params' dtype.
"""

from __future__ import annotations

import numpy as np

from . import spec
from .cells import get_cell


def zero_carry(model: dict, batch_size: int, dtype=np.float64) -> tuple:
    """All-zeros carry: one tuple of [B, H] arrays per layer, named by ``spec.CARRY``."""
    shape = (batch_size, model["hidden_size"])
    parts = len(spec.CARRY[model["cell"]])
    return tuple(
        tuple(np.zeros(shape, dtype) for _ in range(parts)) for _ in range(model["num_layers"])
    )


def _run_layer(step, p, x, carry, h_offsets=None):
    """One layer over time. x [B, T, in] -> outputs [B, T, H], final carry, per-step caches.

    ``h_offsets`` [T, B, H] (tests only) is added to h_t before it goes up and onward, so
    dL/d(offset_t) is the total dL/dh_t.
    """
    gx = x @ p["w_x"] + p["b_x"]  # [B, T, G*H], the input half of every gate at once
    outputs, caches = [], []
    for t in range(x.shape[1]):
        carry, h, cache = step(p, carry, gx[:, t])
        if h_offsets is not None:
            h = h + h_offsets[t]
            carry = (h,) + carry[1:]  # spec.CARRY puts h first for every cell
        outputs.append(h)
        caches.append(cache)
    return np.stack(outputs, axis=1), carry, caches


def _forward(params, model, tokens, carry, dropout_masks, h_offsets=None):
    """Forward pass keeping what the backward pass needs. Returns logits, carry, cache."""
    cell = get_cell(model["cell"])
    tokens = np.asarray(tokens)
    dtype = params["embed"].dtype
    if carry is None:
        carry = zero_carry(model, tokens.shape[0], dtype)
    x = params["embed"][tokens]  # [B, T, E]
    new_carry, layer_inputs, layer_caches = [], [], []
    for l, p in enumerate(params["layers"]):
        layer_carry = tuple(np.asarray(c, dtype) for c in carry[l])
        offsets = None if h_offsets is None else h_offsets[l]
        out, layer_carry, caches = _run_layer(cell.step, p, x, layer_carry, offsets)
        if dropout_masks is not None:
            out = out * dropout_masks[l]
        layer_inputs.append(x)
        layer_caches.append(caches)
        new_carry.append(layer_carry)
        x = out
    logits = x @ params["head"]["w"] + params["head"]["b"]  # [B, T, V]
    return logits, tuple(new_carry), (layer_inputs, layer_caches, x)


def forward(params, model, tokens, carry=None, dropout_masks=None):
    """Run the model over a batch of token sequences.

    Args:
      params: the params tree (``spec.param_shapes``).
      model: ``{"cell", "vocab_size", "embed_size", "hidden_size", "num_layers"}``.
      tokens: int [B, T].
      carry: initial carry (tuple over layers of tuples of [B, H]); None means zeros.
      dropout_masks: None, or a list of L arrays [B, T, H] already scaled (0 or 1/(1-p));
        mask l multiplies layer l's outputs before they feed layer l+1 or the head.

    Returns:
      ``(logits [B, T, V], carry)`` with the carry after the last step.
    """
    logits, carry, _ = _forward(params, model, tokens, carry, dropout_masks)
    return logits, carry


def _softmax_cross_entropy(logits, targets, loss_mask):
    """Weighted mean nll (nats) and its gradient dL/dlogits [B, T, V]."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    targets = np.asarray(targets)[..., None]
    nll = -np.take_along_axis(log_probs, targets, axis=-1)[..., 0]  # [B, T]
    weight = np.ones_like(nll) if loss_mask is None else np.asarray(loss_mask, nll.dtype)
    weight = weight / (weight.sum() or 1.0)  # an all-zero mask: loss 0, no gradient
    # d(-log softmax_y)/dlogits = softmax - onehot(y), scaled by each position's weight
    dlogits = np.exp(log_probs)
    np.put_along_axis(dlogits, targets, np.take_along_axis(dlogits, targets, -1) - 1.0, -1)
    return float((weight * nll).sum()), dlogits * weight[..., None]


def loss(params, model, tokens, targets, carry=None, dropout_masks=None, loss_mask=None):
    """Mean (or ``loss_mask``-weighted mean) softmax cross-entropy in nats, as a float."""
    logits, _, _ = _forward(params, model, tokens, carry, dropout_masks)
    return _softmax_cross_entropy(logits, targets, loss_mask)[0]


def _loss_with_offsets(params, model, tokens, targets, carry, dropout_masks, loss_mask, h_offsets):
    """``loss`` with ``h_offsets`` (list of L [T, B, H]) added to every h^l_t (for tests)."""
    logits, _, _ = _forward(params, model, tokens, carry, dropout_masks, h_offsets)
    return _softmax_cross_entropy(logits, targets, loss_mask)[0]


def _zeros_like_tree(tree):
    if isinstance(tree, dict):
        return {k: _zeros_like_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_zeros_like_tree(v) for v in tree)
    return np.zeros_like(tree)


def _run_layer_backward(backward, p, caches, dout, grads, carry_parts):
    """Backprop through one layer over time, t = T-1 .. 0.

    Args:
      dout: dL/d(outputs) [B, T, H] from the layer above (after its dropout was undone).
    Returns:
      dgx [B, T, G*H], dL/d(initial carry), total dL/dh_t [T, B, H].
    """
    B, T, H = dout.shape
    # the final carry is not used by the loss
    dcarry = tuple(np.zeros((B, H), dout.dtype) for _ in range(carry_parts))
    dgx = np.empty((B, T, p["w_x"].shape[1]), dout.dtype)
    dh_total = np.empty((T, B, H), dout.dtype)
    for t in reversed(range(T)):
        # h_t feeds both the layer above and step t+1: their gradients add
        dh = dout[:, t] + dcarry[0]
        dh_total[t] = dh
        dcarry, dgx[:, t] = backward(p, caches[t], (dh,) + dcarry[1:], grads)
    return dgx, dcarry, dh_total


def _backward(params, model, tokens, targets, carry, dropout_masks, loss_mask):
    """The one backward pass: loss, grads tree, dL/d(initial carry), total dL/dh per layer."""
    cell = get_cell(model["cell"])
    tokens = np.asarray(tokens)
    logits, _, (layer_inputs, layer_caches, top) = _forward(
        params, model, tokens, carry, dropout_masks
    )
    loss_value, dlogits = _softmax_cross_entropy(logits, targets, loss_mask)
    grads = _zeros_like_tree(params)
    V, H = model["vocab_size"], model["hidden_size"]
    # logits = top @ head.w + head.b
    grads["head"]["w"] = top.reshape(-1, H).T @ dlogits.reshape(-1, V)
    grads["head"]["b"] = dlogits.sum(axis=(0, 1))
    dout = dlogits @ params["head"]["w"].T  # [B, T, H]
    num_layers = len(params["layers"])
    dcarry, hidden = [None] * num_layers, [None] * num_layers
    for l in reversed(range(num_layers)):
        p, g, x = params["layers"][l], grads["layers"][l], layer_inputs[l]
        # out = h * mask: only kept units pass gradient, scaled like the forward
        if dropout_masks is not None:
            dout = dout * dropout_masks[l]
        dgx, dcarry[l], hidden[l] = _run_layer_backward(
            cell.backward, p, layer_caches[l], dout, g, len(spec.CARRY[model["cell"]])
        )
        # gx = x @ w_x + b_x over all steps at once
        g["w_x"] = x.reshape(-1, x.shape[-1]).T @ dgx.reshape(-1, dgx.shape[-1])
        g["b_x"] = dgx.sum(axis=(0, 1))
        dout = dgx @ p["w_x"].T  # dL/dx^l: [B, T, E] for l = 0, else [B, T, H]
    # x_t = embed[tokens]: rows are gathered, so gradients scatter-add (tokens repeat)
    np.add.at(grads["embed"], tokens, dout)
    return loss_value, grads, tuple(dcarry), hidden


def loss_and_grads(
    params, model, tokens, targets, carry=None, dropout_masks=None, loss_mask=None
):
    """Loss and its exact gradients by backpropagation through time.

    Args:
      tokens, targets: int [B, T].
      carry, dropout_masks: as in ``forward``.
      loss_mask: float [B, T] position weights (default all ones); the loss is
        ``sum(mask * nll) / sum(mask)``.

    Returns:
      ``(loss, grads, dcarry)``: the float loss, grads in the params tree, and
      dL/d(initial carry) in the carry's structure (zeros carry when ``carry`` is None).
    """
    loss_value, grads, dcarry, _ = _backward(
        params, model, tokens, targets, carry, dropout_masks, loss_mask
    )
    return loss_value, grads, dcarry


def hidden_grads(params, model, tokens, targets, carry=None, dropout_masks=None, loss_mask=None):
    """Total dL/dh^l_t for every layer and step, through the layers above AND the recurrence.

    Plot ``np.linalg.norm(g[t])`` for t = T-1 .. 0 to watch gradients vanish (rnn) or
    survive (lstm), e.g. with a ``loss_mask`` that keeps only the last step.

    Returns:
      A list of L arrays [T, B, H] (time first), layer 0 first.
    """
    return _backward(params, model, tokens, targets, carry, dropout_masks, loss_mask)[3]
