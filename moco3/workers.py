"""How many DataLoader worker processes a run's loaders get (`data.num_workers`).

Unset (None), a GPU run takes its cores per GPU minus one (at least 1): each GPU process
keeps one core for itself (the step's Python, the host side of the kernels) and gives the
rest to augmentation, which at 224 px runs at a few hundred images per core and second
(benchmarks/gpu_check measures it), far below what one GPU trains on. A CPU run keeps 0:
its cores already go to torch's threads (train.threads), and workers would compete with
them. A value set in the config is used as is, anywhere.

The worker count does not change results: each image's views are seeded by (seed, epoch,
index) (moco3/loader.py), so it is left out of the config hash and may differ on resume.
"""

from __future__ import annotations

import os

import torch

from moco3.config import ConfigError


def cores_per_gpu_process() -> int:
    """The cores one GPU process may use, itself and its workers included: the local
    launcher's share (MOCO3_CPUS_PER_GPU), else SLURM's cores per task (one task per GPU),
    else this process's cores (sched_getaffinity) over the processes on this node
    (LOCAL_WORLD_SIZE, set by torchrun)."""
    for name in ("MOCO3_CPUS_PER_GPU", "SLURM_CPUS_PER_TASK"):
        raw = os.environ.get(name, "").strip()
        if raw:
            try:
                return max(1, int(raw))
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a whole number of cores; unset it "
                                  "or give one.") from None
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    per_node = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, len(os.sched_getaffinity(0)) // per_node)


def resolve_num_workers(requested: int | None, device: torch.device) -> int:
    """`data.num_workers` as a run uses it on `device` (None: see the module docstring)."""
    if requested is not None:
        return int(requested)
    if device.type != "cuda":
        return 0
    return max(1, cores_per_gpu_process() - 1)
