"""Build the report: every ablation's table and figures, from run folders only.

    python analysis/report.py                      # ./runs (or $MOCO3_RUNS_ROOT) -> report/
    python analysis/report.py --runs-root /scratch/runs --out /tmp/report \\
        --ablation batch_size --ablation patch_proj --metric knn_top1

Writes ``<out>/README.md`` (every table and figure of every ablation present, a summary of
run states, and what was skipped or repaired and why), ``<out>/tables/<ablation>.{md,tex,
csv}``, ``<out>/figures/<ablation>_<figure>.{png,pdf}`` and ``<out>/runs.csv`` (the runs
table). Parsed run folders are cached under the runs root and a figure whose data has not
changed is not redrawn, so rebuilding after a few runs moved on is quick. Never imports torch
or moco3: a report can be rebuilt anywhere from copied logs.

Exit codes: 0 report written; 2 nothing to report (missing or empty runs root, or none of
the requested ablations present), with one sentence and no traceback; 1 the report could not
be written.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (python analysis/report.py): import the package, not sibling files
    # (a sibling on sys.path[0] would shadow e.g. PyTables' "tables" for pandas).
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _here:
        sys.path.pop(0)
    sys.path.insert(0, str(_here.parent))

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import pandas as pd  # noqa: E402

from analysis import figuredata, tables, verdicts  # noqa: E402
from analysis.collect import (  # noqa: E402
    ENV_VAR,
    EVAL_KINDS,
    RunsRootError,
    collect,
    resolve_runs_root,
)
from analysis.reference import REFERENCES  # noqa: E402
from runfolder import cli  # noqa: E402

FIGURE_MANIFEST = ".figures.json"
SKIPPED_LIST_CAP = 40


class NothingToReport(Exception):
    """No runs to report on; the message is one sentence for the user."""


@dataclass
class ReportResult:
    readme: Path
    num_runs: int
    ablations: list[str]
    figures_drawn: int = 0
    figures_reused: int = 0
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _ablation_order(names: list[str]) -> list[str]:
    known = [n for n in REFERENCES if n in names]
    return known + sorted(n for n in names if n not in REFERENCES)


def _state_summary(runs: pd.DataFrame) -> str:
    states = ["done", "diverged", "failed", "running", "preempted", "pending", "unknown"]
    extra = sorted(set(runs["state"]) - set(states))
    states = [s for s in states if (runs["state"] == s).any()] + extra
    lines = ["| ablation | runs | " + " | ".join(states) + " | scale |",
             "|---|---:|" + "---:|" * len(states) + "---|"]
    for ablation in _ablation_order(sorted(runs["ablation"].unique())):
        group = runs[runs["ablation"] == ablation]
        counts = group["state"].value_counts()
        scales = ", ".join(sorted({str(s) for s in group["scale"].dropna()})) or "—"
        cells = [str(int(counts.get(s, 0))) for s in states]
        lines.append(f"| [{ablation}](#{_anchor(ablation)}) | {len(group)} | "
                     + " | ".join(cells) + f" | {scales} |")
    counts = runs["state"].value_counts()
    lines.append("| **all** | " + str(len(runs)) + " | "
                 + " | ".join(str(int(counts.get(s, 0))) for s in states) + " | |")
    return "\n".join(lines) + "\n"


PROVENANCE = (("env.torch", "torch"), ("env.device", "device"), ("precision", "precision"),
              ("threads", "threads"), ("env.commit", "commit"))


def provenance_section(runs: pd.DataFrame) -> str:
    """Which versions and hardware produced which runs, per ablation; a study whose runs
    differ in any of them is flagged (its differences may not be the factor's alone)."""
    lines = ["| ablation | " + " | ".join(name for _, name in PROVENANCE) + " | |",
             "|---|" + "---|" * len(PROVENANCE) + "---|"]
    for ablation in _ablation_order(sorted(runs["ablation"].unique())):
        group = runs[runs["ablation"] == ablation]
        cells, mixed = [], []
        for column, name in PROVENANCE:
            values = sorted({_provenance_text(v) for v in group.get(column, pd.Series())
                             if pd.notna(v)})
            cells.append(", ".join(values) or "—")
            if len(values) > 1 or any(" / " in v for v in values):
                mixed.append(name)
        flag = f"**mixes {', '.join(mixed)}**" if mixed else ""
        lines.append(f"| {ablation} | " + " | ".join(cells) + f" | {flag} |")
    return "\n".join(lines) + "\n"


def _provenance_text(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def pixels_note(runs: pd.DataFrame) -> str:
    """kNN of the encoder against the same kNN on raw pixels: has it learned more?

    Per level (the mean over its finished seeds) as well as over all runs: a study's levels
    include deliberately bad settings (a stress lr, m = 0), which pull the overall mean
    down without saying anything about what the method learns at a good one."""
    done = runs[runs["state"] == "done"]
    if "knn_top1_pixels" not in done or done["knn_top1_pixels"].dropna().empty:
        return ""
    pixels = done["knn_top1_pixels"].dropna().mean()
    encoder = done["knn_top1"].dropna()
    levels = done.dropna(subset=["knn_top1"]).groupby("factor_label")["knn_top1"].mean()
    per_level = ""
    if len(levels) > 1:
        best, worst = levels.idxmax(), levels.idxmin()
        clear = int(((levels - pixels).round(1) >= 10).sum())  # as printed, to 0.1 point
        per_level = (f" Per level (mean over seeds): best `{best}` {levels[best]:.1f} % "
                     f"({levels[best] - pixels:+.1f}), worst `{worst}` {levels[worst]:.1f} % "
                     f"({levels[worst] - pixels:+.1f}); {clear} of {len(levels)} levels are 10 "
                     "or more points above the pixels.")
    return (f"kNN top-1 of the pre-trained encoders {encoder.min():.1f}-{encoder.max():.1f} % "
            f"(mean {encoder.mean():.1f}) against {pixels:.1f} % for the same kNN on raw "
            f"pixels of the same images: {encoder.mean() - pixels:+.1f} points.{per_level}\n\n")


def _anchor(ablation: str) -> str:
    return "ablation-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in ablation)


def _skipped_runs(runs: pd.DataFrame) -> list[str]:
    """Runs that contribute no accuracy to any table, and why."""
    out = []
    for _, run in runs.iterrows():
        state = run["state"]
        if state == "done" or (state == "unknown" and run["has_summary"]):
            continue
        where = f"{run['ablation']}/{run['run_id']}"
        if state == "diverged":
            step = run["diverged_step"]
            out.append(f"{where}: diverged at step {step if pd.notna(step) else '?'} "
                       "(instability counted, no accuracy)")
        elif state in ("running", "preempted"):
            phase = run.get("phase")
            phase = f" ({phase})" if isinstance(phase, str) and phase else ""
            out.append(f"{where}: {state}{phase} at step {run['step']}; not finished")
        elif state == "failed":
            error = run["error"] if isinstance(run["error"], str) and run["error"] else \
                "no error recorded"
            out.append(f"{where}: failed: {error}")
        elif state == "pending" or not run["num_metrics_rows"]:
            out.append(f"{where}: {state}, nothing logged yet")
        else:
            error = f" ({run['error']})" if isinstance(run["error"], str) and run["error"] else ""
            out.append(f"{where}: {state}{error}")
    return out


def _grouped_warnings(warnings: list[str]) -> list[str]:
    """Identical problems in many runs -> one line with a count and one example path."""
    groups: dict[str, list[str]] = {}
    for warning in warnings:
        path, sep, message = warning.partition(": ")
        name = path.rsplit("/", 1)[-1]
        groups.setdefault(f"{name}: {message}" if sep else warning, []).append(path)
    lines = []
    for message, paths in groups.items():
        if len(paths) == 1:
            lines.append(f"`{paths[0]}`: {message.partition(': ')[2] or message}")
        else:
            lines.append(f"{message} — {len(paths)} runs, e.g. `{paths[0]}`")
    return lines


def _load_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _draw(items: list[tuple[figuredata.FigureSpec, Path]], formats: tuple[str, ...]) -> None:
    """Draw the figures that changed. Serial: on the shared two-core machines we measured,
    worker processes made a 35-figure build slower, not faster."""
    if not items:
        return
    # Plotting libraries load only when something is drawn: an unchanged report and the
    # quick exits stay quick.
    from analysis import plots

    plots.apply_style()
    for spec, stem in items:
        plots.save(plots.render(spec), stem, formats)


def build_report(
    runs_root: str | os.PathLike | None = None,
    out: str | os.PathLike = "report",
    ablations: list[str] | None = None,
    metric: str | None = None,
    x: str = "epoch",
    formats: tuple[str, ...] | None = None,
    use_cache: bool = True,
) -> ReportResult:
    """Write the report; raises NothingToReport (one sentence) when there is nothing."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    root = resolve_runs_root(runs_root)
    try:
        collection = collect(root, ablations=ablations, kinds=EVAL_KINDS, use_cache=use_cache)
    except RunsRootError as exc:
        raise NothingToReport(
            f"{exc}; point --runs-root (or ${ENV_VAR}) at the folder that holds "
            "<ablation>/<run_id>/ run folders."
        ) from None
    runs = collection.runs
    timings["collect"] = time.perf_counter() - t0
    if runs.empty:
        if ablations:
            present = sorted(p.name for p in root.iterdir()
                             if p.is_dir() and not p.name.startswith("."))
            raise NothingToReport(
                f"None of the ablations {', '.join(ablations)} has run folders under "
                f"{str(root)!r}; present: {', '.join(present) or 'none'}."
            )
        raise NothingToReport(
            f"No run folders under {str(root)!r}; launch some with "
            "`python experiments/launch.py ablation=<name>` or point --runs-root (or "
            f"${ENV_VAR}) elsewhere."
        )

    formats = formats or figuredata.FORMATS
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    manifest_path = out / "figures" / FIGURE_MANIFEST
    old_manifest = _load_manifest(manifest_path)
    manifest: dict[str, dict] = {}
    result = ReportResult(out / "README.md", len(runs), [], warnings=collection.warnings,
                          timings=timings)

    names = _ablation_order(sorted(runs["ablation"].unique()))
    result.ablations = names
    missing = sorted(set(ablations or ()) - set(names))
    knn_all = collection.steps
    knn_all = knn_all[knn_all["kind"] == "knn"] if len(knn_all) else knn_all
    knn_by_ablation = dict(tuple(knn_all.groupby("ablation"))) if len(knn_all) else {}
    sections: list[str] = []
    figure_notes: list[str] = []
    to_draw: list[tuple[figuredata.FigureSpec, Path]] = []
    t_tables = t_specs = 0.0
    for ablation in names:
        t = time.perf_counter()
        ab_runs = runs[runs["ablation"] == ablation]
        table = tables.ablation_table(runs, ablation, metric)
        (out / "tables" / f"{ablation}.md").write_text(tables.to_markdown(table))
        (out / "tables" / f"{ablation}.tex").write_text(tables.to_latex(table))
        (out / "tables" / f"{ablation}.csv").write_text(tables.to_csv(table))
        t_tables += time.perf_counter() - t

        t = time.perf_counter()
        knn = knn_by_ablation.get(ablation, pd.DataFrame(columns=["run_dir", x, "knn_top1"]))
        figures_md = []
        kinds = set()
        for spec in figuredata.figure_specs(ablation, ab_runs, knn, collection, table, x=x):
            digest = spec.digest()
            files = [f"{spec.name}.{fmt}" for fmt in formats]
            # Each file remembers the digest of the data it shows: a PDF left over from a
            # --no-pdf build is never taken for current.
            drawn = old_manifest.get(spec.name, {}).get("files", {})
            if not isinstance(drawn, dict):
                drawn = {}
            if all(drawn.get(f) == digest and (out / "figures" / f).exists() for f in files):
                result.figures_reused += 1
            elif spec.load():
                to_draw.append((spec, out / "figures" / spec.name))
            else:
                figure_notes.extend(f"{spec.name}: {note}" for note in spec.notes)
                continue
            kinds.add(spec.kind)
            manifest[spec.name] = {"ablation": ablation,
                                   "files": {**drawn, **dict.fromkeys(files, digest)}}
            links = " · ".join(f"[{f.rsplit('.', 1)[1].upper()}](figures/{f})" for f in files)
            figures_md.append(
                f"![{spec.title}](figures/{spec.name}.{formats[0]})\n\n*{spec.caption}* "
                f"({links})\n"
            )
            figure_notes.extend(f"{spec.name}: {note}" for note in spec.notes)
        if "knn" not in kinds:
            figure_notes.append(f"{ablation}: no kNN-curve figure (no kNN rows logged yet)")
        if "grad" not in kinds:
            figure_notes.append(f"{ablation}: no gradient-norm figure (no gradient norms "
                                "logged yet)")
        t_specs += time.perf_counter() - t

        findings = verdicts.verdict_table(ablation, ab_runs, table.metric)
        if not findings.empty:
            findings.to_csv(out / "tables" / f"{ablation}_verdicts.csv", index=False)
        header = f"## {ablation}\n\n<a id=\"{_anchor(ablation)}\"></a>\n"
        setting = (f"Paper setting: {table.setting}.\n" if table.setting
                   else "No paper numbers for this ablation.\n")
        sections.append("\n".join([
            header, setting, tables.to_markdown(table),
            f"Table files: [Markdown](tables/{ablation}.md) · [LaTeX](tables/{ablation}.tex) · "
            f"[CSV](tables/{ablation}.csv)\n",
            *([f"### The paper's findings here\n\n{pixels_note(ab_runs)}"
               f"{verdicts.to_markdown(findings)}\n{verdicts.RULE}\n"]
              if not findings.empty else []),
            *figures_md,
        ]))
    t = time.perf_counter()
    _draw(to_draw, formats)
    result.figures_drawn = len(to_draw)
    timings.update(tables=t_tables, figure_data=t_specs, draw=time.perf_counter() - t)

    # A figure of an earlier build that this build would no longer draw is removed; with
    # --ablation, the figures of the ablations not looked at stay as they were.
    for name, entry in old_manifest.items():
        if name in manifest:
            continue
        if ablations and entry.get("ablation") not in names:
            manifest[name] = entry
            continue
        for f in entry.get("files", []):
            (out / "figures" / f).unlink(missing_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1))

    t = time.perf_counter()
    runs.to_csv(out / "runs.csv", index=False)
    skipped = _skipped_runs(runs)
    readme = [
        "# MoCo v3 reproduction report\n",
        f"Runs root: `{collection.root.resolve()}` · {len(runs)} runs in {len(names)} "
        f"ablation(s) · built {_dt.datetime.now().isoformat(timespec='seconds')}.\n",
        "Accuracies are top-1 percentages. The paper's numbers are ImageNet-1k linear-probe "
        "accuracies of ViT-B (R-50 for MoCo v1's mechanisms), tagged [V] verified, "
        "[D] derived, [R] recalled. All runs, one row each: [runs.csv](runs.csv).\n",
        "## Run states\n",
        _state_summary(runs),
        "## Provenance\n",
        "What produced the runs (their env.json and status.json): torch version, GPU or "
        "CPU kind, training precision, CPU threads, code commit. A study whose runs differ in "
        "any of these is flagged: part of its differences may come from that, not from the "
        "factor.\n",
        provenance_section(runs),
        *sections,
        "## Skipped and repaired\n",
    ]
    if missing:
        readme.append(f"* Requested ablations with no run folders: {', '.join(missing)}.")
    readme.append(f"* Runs that add no accuracy to the tables: {len(skipped)}"
                  + (":" if skipped else "."))
    readme.extend(f"  * {s}" for s in skipped[:SKIPPED_LIST_CAP])
    if len(skipped) > SKIPPED_LIST_CAP:
        readme.append(f"  * ... and {len(skipped) - SKIPPED_LIST_CAP} more (see runs.csv)")
    readme.append(f"* Problems found while reading run folders: {len(collection.warnings)}"
                  + (":" if collection.warnings else "."))
    readme.extend(f"  * {w}" for w in _grouped_warnings(collection.warnings))
    readme.append(f"* Figures left out or trimmed: {len(figure_notes)}"
                  + (":" if figure_notes else "."))
    readme.extend(f"  * {n}" for n in figure_notes)
    (out / "README.md").write_text("\n".join(readme) + "\n")
    timings["readme"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.parser("python analysis/report.py", "Turn run folders into the paper's "
                        "tables and the instability figures.")
    parser.add_argument("--out", default="report", help="report folder (default: report)")
    parser.add_argument("--ablation", action="append", default=None, metavar="NAME",
                        help="only this ablation (repeatable; default: every one present)")
    parser.add_argument("--metric", choices=tables.METRICS, default=None,
                        help="accuracy compared with the paper and ranked (default: "
                             "linear_top1 where runs have it, else knn_top1)")
    parser.add_argument("--x", choices=("epoch", "images_seen"), default="epoch",
                        help="x axis of the kNN curves (default: epoch)")
    parser.add_argument("--no-pdf", action="store_true", help="write PNG figures only")
    parser.add_argument("--no-cache", action="store_true",
                        help="parse every run folder again (ignore and do not write the cache)")
    parser.add_argument("--timings", action="store_true", help="print how long each stage took")
    cli.add_pairs(parser, ("runs_root", "ablation"))
    args = parser.parse_intermixed_args(argv)
    return cli.apply_pairs(parser, args, ("runs_root", "ablation"), repeatable=("ablation",))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = build_report(
            args.runs_root, args.out, ablations=args.ablation, metric=args.metric, x=args.x,
            formats=("png",) if args.no_pdf else None, use_cache=not args.no_cache,
        )
    except NothingToReport as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"Could not write the report to {args.out!r}: {exc.strerror or exc}.",
              file=sys.stderr)
        return 1
    problems = f"; {len(result.warnings)} problem(s) listed in it" if result.warnings else ""
    print(f"Report written to {result.readme} ({result.num_runs} runs, "
          f"{len(result.ablations)} ablation(s), {result.figures_drawn} figure(s) drawn, "
          f"{result.figures_reused} unchanged{problems}).")
    if args.timings:
        print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
