"""A job that could not start: its failure written into its run folder.

Once a job runs, it records its own failures (moco3.job). Before that nothing would: when
the job's process cannot import its code (a module shadowed by a folder on PYTHONPATH, a
broken environment), or the local pool that was to start it dies first, the run stayed
`pending`, then showed as `lost`, and the real error sat in a log outside the run folder.
Whoever sees such a failure - the job's entry point, the local pool, the launcher - writes
it here instead: status.json `failed` with the error as one sentence, and (where it is not
already there) the output in the run's logs/. Standard library and runfolder only: this is
the code that must still work when the job's own code does not.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from moco3.runfolder import layout
from moco3.runfolder.atomic import read_json, write_json
from moco3.runfolder.joblock import RunFolderBusy, hold
from moco3.runfolder.states import FAILED, PENDING

MAX_ERROR = 400  # characters of status.json's error sentence (as moco3.job writes them)
# The last line of a Python traceback: "ModuleNotFoundError: No module named 'x'".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")


def last_error_line(output: str) -> str:
    """The line of `output` that says what went wrong: a traceback's last line, else the
    last non-empty line; "" for no output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return (errors or lines or [""])[-1]


def record_start_failure(run_dir: str | Path, error: str, output: str | None = None,
                         log_name: str | None = None) -> bool:
    """Mark a run that no job has started (status.json still `pending`, as the launcher
    wrote it) `failed` with `error`; with `output`, append that to logs/<log_name>. Nothing
    when a live job holds the run folder or the run has moved on (its job recorded its own
    state). Returns whether it wrote."""
    run_dir = Path(run_dir)
    if not (run_dir / layout.STATUS).is_file():
        return False
    sentence = error if len(error) <= MAX_ERROR else error[:MAX_ERROR - 3] + "..."
    try:
        with hold(run_dir, wait_s=0.5):
            status = read_json(run_dir / layout.STATUS) or {}
            if status.get("state") != PENDING:
                return False
            if output and log_name:
                logs = run_dir / layout.LOGS
                logs.mkdir(exist_ok=True)
                with open(logs / log_name, "a") as log:
                    log.write(output if output.endswith("\n") else output + "\n")
            status.update(state=FAILED, error=sentence,
                          updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            write_json(run_dir / layout.STATUS, status)
            return True
    except RunFolderBusy:  # a live job trains it: that job's state is the truth
        return False
