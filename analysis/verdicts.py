"""The paper's findings as comparisons, and the one rule that says whether a study shows them.

A finding compares two groups of runs of one ablation - e.g. frozen against learned patch
projection at one learning rate - on one number (linear or kNN top-1, kNN dips, first-layer
gradient spikes), and says which way the paper found it. Over each group's seeds:

    diff = mean(A) - mean(B)          pooled std = sqrt((var(A) + var(B)) / 2)
    reproduced      the sign of diff is the paper's and |diff| > 2 x pooled std
    not reproduced  the sign is the other one and |diff| > 2 x pooled std
    inconclusive    |diff| <= 2 x pooled std (within seed noise), or fewer than 2 seeds

(var: the sample variance over seeds, n - 1.) The rule is applied here, to the numbers the
run folders hold; nothing in a verdict is written by hand. A finding whose groups have no
runs in a study is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.collect import factor_column
from analysis.reference import normalize_label

NOISE_FACTOR = 2.0  # |diff| must exceed this many pooled stds
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = ("reproduced", "not reproduced",
                                            "inconclusive (within seed noise)")
TOO_FEW = "inconclusive (fewer than 2 seeds)"


@dataclass(frozen=True)
class Finding:
    """Group A against group B on `metric`; the paper found A - B of sign `sign`."""

    ablation: str
    claim: str  # what the paper found, in words
    metric: str  # a column of the runs table
    a: dict[str, str]  # factor -> label selecting group A
    b: dict[str, str]
    sign: int  # +1: the paper found A > B; -1: A < B
    in_paper: bool = True


def patch_proj_findings(lrs: list[str]) -> list[Finding]:
    """Frozen beats learned at every lr (Fig. 5/6; at a stress lr above the paper's, it is
    our extrapolation); the learned projection spikes and dips more at the largest lr."""
    out = [Finding("patch_proj", f"frozen patch projection beats learned at lr {lr}",
                   "{metric}", {"patch_embed": "frozen", "lr": lr},
                   {"patch_embed": "learned", "lr": lr}, +1, lr in PAPER_LRS)
           for lr in lrs]
    if lrs:
        top = lrs[-1]
        out += [Finding("patch_proj", f"learned projection has more first-layer gradient spikes "
                        f"than frozen at lr {top}", "num_spikes_first",
                        {"patch_embed": "learned", "lr": top},
                        {"patch_embed": "frozen", "lr": top}, +1, top in PAPER_LRS),
                Finding("patch_proj", f"learned projection has deeper kNN dips than frozen at lr "
                        f"{top}", "max_knn_dip", {"patch_embed": "learned", "lr": top},
                        {"patch_embed": "frozen", "lr": top}, +1, top in PAPER_LRS)]
    return out


def negatives_findings(ks: dict[str, list[str]]) -> list[Finding]:
    """MoCo v1 Fig. 3: the queue beats the memory bank at equal K, and every mechanism
    gains from a larger K (largest against smallest K present)."""
    out = [Finding("negatives", f"queue beats memory bank at K={k}", "{metric}",
                   {"mechanism": "queue", "K": k}, {"mechanism": "memory_bank", "K": k}, +1)
           for k in ks.get("queue", []) if k in ks.get("memory_bank", [])]
    for mechanism, levels in ks.items():
        if len(levels) >= 2:
            out.append(Finding("negatives", f"{mechanism} gains from more negatives "
                               f"(K={levels[-1]} over K={levels[0]})", "{metric}",
                               {"mechanism": mechanism, "K": levels[-1]},
                               {"mechanism": mechanism, "K": levels[0]}, +1))
    return out


def momentum_findings() -> list[Finding]:
    """MoCo v3 ablation: m = 0.99 beats no momentum and the slowest encoder."""
    best = {"momentum": "0.99"}
    return [Finding("momentum", "m = 0.99 beats m = 0", "{metric}", best, {"momentum": "0"},
                    +1),
            Finding("momentum", "m = 0.99 beats m = 0.999", "{metric}", best,
                    {"momentum": "0.999"}, +1)]


def batch_size_findings(batches: list[str]) -> list[Finding]:
    """The largest batch trains less stably: deeper kNN dips than the smallest."""
    if len(batches) < 2:
        return []
    return [Finding("batch_size", f"batch {batches[-1]} dips deeper than batch {batches[0]}",
                    "max_knn_dip", {"batch_size": batches[-1]}, {"batch_size": batches[0]},
                    +1)]


PAPER_LRS = ("0.5e-4", "1.0e-4", "1.5e-4")


def _levels(runs: pd.DataFrame, factor: str, where: dict[str, str] | None = None) -> list[str]:
    """The labels of `factor` present, in numeric order."""
    column = factor_column(factor)
    if column not in runs.columns:
        return []
    sub = _select(runs, where or {})
    labels = {str(v) for v in sub[column].dropna()}
    return sorted(labels, key=lambda v: (float(v) if _is_number(v) else math.inf, v))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def findings_for(ablation: str, runs: pd.DataFrame) -> list[Finding]:
    """The findings that apply to the levels this study has."""
    if ablation == "patch_proj":
        return patch_proj_findings(_levels(runs, "lr"))
    if ablation == "negatives":
        mechanisms = _levels(runs, "mechanism")
        return negatives_findings({m: _levels(runs, "K", {"mechanism": m})
                                   for m in mechanisms})
    if ablation == "momentum":
        return momentum_findings()
    if ablation == "batch_size":
        return batch_size_findings(_levels(runs, "batch_size"))
    return []


def _select(runs: pd.DataFrame, factors: dict[str, str]) -> pd.DataFrame:
    mask = pd.Series(True, index=runs.index)
    for name, label in factors.items():
        column = factor_column(name)
        if column not in runs.columns:
            return runs.iloc[0:0]
        mask &= runs[column].map(normalize_label) == normalize_label(label)
    return runs[mask]


def verdict(a: list[float], b: list[float], sign: int) -> tuple[str, float, float]:
    """(verdict, diff, pooled std) of group values `a` and `b` by the rule above."""
    if len(a) < 2 or len(b) < 2:
        diff = (sum(a) / len(a) - sum(b) / len(b)) if a and b else math.nan
        return TOO_FEW, diff, math.nan
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    var_a = sum((x - mean_a) ** 2 for x in a) / (len(a) - 1)
    var_b = sum((x - mean_b) ** 2 for x in b) / (len(b) - 1)
    diff, pooled = mean_a - mean_b, math.sqrt((var_a + var_b) / 2)
    if abs(diff) <= NOISE_FACTOR * pooled:
        return INCONCLUSIVE, diff, pooled
    return (REPRODUCED if diff * sign > 0 else NOT_REPRODUCED), diff, pooled


def verdict_table(ablation: str, runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per finding: claim, numbers of both groups, diff, pooled std, verdict."""
    rows = []
    trained = runs[runs["state"].isin(("done", "diverged"))]
    for finding in findings_for(ablation, trained):
        column = finding.metric.format(metric=metric)
        if column not in trained.columns:
            continue
        # Accuracy counts finished runs; instability counts diverged ones too.
        pool = trained[trained["state"] == "done"] if column.endswith("top1") else trained
        values = [pd.to_numeric(_select(pool, group)[column], errors="coerce").dropna()
                  .tolist() for group in (finding.a, finding.b)]
        if not values[0] and not values[1]:
            continue
        result, diff, pooled = verdict(values[0], values[1], finding.sign)
        rows.append({"finding": finding.claim + ("" if finding.in_paper
                                                 else " (not in the paper)"),
                     "metric": column, "A": _summary(values[0]), "B": _summary(values[1]),
                     "diff": diff, "pooled_std": pooled, "verdict": result})
    return pd.DataFrame(rows, columns=["finding", "metric", "A", "B", "diff", "pooled_std",
                                       "verdict"])


def _summary(values: list[float]) -> str:
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.2f} (n=1)"
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))
    return f"{mean:.2f} ± {std:.2f} (n={len(values)})"


def to_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return ""
    lines = ["| finding | metric | A | B | A − B | pooled std | verdict |",
             "|---|---|---|---|---:|---:|---|"]
    for row in frame.itertuples(index=False):
        std = "—" if math.isnan(row.pooled_std) else f"{row.pooled_std:.2f}"
        lines.append(f"| {row.finding} | {row.metric} | {row.A} | {row.B} | "
                     f"{_num(row.diff)} | {std} | **{row.verdict}** |")
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:+.2f}"


RULE = ("Verdicts (analysis/verdicts.py): over each group's seeds, diff = mean(A) - mean(B) and "
        "pooled std = sqrt((var A + var B) / 2); **reproduced** when the sign of diff is the "
        "paper's and |diff| > 2 pooled std, **not reproduced** when the sign is the other "
        "and |diff| > 2 pooled std, **inconclusive** otherwise (within seed noise, or fewer "
        "than 2 seeds).")
