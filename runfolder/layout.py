"""File and folder names of a run folder (see the package docstring for the tree), and
where the runs root is when a command is not told."""

from __future__ import annotations

import os
from pathlib import Path

ENV_RUNS_ROOT = "MOCO3_RUNS_ROOT"
DEFAULT_RUNS_ROOT = "runs"

CONFIG = "config.yaml"
STATUS = "status.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ENV = "env.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
JOB_LOCK = ".job.lock"  # flock held by the one job that trains the run folder
MANIFEST = "manifest.jsonl"  # in the ablation folder, beside the run folders
# Written only when train.loggers asks for them (moco3/loggers.py):
TENSORBOARD = "tensorboard"  # event files; probe/ beneath it holds the probe's own axis
TENSORBOARD_PROBE = "probe"
CSV = "csv"  # <kind>.csv, one file per row kind
WANDB_ID = "wandb_id"  # the W&B run id every restart of the job continues
WANDB_SESSION = "wandb_session.json"  # there while a job logs to W&B: where it started

LAST_CHECKPOINT = "last.pt"
PROBE_CHECKPOINT = "probe_last.pt"
MILESTONE_CHECKPOINT = "epoch_{epoch:04d}.pt"


def runs_root(value: str | os.PathLike | None = None) -> Path:
    """The runs root every command uses: `value`, else $MOCO3_RUNS_ROOT, else ./runs."""
    return Path(value or os.environ.get(ENV_RUNS_ROOT) or DEFAULT_RUNS_ROOT)
