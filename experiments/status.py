"""The state of an ablation's runs, from their run folders and (where present) SLURM.

    python experiments/status.py ablation=patch_proj [runs_root=runs]
    python experiments/status.py                       # every ablation under runs_root

One row per run: state (pending|running[:phase]|done|failed|diverged|preempted), step of
total, last kNN top-1, linear top-1, the last job id and, for SLURM jobs, the queue's state
(squeue, else sacct). A pending or running run whose job is gone is shown as `lost`:
launch the ablation again to resume it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments import progress, slurm_jobs
from experiments.local_pool import pool_alive
from experiments.rundir import MANIFEST, ablation_dir

USAGE = "usage: python experiments/status.py [ablation=NAME] [runs_root=DIR]"
GONE = "gone"  # not in squeue, and no accounting record


def parse(argv: list[str]) -> dict[str, str]:
    """key=value arguments, as on launch.py's command line."""
    args = {"runs_root": "runs", "ablation": ""}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in args:
            raise SystemExit(f"status.py: unknown argument {arg!r}; {USAGE}")
        args[key] = value
    return args


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


def mark_lost(rows: list[progress.RunRow], slurm: dict[str, str] | None) -> None:
    """A pending/running run whose job no longer exists will not progress by itself."""
    for r in rows:
        if r.state not in ("pending", "running") or not r.job_id:
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
    mark_lost(rows, slurm)
    return progress.format_table(rows, slurm)


def main(argv: list[str]) -> int:
    args = parse(argv)
    root = Path(args["runs_root"])
    if args["ablation"]:
        directory = ablation_dir(root, args["ablation"])
        if not directory.is_dir():
            known = sorted(p.name for p in root.iterdir() if (p / MANIFEST).exists()) \
                if root.is_dir() else []
            print(f"status.py: no runs of ablation {args['ablation']} under {root} "
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
    sys.exit(main(sys.argv[1:]))
