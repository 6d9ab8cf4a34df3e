"""Whole-file writes: a reader, a crash or a full disk never leaves a half-written file.

Each write goes to a temporary file beside the target (`.<name>.tmp<pid>`), is flushed and
fsynced, then renamed over the target with os.replace, which is atomic on POSIX. If the
write fails (ENOSPC, a kill signal turned into an exception, ...) the temporary file is
removed and the target keeps its previous content. A process killed with SIGKILL mid-write
leaves its temporary file behind; `remove_stale_temporaries` deletes such files when a job
starts.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from moco3.runfolder.layout import CHECKPOINTS
from moco3.runfolder.rows import encode

_TEMPORARY = re.compile(r"^\..+\.tmp\d+$")


class DiskFullError(OSError):
    """No space left for a run-folder write; the message names the path."""

    def __str__(self) -> str:  # the sentence alone, without "[Errno 28]"
        return self.strerror or super().__str__()


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


FULL_BYTES = 2**20  # a write that fails with less than this left counts as a full disk


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", need_bytes: int | None = None
                ) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` when the block ends without an error.

    A full disk becomes DiskFullError with one sentence naming the device, the free space
    and (`need_bytes`) what the file needs: ENOSPC, and also a RuntimeError raised while
    the device is (nearly) full - torch's zip writer reports a short write that way
    ("unexpected pos ...") instead of raising ENOSPC.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        full = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or (
            isinstance(err, RuntimeError) and (free_bytes(path.parent) or 0) < FULL_BYTES)
        written = tmp.stat().st_size if full and tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if full:  # what it got to write is a floor of what it needs
            raise disk_full(path, max(need_bytes or 0, written) or None) from err
        raise


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use in `folder`'s file system (None: unknown)."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds `path` (its "device" for a user)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def disk_full(path: Path, need_bytes: int | None = None) -> DiskFullError:
    """The one sentence for a full disk: the device, the file, the space left there and
    (when known) the space the file needs."""
    free = free_bytes(path.parent)
    shown = "free space unknown" if free is None else f"{free / 2**20:.1f} MB free"
    if need_bytes:
        shown += f", the {'checkpoint' if path.suffix == '.pt' else 'file'} needs about " \
                 f"{need_bytes / 2**20:.1f} MB"
    return DiskFullError(errno.ENOSPC, f"no space left on {mount_point(path)} to write {path}: "
                         f"{shown}; free some space and launch again")


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    """JSON (non-finite floats as strings), indented, sorted keys."""
    write_text(path, encode(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is absent, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_json_list(path: str | Path) -> list[dict[str, Any]]:
    """The JSON list of objects in `path` (env.json), or [] when absent or unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def remove_stale_temporaries(folder: str | Path, keep: Callable[[Path], bool] = lambda p: False
                             ) -> list[Path]:
    """Delete temporary files that killed writers left in `folder` and its checkpoints/.
    Returns what was removed."""
    removed = []
    for directory in (Path(folder), Path(folder) / CHECKPOINTS):
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if _TEMPORARY.match(path.name) and path.is_file() and not keep(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
