"""The launcher's side of the run-folder contract (DESIGN.md): what each planned run needs,
and the files the launcher writes before submitting - config.yaml, status.json (pending),
manifest.jsonl - plus the lock that keeps two launches of one ablation from both submitting.

    <runs_root>/<ablation>/<run_id>/{config.yaml, status.json, metrics.jsonl, summary.json,
                                    checkpoints/, logs/}
    <runs_root>/<ablation>/manifest.jsonl     one line per run, job ids of every launch
    <runs_root>/<ablation>/.launch.lock       held (fcntl) while a launch plans and submits
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.grid import PlannedRun, sanitize
from moco3.config import ConfigError, config_hash, load_run_config
from moco3.runlog import read_json, write_json_atomic

FINISHED = ("done", "diverged")  # results: never run again, never overwritten
MANIFEST = "manifest.jsonl"
LOCK = ".launch.lock"


class LaunchError(RuntimeError):
    """A launch that must not go ahead; the message is one sentence."""


@dataclass(frozen=True)
class Decision:
    """What a launch does with one planned run: "submit", "skip" or "refuse", and why."""

    action: str
    reason: str


def ablation_dir(runs_root: str | Path, ablation: str) -> Path:
    return Path(runs_root) / sanitize(ablation)


def stored_hash(run_dir: Path) -> str | None:
    """config_hash of the config.yaml in `run_dir` (None when there is none)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    try:
        cfg = load_run_config(path)
    except ConfigError:
        return "unreadable"
    return cfg.meta.config_hash or config_hash(cfg)


def has_progress(run_dir: Path) -> bool:
    """True once a job has trained (checkpoint or metrics): its config is then fixed."""
    ckpt = run_dir / "checkpoints"
    metrics = run_dir / "metrics.jsonl"
    return (ckpt.is_dir() and any(ckpt.iterdir())) or (metrics.exists()
                                                       and metrics.stat().st_size > 0)


def decide(run: PlannedRun, run_dir: Path, last_job: str | None,
           alive: Callable[[str], bool]) -> Decision:
    """Skip finished and active runs, refuse a changed config, submit the rest."""
    status = read_json(run_dir / "status.json") or {}
    state = status.get("state")
    old = stored_hash(run_dir)
    if old is not None and old != run.config_hash:
        if state in FINISHED or has_progress(run_dir):
            what = f"a {state} run" if state else "a started run"
            return Decision("refuse", (
                f"{run.run_id}: its folder {run_dir} holds {what} of a different configuration "
                f"(config hash {old}, now {run.config_hash}); it is kept as it is - launch into "
                "another runs_root=, or delete that folder to rerun it."))
    if state in FINISHED:
        return Decision("skip", state)
    if state in ("pending", "running") and last_job and alive(last_job):
        return Decision("skip", f"{state} in job {last_job}")
    if state is None:
        return Decision("submit", "new")
    return Decision("submit", f"resume ({state} at step {status.get('step', 0)})")


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """config.yaml, atomically: the only input of the job."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    tmp = run_dir / f".config.yaml.tmp{os.getpid()}"
    OmegaConf.save(cfg, tmp, resolve=True)
    os.replace(tmp, run_dir / "config.yaml")


def mark_pending(run_dir: Path, total_steps: int | None = None) -> None:
    """status.json says pending until the job starts; fields of earlier attempts are kept."""
    # job_id, host and started are left to the job (moco3.runlog fills them when it starts).
    status = read_json(run_dir / "status.json") or {"step": 0, "total_steps": total_steps}
    status.update(state="pending", updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=None)
    write_json_atomic(run_dir / "status.json", status)


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """run_id -> its manifest row (the last row wins; a truncated line is skipped)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "run_id" in row:
            rows[row["run_id"]] = row
    return rows


def write_manifest(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Rewrite the manifest atomically, one line per run."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(row, sort_keys=False) + "\n" for row in rows.values()))
    os.replace(tmp, path)


def manifest_row(run: PlannedRun, ablation: str, previous: dict[str, Any] | None,
                 launcher: str) -> dict[str, Any]:
    return {
        "run_id": run.run_id, "ablation": ablation, "factors": run.factors, "seed": run.seed,
        "config_hash": run.config_hash,
        "job_ids": list((previous or {}).get("job_ids", [])),
        "submitted": (previous or {}).get("submitted"),
        "launcher": launcher, "resources": run.resources,
    }


@contextmanager
def launch_lock(directory: Path, ablation: str) -> Iterator[None]:
    """Hold <directory>/.launch.lock; a second launch of the ablation is refused meanwhile."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LaunchError(
                f"another launch of ablation {ablation} is submitting ({holder} holds {path}); "
                "wait for it to finish, then launch again."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
