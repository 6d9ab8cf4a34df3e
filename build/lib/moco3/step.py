"""One MoCo optimizer step, as the official main_moco.py takes it, shared by the training job
and the benchmarks so that what is timed is what trains.

    q1, q2 = predictor(projector(backbone(x1, x2)))      base encoder, with gradient
    momentum_encoder <- m * momentum_encoder + (1 - m) * base_encoder
    k1, k2 = momentum_encoder(x1, x2)                    no gradient
    loss = ctr(q1, k2) + ctr(q2, k1)                      (v1/v2: ctr(q1, k2) only)
    backward, optimizer step; the negatives mechanism then stores the keys (queue, bank)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from moco3.model import MoCo
from moco3.monitor import group_grad_norms
from moco3.negatives import Negatives


def compute_loss(negatives: Negatives, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor,
                 index: Tensor | None, symmetric: bool) -> Tensor:
    """ctr(q1, k2) + ctr(q2, k1) (v3), or ctr(q1, k2) alone (v1/v2). Inputs (N, dim)."""
    loss = negatives.loss(q1, k2, index)
    if symmetric:
        loss = loss + negatives.loss(q2, k1, index)
    return loss


@dataclass
class MocoStep:
    """The step with everything it touches. `net` is what runs forward (the model itself, or
    it wrapped in DDP / torch.compile); `model` is the unwrapped MoCo (momentum update and
    keys). `groups` name the parameter groups whose gradient norms the step returns."""

    net: nn.Module
    model: MoCo
    negatives: Negatives
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    symmetric: bool = True
    grad_clip: float | None = None
    groups: dict[str, list[Tensor]] = field(default_factory=dict)

    def __call__(self, x1: Tensor, x2: Tensor, index: Tensor | None, m: float
                 ) -> tuple[Tensor, Tensor]:
        """Two views (B, 3, H, W) of the images `index` (B,) -> (loss (), gradient norms
        (len(groups) + 1,): each group, then their total). Both stay on the device: no host
        synchronisation inside the step."""
        device = next(self.model.parameters()).device
        amp = torch.autocast(device.type, dtype=self.amp_dtype or torch.float32,
                             enabled=self.amp_dtype is not None)
        with amp:
            q1, q2, z1, z2 = self.net(x1, x2)
            if self.negatives.needs_momentum_encoder:
                # As the official: the momentum update comes after the queries and before
                # the keys of the same step.
                self.model.update_momentum_encoder(m)
                k1, k2 = self.model.forward_keys(x1, x2)
            else:
                k1, k2 = z1, z2  # end_to_end: keys with gradient; memory_bank: for update
        # Divergence: the loss in fp32 under autocast (logits / tau with tau = 0.2 lose too
        # much in bf16); the official computes it in the autocast dtype.
        loss = compute_loss(self.negatives, q1.float(), q2.float(), k1.float(), k2.float(),
                            index, self.symmetric)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norms = group_grad_norms(self.groups)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        keys = [k1.detach(), k2.detach()] if self.symmetric else [k2.detach()]
        self.negatives.update([k.float() for k in keys], index)
        return loss.detach(), norms.detach()
