"""File and folder names of a run folder (see the package docstring for the tree)."""

from __future__ import annotations

CONFIG = "config.yaml"
STATUS = "status.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ENV = "env.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
MANIFEST = "manifest.jsonl"  # in the ablation folder, beside the run folders

LAST_CHECKPOINT = "last.pt"
PROBE_CHECKPOINT = "probe_last.pt"
MILESTONE_CHECKPOINT = "epoch_{epoch:04d}.pt"
