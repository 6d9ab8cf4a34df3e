"""Regenerate the committed results pages: run studies at a scale, then their report.

    python experiments/results.py            # four studies, the stability ladder, its edge
    python experiments/results.py --studies patch_proj negatives --seeds 3
    python experiments/results.py --studies stability_ladder --ladder-seeds 5 \
        --out docs/results/mini/fp32-stability_ladder 'only=batch_size=2048,' train.precision=fp32

Each study is `launch.py ablation=<study> scale=<scale> launcher=local seeds=[0..N-1]`
(`--seeds N`, 5 by default; the stability ladder, a search rather than a comparison, takes
`--ladder-seeds`, 2 by default) into one runs root; a study that stopped resumes where it
stopped (the launcher skips finished runs and resumes the others). Then `report.py` writes
the tables, figures and verdicts into the results folder, and RUN.md beside them records
what produced them: the exact commands, the CPU (model, instruction-set kind, cores), the
precision `auto` chose, the commit, and each study's wall time (of this invocation; a
resumed study's time is the sum over invocations, also recorded). Not part of CI: it takes hours.

One code state per page: it refuses to start from a checkout with uncommitted changes (a
results page rewritten by an earlier invocation does not count: it is output, not code), and
to write the page when the runs come from several commits or from a dirty tree (a verdict
could then measure the code, not the factor), unless told why with
`--allow-mixed-code "REASON"`; the reason is written into RUN.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from moco3.gitstate import git_state
from moco3.runfolder.atomic import read_json_list, write_text
from moco3.runfolder.layout import ENV

REPO = Path(__file__).resolve().parents[1]
TIMES = "study_times.json"  # in the runs root: wall seconds per study, over invocations
TICK_S = 30.0  # how often a running study's wall time so far is saved into TIMES
STUDIES = ["patch_proj", "negatives", "momentum", "batch_size", "stability_ladder",
           "stability_edge"]
LADDERS = {"stability_ladder"}  # searches: fewer seeds (--ladder-seeds)


def cpu_description() -> str:
    """CPU model, instruction-set kind and cores, as every speed figure names them."""
    code = ("from moco3.provenance import cpu_model; from moco3.precision import cpu_kind, "
            "resolve_precision; import torch, os; print(f'{cpu_model()} ({cpu_kind()}), "
            "{len(os.sched_getaffinity(0))} cores; precision auto -> '"
            "f'{resolve_precision(\"auto\", torch.device(\"cpu\"))}')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or "unknown CPU"


def run_minutes(runs_csv: Path, study: str) -> str:
    """The study's training steps, from its runs' step timers: a lower bound of its wall time
    on this machine with nothing else running (kNN evaluations, checkpoints and the probe are
    not timed; the wall time also counts other load)."""
    if not runs_csv.exists():
        return "-"
    with runs_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r["ablation"] == study and r["train_seconds"]]
    if not rows:
        return "-"
    seconds = [float(r["train_seconds"]) for r in rows]
    threads = max(1, int(float(rows[0].get("threads") or 1)))
    parallel = max(1, len(os.sched_getaffinity(0)) // threads)
    return (f"{sum(seconds) / parallel / 60:.1f} min ({len(seconds)} runs, {parallel} at a "
            f"time; one run {min(seconds) / 60:.1f}-{max(seconds) / 60:.1f} min)")


def run_precisions(runs_csv: Path, study: str) -> str:
    """The precisions the study's runs recorded (runs.csv), which need not be what `auto`
    picks on this CPU: a study may force one (train.precision=fp32)."""
    if not runs_csv.exists():
        return "-"
    with runs_csv.open() as f:
        found = {r["precision"] for r in csv.DictReader(f)
                 if r["ablation"] == study and r.get("precision")}
    return ", ".join(sorted(found)) or "-"


def run_commits(runs_root: Path, studies: list[str]) -> dict[str, list[str]]:
    """commit (first 10 characters, "+dirty" with uncommitted changes) -> the runs of
    `studies` that one of their starts (env.json) ran at it."""
    out: dict[str, list[str]] = {}
    for study in studies:
        for env in sorted((runs_root / study).rglob(ENV)):
            run = env.parent.relative_to(runs_root).as_posix()
            for record in read_json_list(env):
                if record.get("git_commit"):
                    commit = record["git_commit"][:10] + ("+dirty" if record.get("git_dirty")
                                                          else "")
                    if run not in out.setdefault(commit, []):
                        out[commit].append(run)
    return out


def code_problem(commits: dict[str, list[str]]) -> str:
    """"" when every run ran one clean commit; else one sentence saying what is mixed."""
    dirty = [c for c in commits if c.endswith("+dirty")]
    if len(commits) <= 1 and not dirty:
        return ""
    parts = [f"{c} ({len(runs)} runs, e.g. {runs[0]})" for c, runs in sorted(commits.items())]
    what = "uncommitted changes" if len(commits) == 1 else f"{len(commits)} code states"
    return f"the runs come from {what}: {'; '.join(parts)}"


def wait_ticking(process: subprocess.Popen, on_tick: Callable[[float], None],
                 tick_s: float = TICK_S) -> tuple[float, int]:
    """Wait for `process`, calling on_tick(seconds so far) every `tick_s`; returns (wall
    seconds, exit code)."""
    start = time.monotonic()
    while True:
        try:
            code = process.wait(timeout=tick_s)
            return time.monotonic() - start, code
        except subprocess.TimeoutExpired:
            on_tick(time.monotonic() - start)


def run_study(study: str, scale: str, runs_root: Path, extra: list[str],
              on_tick: Callable[[float], None] = lambda seconds: None,
              ) -> tuple[list[str], float, int]:
    """Launch one study and wait for it, reporting its wall time so far to on_tick as it
    runs; returns (command, wall seconds, exit code)."""
    command = [sys.executable, str(REPO / "experiments" / "launch.py"), f"ablation={study}",
               f"scale={scale}", "launcher=local", f"runs_root={runs_root}", *extra]
    print(f"== {study}: {shlex.join(command[1:])}", flush=True)
    seconds, code = wait_ticking(subprocess.Popen(command), on_tick)
    return command, seconds, code


def timed_study(study: str, scale: str, runs_root: Path, extra: list[str],
                times: dict[str, list[float]], times_path: Path) -> tuple[list[str], int]:
    """run_study, with this invocation's wall time appended to times[study] and saved to
    `times_path` as the study runs, not only at its end: an invocation stopped from outside
    (a killed session, a reboot) keeps the time it spent, to a tick. Returns (command, exit
    code)."""
    times.setdefault(study, []).append(0.0)

    def save(seconds: float) -> None:
        times[study][-1] = round(seconds, 1)
        write_text(times_path, json.dumps(times, indent=1))

    command, seconds, code = run_study(study, scale, runs_root, extra, on_tick=save)
    save(seconds)
    return command, code


def results_command(args: argparse.Namespace, out: Path) -> str:
    """This invocation as a user reruns it: the page's own studies, seeds and folders (a page
    of some studies, or beside the default folder, is not what a bare `make results` makes)."""
    words = ["python", "experiments/results.py", "--scale", args.scale, "--studies",
             *args.studies, "--seeds", str(args.seeds)]
    if LADDERS & set(args.studies):
        words += ["--ladder-seeds", str(args.ladder_seeds)]
    words += ["--runs-root", args.runs_root, "--out", os.path.relpath(out, REPO), *args.extra]
    return shlex.join(words)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="mini")
    p.add_argument("--studies", nargs="+", default=STUDIES)
    p.add_argument("--seeds", type=int, default=5, help="seeds per level (0 .. N-1)")
    p.add_argument("--ladder-seeds", type=int, default=2,
                   help=f"seeds per level of {', '.join(sorted(LADDERS))}")
    p.add_argument("--runs-root", default="runs-results")
    p.add_argument("--out", default=None, help="default: docs/results/<scale>")
    p.add_argument("--allow-mixed-code", metavar="REASON", default=None,
                   help="write the page although the checkout is dirty or the runs mix "
                        "commits; the reason goes into RUN.md")
    p.add_argument("extra", nargs="*", help="more launch.py overrides (key=value)")
    args = p.parse_args(argv)
    if args.allow_mixed_code is not None and not args.allow_mixed_code.strip():
        p.error("--allow-mixed-code needs a reason, e.g. --allow-mixed-code \"docs-only "
                "commits between the studies\"")
    if min(args.seeds, args.ladder_seeds) < 1:
        p.error("--seeds and --ladder-seeds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    reason = (args.allow_mixed_code or "").strip()
    git = git_state(REPO)
    if git.get("git_dirty") and not reason:
        print("results.py: error: the checkout has uncommitted changes, so the runs would not "
              "come from any commit; commit them first, or pass --allow-mixed-code \"REASON\".",
              file=sys.stderr)
        return 2
    runs_root = Path(args.runs_root).resolve()
    out = Path(args.out or REPO / "docs" / "results" / args.scale)
    runs_root.mkdir(parents=True, exist_ok=True)
    times_path = runs_root / TIMES
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    commands = []
    for study in args.studies:
        seeds = args.ladder_seeds if study in LADDERS else args.seeds
        extra = [f"seeds=[{','.join(map(str, range(seeds)))}]", *args.extra]
        command, code = timed_study(study, args.scale, runs_root, extra, times, times_path)
        commands.append(("python experiments/launch.py " + shlex.join(command[2:])
                         .replace(str(runs_root), args.runs_root), code))
        if code != 0:
            print(f"{study} did not finish (exit {code}); run this command again to resume it.",
                  file=sys.stderr)
            return code
    # One code state per study: each study's comparisons are within its own runs, so its
    # runs must share one clean commit; studies may differ (one study's design can depend on
    # another's result, as patch_proj's edge lr on the stability ladder).
    commits = {study: run_commits(runs_root, [study]) for study in args.studies}
    mixed = "; ".join(f"{study}: {problem}" for study in args.studies
                      if (problem := code_problem(commits[study])))
    if mixed and not reason:
        print(f"results.py: error: {mixed}; relaunch the other runs at one commit, or pass "
              "--allow-mixed-code \"REASON\" to write the page anyway (the reason is "
              "recorded).", file=sys.stderr)
        return 2
    report = [sys.executable, str(REPO / "analysis" / "report.py"), "--runs-root",
              str(runs_root), "--out", str(out), *sum((["--ablation", s] for s in args.studies),
                                                      [])]
    if subprocess.run(report).returncode != 0:
        return 1
    # `git` stays the checkout's state at the start: the report has just rewritten the page,
    # which would read as uncommitted changes now.
    lines = [
        f"# How these results were made ({args.scale} scale)\n",
        f"* CPU: {cpu_description()}",
        f"* Page written by the report at commit {git.get('git_commit', 'unknown')}"
        + (" (with uncommitted changes)" if git.get("git_dirty") else ""),
        f"* Date: {time.strftime('%Y-%m-%d')}",
        *([f"* Code state: {mixed}; written anyway because: {reason}"] if mixed else
          [f"* Code state: the checkout had uncommitted changes; written anyway because: "
           f"{reason}"] if git.get("git_dirty") else
          ["* Code state: every run of a study ran that study's one clean commit (the "
           "table's commit column)"]),
        f"* Regenerate from scratch: `{results_command(args, out)}` (or the commands below, "
        "then the report); a stopped study resumes where it stopped.\n",
        "Wall time is this machine's clock over the study's launches, and counts whatever else"
        " ran meanwhile. The runs' training time is their training steps alone (each run's"
        " step timer), summed and divided by the runs trained at once: a lower bound of what"
        " the study costs on the machine alone, which also spends time on the kNN evaluations"
        " (a large part where they are dense, as every 5 steps), checkpoints and the probe.\n",
        "| study | runs' commit | runs' precision | command | wall time | runs' training time |",
        "|---|---|---|---|---:|---:|",
    ]
    for study, (command, _) in zip(args.studies, commands, strict=True):
        spent = times.get(study, [])
        wall = f"{sum(spent) / 60:.1f} min" + (f" over {len(spent)} invocations"
                                               if len(spent) > 1 else "")
        study_commits = ", ".join(sorted(commits[study])) or "not recorded"
        lines.append(f"| {study} | {study_commits} | {run_precisions(out / 'runs.csv', study)} "
                     f"| `{command}` | {wall} | "
                     f"{run_minutes(out / 'runs.csv', study)} |")
    lines.append(f"\nReport: `python analysis/report.py --runs-root {args.runs_root} --out "
                 f"{os.path.relpath(out, REPO)}" + "".join(f" --ablation {s}"
                                                          for s in args.studies) + "`")
    write_text(out / "RUN.md", "\n".join(lines) + "\n")
    print(f"results in {out} (README.md, RUN.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
