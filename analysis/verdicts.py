"""A verdict on each finding a study declares, by standard tests over its seeds.

A finding (declared in the ablation YAML's `findings:` block, recorded by the launcher in the
study's study.json, read here by ``moco3.analysis.study``) compares group A with group B - each a
selection of factor levels - on one metric, and says which sign the paper found A - B to
have. Over the groups' seeds (analysis/stats.py, scipy.stats):

    diff, 95 % CI   mean(A) - mean(B) and its t interval
    test            paired t-test by seed when A and B hold the same seeds once each (seed s
                    gives both runs the same initial weights and data order: moco3/train.py
                    seeds torch with it before building the model, moco3/loader.py draws each
                    epoch's order from it), Welch's t-test otherwise
    g               Hedges' g (the difference in pooled seed stds, small-sample corrected)
    Holm p          the test's p adjusted by Holm over the study's findings
    reproduced      Holm p < 0.05 and the paper's sign
    contradicted    Holm p < 0.05 and the other sign
    inconclusive    otherwise (also with fewer than 2 seeds in a group)

and the power of the study: MDD80, the smallest true difference the test finds with 80 %
probability at the observed seed std and n (at alpha / m, Holm's strictest step, m the
findings judged); the seeds per group that would find the paper's own difference at that
std; and what that many seeds cost at the study's paper scale in GPU-hours (the dry run's
cost model, recorded per cell in study.json). Both accuracies (kNN and linear) are shown
for every accuracy finding; the declared metric decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moco3.analysis import stats
from moco3.analysis.collect import factor_column
from moco3.analysis.reference import normalize_label
from moco3.analysis.study import Finding, Study
from moco3.runfolder.states import DONE, TRAINED

ACCURACY = ("linear_top1", "knn_top1")
COLUMNS = ["finding", "metric", "A", "B", "diff", "ci_low", "ci_high", "g", "test", "p",
           "p_holm", "mdd80", "paper_diff", "seeds_needed", "gpu_hours", "verdict", "other",
           "code"]


def _select(runs: pd.DataFrame, factors: dict[str, str]) -> pd.DataFrame:
    mask = pd.Series(True, index=runs.index)
    for name, label in factors.items():
        column = factor_column(name)
        if column not in runs.columns:
            return runs.iloc[0:0]
        mask &= runs[column].map(normalize_label) == normalize_label(label)
    return runs[mask]


@dataclass
class Groups:
    """The runs of A and B that count for one metric, and whether they pair by seed."""

    a: pd.DataFrame
    b: pd.DataFrame
    metric: str

    def values(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(A values, B values, paired): aligned by seed when paired."""
        a = self.a.dropna(subset=[self.metric])
        b = self.b.dropna(subset=[self.metric])
        seeds_a, seeds_b = list(a["seed"]), list(b["seed"])
        paired = (len(seeds_a) >= 2 and sorted(seeds_a) == sorted(seeds_b)
                  and len(set(seeds_a)) == len(seeds_a))
        if paired:
            a, b = a.sort_values("seed"), b.sort_values("seed")
        return (a[self.metric].to_numpy(float), b[self.metric].to_numpy(float), paired)


def _groups(runs: pd.DataFrame, finding: Finding, metric: str) -> Groups:
    # Accuracy counts finished runs; instability counts diverged ones too.
    pool = runs[runs["state"] == DONE] if metric in ACCURACY or metric.startswith(
        "linear_") else runs[runs["state"].isin(TRAINED)]
    return Groups(_select(pool, finding.a), _select(pool, finding.b), metric)


def _summary(values: np.ndarray) -> str:
    if not len(values):
        return "—"
    if len(values) < 2:
        return f"{values.mean():.2f} (n=1)"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n={len(values)})"


def code_state(runs: pd.DataFrame) -> str:
    """"" when the runs come from one clean commit; else what differs (a verdict over
    mixed code may measure the code, not the factor)."""
    commits: set[str] = set()
    for value in runs.get("env.commit", pd.Series(dtype=object)).dropna():
        commits.update(part.strip() for part in str(value).split(" / "))
    if not commits:
        return "no commit recorded"
    notes = []
    bare = {c.removesuffix("+dirty") for c in commits}
    if len(bare) > 1:
        notes.append(f"{len(bare)} commits ({', '.join(sorted(bare))})")
    if any(c.endswith("+dirty") for c in commits):
        notes.append("uncommitted changes")
    return "mixed code: " + "; ".join(notes) if notes else ""


def _test_row(values: tuple[np.ndarray, np.ndarray, bool]) -> dict:
    a, b, paired = values
    if not len(a) or not len(b):
        return {}
    out = {k: float(v) for k, v in stats.compare(a, b, paired).items()}
    out["test"] = (stats.PAIRED if paired else stats.WELCH) if min(len(a), len(b)) >= 2 \
        else "none (n < 2)"
    out["n"] = min(len(a), len(b))
    out["paired"] = paired
    return out


def _other_metric(runs: pd.DataFrame, finding: Finding) -> str:
    """The other accuracy beside an accuracy finding: diff [95 % CI], p (not corrected)."""
    if finding.metric not in ACCURACY:
        return ""
    other = ACCURACY[1 - ACCURACY.index(finding.metric)]
    if other not in runs.columns:
        return ""
    row = _test_row(_groups(runs, finding, other).values())
    if not row:
        return f"{other}: —"
    text = f"{other}: {_num(row['diff'])}"
    if not math.isnan(row["p"]):
        text += f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}], p {_p(row['p'])}"
    return text


def verdict_table(study: Study, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per declared finding with runs in both groups: the COLUMNS above."""
    rows, tested = [], []
    for finding in study.findings:
        if finding.metric not in runs.columns:
            continue
        groups = _groups(runs, finding, finding.metric)
        if groups.a.empty or groups.b.empty:
            continue  # a level this scale does not have, or not run yet
        a, b, paired = groups.values()
        test = _test_row((a, b, paired))
        if not test:
            continue
        rows.append({
            "finding": finding.claim + ("" if finding.in_paper else " (not in the paper)"),
            "metric": finding.metric, "A": _summary(a), "B": _summary(b),
            "other": _other_metric(runs, finding),
            "code": code_state(pd.concat([groups.a, groups.b])),
            "paper_diff": finding.paper_diff, "_finding": finding, **test,
        })
        tested.append(not math.isnan(test["p"]))
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    p_holm = stats.holm(np.array([r["p"] for r in rows]))
    m = max(1, sum(tested))
    for row, adjusted in zip(rows, p_holm, strict=True):
        finding = row.pop("_finding")
        row["p_holm"] = float(adjusted)
        row["verdict"] = str(stats.words(adjusted, row["diff"], finding.sign))
        paired, n, sd = row["paired"], row["n"], row["sd"]
        row["mdd80"] = stats.mdd(sd, n, paired, stats.ALPHA / m) if n >= 2 else math.nan
        needed = (stats.seeds_needed(finding.paper_diff, sd, paired, stats.ALPHA / m)
                  if finding.paper_diff is not None else None)
        row["seeds_needed"] = needed
        row["gpu_hours"] = (study.paper_gpu_hours(finding) * needed
                            if needed is not None else math.nan)
        row["alpha"] = stats.ALPHA / m
    return pd.DataFrame(rows)


def _num(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:+.2f}"


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "—"
    if value == 0:
        return "0 (no seed noise)"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.0e}"


def _hours(value: float) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _needed(row: pd.Series) -> str:
    if row["paper_diff"] is None or (isinstance(row["paper_diff"], float)
                                     and math.isnan(row["paper_diff"])):
        return "— (no paper diff)"
    if row["seeds_needed"] is None or (isinstance(row["seeds_needed"], float)
                                       and math.isnan(row["seeds_needed"])):
        return f"> {stats.MAX_SEEDS}" if row["sd"] > 0 else "—"
    return f"{int(row['seeds_needed'])} (for {row['paper_diff']:+.1f})"


def to_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return ""
    lines = ["| finding | metric | A | B | A − B [95 % CI] | g | test | p | Holm p | MDD80 | "
             "seeds for the paper's diff | GPU-h at paper scale | verdict | other metric | "
             "code |",
             "|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---|---|---|"]
    for _, row in frame.iterrows():
        ci = ("" if math.isnan(row["ci_low"])
              else f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]")
        g = "—" if math.isnan(row["g"]) else f"{row['g']:+.2f}"
        mdd = "—" if math.isnan(row["mdd80"]) else f"{row['mdd80']:.2f}"
        lines.append(
            f"| {row['finding']} | {row['metric']} | {row['A']} | {row['B']} | "
            f"{_num(row['diff'])}{ci} | {g} | {row['test']} | {_p(row['p'])} | "
            f"{_p(row['p_holm'])} | {mdd} | {_needed(row)} | {_hours(row['gpu_hours'])} | "
            f"**{row['verdict']}** | {row['other'] or '—'} | {row['code'] or 'one commit'} |")
    return "\n".join(lines) + "\n"


RULE = ("Verdicts (analysis/verdicts.py, scipy.stats): per finding, A − B with its 95 % "
        "t interval, Hedges' g, and the two-sided p of the paired t-test over seeds when A "
        "and B hold the same seeds (a seed fixes the initial weights and the data order) or "
        "Welch's t-test otherwise; Holm p adjusts p over this study's findings. "
        "**reproduced**: Holm p < 0.05 with the paper's sign; **contradicted**: Holm p < 0.05 "
        "with the other sign; **inconclusive** otherwise. MDD80: the smallest true difference "
        "the same test finds 4 times in 5 at the observed seed std and n, at alpha 0.05 / m "
        "(m findings: Holm's strictest step); seeds for the paper's diff: per group, at that "
        "std and alpha; GPU-h: what those seeds of both groups cost at the study's paper "
        "scale (the launcher's cost model). The declared metric decides; the other accuracy "
        "is shown beside it (p not corrected). Linear top-1 is the probe's final epoch.")
