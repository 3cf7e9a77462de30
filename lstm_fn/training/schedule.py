"""Learning-rate schedules, computed on the host for every step, and the plan that fits a
decaying schedule into the run's length, a time budget included.

After a linear warmup of ``W`` steps at ``(step + 1) / W`` of the rate, the shapes are:

- ``constant`` (and ``plateau``, whose factor acts through the train state's ``lr_scale``);
- ``exponential``: ``decay_rate ** (step / decay_steps)``;
- ``cosine``: from the full rate down to ``min_lr_ratio`` of it at the last step;
- ``linear``: straight down to ``min_lr_ratio`` at the last step;
- ``wsd`` (warmup, stable, decay): the full rate, then straight down to ``min_lr_ratio``
  over the last ``decay_fraction`` of the run.

The last three decay towards the run's end, so they need its length: a :class:`Plan`.
When steps, epochs or characters bound the run, the plan is fixed from the start. When
``minutes`` bound it, :func:`plan_budget` decides the plan during the run from the measured
time per step (evaluations and checkpoints included): for ``wsd`` when the stable part of
the budget is spent, for ``linear`` and ``cosine`` after a short measurement. When the
pace changes during the decay, so that the steps left no longer fit the time left, the
decay is stretched or shortened from the rate reached (:func:`follow_pace`). The plan is
kept in every checkpoint, so a resumed run follows it exactly; a resume that raises the
budget stretches what is left of the decay (:func:`replan`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from lstm_fn.config import TrainConfig
from lstm_fn.errors import ConfigError

# The shapes that decay towards the run's end, and so need to know where it is.
DECAYING = ("cosine", "linear", "wsd")
# Steps timed (after the first, which compiles) before linear or cosine plan a time budget.
MEASURED_STEPS = 20
# Steps timed since a budget's plan before the decay follows a changed pace, and how far
# the end must move (as a share of the decay's steps, at least 2 steps) for it to: ending
# that close to the planned end leaves the rate that close to its lowest.
REPACE_STEPS = 10
REPACE_TOLERANCE = 0.05


class Plan(NamedTuple):
    """Where a run ends and how its rate decays: from ``decay_from`` (where the rate is
    ``from_rate`` of the full one) down to ``min_lr_ratio`` at step ``total_steps - 1``.
    ``seconds_per_step`` is what a time budget's plan measured (None for a fixed length),
    ``minutes`` the budget it was planned for."""

    total_steps: int
    decay_from: int
    from_rate: float = 1.0
    seconds_per_step: float | None = None
    minutes: float | None = None

    def as_meta(self) -> dict:
        return self._asdict()

    @classmethod
    def from_meta(cls, meta: dict | None) -> Plan | None:
        return None if meta is None else cls(**meta)


def fixed_plan(tcfg: TrainConfig, total_steps: int | None) -> Plan | None:
    """The plan of a run whose length in steps is known (None: not known, or a shape that
    needs none). ``cosine`` and ``linear`` decay from the end of the warmup, ``wsd`` over the
    last ``decay_fraction`` of the steps."""
    if tcfg.schedule not in DECAYING or total_steps is None:
        return None
    if tcfg.schedule == "wsd":
        decay_from = total_steps - max(1, round(tcfg.decay_fraction * total_steps))
    else:
        decay_from = tcfg.warmup_steps
    return Plan(total_steps, max(decay_from, tcfg.warmup_steps))


def check_schedule(tcfg: TrainConfig, total_steps: int | None) -> None:
    """ConfigError for a decaying shape that nothing bounds (no steps, epochs, characters or
    minutes)."""
    if tcfg.schedule in DECAYING and total_steps is None and tcfg.minutes is None:
        raise ConfigError(f"schedule {tcfg.schedule!r} decays towards the run's end, so it "
                          "needs a limit: give --steps, --epochs, --chars or --minutes")


def rate(tcfg: TrainConfig, plan: Plan | None, step: int) -> float:
    """The learning rate at ``step`` (counted from 0), before the plateau scale. A decaying
    shape without a plan yet runs at the full rate (the plan comes before its decay)."""
    warm = min(1.0, (step + 1) / tcfg.warmup_steps) if tcfg.warmup_steps else 1.0
    if tcfg.schedule == "exponential":
        return tcfg.learning_rate * warm * tcfg.decay_rate ** (step / tcfg.decay_steps)
    if tcfg.schedule not in DECAYING or plan is None:
        return tcfg.learning_rate * warm
    span = max(plan.total_steps - 1 - plan.decay_from, 1)
    progress = min(max((step - plan.decay_from) / span, 0.0), 1.0)
    low, high = tcfg.min_lr_ratio, plan.from_rate
    if tcfg.schedule == "cosine":
        factor = low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = high + (low - high) * progress
    return tcfg.learning_rate * warm * (high if step < plan.decay_from else factor)


def plan_budget(tcfg: TrainConfig, step: int, seconds: float, seconds_per_step: float,
                step_limit: int | None, timed_steps: int) -> Plan | None:
    """The plan of a run that ``minutes`` bound, once it is time to decide (else None).

    Args:
      step: steps done.
      seconds: of the budget spent (earlier processes of a resumed run included).
      seconds_per_step: measured over this process's steps after the first, with the
        evaluations, checkpoints and samples among them.
      step_limit: the steps, epochs or characters limit, if any (the run ends at the
        sooner of the two).
      timed_steps: how many steps that measurement covers.
    """
    if tcfg.schedule not in DECAYING or tcfg.minutes is None or timed_steps < 1:
        return None
    budget = tcfg.minutes * 60
    if tcfg.schedule == "wsd":
        due = seconds >= (1.0 - tcfg.decay_fraction) * budget
    else:
        due = timed_steps >= MEASURED_STEPS and step >= tcfg.warmup_steps
    if not due:
        return None
    total = _end_in_budget(tcfg, step, seconds, seconds_per_step, step_limit)
    return Plan(total, step, 1.0, seconds_per_step, tcfg.minutes)


def _end_in_budget(tcfg: TrainConfig, step: int, seconds: float, seconds_per_step: float,
                   step_limit: int | None) -> int:
    """The step where the run ends: as many steps as fit the budget's seconds left at
    ``seconds_per_step`` (at least one), or its step limit if that comes first."""
    left = tcfg.minutes * 60 - seconds
    fits = step + max(1, math.floor(left / max(seconds_per_step, 1e-9)))
    return fits if step_limit is None else min(fits, step_limit)


def follow_pace(tcfg: TrainConfig, plan: Plan, step: int, seconds: float,
                seconds_per_step: float, step_limit: int | None) -> Plan | None:
    """During a time budget's decay: a new plan when, at ``seconds_per_step`` (measured since
    the decay began), the steps that fit the time left would end the run more than the
    tolerance away from the planned end (else None). The decay goes on from the rate
    reached; without this, a pace that slowed ends the budget before the rate is down."""
    if tcfg.minutes is None or plan.seconds_per_step is None or not (
            plan.decay_from < step < plan.total_steps):
        return None
    total = _end_in_budget(tcfg, step, seconds, seconds_per_step, step_limit)
    tolerance = max(2, REPACE_TOLERANCE * (plan.total_steps - plan.decay_from))
    if abs(total - plan.total_steps) <= tolerance:
        return None
    reached = rate(tcfg, plan, step) / tcfg.learning_rate
    return Plan(total, step, reached, seconds_per_step, tcfg.minutes)


def replan(tcfg: TrainConfig, plan: Plan | None, step: int, seconds: float,
           step_limit: int | None) -> Plan | None:
    """The plan of a resumed run whose limits may have changed since ``plan`` was made.

    A raised time budget (or a new step limit) stretches, or shortens, what is left: before
    the decay, the plan is made anew (now for a known length, later for a budget); during
    it, the decay continues from the rate reached to the new end."""
    if plan is None or tcfg.schedule not in DECAYING:
        return plan if tcfg.schedule in DECAYING else None
    budget_changed = plan.seconds_per_step is not None and tcfg.minutes != plan.minutes
    if not budget_changed and (step_limit is None or step_limit == plan.total_steps):
        return plan
    if step < plan.decay_from:
        return fixed_plan(tcfg, step_limit) if tcfg.minutes is None else None
    reached = rate(tcfg, plan, step) / tcfg.learning_rate
    total = step_limit
    if tcfg.minutes is not None and plan.seconds_per_step is not None:
        total = _end_in_budget(tcfg, step, seconds, plan.seconds_per_step, step_limit)
    if total is None:
        return plan
    return Plan(max(total, step + 1), step, reached, plan.seconds_per_step, tcfg.minutes)


def planned(tcfg: TrainConfig, plan: Plan) -> str:
    """What a time budget's plan decided, for the log."""
    end = tcfg.learning_rate * tcfg.min_lr_ratio
    return (f"schedule {tcfg.schedule}: {tcfg.minutes:g} minutes fit {plan.total_steps:,} "
            f"steps at {plan.seconds_per_step:.3f} s a step (evaluations included); the rate "
            f"decays from step {plan.decay_from:,} to {end:.2e} at step {plan.total_steps - 1:,}")


def repaced(tcfg: TrainConfig, plan: Plan) -> str:
    """What following a changed pace decided, for the log."""
    return (f"the pace is now {plan.seconds_per_step:.3f} s a step: the decay goes on from "
            f"{tcfg.learning_rate * plan.from_rate:.2e} to step {plan.total_steps - 1:,}")
