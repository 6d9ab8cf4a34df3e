"""The `slurm_cluster` fixture: a running SLURM cluster to submit to, or a clear stop.

Tests marked `slurm` need the real single-node cluster of slurm/install.sh + slurm/start.sh.
Without one they SKIP on a developer's machine and FAIL under CI (env CI set), where .ci/run
starts the cluster before the tests and a missing cluster is a broken build, not a skip.

Import it where needed: `from slurm_fixture import slurm_cluster  # noqa: F401`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

NOT_RUNNING = "the SLURM cluster is not running: start it with bash slurm/start.sh"
UP_STATES = ("idle", "mixed", "allocated", "completing")


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know about the cluster they submit to."""

    node: str
    partition: str  # the default partition (sinfo marks it with '*')
    accounting: bool  # sacct works (slurmdbd): submitit then sees real job states


def _run(*cmd: str) -> str:
    """stdout of a SLURM client command; CalledProcessError/TimeoutExpired when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=True)
    return done.stdout


def find_cluster() -> tuple[SlurmCluster | None, str]:
    """The running cluster, or None and a sentence saying why there is none."""
    if shutil.which("sinfo") is None:
        return None, "sinfo is not installed (bash slurm/install.sh)"
    try:
        # `scontrol ping` fails at once without a controller; sinfo would retry for ~10 s.
        _run("scontrol", "ping")
        rows = [line.split() for line in _run("sinfo", "-h", "-N", "-o", "%N %T %P").splitlines()]
        config = _run("scontrol", "show", "config")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        output = (getattr(err, "stdout", "") or "") + (getattr(err, "stderr", "") or "")
        lines = [line.strip() for line in output.splitlines() if line.strip("* \n")]
        return None, f"{' '.join(err.cmd[:2])}: {lines[0] if lines else err}"
    up = [row for row in rows if len(row) == 3 and row[1] in UP_STATES]
    if not up:
        states = ", ".join(f"{row[0]}={row[1]}" for row in rows if len(row) >= 2) or "no nodes"
        return None, f"no node is up ({states})"
    default = [row for row in up if row[2].endswith("*")] or up
    node, _, partition = default[0]
    accounting = "accounting_storage/slurmdbd" in config
    return SlurmCluster(node=node, partition=partition.rstrip("*"), accounting=accounting), ""


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The local SLURM cluster; skips without one, or fails when env CI is set."""
    cluster, why = find_cluster()
    if cluster is None:
        message = f"{NOT_RUNNING} ({why})"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return cluster
