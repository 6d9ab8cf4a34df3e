"""The table of an ablation's runs, read from its run folders (the launcher's live view and
`experiments/status.py`): state, step of total, last kNN top-1, linear top-1, job id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moco3.experiments.rundir import MANIFEST, read_manifest
from moco3.runfolder import layout
from moco3.runfolder.atomic import read_json
from moco3.runfolder.states import DIVERGED, DONE, ENDED, PENDING, RUNNING, UNKNOWN

TAIL_BYTES = 65536  # the last kNN row is near the end of metrics.jsonl


@dataclass
class RunRow:
    run_id: str
    state: str
    step: int | None
    total_steps: int | None
    knn_top1: float | None
    linear_top1: float | None
    job_id: str | None
    phase: str | None = None
    error: str | None = None
    precision: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ENDED


def last_knn(metrics: Path) -> float | None:
    """knn_top1 of the last whole kNN row of metrics.jsonl (reads only its tail)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if '"knn"' not in line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a truncated line or the cut at the start of the tail
        if row.get("kind") == "knn" and row.get("knn_top1") is not None:
            return float(row["knn_top1"])
    return None


def run_ids(ablation_dir: Path) -> list[str]:
    """The manifest's runs, then any other run folder (one with a config.yaml)."""
    ids = list(read_manifest(ablation_dir / MANIFEST))
    known = set(ids)
    configs = sorted(ablation_dir.glob("**/config.yaml"))
    folders = {config.parent for config in configs} - {ablation_dir}
    for config in configs:
        if folders.intersection(config.parent.parents):
            continue  # inside a run folder: W&B's copy (wandb/run-*/files/config.yaml)
        run_id = str(config.parent.relative_to(ablation_dir))
        if run_id not in known and not run_id.startswith("."):
            ids.append(run_id)
            known.add(run_id)
    return ids


def read_row(ablation_dir: Path, run_id: str, job_id: str | None = None) -> RunRow:
    run_dir = ablation_dir / run_id
    status: dict[str, Any] = read_json(run_dir / layout.STATUS) or {}
    summary: dict[str, Any] = read_json(run_dir / layout.SUMMARY) or {}
    knn = last_knn(run_dir / layout.METRICS)
    return RunRow(
        run_id=run_id,
        state=status.get("state") or state_without_status(run_dir, summary),
        step=status.get("step"), total_steps=status.get("total_steps"),
        knn_top1=knn if knn is not None else summary.get("knn_top1"),
        linear_top1=summary.get("linear_top1"),
        job_id=job_id or status.get("job_id"), phase=status.get("phase"),
        error=status.get("error"), precision=status.get("precision") or summary.get("precision"),
    )


def state_without_status(run_dir: Path, summary: dict[str, Any]) -> str:
    """The state of a run folder whose status.json is gone, from what else it holds: a
    probed or diverged summary is a result; otherwise nobody can tell."""
    if summary.get("linear_top1") is not None or summary.get("state") == DIVERGED:
        return DONE if summary.get("state") != DIVERGED else DIVERGED
    if summary or (run_dir / layout.METRICS).exists():
        return UNKNOWN
    return PENDING if (run_dir / layout.CONFIG).exists() else "absent"


def read_rows(ablation_dir: Path, only: list[str] | None = None) -> list[RunRow]:
    manifest = read_manifest(ablation_dir / MANIFEST)
    rows = []
    for run_id in only if only is not None else run_ids(ablation_dir):
        jobs = manifest.get(run_id, {}).get("job_ids") or []
        rows.append(read_row(ablation_dir, run_id, jobs[-1] if jobs else None))
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[RunRow], queue: dict[str, str] | None = None) -> str:
    """A fixed-width table; `queue` (job id -> SLURM state) adds a column when given."""
    header = ["run", "state", "step", "knn", "linear", "precision", "job"]
    if queue is not None:
        header.append("slurm")
    table = [header]
    for r in rows:
        state = r.state if not r.phase or r.state != RUNNING else f"running:{r.phase}"
        step = "-" if r.step is None else f"{r.step}/{r.total_steps or '?'}"
        line = [r.run_id, state, step, _fmt(r.knn_top1), _fmt(r.linear_top1),
                r.precision or "-", r.job_id or "-"]
        if queue is not None:
            line.append(queue.get(r.job_id or "", "-"))
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    text = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return text + "\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
