"""One writer per run folder: the job holds an exclusive flock on `<run_dir>/.job.lock` for
its whole life. The kernel releases the lock when the process dies, however it dies, so a
held lock means a live job - whatever happened to the pool or launcher that started it.
The file holds "pid N on host H" of the holder, for the sentences that name it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO

from moco3.runfolder.layout import JOB_LOCK


class RunFolderBusy(RuntimeError):
    """Another live job holds the run folder's lock; the message is one sentence."""


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / JOB_LOCK


def _holder_text(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"


@contextmanager
def exclusive(path: Path, busy: Callable[[str], Exception], wait_s: float = 0.0,
              unsupported: Callable[[OSError], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block, with "pid N on host H" written in it.
    When another process holds it (still, after retrying for `wait_s`), raise busy(its
    holder's text). On a file system that refuses locks, the OSError propagates, or, given
    `unsupported`, that is called and the block runs unguarded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy(_holder_text(handle)) from None
                time.sleep(0.1)
            except OSError as err:
                if unsupported is None:
                    raise
                unsupported(err)
                yield
                return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hold(run_dir: str | Path, wait_s: float = 2.0) -> AbstractContextManager[None]:
    """Hold the run folder's lock for the block; RunFolderBusy (naming the holder's pid)
    when a live job holds it. `wait_s`: how long to retry first, since a status probe
    (`holder`) takes the lock in shared mode for an instant."""
    path = lock_path(run_dir)

    def busy(holder: str) -> RunFolderBusy:
        return RunFolderBusy(f"{run_dir} is already being trained by {holder}, which holds "
                             f"{path}; wait for that job to end (or stop it) before starting "
                             "another.")

    def unsupported(err: OSError) -> None:  # a file system without locks (Lustre -o noflock)
        print(f"warning: {path}: the file system refuses locks ({err.strerror}); this job "
              "runs without the one-writer guard.", file=sys.stderr)

    return exclusive(path, busy, wait_s, unsupported)


def holder(run_dir: str | Path) -> str | None:
    """"pid N on host H" of the live job that holds the run folder's lock, or None when no
    process holds it (never started, or its job ended or died)."""
    path = lock_path(run_dir)
    try:
        handle = open(path)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(handle)
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
