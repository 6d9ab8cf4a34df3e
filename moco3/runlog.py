"""The job's writer of its run folder: status.json, metrics.jsonl, summary.json, env.json.

Only the main process writes. The file names, states, row kinds and the atomic write are
the run-folder contract (`runfolder`). JSON files are replaced atomically, so a reader never
sees half a file; metrics.jsonl gets one whole line per write, flushed, so a reader sees
whole rows or, after a crash, at most one truncated last line, which the next append closes
off (readers skip it and say so). `rewind` makes the rows exactly-once after a resume.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from moco3.runfolder import layout
from moco3.runfolder.atomic import atomic_open, disk_full, read_json, write_json
from moco3.runfolder.rows import encode, encode_row, is_step_row
from moco3.runfolder.states import RUNNING, STATES


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RowSink(Protocol):
    """Somewhere else the metrics rows go (TensorBoard, W&B, CSV: moco3/loggers.py), fed
    by the RunLog in the order rows are written to metrics.jsonl."""

    def write(self, row: dict[str, Any]) -> None:
        """One row, as appended to metrics.jsonl."""

    def rewind(self, keep: Callable[[dict[str, Any]], bool], step: int, probe: bool) -> None:
        """metrics.jsonl was rewound: rows `keep` rejects are gone, and the rows after
        `step` (pre-training step, or probe epoch when `probe`) will be written again."""

    def close(self) -> None:
        """Flush and release; the job is ending."""


class RunLog:
    """Writes one run's status, metrics, summary and provenance; a no-op off rank 0."""

    def __init__(self, run_dir: Path, is_main: bool = True,
                 sinks: Sequence[RowSink] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.sinks = list(sinks) if is_main else []
        self.status_path = self.run_dir / layout.STATUS
        self.metrics_path = self.run_dir / layout.METRICS
        self.summary_path = self.run_dir / layout.SUMMARY
        self.env_path = self.run_dir / layout.ENV
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return read_json(self.status_path) or {}

    def set_state(self, state: str, **fields: Any) -> None:
        """Update status.json, keeping fields written earlier (job_id, started, ...)."""
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {STATES}")
        if not self.is_main:
            return
        status = self.status()
        if state == RUNNING and status.get("state") != RUNNING:
            status.setdefault("started", now())
        status.update(fields)
        status.update(state=state, updated=now(), host=socket.gethostname())
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if job_id:
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            status["job_id"] = f"{job_id}_{task}" if task and "SLURM_ARRAY_JOB_ID" in os.environ \
                else job_id
        write_json(self.status_path, status)

    # -- metrics -----------------------------------------------------------------------
    def append(self, row: dict[str, Any]) -> None:
        """Append one metrics row as one whole line (after a newline, if a killed writer
        left the last line without one)."""
        if not self.is_main:
            return
        line = encode_row(row)
        try:
            with open(self.metrics_path, "a+b") as f:
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
                f.write(line.encode())
                f.flush()
        except OSError as err:
            if err.errno == 28:  # ENOSPC
                raise disk_full(self.metrics_path) from err
            raise
        for sink in self.sinks:
            sink.write(row)

    def rewind(self, keep: Callable[[dict[str, Any]], bool], step: int = -1,
               probe: bool = False) -> int:
        """Rewrite metrics.jsonl atomically without the rows `keep(row)` rejects (and
        without unreadable lines); the sinks rewind too. Returns how many lines went."""
        if not self.is_main:
            return 0
        for sink in self.sinks:
            sink.rewind(keep, step, probe)
        if not self.metrics_path.exists():
            return 0
        kept, removed = [], 0
        for line in self.metrics_path.read_bytes().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                removed += 1
                continue
            if isinstance(row, dict) and keep(row):
                kept.append(line + b"\n")
            else:
                removed += 1
        if removed:
            with atomic_open(self.metrics_path, "wb") as f:
                f.writelines(kept)
        return removed

    def rewind_to_step(self, step: int) -> int:
        """Remove the step rows of steps after `step` (the checkpoint a run resumes from;
        -1 for a fresh start): the resumed run writes them again. Probe rows and the job's
        interruption events stay (moco3.runfolder.rows)."""
        return self.rewind(lambda row: not (is_step_row(row) and _step(row) > step), step)

    def rewind_probe(self, epoch: int) -> int:
        """Remove the probe rows of probe epochs after `epoch` (its checkpoint)."""
        return self.rewind(lambda row: not (row.get("kind") == "probe" and _step(row) > epoch),
                           epoch, probe=True)

    def close(self) -> None:
        """Close the sinks (the job is ending); metrics.jsonl needs nothing."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    # -- summary and provenance ----------------------------------------------------------
    def read_summary(self) -> dict[str, Any]:
        return read_json(self.summary_path) or {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Merge `summary` into summary.json (the probe adds linear_top1 later)."""
        if not self.is_main:
            return
        merged = read_json(self.summary_path) or {}
        merged.update(summary)
        write_json(self.summary_path, merged)

    def append_env(self, record: dict[str, Any]) -> None:
        """Add one provenance record to env.json (a JSON list, never overwritten: the
        records of earlier starts are kept)."""
        if not self.is_main:
            return
        try:
            records = json.loads(self.env_path.read_text())
        except (OSError, ValueError):
            records = []
        if not isinstance(records, list):
            records = [records]
        records.append(record)
        with atomic_open(self.env_path, "w") as f:
            f.write(encode(records, indent=1) + "\n")


def _step(row: dict[str, Any]) -> float:
    step = row.get("step")
    return step if isinstance(step, int | float) else float("inf")
