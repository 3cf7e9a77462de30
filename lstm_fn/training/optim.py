"""Optimizers and learning-rate schedules from a :class:`TrainConfig`, as optax pieces.

The optimizer is built without its learning rate: the training step multiplies its output
by ``-schedule(step) * lr_scale``, where ``lr_scale`` lives in the training state so the
reduce-on-plateau rule (decided on the host after each evaluation) resumes exactly.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from lstm_fn.config import TrainConfig
from lstm_fn.errors import ConfigError


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


def make_schedule(cfg: TrainConfig, total_steps: int | None):
    """``step -> learning rate`` (before the plateau scale), traceable under jit. Steps count
    from 0; a warmup of W steps runs at ``(step + 1) / W`` of the rate, whatever the
    schedule."""
    lr = cfg.learning_rate
    if cfg.schedule == "cosine":
        if not total_steps:
            raise ConfigError("schedule 'cosine' needs a known length: give --steps or --epochs "
                              "(train.steps or train.epochs in a config)")
        # Full rate at the first step after warmup, min_lr_ratio of it at the last step run.
        span = max(total_steps - 1 - cfg.warmup_steps, 1)

        def base(step):
            progress = jnp.clip((step - cfg.warmup_steps) / span, 0.0, 1.0)
            return lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio)
                         * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
    elif cfg.schedule == "exponential":
        base = optax.exponential_decay(lr, cfg.decay_steps, cfg.decay_rate)
    else:  # constant and plateau: the plateau rule acts through lr_scale
        base = optax.constant_schedule(lr)
    if cfg.warmup_steps == 0:
        return base
    return lambda step: base(step) * jnp.minimum(1.0, (step + 1) / cfg.warmup_steps)


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
