"""Submitting runs to SLURM with submitit, and asking SLURM about them.

One job array per resource group. A run with G GPUs gets ceil(G / gpus_per_node) nodes (or
resources.nodes) with one task per GPU (submitit exports the torch.distributed environment
that moco3.dist.init_distributed reads); a CPU run gets one task on each of its
resources.nodes nodes (default 1), joined over gloo. Each launch gets a fresh
submitit folder: job ids restart at 1 on a wiped cluster, and a reused folder could hand
back an old job's result.
"""

from __future__ import annotations

import getpass
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig

from moco3.experiments.job import RunJob
from moco3.experiments.rundir import LaunchError

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def controller_answers(timeout_s: float = 5.0) -> bool:
    """sbatch is installed and the controller answers sinfo."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def queue_states() -> dict[str, str] | None:
    """job id ("123" or "123_4") -> state of this user's jobs in squeue; None if it fails."""
    if shutil.which("squeue") is None:
        return None
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %T"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    states = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def accounting_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> final state from sacct (empty when accounting is off or sacct fails)."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        done = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j",
                               ",".join(job_ids)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        job, _, state = line.partition("|")
        states[job] = state.split()[0] if state else ""
    return states


def node_layout(resources: dict[str, Any], launcher: DictConfig) -> tuple[int, int]:
    """(nodes, tasks per node) of one run: one task per GPU, or one per node for a CPU run.
    Raises LaunchError, in one sentence, for a split SLURM could not give."""
    gpus = int(resources["gpus"])
    asked = resources.get("nodes")
    if asked is not None and int(asked) < 1:
        raise LaunchError(f"resources.nodes={asked} is not valid; use 1 or more, or null (one "
                          "node per launcher.gpus_per_node GPUs, one node for a CPU run).")
    if not gpus:
        return int(asked or 1), 1
    nodes = int(asked) if asked is not None else math.ceil(gpus / launcher.gpus_per_node)
    if gpus % nodes:
        raise LaunchError(f"resources.gpus={gpus} does not split evenly over {nodes} nodes; "
                          f"use a multiple of {nodes} GPUs, or other resources.nodes.")
    if gpus // nodes > launcher.gpus_per_node:
        raise LaunchError(f"resources.gpus={gpus} on resources.nodes={nodes} is "
                          f"{gpus // nodes} GPUs per node, more than launcher.gpus_per_node="
                          f"{launcher.gpus_per_node}; use at least "
                          f"{math.ceil(gpus / launcher.gpus_per_node)} nodes.")
    return nodes, gpus // nodes


def job_parameters(resources: dict[str, Any], launcher: DictConfig, name: str) -> dict[str, Any]:
    """SlurmExecutor parameters of one resource group, from the run's needs and the profile."""
    nodes, per_node = node_layout(resources, launcher)
    params: dict[str, Any] = {"nodes": nodes, "ntasks_per_node": per_node}
    if int(resources["gpus"]) > 0:
        params.update(gpus_per_node=per_node, cpus_per_task=launcher.cpus_per_task)
    else:
        params["cpus_per_task"] = resources.get("cpus") or launcher.cpus_per_task
    mem = resources.get("mem_gb") or launcher.mem_gb
    if mem:
        params["mem"] = f"{int(math.ceil(mem))}GB"
    # A run's own wall time (the scales set one), never above the profile's: that is the
    # site's limit (a partition refuses longer jobs); a longer run requeues and resumes.
    asked = resources.get("timeout_min")
    params["time"] = int(min(asked, launcher.timeout_min) if asked else launcher.timeout_min)
    params["job_name"] = name
    params["signal_delay_s"] = int(launcher.signal_delay_s)
    params["array_parallelism"] = int(launcher.array_parallelism)
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if launcher.get(key):
            params[key] = launcher[key]
    if launcher.setup:
        params["setup"] = list(launcher.setup)
    if launcher.additional_parameters:
        params["additional_parameters"] = dict(launcher.additional_parameters)
    return params


def submit_group(folder: Path, run_jobs: list[RunJob], params: dict[str, Any],
                 launcher: DictConfig) -> list[str]:
    """Submit one job array (a plain job for one run); return the job ids in order."""
    executor = submitit.SlurmExecutor(folder=folder / "%j",
                                      max_num_timeout=int(launcher.max_num_timeout),
                                      python=launcher.python)
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(job) for job in run_jobs]
    for run_job, job in zip(run_jobs, jobs, strict=True):
        _link_logs(Path(run_job.run_dir), job)
    return [str(job.job_id) for job in jobs]


def _link_logs(run_dir: Path, job: submitit.Job) -> None:
    """run_dir/logs/<job id>.out|.err -> submitit's log files (they appear when it starts)."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for suffix, target in ((".out", job.paths.stdout), (".err", job.paths.stderr)):
        link = logs / f"{job.job_id}{suffix}"
        if not link.exists() and not link.is_symlink():
            link.symlink_to(Path(target).resolve())
