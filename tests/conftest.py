"""Shared fixtures. pytest puts tests/ on sys.path, so sibling fixture modules import plainly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_fixture import slurm_cluster  # noqa: F401  (the real local SLURM cluster)

REPO = Path(__file__).resolve().parents[1]
GRID_TIMEOUT_S = 1800  # the default grid takes minutes; a generous margin on slow CPUs


def end_local_pools(runs_root: Path) -> list[int]:
    """Kill every local pool a launch under `runs_root` started, with its runs (they share
    the pool's process group): a test that gives up on a launch must not leave its grid
    training through the rest of the suite. Returns the process groups signalled."""
    from moco3.experiments.rundir import read_manifest

    pools = {int(job.rsplit(":", 1)[1])
             for manifest in runs_root.glob("*/manifest.jsonl")
             for row in read_manifest(manifest).values()
             for job in row.get("job_ids") or [] if job.startswith("local:")}
    ended = []
    for pid in sorted(pools):
        try:
            os.killpg(pid, signal.SIGKILL)
            ended.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return ended


@pytest.fixture(scope="session")
def patch_proj_grid(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's main command run once, for real, at the default tiny scale:
    `python experiments/launch.py ablation=patch_proj` on this machine. Returns the folder it
    ran in (runs/ beneath it) and the finished process. Shared by the end-to-end launch test,
    the "it learns" test and the golden report test."""
    cwd = tmp_path_factory.mktemp("patch_proj_grid")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MOCO3_CONF_DIR", "MOCO3_CLUSTER_PROFILE", "MOCO3_RUNS_ROOT")}
    command = [sys.executable, str(REPO / "experiments" / "launch.py"), "ablation=patch_proj",
               "launcher=local"]
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                              timeout=GRID_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as err:
        end_local_pools(cwd / "runs")
        out, errors = (x.decode() if isinstance(x, bytes) else x or ""
                       for x in (err.stdout, err.stderr))
        done = subprocess.CompletedProcess(command, -9, out, errors)
    yield cwd, done
    end_local_pools(cwd / "runs")
