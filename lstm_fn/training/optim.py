"""Optimizers from a :class:`TrainConfig`, as optax pieces, and the validation bookkeeping.

The optimizer is built without its learning rate: the training step multiplies its output
by ``-rate(step) * lr_scale`` (:mod:`lstm_fn.training.schedule`), where ``lr_scale`` lives
in the training state so the reduce-on-plateau rule (decided on the host after each
evaluation) resumes exactly.
"""

from __future__ import annotations

import optax

from lstm_fn.config import TrainConfig


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (``grad_clip`` 0 disables it), then the optimizer's direction,
    with the update rules of ``torch.optim`` (checked against it in float64):

    - ``adam``: Adam (betas 0.9, 0.999, eps 1e-8); ``adamw``: the same plus decoupled weight
      decay ``lr * weight_decay * p``; ``sgd``: momentum ``momentum`` (no dampening, not
      Nesterov); ``rmsprop``: ``g / (sqrt(v) + 1e-8)`` with ``v`` averaged at 0.95 (char-rnn's
      rate; torch's default is 0.99), no momentum.
    - ``weight_decay`` with adam, sgd or rmsprop is L2: ``weight_decay * p`` added to the
      (clipped) gradient, as ``torch.optim``'s ``weight_decay`` does.
    """
    decay = optax.add_decayed_weights(cfg.weight_decay)
    direction = {
        "adam": lambda: optax.scale_by_adam(),
        "adamw": lambda: optax.chain(optax.scale_by_adam(), decay),
        "sgd": lambda: optax.trace(decay=cfg.momentum),
        "rmsprop": lambda: optax.scale_by_rms(decay=0.95, eps=1e-8, eps_in_sqrt=False),
    }[cfg.optimizer]()
    if cfg.weight_decay and cfg.optimizer != "adamw":
        direction = optax.chain(decay, direction)
    if cfg.grad_clip > 0:  # (the nesting is the checkpointed optimizer state's layout)
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), direction)
    return direction


class ValTracker:
    """Host-side bookkeeping of validation losses: the best so far, evaluations since it
    improved (early stopping), and the reduce-on-plateau learning-rate scale.

    Its state is three JSON numbers kept in each checkpoint (``as_dict`` / ``ValTracker(cfg,
    **d)``), so a resumed run decides exactly as the uninterrupted one would.
    """

    def __init__(self, cfg: TrainConfig, best: float | None = None, bad_evals: int = 0,
                 scale: float = 1.0):
        self.cfg, self.best, self.bad_evals, self.scale = cfg, best, bad_evals, scale

    def update(self, val_loss: float) -> bool:
        """Record one evaluation; True when it is the best so far."""
        if self.best is None or val_loss < self.best:
            self.best, self.bad_evals = val_loss, 0
            return True
        self.bad_evals += 1
        if self.cfg.schedule == "plateau" and self.bad_evals % self.cfg.plateau_patience == 0:
            self.scale *= self.cfg.plateau_factor
        return False

    @property
    def out_of_patience(self) -> bool:
        return self.cfg.patience is not None and self.bad_evals >= self.cfg.patience

    def as_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals, "scale": self.scale}
