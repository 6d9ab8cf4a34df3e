"""Checkpoints: atomic save, auto-resume with milestone fallback, strict safe load.

One place names the files, so the writer and the resumer can never drift apart.
Everything saved is tensors, dicts, lists and Python scalars, so it loads with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from moco3.runfolder import layout
from moco3.runfolder.atomic import atomic_open, disk_full, free_bytes

CHECKPOINT_DIR = layout.CHECKPOINTS
LAST = layout.LAST_CHECKPOINT
PROBE_LAST = layout.PROBE_CHECKPOINT
_MILESTONE = layout.MILESTONE_CHECKPOINT
_MILESTONE_RE = re.compile(r"^epoch_(\d{4,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used; the message is one sentence."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def last_path(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / LAST


def milestone_path(run_dir: Path, epoch: int) -> Path:
    return checkpoint_dir(run_dir) / _MILESTONE.format(epoch=epoch)


def size_estimate(state: Any) -> int:
    """Bytes `torch.save(state)` writes at least: the storages of its tensors (each once)."""
    seen: dict[int, int] = {}

    def walk(node: Any) -> None:
        if isinstance(node, torch.Tensor):
            storage = node.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(state)
    return sum(seen.values())


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace.

    Refuses with DiskFullError, before writing, when the device has less free space than
    the checkpoint needs (the larger of the previous file at `path` and the state's
    tensors). A crash mid-write leaves the previous checkpoint intact; a failed write (a
    full disk, which torch's zip writer reports as a RuntimeError) removes its temporary
    file and raises DiskFullError with the same sentence.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    need = max(size_estimate(state), path.stat().st_size if path.exists() else 0)
    free = free_bytes(path.parent)
    if free is not None and free < need:
        raise disk_full(path, need)
    with atomic_open(path, "wb", need_bytes=need) as f:
        torch.save(state, f)


def load(path: Path) -> dict[str, Any]:
    """Load one checkpoint safely; CheckpointError (one sentence) if it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means corrupt
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__})") from err


def milestones(run_dir: Path) -> list[Path]:
    """Milestone checkpoints, newest epoch first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _MILESTONE_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(run_dir: Path, warn: Any = print) -> tuple[dict[str, Any], Path] | None:
    """The newest usable training checkpoint of a run, or None for a fresh run.

    A corrupt last.pt is reported through `warn` and the newest good milestone is used; if
    checkpoints exist but none is readable, CheckpointError says so rather than silently
    restarting from scratch (which would overwrite a run's history).
    """
    candidates = [last_path(run_dir)] if last_path(run_dir).exists() else []
    candidates += milestones(run_dir)
    if not candidates:
        return None
    for path in candidates:
        try:
            return load(path), path
        except CheckpointError as err:
            warn(f"warning: {err}; trying an older checkpoint.")
    raise CheckpointError(
        f"every checkpoint in {checkpoint_dir(run_dir)} is unreadable; move the folder away "
        "to restart this run from scratch."
    )
