"""Learning rate, momentum and weight decay as pure functions of the global step."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Linear scaling rule used by MoCo v3: lr = base_lr * batch / 256."""
    return base_lr * global_batch / 256


def _cosine(step: float, total: float) -> float:
    """Half-cycle cosine factor, 1 at step 0 and 0 at step >= total."""
    if total <= 0:
        return 0.0
    progress = min(max(step / total, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(step: float, total_steps: float, warmup_steps: float, peak_lr: float) -> float:
    """Linear warmup from 0 to peak_lr over warmup_steps, then half-cycle cosine to 0.

    Same curve as the official per-iteration schedule written in epochs
    (lr * epoch_float / warmup, then lr * 0.5 * (1 + cos(pi * (e - warmup) / (E - warmup)))).
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * _cosine(step - warmup_steps, total_steps - warmup_steps)


def momentum_at(step: float, total_steps: float, m0: float, schedule: str = "cosine") -> float:
    """Momentum m of the EMA: constant m0, or cosine from m0 at step 0 to 1 at the end."""
    if schedule == "constant":
        return m0
    if schedule == "cosine":
        return 1.0 - _cosine(step, total_steps) * (1.0 - m0)
    raise ValueError(f"unknown momentum schedule {schedule!r}; valid: cosine, constant")


def probe_lr(lr_base: float, batch: int, epoch: int, epochs: int) -> float:
    """The linear probe's lr at `epoch`: the official per-epoch cosine without warmup,
    lr_base*batch/256 * 0.5*(1+cos(pi*e/E))."""
    return scaled_lr(lr_base, batch) * _cosine(epoch, epochs)


def wd_at(step: float, total_steps: float, wd: float, wd_end: float | None = None) -> float:
    """Weight decay: constant wd (official MoCo v3), or cosine from wd to wd_end."""
    if wd_end is None:
        return wd
    return wd_end + _cosine(step, total_steps) * (wd - wd_end)
