"""KL weight schedules (``loss.kl.schedule``): constant, linear warm-up, cyclical, and the capacity target.

``step`` is the optimizer step, counted from 0. All functions return Python floats (no device tensors).
"""

from __future__ import annotations

from vaekit.config.schema import KLConfig


def kl_weight(step: int, cfg: KLConfig, beta: float) -> float:
    """The KL weight at ``step``.

    constant: ``beta``. linear: ``beta * min(1, step / warmup_steps)`` (``beta`` when ``warmup_steps`` is 0).
    cyclical (Fu et al. 2019): within each cycle of ``cycle_steps`` the weight ramps 0 → ``beta`` over the first
    ``ratio * cycle_steps`` steps, then holds ``beta``. capacity: ``beta`` (the objective uses
    ``gamma * |KL - capacity(step)|`` instead of a weighted KL).
    """
    if cfg.schedule == "linear":
        return beta * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps > 0 else beta
    if cfg.schedule == "cyclical":
        position = (step % cfg.cycle_steps) / cfg.cycle_steps
        return beta * min(1.0, position / cfg.ratio)
    return beta


def capacity(step: int, cfg: KLConfig) -> float:
    """Target KL in nats at ``step`` (Burgess et al. 2018): rises linearly to ``capacity_max`` over ``capacity_steps``."""
    return min(cfg.capacity_max, cfg.capacity_max * step / cfg.capacity_steps)
