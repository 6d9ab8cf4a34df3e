"""Shared fixtures. pytest puts tests/ on sys.path, so sibling fixture modules import plainly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_fixture import slurm_cluster  # noqa: F401  (the real local SLURM cluster)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def patch_proj_grid(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's main command run once, for real, at the default tiny scale (~7 min):
    `python experiments/launch.py ablation=patch_proj` on this machine. Returns the folder it
    ran in (runs/ beneath it) and the finished process. Shared by the end-to-end launch test,
    the "it learns" test and the golden report test."""
    cwd = tmp_path_factory.mktemp("patch_proj_grid")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MOCO3_CONF_DIR", "MOCO3_CLUSTER_PROFILE", "MOCO3_RUNS_ROOT")}
    done = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "launch.py"), "ablation=patch_proj",
         "launcher=local"], cwd=cwd, capture_output=True, text=True, timeout=1800, env=env)
    return cwd, done
