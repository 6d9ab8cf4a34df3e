"""What produced a run: versions, hardware, code and scheduler, one record per (re)start.

The job appends `environment_record()` to the run folder's env.json every time it starts
or resumes, so a number can always be traced to the torch version, the GPU or CPU kind,
the commit and the SLURM job that produced it (and a run that moved between machines
shows every one of them).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

from moco3.code_identity import code_identity
from moco3.precision import cpu_kind

PACKAGES = ("torch", "torchvision", "timm", "numpy", "omegaconf", "moco3")
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                   "SLURM_RESTART_COUNT", "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_record(world_size: int, hosts: list[str] | None = None) -> dict[str, Any]:
    """One provenance record of this process (call it on the main rank); `hosts`: every
    rank's hostname in rank order (moco3.dist.rank_hosts), which shows where a run that
    spans nodes ran."""
    cuda = torch.cuda.is_available()
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "executable": sys.executable,
        **{f"{p}_version": _version(p) for p in PACKAGES},
        "cuda_version": torch.version.cuda if cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "gpu_model": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_capability": cpu_kind(),
        "cpu_model": cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "world_size": world_size,
        "hosts": hosts if hosts is not None else [socket.gethostname()],
        **code_identity(),  # git_commit, git_dirty, code_source, code_hash
    }
    record.update({k.lower(): os.environ[k] for k in SLURM_VARIABLES if k in os.environ})
    return record


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for every speed figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
