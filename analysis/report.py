"""Build the report: every ablation's table and figures, from run folders only.

    python analysis/report.py                      # ./runs (or $MOCO3_RUNS_ROOT) -> report/
    python analysis/report.py --runs-root /scratch/runs --out /tmp/report \\
        --ablation batch_size --ablation patch_proj --metric knn_top1

Writes ``<out>/README.md`` (every table and figure of every ablation present, a summary of
run states, and what was skipped or repaired and why), ``<out>/tables/<ablation>.{md,tex,
csv}``, ``<out>/figures/<ablation>_<figure>.{png,pdf}`` and ``<out>/runs.csv`` (the runs
table). Parsed run folders are cached under the runs root and a figure whose data has not
changed is not redrawn, so rebuilding after a few runs moved on is quick. Never imports torch
or moco3's job code: a report can be rebuilt anywhere from copied logs. The report is built in a
temporary folder, ``<out>/.building-<pid>``, and swapped in when complete: a build that fails leaves
the previous report as it was, and no half-written one.

Exit codes: 0 report written; 2 nothing to report (missing or empty runs root, or none of
the requested ablations present), with one sentence and no traceback; 1 the report could not
be written.
"""

from __future__ import annotations

import moco3

# ruff: noqa: E402 - run as a file, the path must be fixed before anything else is imported
moco3.run_as_script(__file__)

import argparse
import datetime as _dt
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from moco3.analysis import figuredata, tables, verdicts
from moco3.analysis.collect import (
    ENV_VAR,
    EVAL_KINDS,
    Collection,
    RunsRootError,
    collect,
    cpus,
    resolve_runs_root,
)
from moco3.analysis.reference import REFERENCES
from moco3.analysis.study import load_study
from moco3.runfolder import cli
from moco3.runfolder.states import (
    DISPLAY_ORDER,
    DIVERGED,
    DONE,
    FAILED,
    IN_PROGRESS,
    PENDING,
    UNKNOWN,
)

FIGURE_MANIFEST = ".figures.json"
SKIPPED_LIST_CAP = 40
MAX_DRAWERS = 8  # figure-drawing processes (at most one per CPU this process may use)
MIN_FIGURES_PER_DRAWER = 4  # below that, starting a process costs more than it saves


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
    states = list(DISPLAY_ORDER)
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


def floors_note(runs: pd.DataFrame, knn: pd.DataFrame | None = None) -> str:
    """kNN of the trained encoders against two floors: the same kNN on raw pixels, and on the
    same encoder at step 0 (random init: what the architecture gives without learning).

    Overall and per level (the mean over its finished seeds): a study's levels include
    deliberately bad settings (a stress lr, m = 0), which pull the overall mean down without
    saying anything about what the method learns at a good one."""
    done = runs[runs["state"] == DONE].dropna(subset=["knn_top1"]).set_index("run_dir")
    floors: dict[str, pd.Series] = {}  # name -> floor per run (indexed by run_dir)
    if "knn_top1_pixels" in done and done["knn_top1_pixels"].notna().any():
        floors["pixels"] = done["knn_top1_pixels"]
    if knn is not None and len(knn) and "step" in knn:
        init = knn[(knn["step"] == 0) & knn["run_dir"].isin(done.index)]
        init = init.dropna(subset=["knn_top1"]).groupby("run_dir")["knn_top1"].last()
        if len(init):
            floors["random init"] = init
    if done.empty or not floors:
        return ""
    encoder = done["knn_top1"]
    margins = {name: (encoder - floor.reindex(done.index)) for name, floor in floors.items()}
    parts = [f"{floors[name].reindex(m.dropna().index).mean():.1f} % for {name} "
             f"({m.mean():+.1f} points)" for name, m in margins.items()]
    text = (f"kNN top-1 of the pre-trained encoders {encoder.min():.1f}-{encoder.max():.1f} % "
            f"(mean {encoder.mean():.1f}) against " + " and ".join(parts) + ": the same kNN "
            "on raw pixels of the same images, and on the same encoder at step 0.")
    level = done["factor_label"]
    if level.nunique() > 1:
        means = encoder.groupby(level).mean().sort_values(ascending=False)
        by_level = {name: m.groupby(level).mean().reindex(means.index)
                    for name, m in margins.items()}
        clear = [f"{int((m.round(1) >= 10).sum())} of {len(means)} levels 10 or more points "
                 f"over {name}" for name, m in by_level.items()]  # as printed, to 0.1 point
        lines = ["| level | kNN top-1 | " + " | ".join(f"over {n}" for n in floors) + " |",
                 "|---|---:|" + "---:|" * len(floors)]
        lines += [f"| `{label}` | {means[label]:.1f} | "
                  + " | ".join(f"{m[label]:+.1f}" for m in by_level.values()) + " |"
                  for label in means.index]
        text += f" Per level (mean over seeds; {', '.join(clear)}):\n\n" + "\n".join(lines)
    return text + "\n\n"


def _anchor(ablation: str) -> str:
    return "ablation-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in ablation)


def _skipped_runs(runs: pd.DataFrame) -> list[str]:
    """Runs that contribute no accuracy to any table, and why."""
    out = []
    for _, run in runs.iterrows():
        state = run["state"]
        if state == DONE or (state == UNKNOWN and run["has_summary"]):
            continue
        where = f"{run['ablation']}/{run['run_id']}"
        if state == DIVERGED:
            step = run["diverged_step"]
            out.append(f"{where}: diverged at step {step if pd.notna(step) else '?'} "
                       "(instability counted, no accuracy)")
        elif state in IN_PROGRESS:
            phase = run.get("phase")
            phase = f" ({phase})" if isinstance(phase, str) and phase else ""
            out.append(f"{where}: {state}{phase} at step {run['step']}; not finished")
        elif state == FAILED:
            error = run["error"] if isinstance(run["error"], str) and run["error"] else \
                "no error recorded"
            out.append(f"{where}: failed: {error}")
        elif state == PENDING or not run["num_metrics_rows"]:
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
    """Draw the figures that changed: on worker processes forked from this one (the
    plotting libraries already imported) when there are CPUs and figures enough, else here.
    matplotlib holds the GIL, so threads would not help."""
    if not items:
        return
    # Plotting libraries load only when something is drawn: an unchanged report and the
    # quick exits stay quick.
    from moco3.analysis import plots

    workers = min(cpus(), MAX_DRAWERS, len(items) // MIN_FIGURES_PER_DRAWER)
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("fork")
        # Many-panel figures first, so that no worker is left with a big one at the end.
        items = sorted(items, key=lambda item: -len(item[0].params.get("panels") or ()))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(plots.render_to_files, [spec for spec, _ in items],
                          [stem for _, stem in items], [formats] * len(items)))
        return
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
    final = Path(out)
    created = not final.exists()
    out = _staging(final)
    try:
        result = _write_report(out, collection, ablations, metric, x, formats, timings)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if created:
            shutil.rmtree(final, ignore_errors=True)  # only our own, now empty, folder
        raise
    _swap_in(out, final)
    result.readme = final / "README.md"
    timings["total"] = time.perf_counter() - t0
    return result


REPORT_ENTRIES = ("README.md", "runs.csv", "tables", "figures")  # what a build owns in --out
STAGING_PREFIX = ".building-"  # <out>/.building-*: a build in progress, or a killed one's


def _staging(final: Path) -> Path:
    """A fresh folder inside `final` (same file system: the swap is renames) to build the
    report in, holding a copy of the previous build's figures (an unchanged figure is
    reused, not redrawn). The leftovers of builds that were killed are removed."""
    final.mkdir(parents=True, exist_ok=True)
    for stale in final.glob(f"{STAGING_PREFIX}*"):
        if stale.is_dir() and not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    staging = final / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    if (final / "figures").is_dir():
        shutil.copytree(final / "figures", staging / "figures")
    return staging


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _swap_in(staging: Path, final: Path) -> None:
    """Replace the report's own entries of `final` by the staged ones (anything else a
    user keeps in `final` stays), then remove the staging and the replaced entries."""
    old = staging / ".replaced"
    old.mkdir()
    for name in REPORT_ENTRIES:
        if (final / name).exists():
            os.replace(final / name, old / name)
        if (staging / name).exists():
            os.replace(staging / name, final / name)
    shutil.rmtree(staging, ignore_errors=True)


def _write_report(out: Path, collection: Collection, ablations: list[str] | None,
                  metric: str | None, x: str, formats: tuple[str, ...],
                  timings: dict[str, float]) -> ReportResult:
    """Every file of the report, into `out` (the staging folder)."""
    runs = collection.runs
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
    study_notes: list[str] = []
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
        figures_md = _ablation_figures(out, ablation, ab_runs, knn, collection, table, x,
                                       formats, old_manifest, manifest, to_draw,
                                       figure_notes, result)
        t_specs += time.perf_counter() - t

        study = load_study(collection.root / ablation)
        if study.problem:
            study_notes.append(f"{ablation}: findings not judged: {study.problem}")
        elif not study.recorded:
            study_notes.append(f"{ablation}: no study.json, so no findings to judge (launched "
                               "before the launcher recorded them); launch the study again "
                               "to record them (finished runs are skipped)")
        findings = verdicts.verdict_table(study, ab_runs)
        if not findings.empty:
            findings.to_csv(out / "tables" / f"{ablation}_verdicts.csv", index=False)
        header = f"## {ablation}\n\n<a id=\"{_anchor(ablation)}\"></a>\n"
        setting = (f"Paper setting: {table.setting}.\n" if table.setting
                   else "No paper numbers for this ablation.\n")
        if study.design:  # what else moves with the factor: needed to read any comparison
            setting += f"\nDesign: {study.design}\n"
        sections.append("\n".join([
            header, setting, tables.to_markdown(table),
            f"Table files: [Markdown](tables/{ablation}.md) · [LaTeX](tables/{ablation}.tex) · "
            f"[CSV](tables/{ablation}.csv)\n",
            *([f"### Floors\n\n{floors}"] if (floors := floors_note(ab_runs, knn)) else []),
            *([f"### Findings\n\n{verdicts.to_markdown(findings)}\n{verdicts.RULE}\n"]
              if not findings.empty else []),
            *figures_md,
        ]))
    t = time.perf_counter()
    _draw(to_draw, formats)
    result.figures_drawn = len(to_draw)
    timings.update(tables=t_tables, figure_data=t_specs, draw=time.perf_counter() - t)

    _prune_figures(out, old_manifest, manifest, ablations, names)
    manifest_path.write_text(json.dumps(manifest, indent=1))

    t = time.perf_counter()
    _write_readme(out, collection, names, missing, sections, study_notes, figure_notes)
    timings["readme"] = time.perf_counter() - t
    return result


def _ablation_figures(out: Path, ablation: str, ab_runs: pd.DataFrame, knn: pd.DataFrame,
                      collection: Collection, table: tables.AblationTable, x: str,
                      formats: tuple[str, ...], old_manifest: dict, manifest: dict,
                      to_draw: list, figure_notes: list[str], result: ReportResult
                      ) -> list[str]:
    """The figures of one ablation: reused when their data did not change, else queued
    in `to_draw`; records them in `manifest`. Returns their README Markdown."""
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
    return figures_md


def _prune_figures(out: Path, old_manifest: dict, manifest: dict,
                   ablations: list[str] | None, names: list[str]) -> None:
    """Remove the files of old figures this build no longer draws."""
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


def _write_readme(out: Path, collection: Collection, names: list[str], missing: list[str],
                  sections: list[str], study_notes: list[str], figure_notes: list[str]
                  ) -> None:
    """runs.csv and README.md: states, provenance, the ablation sections and what was
    skipped, repaired or left out."""
    runs = collection.runs
    runs.to_csv(out / "runs.csv", index=False)
    skipped = _skipped_runs(runs)
    readme = [
        "# MoCo v3 reproduction report\n",
        f"Runs root: `{collection.root.resolve()}` · {len(runs)} runs in {len(names)} "
        f"ablation(s) · built {_dt.datetime.now().isoformat(timespec='seconds')}.\n",
        "Accuracies are top-1 percentages. The paper's numbers are ImageNet-1k linear-probe "
        "accuracies of ViT-B (R-50 for MoCo v1's mechanisms), tagged [V] verified, "
        "[D] derived, [R] recalled. Our linear top-1 is the probe's final epoch; its best "
        "epoch on the evaluation set (what the official main_lincls reports, selected on the "
        "data it is scored on) is `linear_top1_best` in runs.csv. All runs, one row each: "
        "[runs.csv](runs.csv).\n",
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
    if study_notes:
        readme.append(f"* Findings not judged: {len(study_notes)}:")
        readme.extend(f"  * {n}" for n in study_notes)
    readme.append(f"* Figures left out or trimmed: {len(figure_notes)}"
                  + (":" if figure_notes else "."))
    readme.extend(f"  * {n}" for n in figure_notes)
    (out / "README.md").write_text("\n".join(readme) + "\n")


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
