"""The job of one run as a submitit callable, and as a command for the local pool.

    python -m moco3.experiments.job RUN_DIR [--config-sha256 HEX] [--threads N]

Both run `moco3.job.run_job`: pre-train (resuming from the run folder's checkpoints), then
the linear probe, every failure recorded in the run folder. `checkpoint()` - submitit's
hook, called inside the signal handler on global rank 0 - only hands back the
resubmission: the training loop itself checkpoints on the signal, and the hook must not
save or call collectives.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import submitit

from moco3.experiments.start_failure import last_error_line, record_start_failure
from moco3.runfolder.states import RESULTS


class RunJob:
    """Pre-train the run in `run_dir` (resuming if it can) and probe it when it is done.
    `config_sha256`: the config.yaml the launcher wrote; `threads`: torch threads for a CPU
    run (a resumed run keeps the count it started with)."""

    def __init__(self, run_dir: str | Path, config_sha256: str | None = None,
                 threads: int | None = None) -> None:
        self.run_dir = str(Path(run_dir).resolve())
        self.config_sha256 = config_sha256
        self.threads = threads

    def __call__(self) -> str:
        try:
            from moco3.job import run_job  # the launcher pickles this object without torch
        except Exception as err:
            # The job's code cannot be imported, so run_job cannot record why: say it in the
            # run folder (the traceback goes to this process's log, which logs/ holds).
            record_start_failure(self.run_dir, "the job could not start: "
                                 f"{type(err).__name__}: {err}".strip())
            raise
        return run_job(self.run_dir, self.config_sha256, self.threads)

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job; it resumes from the checkpoint train saved on the signal."""
        return submitit.helpers.DelayedSubmission(
            RunJob(self.run_dir, self.config_sha256, self.threads))

    def __repr__(self) -> str:
        return f"RunJob({self.run_dir!r})"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m moco3.experiments.job",
                                description="Run one run folder's job here.")
    p.add_argument("run_dir")
    p.add_argument("--config-sha256", default=None,
                   help="sha256 of the config.yaml the launcher wrote (refuse an edited one)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of a CPU run")
    args = p.parse_args(argv)
    from moco3.runfolder.joblock import RunFolderBusy

    try:
        state = RunJob(args.run_dir, args.config_sha256, args.threads)()
    except RunFolderBusy as err:  # another live job trains this folder: not this job's error
        print(f"job refused: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # recorded in the run folder; the traceback goes to this log
        traceback.print_exc()
        # Not moco3.job's error_sentence: the failure may be that moco3.job cannot be imported.
        print(f"job failed: {last_error_line(''.join(traceback.format_exception_only(err)))}",
              file=sys.stderr)
        return 1
    return 0 if state in RESULTS else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
