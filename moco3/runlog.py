"""The run folder writer: status.json, metrics.jsonl and summary.json (DESIGN.md contract).

Only the main process writes. JSON files are replaced atomically (temporary file +
os.replace) so a reader never sees half a file; metrics.jsonl is append-only and every row
goes out in one write() of one whole line followed by a flush, so a reader sees whole records
or, after a crash, at most one truncated last line (which readers skip and report).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

STATES = ("pending", "running", "done", "failed", "diverged", "preempted")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_clean(obj), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The object in `path`, or None when it is absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class RunLog:
    """Writes one run's status, metrics and summary; a no-op on non-main ranks."""

    def __init__(self, run_dir: Path, is_main: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.status_path = self.run_dir / "status.json"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.summary_path = self.run_dir / "summary.json"
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def status(self) -> dict[str, Any]:
        return read_json(self.status_path) or {}

    def set_state(self, state: str, **fields: Any) -> None:
        """Update status.json, keeping fields written earlier (job_id, started, ...)."""
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {STATES}")
        if not self.is_main:
            return
        status = self.status()
        if state == "running" and status.get("state") != "running":
            status.setdefault("started", _now())
        status.update(fields)
        status.update(state=state, updated=_now(), host=socket.gethostname())
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if job_id:
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            status["job_id"] = f"{job_id}_{task}" if task and "SLURM_ARRAY_JOB_ID" in os.environ \
                else job_id
        write_json_atomic(self.status_path, status)

    def append(self, row: dict[str, Any]) -> None:
        """Append one metrics row as one whole line."""
        if not self.is_main:
            return
        line = json.dumps(_clean(row), sort_keys=False) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def read_summary(self) -> dict[str, Any]:
        return read_json(self.summary_path) or {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Merge `summary` into summary.json (the probe adds linear_top1 later)."""
        if not self.is_main:
            return
        merged = read_json(self.summary_path) or {}
        merged.update(summary)
        write_json_atomic(self.summary_path, merged)
