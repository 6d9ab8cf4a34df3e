"""The launcher's side of the run-folder contract (`runfolder`): what a launch does with each
planned run, and the files the launcher - the only writer of config.yaml - writes before
submitting: config.yaml, status.json (pending, with the config's sha256), manifest.jsonl;
plus the lock that keeps two launches of one ablation from both submitting.

    <runs_root>/<ablation>/<run_id>/{config.yaml, status.json, metrics.jsonl, summary.json,
                                    checkpoints/, logs/}
    <runs_root>/<ablation>/manifest.jsonl     one line per run, job ids of every launch
    <runs_root>/<ablation>/.launch.lock       held (fcntl) while a launch plans and submits
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moco3.code_identity import code_identity, same_commit
from moco3.config import changed_keys
from moco3.experiments.grid import PlannedRun, sanitize
from moco3.runfolder import layout
from moco3.runfolder.atomic import read_json, read_json_list, write_json, write_text
from moco3.runfolder.joblock import exclusive, holder
from moco3.runfolder.states import FAILED, IN_PROGRESS, MAY_HAVE_A_JOB, PENDING, RESULTS

MANIFEST = layout.MANIFEST
LOCK = ".launch.lock"


class LaunchError(RuntimeError):
    """A launch that must not go ahead; the message is one sentence."""


@dataclass(frozen=True)
class Decision:
    """What a launch does with one planned run: "submit", "skip" or "refuse", and why;
    `rewrite`: its config.yaml is replaced (only ever for a run no job has worked on)."""

    action: str
    reason: str
    rewrite: bool = False


def check_runs_root(root: Path, write: bool = True) -> None:
    """One sentence when the runs root cannot hold run folders: a file, or not writable."""
    if root.exists() and not root.is_dir():
        raise LaunchError(f"runs_root {root} is a file, not a folder; point runs_root= at a "
                          "folder (it is created if missing).")
    if write:
        existing = next(p for p in (root, *root.absolute().parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise LaunchError(f"runs_root {root} is not writable here ({existing} is "
                              "read-only for this user); choose another runs_root=.")


def ablation_dir(runs_root: str | Path, ablation: str) -> Path:
    """<runs_root>/<ablation>, the name cleaned like a run id; "." and ".." are refused
    (they would name the runs root or its parent)."""
    name = sanitize(ablation)
    if name in ("", ".", ".."):
        raise LaunchError(f"ablation name {ablation!r} is not a folder name inside the runs "
                          "root; use letters, digits and . _ = , -.")
    return Path(runs_root) / name


def config_text(cfg: DictConfig) -> str:
    """The config.yaml the launcher writes for `cfg`: resolved, deterministic."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def has_progress(run_dir: Path) -> bool:
    """True once a job has trained (checkpoint or metrics): its config is then fixed."""
    ckpt = run_dir / layout.CHECKPOINTS
    metrics = run_dir / layout.METRICS
    return (ckpt.is_dir() and any(ckpt.iterdir())) or (metrics.exists()
                                                       and metrics.stat().st_size > 0)


def config_changes(run: PlannedRun, run_dir: Path) -> list[str] | None:
    """How the run folder's config.yaml differs from what this launch composes
    (`key: old -> new` each); None when there is no config.yaml, [] when it is identical."""
    path = run_dir / layout.CONFIG
    if not path.exists():
        return None
    try:
        text = path.read_text()
    except OSError as err:
        return [f"config.yaml unreadable ({err.strerror})"]
    planned = config_text(run.config)
    if text == planned:
        return []
    try:
        old = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except Exception:  # noqa: BLE001 - any YAML error: the file is not what we wrote
        return ["config.yaml is not valid YAML any more"]
    return changed_keys(old, OmegaConf.to_container(run.config, resolve=True)) or [
        "config.yaml: formatting only"]


def code_changed(run_dir: Path) -> str | None:
    """Why the code here differs from the one a failed run last ran, or None when it is the
    same: another commit, else other source files (moco3.code_identity: checkouts,
    installed copies and copies without git alike)."""
    records = read_json_list(run_dir / layout.ENV)
    ran = next((r for r in reversed(records) if r.get("git_commit") or r.get("code_hash")),
               None)
    if ran is None:
        return None
    now = code_identity()
    then_commit, now_commit = ran.get("git_commit"), now.get("git_commit")
    if then_commit and now_commit and not same_commit(then_commit, now_commit):
        return f"the code moved from commit {then_commit[:10]} to {now_commit[:10]}"
    if ran.get("code_hash"):
        if ran["code_hash"] != now["code_hash"]:
            return (f"the source files changed (hash {ran['code_hash'][:10]} -> "
                    f"{now['code_hash'][:10]})")
        return None
    # A record from before code_hash existed: only the dirty flag can tell.
    if then_commit and now_commit and now.get("git_dirty"):
        return "the checkout has uncommitted changes"
    return None


def decide(run: PlannedRun, run_dir: Path, last_job: str | None,
           alive: Callable[[str], bool], retry_failed: bool = False) -> Decision:
    """Skip results and active runs (a live job id, or a live job holding the run folder's
    lock even though its pool is gone); refuse a run whose config.yaml differs from this
    launch's once a job has trained it (named key by key); resubmit a failed run only when
    its config or code changed or with retry_failed; submit the rest."""
    status = read_json(run_dir / layout.STATUS) or {}
    state = status.get("state")
    changes = config_changes(run, run_dir)
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more"
                                          if len(changes) > 6 else "")
        if state in (*RESULTS, *IN_PROGRESS) or has_progress(run_dir):
            what = f"a {state} run" if state else "a started run"
            return Decision("refuse", (
                f"{run.run_id}: the config.yaml of {what} in {run_dir} differs from this "
                f"launch's ({shown}); nothing was rewritten - restore it, launch into "
                "another runs_root=, or delete that folder to rerun it."))
        return Decision("submit", f"config rewritten, no job had trained it ({shown})",
                        rewrite=True)
    if state in RESULTS:
        return Decision("skip", state)
    if state in MAY_HAVE_A_JOB and last_job and alive(last_job):
        return Decision("skip", f"{state} in job {last_job}")
    writer = holder(run_dir)
    if writer:  # its pool or launcher died, the job did not: it trains on, alone
        return Decision("skip", f"still trained by {writer}, which holds its run folder's "
                                "lock; it finishes by itself, so no second job was started")
    if state == FAILED:
        error = status.get("error") or "no error recorded"
        why = "retry_failed=true" if retry_failed else code_changed(run_dir)
        if why is None:
            return Decision("skip", f"{FAILED}: {error}; fix the cause, then launch again "
                                    "with retry_failed=true")
        return Decision("submit", f"retry ({why}) of a run that failed: {error}")
    if state is None:
        return Decision("submit", "new")
    return Decision("submit", f"resume ({state} at step {status.get('step', 0)})")


def write_run(run_dir: Path, cfg: DictConfig, rewrite: bool = False) -> str:
    """config.yaml (atomically; only when absent, or `rewrite` for a run no job has
    started) and status.json `pending` with the file's sha256. Returns that sha256: the
    job refuses a config.yaml that no longer has it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / layout.LOGS).mkdir(exist_ok=True)
    text = config_text(cfg)
    path = run_dir / layout.CONFIG
    if rewrite or not path.exists():
        write_text(path, text)
    sha = text_sha256(path.read_text())
    status = read_json(run_dir / layout.STATUS) or {"step": 0, "total_steps": None}
    # job_id, host and started are left to the job (moco3.runlog fills them when it starts).
    status.update(state=PENDING, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=None,
                  config_sha256=sha)
    write_json(run_dir / layout.STATUS, status)
    return sha


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
    write_text(path, "".join(json.dumps(row, sort_keys=False) + "\n" for row in rows.values()))


def manifest_row(run: PlannedRun, ablation: str, previous: dict[str, Any] | None,
                 launcher: str, config_sha256: str | None = None) -> dict[str, Any]:
    return {
        "run_id": run.run_id, "ablation": ablation, "factors": run.factors, "seed": run.seed,
        "config_hash": run.config_hash,
        "config_sha256": config_sha256 or (previous or {}).get("config_sha256"),
        "job_ids": list((previous or {}).get("job_ids", [])),
        "submitted": (previous or {}).get("submitted"),
        "launcher": launcher, "resources": run.resources,
    }


def launch_lock(directory: Path, ablation: str) -> AbstractContextManager[None]:
    """Hold <directory>/.launch.lock; a second launch of the ablation is refused meanwhile."""
    path = directory / LOCK
    return exclusive(path, lambda holder: LaunchError(
        f"another launch of ablation {ablation} is submitting ({holder} holds {path}); wait "
        "for it to finish, then launch again."))
