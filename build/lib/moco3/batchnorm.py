"""BatchNorm1d whose batch statistics span all ranks, on any backend (CPU/gloo included).

The official MoCo v3 converts the heads' BN to SyncBatchNorm, so every BN normalises with the
statistics of the global per-view batch. torch's SyncBatchNorm refuses CPU tensors; this
module does the same math with one differentiable all_gather of the per-rank moments.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllGatherStack(torch.autograd.Function):
    """Differentiable all_gather: (K,) on each rank -> (R, K) on every rank.

    Backward: rank r's input fed every rank's output, so its gradient is the sum over ranks
    of the gradient w.r.t. row r (all_reduce, then take row r). Works on every backend.
    """

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return torch.stack(out)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's buffer
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def combine_moments(mean: Tensor, var: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Pool per-shard moments into those of the union (parallel-variance formula).

    mean, var: (R, C) per-shard mean and biased variance; count: (R,) shard sizes.
    Returns (mean (C,), biased var (C,)). Stable: no E[x^2] - E[x]^2 cancellation.
    """
    w = (count / count.sum()).unsqueeze(1)
    global_mean = (w * mean).sum(0)
    global_var = (w * (var + (mean - global_mean) ** 2)).sum(0)
    return global_mean, global_var


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d with batch statistics over all ranks when torch.distributed runs with
    world_size > 1 (gradients flow through the statistics, as in SyncBatchNorm); plain
    BatchNorm1d otherwise. Running statistics and eval() behave as in BatchNorm1d.

    Input (N, C) or (N, C, L); every rank must call it (it is a collective).
    """

    def forward(self, x: Tensor) -> Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        channels = x.shape[1]
        # Statistics in fp32 even under autocast, as cuDNN's BN does.
        xf = x.float()
        local_count = xf.numel() // channels
        local_mean = xf.mean(dims)
        local_var = xf.var(dims, correction=0)
        packed = torch.cat([local_mean, local_var, local_mean.new_full((1,), local_count)])
        gathered = _AllGatherStack.apply(packed)
        count = gathered[:, 2 * channels].detach()
        mean, var = combine_moments(
            gathered[:, :channels], gathered[:, channels : 2 * channels], count
        )
        total = count.sum()
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, total: Tensor) -> None:
        """Same rule as BatchNorm1d: EMA with `momentum` (or cumulative average if None) of
        the batch mean and the unbiased batch variance."""
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * total / (total - 1).clamp_min(1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)

