"""InfoNCE, the contrastive loss of MoCo v1/v2/v3, as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _fp32(*ts: torch.Tensor) -> list[torch.Tensor]:
    """Cast to one common dtype, at least fp32 (half/bfloat16 go up, fp64 stays)."""
    dtype = torch.float32
    for t in ts:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in ts]


def _scale(loss: torch.Tensor, tau: float, scale_by_2tau: bool) -> torch.Tensor:
    # MoCo v3 multiplies the loss by 2*tau so that its gradient scale does not depend on
    # tau (official code); MoCo v1/v2 have no such factor.
    return loss * (2.0 * tau) if scale_by_2tau else loss


def infonce(
    q: torch.Tensor,
    k: torch.Tensor,
    tau: float,
    offset: int = 0,
    scale_by_2tau: bool = True,
) -> torch.Tensor:
    """MoCo v3 contrastive loss ctr(q, k); returns a scalar.

    q: (N, D) local queries; k: (M, D) keys (all ranks' keys under DDP, M = world*N).
    The positive of q[i] is k[i + offset] (offset = N * rank under DDP); every other key
    is a negative. logits = q k^T / tau (N x M) after L2 normalisation; mean cross-entropy.
    """
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"infonce needs q (N, D) and k (M, D); got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    if not 0 <= offset <= k.shape[0] - q.shape[0]:
        raise ValueError(f"offset {offset} puts positives outside the {k.shape[0]} keys")
    # Divergence: the official code builds the logits under fp16 autocast; we build them in
    # fp32 because our default autocast dtype (bf16) has 3 fewer mantissa bits, and with
    # tau = 0.2 its rounding error on a logit (~0.01) is not negligible next to the margins.
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k = (F.normalize(t, dim=1) for t in _fp32(q, k))
        logits = q @ k.T / tau
        labels = torch.arange(q.shape[0], device=q.device) + offset
        loss = F.cross_entropy(logits, labels)
    return _scale(loss, tau, scale_by_2tau)


def infonce_with_negatives(
    q: torch.Tensor,
    k_pos: torch.Tensor,
    negatives: torch.Tensor,
    tau: float,
    scale_by_2tau: bool = True,
) -> torch.Tensor:
    """MoCo v1/v2 loss with an explicit set of negatives; returns a scalar.

    q: (N, D); k_pos: (N, D), the positive of q[i] is k_pos[i]; negatives: (K, D), shared
    by every query. logits = [q.k_pos, q negatives^T] / tau (N x (1+K)), label 0.
    All three are L2-normalised here (idempotent for a queue that stores unit keys).
    """
    if q.shape != k_pos.shape or negatives.ndim != 2 or negatives.shape[1] != q.shape[1]:
        raise ValueError(f"need q and k_pos (N, D) and negatives (K, D); got "
                         f"{tuple(q.shape)}, {tuple(k_pos.shape)}, {tuple(negatives.shape)}")
    # Divergence: logits in fp32 even under autocast, as in infonce().
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k_pos, negatives = (F.normalize(t, dim=1) for t in _fp32(q, k_pos, negatives))
        l_pos = (q * k_pos).sum(dim=1, keepdim=True)
        l_neg = q @ negatives.T
        logits = torch.cat([l_pos, l_neg], dim=1) / tau
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, labels)
    return _scale(loss, tau, scale_by_2tau)
