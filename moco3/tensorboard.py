"""Run folders' metrics.jsonl as TensorBoard event files, for runs that logged nothing else.

    python -m moco3.tensorboard [--runs-root DIR] [--out DIR]   (installed: moco3-tensorboard)
    tensorboard --logdir DIR

The runs root is given as to every command (moco3.runfolder.cli): `--runs-root DIR` or
`runs_root=DIR`, else $MOCO3_RUNS_ROOT, else ./runs; a bare folder (`moco3-tensorboard
runs`, or one run folder) is accepted too. Every folder below RUNS_ROOT that holds a
metrics.jsonl is a run folder (the folders inside it are not searched). Its scalars go to
<out>/<its path below RUNS_ROOT>/ - the launcher's <ablation>/<run_id> - and its probe's to
.../probe/, named as the live logger names them (moco3.loggers.scalars); out defaults to
<RUNS_ROOT>/tensorboard. metrics.jsonl is read by the contract's rules
(moco3.runfolder.rows.read_rows): a truncated last line is skipped, and of rows repeated by a
folder that an older version resumed, the last of each is kept. Running it again replaces
what it wrote before.
"""

from __future__ import annotations

import moco3

# ruff: noqa: E402 - run as a file, the path must be fixed before anything else is imported
moco3.run_as_script(__file__)

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moco3.loggers import EventFolder, scalars, step_axis
from moco3.runfolder import cli, layout
from moco3.runfolder.rows import read_rows

Row = dict[str, Any]


def find_runs(root: Path, skip: Path) -> list[Path]:
    """The run folders below `root` (and `root` itself if it is one), not inside `skip`."""
    found = []
    for folder, subfolders, files in os.walk(root):
        if layout.METRICS in files:
            found.append(Path(folder))
            subfolders.clear()  # checkpoints/, wandb/, ...: no runs inside a run
        subfolders[:] = sorted(d for d in subfolders
                               if (Path(folder) / d).resolve() != skip.resolve())
    return sorted(found)


def convert_run(run_dir: Path, out: Path) -> tuple[int, list[str]]:
    """Write the scalars of `run_dir`'s metrics.jsonl to `out` (and out/probe), replacing
    the events there. Returns how many scalars, and what was skipped."""
    rows, warnings = read_rows(run_dir / layout.METRICS)
    folders = {"": EventFolder(out), layout.TENSORBOARD_PROBE:
               EventFolder(out / layout.TENSORBOARD_PROBE)}
    count = 0
    try:
        for folder in folders.values():
            folder.rewind(-1)  # what an earlier conversion wrote goes
        for row in sorted(rows, key=_step):
            values = scalars(row)
            if values:
                folders[step_axis(row)].add(int(row["step"]), values)
                count += len(values)
    finally:
        for folder in folders.values():
            folder.close()
    return count, warnings


def _step(row: Row) -> float:
    step = row.get("step")
    return step if isinstance(step, int | float) else float("inf")


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("python -m moco3.tensorboard", "Convert the metrics.jsonl of every "
                        "run folder below the runs root to TensorBoard event files "
                        "(<out>/<ablation>/<run_id>/).")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the event files go (default: RUNS_ROOT/tensorboard)")
    parser.add_argument("pairs", nargs="*", metavar="runs_root=DIR | DIR",
                        help="the runs root as on launch.py's command line, or a bare folder")
    args = parser.parse_intermixed_args(argv)
    folders = [p for p in args.pairs if p.partition("=")[0] != "runs_root"]
    args.pairs = [p for p in args.pairs if p not in folders]
    cli.apply_pairs(parser, args, ("runs_root",))
    if len(folders) > 1 or (folders and args.runs_root):
        parser.error("give the runs root once (--runs-root DIR, runs_root=DIR or DIR).")
    root = layout.runs_root(folders[0] if folders else args.runs_root)
    if not root.is_dir():
        parser.error(f"{root} is not a folder")
    out: Path = args.out if args.out is not None else root / layout.TENSORBOARD
    runs = find_runs(root, skip=out)
    if not runs:
        print(f"no run folders (folders holding {layout.METRICS}) below {root}",
              file=sys.stderr)
        return 1
    for run in runs:
        name = run.relative_to(root)
        dest = out / (name if name != Path(".") else Path(root.resolve().name))
        count, warnings = convert_run(run, dest)
        for warning in warnings:
            print(f"{name}: {layout.METRICS}: {warning}", file=sys.stderr)
        print(f"{name}: {count} scalars -> {dest}")
    print(f"tensorboard --logdir {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
