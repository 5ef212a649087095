"""Learning-rate schedules: the paper's step decay (section IV.1: divided by 10 every 10
epochs) and, for networks trained from scratch (the synthetic quickstart), poly and cosine
decay after a linear warm-up. Each is a pure function of the optimizer step, so resuming
restores it exactly."""

from __future__ import annotations

import math

SCHEDULES = ("step", "poly", "cosine")


def step_decay(
    step: int, steps_per_epoch: int, decay_epochs: int = 10, factor: float = 0.1
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    return factor ** ((step // max(steps_per_epoch, 1)) // decay_epochs)


def lr_factor(
    schedule: str,
    step: int,
    max_steps: int,
    steps_per_epoch: int,
    decay_epochs: int = 10,
    warmup_steps: int = 0,
    power: float = 0.9,
    restart_at: int = 0,
) -> float:
    """Multiplier of the base learning rate at step ``step`` (0-based) of ``max_steps``.

    ``"step"``: :func:`step_decay`. ``"poly"``: ``(1 - t) ** power`` (DeepLab's). ``"cosine"``:
    ``(1 + cos(pi t)) / 2`` (with a warm-up: the one-cycle shape). ``t`` is the fraction of the
    steps after the warm-up that have passed; during the first ``warmup_steps`` the factor
    rises linearly from ``1 / warmup_steps`` to 1 (all three schedules).

    ``restart_at`` (poly and cosine): the schedule runs over steps ``[0, restart_at)`` and
    again, warm-up included, over ``[restart_at, max_steps)`` — one cycle for the
    classification-first phase and one for the joint training that follows it.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if schedule != "step" and 0 < restart_at < max_steps:
        if step < restart_at:
            max_steps = restart_at
        else:
            step, max_steps = step - restart_at, max_steps - restart_at
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "step":
        return step_decay(step, steps_per_epoch, decay_epochs)
    t = min((step - warmup_steps) / max(max_steps - warmup_steps, 1), 1.0)
    if schedule == "poly":
        return (1.0 - t) ** power
    return 0.5 * (1.0 + math.cos(math.pi * t))
