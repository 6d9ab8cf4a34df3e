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

from runfolder.layout import CHECKPOINTS
from runfolder.rows import encode

_TEMPORARY = re.compile(r"^\..+\.tmp\d+$")


class DiskFullError(OSError):
    """No space left for a run-folder write; the message names the path."""


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` when the block ends without an error.

    ENOSPC becomes DiskFullError with a sentence naming the folder and the free space.
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
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise disk_full(path) from err
        raise


def disk_full(path: Path) -> DiskFullError:
    """The one sentence for a full disk: which file, and how much space is left there."""
    try:
        stat = os.statvfs(path.parent)
        free = f"{stat.f_bavail * stat.f_frsize / 2**20:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on the device to write {path} "
                         f"({free}); free some space and launch again")


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
