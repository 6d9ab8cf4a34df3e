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
from pathlib import Path

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


# -- the two-node cluster (slurm/two-node.sh; `bash slurm/start.sh --nodes 2`) -------------------
TWO_NODE = Path(__file__).resolve().parent.parent / "slurm" / "two-node.sh"
TWO_NODES = ("node1", "node2")
TWO_NODE_NOT_RUNNING = ("the two-node SLURM cluster is not running: start it with "
                        "bash slurm/start.sh --nodes 2")


def on_two_nodes(*cmd: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` on the two-node cluster's login namespace (its SLURM clients and network)."""
    return subprocess.run(["bash", str(TWO_NODE), "exec", *cmd], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def find_two_node_cluster() -> tuple[bool, str, bool]:
    """(running, why not, namespaces impossible here): is the two-node cluster up?"""
    if os.geteuid() != 0:
        return False, "network namespaces need root", True
    if shutil.which("sinfo") is None:
        return False, "sinfo is not installed (bash slurm/install.sh)", False
    try:
        done = on_two_nodes("sinfo", "-h", "-N", "-o", "%N %T", timeout=20)
    except subprocess.TimeoutExpired:
        return False, "sinfo on the two-node cluster did not answer in 20 s", False
    if done.returncode == 0:
        states = dict(line.split()[:2] for line in done.stdout.splitlines() if line.split())
        if all(states.get(node) in UP_STATES for node in TWO_NODES):
            return True, "", False
        return False, f"its nodes are not up ({states or 'none'})", False
    check = subprocess.run(["bash", str(TWO_NODE), "check"], capture_output=True, text=True,
                           timeout=60)
    if check.returncode == 3:  # this machine refuses namespaces: nothing to start
        return False, check.stderr.strip().removeprefix("two-node: "), True
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    if not lines or "is not running" in lines[-1]:
        return False, "its namespaces do not exist", False
    return False, lines[-1], False


@pytest.fixture(scope="session")
def two_node_cluster() -> tuple[str, ...]:
    """The two nodes' names; skips where this machine cannot create network namespaces
    (always, with the reason), or without the cluster (fails instead when env CI is set)."""
    running, why, impossible = find_two_node_cluster()
    if running:
        return TWO_NODES
    if impossible:
        pytest.skip(f"two-node SLURM tests skipped: {why}")
    message = f"{TWO_NODE_NOT_RUNNING} ({why})"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
