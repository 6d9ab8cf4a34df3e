"""GlobalBatchNorm1d: cross-rank statistics on CPU/gloo equal one big batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from moco3.batchnorm import GlobalBatchNorm1d, combine_moments

B, C, WORLD, STEPS = 5, 6, 2, 2


def make_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch (WORLD*B, C) and the weights of a sum-type loss, same on every rank."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(WORLD * B, C, generator=g) * 3 + 1
    w = torch.randn(WORLD * B, C, generator=g)
    return x, w


def init_bn(bn: nn.BatchNorm1d) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(C, generator=g))


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        bn = GlobalBatchNorm1d(C)
        init_bn(bn)
        results = []
        for step in range(STEPS):
            x, w = make_data(step)
            x = x[rank * B:(rank + 1) * B].clone().requires_grad_(True)
            bn.zero_grad()
            y = bn(x)
            (y * w[rank * B:(rank + 1) * B]).sum().backward()
            results.append((y.detach(), x.grad, bn.weight.grad.clone(), bn.bias.grad.clone()))
        bn.eval()
        x_eval, _ = make_data(99)
        torch.save({"steps": results, "running_mean": bn.running_mean,
                    "running_var": bn.running_var, "tracked": bn.num_batches_tracked,
                    "eval": bn(x_eval)}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    ref = nn.BatchNorm1d(C)
    init_bn(ref)
    for step in range(STEPS):
        x, w = make_data(step)
        x.requires_grad_(True)
        ref.zero_grad()
        y = ref(x)
        (y * w).sum().backward()
        for r, res in enumerate(ranks):
            y_r, gx_r, _, _ = res["steps"][step]
            rows = slice(r * B, (r + 1) * B)
            torch.testing.assert_close(y_r, y[rows].detach(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(gx_r, x.grad[rows], rtol=1e-4, atol=1e-5)
        # Each rank holds its share of the affine gradients; DDP sums (averages) them.
        gw = sum(res["steps"][step][2] for res in ranks)
        gb = sum(res["steps"][step][3] for res in ranks)
        torch.testing.assert_close(gw, ref.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gb, ref.bias.grad, rtol=1e-5, atol=1e-5)
    ref.eval()
    x_eval, _ = make_data(99)
    for res in ranks:
        torch.testing.assert_close(res["running_mean"], ref.running_mean)
        torch.testing.assert_close(res["running_var"], ref.running_var)
        assert int(res["tracked"]) == int(ref.num_batches_tracked) == STEPS
        torch.testing.assert_close(res["eval"], ref(x_eval).detach())


def test_combine_moments_of_uneven_shards() -> None:
    torch.manual_seed(0)
    x = torch.randn(17, 4, dtype=torch.float64) * 5 + 100
    shards = x.split([3, 8, 6])
    mean, var = combine_moments(
        torch.stack([s.mean(0) for s in shards]),
        torch.stack([s.var(0, correction=0) for s in shards]),
        torch.tensor([3.0, 8.0, 6.0], dtype=torch.float64),
    )
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(var, x.var(0, correction=0))


@pytest.mark.parametrize("affine", [True, False])
def test_without_distributed_it_is_batchnorm1d(affine: bool) -> None:
    torch.manual_seed(0)
    ours, ref = GlobalBatchNorm1d(C, affine=affine), nn.BatchNorm1d(C, affine=affine)
    assert isinstance(ours, nn.BatchNorm1d)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(8, C)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=0)
