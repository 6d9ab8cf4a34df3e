"""Process-group setup (torchrun or SLURM/submitit) and the two gathers MoCo needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

# How long a collective may wait for the other ranks before the job fails instead of hanging.
# Explicit rather than the backend's default (NCCL: 10 min): rank 0 alone runs the kNN
# monitor (up to knn_memory + knn_queries images at the run's resolution) while the other
# ranks wait at a barrier, and a hung job should fail well before the cluster's time limit.
# MOCO3_DIST_TIMEOUT_S overrides it (a kNN memory of a whole dataset on a slow file system).
DIST_TIMEOUT_S = 1800.0


def dist_timeout() -> timedelta:
    """The process group's collective timeout: MOCO3_DIST_TIMEOUT_S or DIST_TIMEOUT_S."""
    raw = os.environ.get("MOCO3_DIST_TIMEOUT_S", "").strip()
    try:
        seconds = float(raw) if raw else DIST_TIMEOUT_S
    except ValueError:
        raise ValueError(f"MOCO3_DIST_TIMEOUT_S={raw!r} is not a number of seconds; unset it "
                         "or give a positive number.") from None
    if not seconds > 0:
        raise ValueError(f"MOCO3_DIST_TIMEOUT_S={raw!r} must be a positive number of seconds.")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _env_int(name: str, default: int = 0) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _launched_by_submitit_tasks() -> bool:
    """True for a SLURM job with several tasks (or submitit's local executor with several)."""
    if "SLURM_JOB_ID" in os.environ and _env_int("SLURM_NTASKS", 1) > 1:
        return True
    return (
        os.environ.get("SUBMITIT_EXECUTOR") == "local"
        and _env_int("SUBMITIT_LOCAL_NTASKS", 1) > 1
    )


def _export_submitit_env() -> None:
    """Export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the SLURM (or submitit) job."""
    from submitit.helpers import TorchDistributedEnvironment

    # submitit picks its job environment from SUBMITIT_EXECUTOR, which only submitit's own
    # launcher sets; a plain `srun python -m moco3.train` has SLURM variables but not that
    # one, so name the cluster for the duration of the lookup and restore the environment.
    had_executor = "SUBMITIT_EXECUTOR" in os.environ
    if not had_executor:
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"
    try:
        env = TorchDistributedEnvironment()
    finally:
        if not had_executor:
            del os.environ["SUBMITIT_EXECUTOR"]
    # Keep every GPU visible and pick ours by local rank (like torchrun); a job that gives
    # each task its own GPU (--gpus-per-task) still works via the modulo in _device().
    env.export(set_cuda_visible_devices=False, overwrite=True)


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_distributed() -> DistInfo:
    """Join the job's process group: torchrun env first, else SLURM via submitit.

    One process (no launcher, or a world of 1) gets no process group at all, so the same
    code runs on a laptop. Backend: nccl on CUDA, gloo on CPU. Idempotent.
    """
    if dist.is_available() and dist.is_initialized():
        local_rank = _env_int("LOCAL_RANK", 0)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, _device(local_rank))
    if not _launched_by_torchrun() and _launched_by_submitit_tasks():
        _export_submitit_env()
    world_size = _env_int("WORLD_SIZE", 1)
    if not _launched_by_torchrun() or world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=_device(0))
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", 0)
    device = _device(local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                            world_size=world_size, timeout=dist_timeout())
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def rank_hosts() -> list[str]:
    """The hostname of every rank, in rank order (a collective: call it on every rank)."""
    import socket

    host = socket.gethostname()
    if get_world_size() == 1:
        return [host]
    hosts: list[str] = [""] * get_world_size()
    dist.all_gather_object(hosts, host)
    return hosts


def get_rank() -> int:
    """Global rank; 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes; 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) per rank -> (world*N, ...) in rank order, without gradient.

    Identity (same tensor) with one process. Every rank must pass the same shape.
    """
    world_size = get_world_size()
    if world_size == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(parts, t)
    return torch.cat(parts, dim=0)


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) per rank -> (world*N, ...) in rank order, differentiable.

    Backward sums, into each rank's slice, the gradients that every rank's loss sends to
    it, so the DDP mean of per-rank parameter grads equals the single-process gradient.
    """
    if get_world_size() == 1:
        return t
    return torch.cat(dist_fn.all_gather(t.contiguous()), dim=0)
