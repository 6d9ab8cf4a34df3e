"""Section distributed: two ranks against one process, and SyncBatchNorm under NCCL."""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.gpu_check.correctness import (
    Trace,
    check_batch,
    check_model,
    compare_traces,
    cos_text,
    param_groups_by_name,
    run_steps,
    summary,
    within,
)
from benchmarks.gpu_check.machinery import (
    free_port,
    single_process_group,
    tf32,
)
from benchmarks.gpu_check.profiles import (
    NO_CUDA,
    PROFILES,
    SAME_LOSS_REL,
    SYNC_BN_REL,
    Context,
    Tolerance,
)
from benchmarks.gpu_check.report import Report
from benchmarks.gpu_check.resume import differing
from moco3.model import MoCo


def section_distributed(ctx: Context, report: Report) -> None:
    """The job's multi-process build (DDP + SyncBN / GlobalBatchNorm1d) in a one-rank
    process group gives the plain model's loss; SyncBatchNorm's sync kernels are right."""
    sec, device, p = "distributed", ctx.device, ctx.profile
    cuda = device.type == "cuda"
    backend = "nccl" if cuda else "gloo"
    bn = "SyncBatchNorm" if cuda else "GlobalBatchNorm1d"
    name = f"{backend} DDP + {bn}, 1 rank, vs plain model"
    x1, x2 = check_batch(ctx)
    plain = check_model(ctx)
    groups = param_groups_by_name(plain)
    steps = min(2, p.check_steps)
    with report.check(sec, name):
        ref = run_steps(copy.deepcopy(plain), device, "fp32", cuda, x1, x2, steps,
                        p.check_heads[1])
        with single_process_group(backend, device, ctx.remaining() - 3):
            # As the Trainer builds it under DDP: global-BN heads, then (CUDA) every BN
            # converted to SyncBatchNorm, then DistributedDataParallel around it.
            model = check_model(ctx, global_bn=True)
            model.load_state_dict(plain.state_dict())
            if cuda:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

            def ddp(m: MoCo) -> nn.Module:
                ids = [device.index if device.index is not None else 0] if cuda else None
                return nn.parallel.DistributedDataParallel(m, device_ids=ids)

            got = run_steps(model, device, "fp32", cuda, x1, x2, steps, p.check_heads[1],
                            wrap=ddp)
            kinds = sorted({type(m).__name__ for m in model.modules() if "Norm" in
                            type(m).__name__ and "Layer" not in type(m).__name__})
        c = compare_traces(ref, got, groups)
        bitwise = ref.losses == got.losses
        ok = c["max_loss_rel"] <= SAME_LOSS_REL and c["min_grad_cos"] >= 1 - 1e-6
        report.add(sec, name, "pass" if ok else "fail",
                   f"loss rel {c['max_loss_rel']:.1e} ({'bitwise' if bitwise else 'not bitwise'})"
                   f"; grad cos {cos_text(c['min_grad_cos'])}",
                   f"loss rel <= {SAME_LOSS_REL:g}, grad cos >= 0.999999",
                   f"{steps} fp32 steps; BN modules: {', '.join(kinds)}", **c)
    two_rank_checks(ctx, report, x1, x2, plain, groups)
    name = "SyncBatchNorm kernels (forced sync, 1 rank) vs F.batch_norm"
    if not cuda:
        report.add(sec, name, f"{NO_CUDA} (torch's SyncBatchNorm runs on GPUs only)")
        return
    with report.check(sec, name), single_process_group(backend, device, ctx.remaining() - 3):
        errors = forced_sync_bn_errors(device)
        worst = max(errors.values())
        report.add(sec, name, "pass" if worst <= SYNC_BN_REL else "fail",
                   f"max rel err {worst:.1e} ({max(errors, key=errors.get)})",
                   f"<= {SYNC_BN_REL:g}", "output, input/weight/bias grads, running stats",
                   errors=errors)


# Two ranks with half the batch each against one process with all of it, fp32 (TF32 off on
# a GPU): the same arithmetic summed in other orders (BN statistics across ranks, the
# gradient all-reduce's mean), so far tighter than the GPU-vs-CPU bounds. A wrong label
# offset of the in-batch negatives, keys gathered in the wrong order or BN statistics of
# one rank only move the loss by O(1). Measured on CPU (gloo, explicit attention): loss
# rel ~1e-7, gradient cosine 1 - 1e-11, norm rel ~1e-7.
TWO_RANK = Tolerance(1e-5, 1 - 1e-6, 1e-4)


def two_rank_checks(ctx: Context, report: Report, x1: Tensor, x2: Tensor, plain: MoCo,
                    groups: dict[str, list[str]]) -> None:
    """The job's multi-process build across two real ranks: gloo (on one GPU, with CUDA
    tensors; or on the CPU), and NCCL where there are two GPUs."""
    sec, device, p = "distributed", ctx.device, ctx.profile
    cuda = device.type == "cuda"
    bn = "SyncBatchNorm" if cuda else "GlobalBatchNorm1d"
    steps = min(2, p.check_steps)
    with tf32(False):
        ref = run_steps(copy.deepcopy(plain), device, "fp32", cuda, x1, x2, steps,
                        p.check_heads[1])
    gpus = torch.cuda.device_count() if cuda else 0
    runs = [("gloo", [device, device],
             f"gloo, 2 ranks on one GPU (CUDA tensors), DDP + {bn} vs 1 process" if cuda else
             f"gloo, 2 ranks on the CPU, DDP + {bn} vs 1 process")]
    nccl = f"nccl, 2 ranks on 2 GPUs, DDP + {bn} vs 1 process"
    if gpus >= 2:
        runs.append(("nccl", [torch.device("cuda", 0), torch.device("cuda", 1)], nccl))
    for backend, devices, name in runs:
        with report.check(sec, name):
            ranks = run_two_ranks(ctx, backend, devices, plain, x1, x2, steps)
            got = Trace(losses=[sum(r["losses"][s] for r in ranks) / len(ranks)
                                for s in range(steps)],
                        grads=ranks[0]["grads"])
            # Step 1 is on identical weights; later steps drift apart as any two correct
            # implementations do (Adam's first update is ~lr * sign(g)): loss only.
            c = compare_traces(ref, got, groups, steps=1)
            later = [abs(g - r) / max(abs(r), 1e-12) for r, g in
                     zip(ref.losses, got.losses, strict=True)]
            in_sync = not differing(ranks[0]["params"], ranks[1]["params"])
            ok = (within(c, TWO_RANK) and max(later) <= TWO_RANK.loss_rel * 10 and in_sync)
            report.add(sec, name, "pass" if ok else "fail",
                       f"{summary(c)}; step {steps} loss rel {later[-1]:.1e}; replicas "
                       f"{'identical' if in_sync else 'DIFFER'} after {steps} steps",
                       f"step 1: {TWO_RANK.text()}; later steps loss rel <= "
                       f"{TWO_RANK.loss_rel * 10:g}; replicas torch.equal",
                       f"2 processes x batch {p.check_batch // 2} vs 1 x {p.check_batch}, "
                       f"fp32; BN modules: {', '.join(ranks[0]['bn'])}; devices "
                       f"{', '.join(map(str, devices))}", **c, later_loss_rel=later,
                       ranks=2, backend=backend)
    if not cuda:
        report.add(sec, nccl, f"{NO_CUDA} (NCCL needs a GPU per rank)")
    elif gpus < 2:
        report.add(sec, nccl, f"skipped: needs 2 GPUs, this machine has {gpus} (NCCL "
                   "refuses two ranks on one GPU; the gloo row above shares it)")


def run_two_ranks(ctx: Context, backend: str, devices: list[torch.device], plain: MoCo,
                  x1: Tensor, x2: Tensor, steps: int) -> list[dict[str, Any]]:
    """`steps` fp32 steps of `plain` built as the job builds it under DDP, in two fresh
    processes (rank r on devices[r], half the batch each); each rank's losses, gradients,
    final parameters. The process group's timeout and the wait here both end before the
    section's budget; ranks still running then are killed (a blocked collective cannot be
    interrupted from inside its process)."""
    wait = ctx.remaining() - 3
    if wait < 5:
        raise TimeoutError(f"only {ctx.remaining():.0f} s left of the section to start two "
                           "processes")
    with tempfile.TemporaryDirectory(prefix="gpu-check-ranks-") as tmp:
        torch.save({"state": plain.state_dict(), "x1": x1, "x2": x2}, Path(tmp) / "payload.pt")
        procs = torch.multiprocessing.start_processes(
            _rank_main, args=(2, free_port(), backend, [str(d) for d in devices],
                              ctx.profile.name, steps, tmp, wait - 2),
            # fork on the CPU: a child starts in milliseconds instead of importing torch
            # again; CUDA cannot be used in a forked child once the parent initialised it.
            nprocs=2, join=False, start_method="spawn" if devices[0].type == "cuda" else "fork")
        deadline = time.perf_counter() + wait
        try:
            while not procs.join(timeout=0.5):
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"the two ranks did not finish within {wait:.0f} s")
        finally:
            for proc in procs.processes:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _rank_main(rank: int, world: int, port: int, backend: str, devices: list[str],
               profile: str, steps: int, folder: str, timeout_s: float) -> None:
    """One rank of run_two_ranks (a spawned process)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = torch.device(devices[rank])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=timedelta(seconds=max(1.0, timeout_s)))
    try:
        payload = torch.load(Path(folder) / "payload.pt")
        ctx = Context(device, PROFILES[profile], math.inf)
        model = check_model(ctx, global_bn=True)
        model.load_state_dict(payload["state"])
        if cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        kinds = sorted({type(m).__name__ for m in model.modules() if "Norm" in
                        type(m).__name__ and "Layer" not in type(m).__name__})

        def ddp(m: MoCo) -> nn.Module:
            return nn.parallel.DistributedDataParallel(m, device_ids=[device] if cuda else None)

        x1, x2 = payload["x1"].chunk(world)[rank], payload["x2"].chunk(world)[rank]
        trace = run_steps(model, device, "fp32", cuda, x1, x2, steps,
                          ctx.profile.check_heads[1], wrap=ddp,
                          global_batch=payload["x1"].shape[0])
        params = {n: q.detach().to("cpu", copy=True) for n, q in model.named_parameters()}
        torch.save({"losses": trace.losses, "grads": trace.grads, "params": params,
                    "bn": kinds}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def forced_sync_bn_errors(device: torch.device) -> dict[str, float]:
    """SyncBatchNorm's autograd function with world size 1 (torch's module only calls it
    for world size > 1) vs F.batch_norm: max |a - b| / max |b| per output."""
    # Private: torch.nn.modules._functions.SyncBatchNorm is what nn.SyncBatchNorm.forward
    # applies when it synchronises; if torch moves it, this check errors with the reason.
    from torch.nn.modules._functions import SyncBatchNorm as SyncBatchNormFunction

    g = torch.Generator(device="cpu").manual_seed(2)
    channels, eps, momentum = 256, 1e-5, 0.1
    x = (torch.randn(64, channels, generator=g) * 3 + 1).to(device)
    weight = (torch.rand(channels, generator=g) + 0.5).to(device)
    bias = (torch.rand(channels, generator=g) - 0.5).to(device)
    upstream = torch.randn(64, channels, generator=g).to(device)
    results = []
    for forced in (False, True):
        xi, w, b = (t.clone().requires_grad_() for t in (x, weight, bias))
        mean = torch.zeros(channels, device=device)
        var = torch.ones(channels, device=device)
        if forced:
            y = SyncBatchNormFunction.apply(xi, w, b, mean, var, eps, momentum,
                                            dist.group.WORLD, 1)
        else:
            y = F.batch_norm(xi, mean, var, w, b, True, momentum, eps)
        y.backward(upstream)
        results.append({"output": y.detach(), "grad_input": xi.grad, "grad_weight": w.grad,
                        "grad_bias": b.grad, "running_mean": mean, "running_var": var})
    ref, got = results
    return {k: float((got[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12))
            for k in ref}
