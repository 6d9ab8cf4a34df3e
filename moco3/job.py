"""One job: a run folder's pre-training, then its linear probe, every failure recorded.

    run_job(run_dir, config_sha256=..., threads=...)

What the launchers (local pool, SLURM through submitit, the debug launcher, a single run by
hand) all call. It reads `<run_dir>/config.yaml` and nothing else, after checking that the
file is the one the launcher wrote (its sha256), appends a provenance record to env.json,
and resumes from the run folder's checkpoints. Whatever raises - set-up, resume, training,
the probe - ends the run in state `failed` with a one-sentence `error` in status.json (and
a `failed` event row), so `status.py` and the report can say what went wrong; if the disk
is full, the run's own temporary files are removed and the state written again.

The main process holds the run folder's lock (moco3.runfolder.joblock) from before it writes
anything until it returns: a second job on the same folder - a relaunch while an orphaned
job still trains, say - is refused with RunFolderBusy and writes nothing.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from moco3.config import ConfigError, load_run_config
from moco3.runfolder import layout
from moco3.runfolder.atomic import DiskFullError, remove_stale_temporaries
from moco3.runfolder.joblock import RunFolderBusy, hold
from moco3.runfolder.states import DONE, FAILED, PREEMPTED
from moco3.runlog import RunLog

MAX_ERROR = 400  # characters of an error sentence in status.json


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def error_sentence(err: BaseException) -> str:
    """One line: the exception's type and the first line of its message, shortened."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    sentence = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return sentence if len(sentence) <= MAX_ERROR else sentence[:MAX_ERROR - 3] + "..."


def record_failure(runlog: RunLog, err: BaseException) -> None:
    """status.json says `failed` and why; a full disk first gets the run's temporary files
    removed. Never raises (the original exception is what the caller re-raises)."""
    error = error_sentence(err)
    for attempt in range(2):
        try:
            runlog.set_state(FAILED, error=error)
            runlog.append({"kind": "event", "step": runlog.status().get("step", 0),
                           "epoch": None, "images_seen": None, "event": "failed",
                           "error": error})
            return
        except (OSError, DiskFullError) as write_error:
            if attempt == 0:
                remove_stale_temporaries(runlog.run_dir)  # our own, e.g. a half checkpoint
                continue
            print(f"could not record the failure in {runlog.status_path}: "
                  f"{error_sentence(write_error)}", file=sys.stderr)


def verify_config(run_dir: Path, config_sha256: str | None) -> None:
    """The config.yaml a job reads is the one its launcher wrote, byte for byte."""
    path = run_dir / layout.CONFIG
    if config_sha256 and path.is_file() and file_sha256(path) != config_sha256:
        raise ConfigError(f"{path} was edited after the launcher wrote it; restore it, or "
                          "launch again (the launcher names the changed keys).")


def run_job(run_dir: str | Path, config_sha256: str | None = None, threads: int | None = None,
            log: Callable[[str], None] = print,
            on_row: Callable[[dict[str, Any]], None] | None = None,
            on_start: Callable[[], None] | None = None) -> str:
    """Pre-train the run in `run_dir` (resuming if it can) and probe it when it is done.
    Returns the final state (done, diverged, preempted). Raises what failed, after
    recording it in the run folder."""
    from moco3 import dist  # torch loads here, not when a launcher pickles the job

    run_dir = Path(run_dir)
    runlog = RunLog(run_dir, is_main=True)
    with ExitStack() as lock:
        try:
            info = dist.init_distributed()
            if info.rank == 0:
                lock.enter_context(hold(run_dir))  # RunFolderBusy: another job writes here
        except (RunFolderBusy, KeyboardInterrupt, SystemExit):
            raise  # RunFolderBusy: the other job's run, so record nothing in it
        except BaseException as err:
            record_failure(runlog, err)
            raise
        return _run_locked(run_dir, config_sha256, threads, log, on_row, on_start, info)


def _run_locked(run_dir: Path, config_sha256: str | None, threads: int | None,
                log: Callable[[str], None], on_row: Callable[[dict[str, Any]], None] | None,
                on_start: Callable[[], None] | None, info: Any) -> str:
    """run_job's body, with the run folder's lock held by the main process."""
    runlog = RunLog(run_dir, is_main=info.rank == 0)
    try:
        verify_config(run_dir, config_sha256)
        cfg = load_run_config(run_dir / layout.CONFIG)
        if runlog.is_main:
            remove_stale_temporaries(run_dir)
        from moco3 import dist
        from moco3.probe import probe
        from moco3.provenance import environment_record
        from moco3.train import train

        hosts = dist.rank_hosts()  # every rank, before only the main one writes
        runlog.append_env(environment_record(info.world_size, hosts))
        if on_start is not None:
            on_start()
        state = train(cfg, run_dir, log=log, on_row=on_row, threads=threads)
        if state == DONE and cfg.probe.enabled:
            probe(cfg, run_dir, log=log)
        return state
    except KeyboardInterrupt:
        if runlog.is_main:
            try:
                runlog.set_state(PREEMPTED, error="interrupted")
            except OSError:
                pass  # the interrupt is what matters; the last checkpoint is intact
        raise
    except SystemExit:
        raise
    except BaseException as err:
        if runlog.is_main:
            record_failure(runlog, err)
        raise
