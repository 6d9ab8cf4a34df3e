"""launch.py on the real single-node SLURM cluster (slurm/install.sh + slurm/start.sh).

Marked `slurm`: skipped without a cluster on a developer's machine, failed under CI.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from slurm_fixture import slurm_cluster  # noqa: F401
from test_launch import FAST, _cli

from moco3.experiments.rundir import read_manifest
from moco3.runfolder.atomic import read_json

pytestmark = pytest.mark.slurm


def _slurm_args(cluster) -> list[str]:
    return ["launcher=slurm", f"launcher.partition={cluster.partition}", "launcher.poll_s=2"]


def _rows(run: Path, kind: str) -> list[dict]:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == kind:
            rows.append(row)
    return rows


def test_the_tiny_patch_proj_grid_runs_on_slurm_and_a_relaunch_submits_nothing(
        slurm_cluster, tmp_path):  # noqa: F811
    args = ["ablation=patch_proj", *_slurm_args(slurm_cluster), *FAST]
    done = _cli(args, tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "slurm: submitted 6 run(s) as array" in done.stdout
    root = tmp_path / "runs" / "patch_proj"
    manifest = read_manifest(root / "manifest.jsonl")
    assert len(manifest) == 6
    for run_id, row in manifest.items():
        run = root / run_id
        assert read_json(run / "status.json")["state"] == "done"
        assert read_json(run / "summary.json")["linear_top1"] is not None
        (job_id,) = row["job_ids"]
        assert read_json(run / "status.json")["job_id"] == job_id
        log = run / "logs" / f"{job_id}.out"
        assert log.is_symlink() and log.exists()
    folders = list((root / ".submitit").iterdir())
    again = _cli(args, tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "nothing to submit" in again.stdout and "submitted" not in again.stdout
    assert read_manifest(root / "manifest.jsonl") == manifest
    assert list((root / ".submitit").iterdir()) == folders


def test_requeued_and_timed_out_jobs_resume_without_lost_or_repeated_steps(
        slurm_cluster, tmp_path):  # noqa: F811
    """seed=1 is requeued by `scontrol requeue` while it trains; both hit a 2-minute time
    limit (USR2 45 s before it) and requeue themselves; every step is logged exactly once."""
    # ~3 minutes of training per run (320 steps of a 2-block ViT on 64 tokens, one core),
    # so each run outlives its 2-minute limit at least once whatever the machine's load.
    # fp32, not `auto`: in bf16 on an AVX-512 BF16 CPU the same steps take a third of the
    # time, and the run's length must not hang on the CPU kind the suite runs on.
    work = ["data.num_train=1024", "data.num_val=128", "train.batch_size=64",
            "train.precision=fp32",
            "train.epochs=20", "model.patch_size=4", "model.depth=2", "model.mlp_dim=256",
            "train.knn_every=0",
            "train.knn_memory=256", "train.knn_queries=128", "train.log_every=1",
            "probe.enabled=false"]
    args = ["ablation=none", "seeds=[0,1]", *_slurm_args(slurm_cluster), "wait=false",
            "resources.timeout_min=2", "launcher.signal_delay_s=45",
            "launcher.max_num_timeout=20", *work]
    first = _cli(args, tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    root = tmp_path / "runs" / "none"
    runs = {seed: root / "baseline" / f"seed={seed}" for seed in (0, 1)}
    job = read_manifest(root / "manifest.jsonl")["baseline/seed=1"]["job_ids"][-1]

    deadline = time.monotonic() + 300
    while (read_json(runs[1] / "status.json") or {}).get("step", 0) < 10:
        assert time.monotonic() < deadline, "seed=1 did not start training"
        time.sleep(1)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)

    deadline = time.monotonic() + 900
    while any((read_json(r / "status.json") or {}).get("state") != "done"
              for r in runs.values()):
        assert time.monotonic() < deadline, {s: read_json(r / "status.json")
                                             for s, r in runs.items()}
        time.sleep(3)

    for seed, run in runs.items():
        total = read_json(run / "status.json")["total_steps"]
        steps = [row["step"] for row in _rows(run, "train")]
        assert steps == list(range(1, total + 1)), f"seed={seed}: {steps}"
        events = [row["event"] for row in _rows(run, "event")]
        # Every stop is followed by a resume; a stop that came as SIGKILL (scontrol requeue
        # past KillWait) leaves no "preempted" event, only the "resumed" one after it.
        assert "resumed" in events, f"seed={seed}: {events}"
        assert events.count("resumed") >= events.count("preempted"), f"seed={seed}: {events}"
    again = _cli(args, tmp_path, timeout=120)
    assert again.returncode == 0 and "nothing to submit" in again.stdout
