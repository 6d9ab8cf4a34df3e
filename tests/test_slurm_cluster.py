"""The local SLURM cluster (slurm/*.sh) runs what the launcher will send it.

Real sbatch, real submitit, real requeue: each test polls with a deadline instead of sleeping,
and submits into a fresh folder, because job ids restart at 1 after `slurm/stop.sh --wipe`
and an old submitit folder would hand back an old job's result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import pytest
import submitit
from slurm_fixture import SlurmCluster, slurm_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm

# The jobs unpickle this module's functions in a plain `python -m submitit...` process that
# cannot import a pytest test module: ship the functions by value instead of by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` every 0.2 s; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


def _executor(cluster: SlurmCluster, folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    # timeout_min >= 2: with 1 minute the USR2 warning can arrive before submitit's handler.
    # mem_gb=1 leaves room for other jobs: memory is a consumable resource on this cluster.
    executor.update_parameters(
        timeout_min=5, cpus_per_task=1, mem_gb=1, slurm_partition=cluster.partition
    )
    return executor


def _job_result(job: submitit.Job, timeout_s: float) -> object:
    _wait_until(job.done, timeout_s, f"SLURM job {job.job_id} to finish")
    return job.result()


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
        capture_output=True, text=True, timeout=15, check=True,
    ).stdout
    return out.strip().splitlines()[-1] if out.strip() else ""


def _square(x: int) -> int:
    return x * x


def _host_and_job() -> tuple[str, str]:
    return os.uname().nodename, os.environ["SLURM_JOB_ID"]


def _save_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)  # atomic: a SIGKILL never leaves half a state file


def _count_with_resume(state_path: str, steps: int, step_s: float) -> dict:
    """Count to `steps`, saving progress after each step and resuming from the saved state.

    state: {"step": int, "starts": [the step each (re)start began at]}
    """
    path = Path(state_path)
    state = json.loads(path.read_text()) if path.exists() else {"step": 0, "starts": []}
    state["starts"].append(state["step"])
    _save_json(path, state)
    while state["step"] < steps:
        time.sleep(step_s)
        state["step"] += 1
        _save_json(path, state)
    return state


def test_node_is_up(slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-n", slurm_cluster.node, "-o", "%T %P"],
        capture_output=True, text=True, timeout=15, check=True,
    ).stdout.split()
    assert out[0] in ("idle", "mixed", "allocated"), out
    assert out[1] == slurm_cluster.partition + "*", "the partition must be the default one"


def test_sbatch_wrap_completes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    token = uuid.uuid4().hex
    out = tmp_path / "out.txt"
    job_id = subprocess.run(
        ["sbatch", "--parsable", "--mem=100M", "-t", "2", "-o", str(out),
         "--wrap", f"echo {token}"],
        capture_output=True, text=True, timeout=15, check=True,
    ).stdout.strip().split(";")[0]

    def left_queue() -> bool:
        squeue = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        return not squeue.stdout.strip()

    _wait_until(left_queue, 30, f"sbatch job {job_id} to leave the queue")
    assert out.read_text().strip() == token
    if slurm_cluster.accounting:
        _wait_until(lambda: _sacct_state(job_id) == "COMPLETED", 15, "sacct to say COMPLETED")


def test_submitit_runs_a_function(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    job = _executor(slurm_cluster, tmp_path / "submitit").submit(_host_and_job)
    host, job_id = _job_result(job, 60)
    assert job_id == job.job_id
    assert host == os.uname().nodename
    if slurm_cluster.accounting:  # without slurmdbd submitit only ever sees UNKNOWN
        # done() looks at the result file; the state comes from sacct (forced refresh).
        _wait_until(lambda: job.get_info(mode="force").get("State") == "COMPLETED", 15,
                    "submitit to report COMPLETED")


def test_submitit_job_array(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    executor = _executor(slurm_cluster, tmp_path / "submitit")
    executor.update_parameters(slurm_array_parallelism=3)
    jobs = executor.map_array(_square, [1, 2, 3])
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "one array, three tasks"
    assert [_job_result(job, 60) for job in jobs] == [1, 4, 9]


def test_external_requeue_resumes_from_saved_state(
    slurm_cluster: SlurmCluster, tmp_path: Path  # noqa: F811
) -> None:
    # `scontrol requeue` sends SIGTERM (submitit ignores it), SIGKILLs after KillWait (5 s),
    # and restarts the original pickled call: only state the job saved itself survives.
    steps, step_s = 24, 0.5  # 12 s of work: still running when the SIGKILL comes
    state_path = tmp_path / "state.json"
    job = _executor(slurm_cluster, tmp_path / "submitit").submit(
        _count_with_resume, str(state_path), steps, step_s
    )

    def progress() -> int:
        return json.loads(state_path.read_text())["step"] if state_path.exists() else -1

    _wait_until(lambda: progress() >= 2, 60, "the job to start counting")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=15)
    requeued_at = progress()

    state = _job_result(job, 75)
    assert state["step"] == steps
    assert len(state["starts"]) == 2, f"expected one restart, got starts={state['starts']}"
    assert state["starts"][0] == 0
    assert requeued_at <= state["starts"][1] < steps, "the restart resumed from the saved step"
