"""The state of an ablation's runs, from their run folders and (where present) SLURM.

    python experiments/status.py ablation=patch_proj [runs_root=runs]
    python experiments/status.py                       # every ablation under runs_root
    python experiments/status.py --ablation patch_proj --runs-root runs   # the same

One row per run: state (pending|running[:phase]|done|failed|diverged|preempted), step of
total, last kNN top-1, linear top-1, the precision it trains in, the last job id and, for
SLURM jobs, the queue's state (squeue, else sacct); under the table, each failed run's
error sentence. A pending or running run whose job is gone (and no live job holds its run
folder's lock) is shown as `lost`: launch the ablation again to resume it. Exit status 2
when there is no runs root, 1 when it holds no such ablation.
"""

from __future__ import annotations

import moco3

# ruff: noqa: E402 - run as a file, the path must be fixed before anything else is imported
moco3.run_as_script(__file__)

import argparse
import sys
from pathlib import Path

from moco3.experiments import progress, slurm_jobs
from moco3.experiments.local_pool import pool_alive
from moco3.experiments.rundir import MANIFEST, LaunchError, ablation_dir, check_runs_root
from moco3.runfolder import cli
from moco3.runfolder.joblock import holder
from moco3.runfolder.layout import ENV_RUNS_ROOT, runs_root
from moco3.runfolder.states import FAILED, MAY_HAVE_A_JOB

GONE = "gone"  # not in squeue, and no accounting record


PROG = "python experiments/status.py"


def parse(argv: list[str]) -> argparse.Namespace:
    """`--ablation NAME --runs-root DIR`, or launch.py's `ablation=NAME runs_root=DIR`."""
    p = cli.parser(PROG, "Where an ablation's runs stand: one row per run, from the run "
                   "folders (and squeue/sacct for SLURM jobs); failed runs with their error.")
    p.add_argument("--ablation", default="", help="a study under the runs root (default: all)")
    cli.add_pairs(p, ("runs_root", "ablation"))
    return cli.apply_pairs(p, p.parse_intermixed_args(argv), ("runs_root", "ablation"))


def slurm_states(rows: list[progress.RunRow]) -> dict[str, str] | None:
    """job id -> SLURM state for the rows' SLURM jobs (None when there are none)."""
    ids = [r.job_id for r in rows if r.job_id and not r.job_id.startswith(("local:", "debug:"))]
    if not ids:
        return None
    queue = slurm_jobs.queue_states()
    states = {i: queue[i] for i in ids if i in (queue or {})}
    missing = [i for i in ids if i not in states]
    states.update(slurm_jobs.accounting_states(missing))
    if queue is not None:  # squeue answered: a job in neither list has ended
        states.update({i: GONE for i in ids if i not in states})
    return states


def mark_lost(rows: list[progress.RunRow], slurm: dict[str, str] | None,
              directory: Path | None = None) -> None:
    """A pending/running run whose job no longer exists will not progress by itself. A run
    whose folder lock a live job holds is running, whatever happened to its pool."""
    for r in rows:
        if r.state not in MAY_HAVE_A_JOB or not r.job_id:
            continue
        if directory is not None and holder(directory / r.run_id):
            continue
        if r.job_id.startswith(("local:", "debug:")):
            alive = pool_alive(r.job_id)
        else:
            state = (slurm or {}).get(r.job_id)
            alive = state is None or state not in (*slurm_jobs.ENDED, GONE)
        if not alive:
            r.state = "lost"


def show(directory: Path) -> str:
    rows = progress.read_rows(directory)
    if not rows:
        return f"no runs under {directory}"
    slurm = slurm_states(rows)
    mark_lost(rows, slurm, directory)
    text = progress.format_table(rows, slurm)
    errors = [f"  {r.run_id}: {r.error}" for r in rows if r.state == FAILED and r.error]
    return text + ("\nfailed:\n" + "\n".join(errors) if errors else "")


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    root = runs_root(args.runs_root)
    try:
        check_runs_root(root, write=False)
    except LaunchError as err:
        print(f"{cli.invoked_as(PROG)}: error: {err}", file=sys.stderr)
        return 2
    if not root.is_dir():
        print(f"{cli.invoked_as(PROG)}: error: no runs root at {root.absolute()}; launch a "
              f"study first, or point runs_root= (or ${ENV_RUNS_ROOT}) at the folder that "
              "holds its runs.", file=sys.stderr)
        return 2
    if args.ablation:
        try:
            directory = ablation_dir(root, args.ablation)
        except LaunchError as err:
            print(f"status.py: error: {err}", file=sys.stderr)
            return 2
        if not directory.is_dir():
            known = sorted(p.name for p in root.iterdir() if (p / MANIFEST).exists()) \
                if root.is_dir() else []
            print(f"{cli.invoked_as(PROG)}: no runs of ablation {args.ablation} under {root} "
                  f"(found: {', '.join(known) or 'none'}).", file=sys.stderr)
            return 1
        print(show(directory))
        return 0
    studies = sorted(p for p in root.iterdir() if (p / MANIFEST).exists()) \
        if root.is_dir() else []
    if not studies:
        print(f"no ablations under {root}")
        return 0
    for directory in studies:
        print(f"== {directory.name}")
        print(show(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
