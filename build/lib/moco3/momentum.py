"""Exponential moving average of the base encoder into the momentum encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def ema_update(
    momentum_params: Sequence[torch.Tensor], base_params: Sequence[torch.Tensor], m: float
) -> None:
    """In place, for every pair: k <- m * k + (1 - m) * q.

    One fused foreach call rather than a Python loop over parameters. lerp with weight
    1 - m is exact at the ends: m = 0 copies q, m = 1 leaves k bit-identical.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1], got {m}")
    if len(momentum_params) != len(base_params):
        raise ValueError(f"momentum encoder has {len(momentum_params)} parameters, "
                         f"base encoder {len(base_params)}")
    if not momentum_params:
        return
    torch._foreach_lerp_(list(momentum_params), list(base_params), 1.0 - m)
