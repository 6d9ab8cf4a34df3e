"""One table per ablation, in the paper's layout, with the paper's numbers beside ours.

Rows are factor values (combinations, in the paper's order); columns: linear and kNN top-1
(mean ± std over seeds, and n), the paper's number with its tag, our difference, the rank of
each row by ours and by the paper, and the instability figures (kNN dips, largest dip,
gradient spikes in the first and the last layer). Markdown, LaTeX (booktabs) and CSV.

Which runs count
* accuracy: finished runs only (state ``done``; or ``unknown`` with a summary.json) -- a run
  in progress would pull the mean down with a half-trained number;
* instability: finished and diverged runs (a divergence is a result of the study);
* a diverged run never contributes a number: a row whose seeds all diverged reads
  "diverged at step S", and the ``runs`` column says how many seeds diverged and where.

At tiny scale our absolute numbers are not comparable with the paper's ImageNet-1k ones, so
beside the difference each table carries a note on whether our ordering of the factor values
matches the paper's (Spearman's rho over the rows that have both numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from moco3.analysis.collect import factor_column
from moco3.analysis.reference import level_rank, paper_number, reference_for
from moco3.runfolder.states import DISPLAY_ORDER, DIVERGED, FINISHED, TRAINED, UNKNOWN

METRICS = ("linear_top1", "knn_top1")
METRIC_NAMES = {"linear_top1": "linear top-1", "knn_top1": "kNN top-1"}


@dataclass
class AblationTable:
    """The table of one ablation: ``frame`` holds plain numbers (the CSV), ``notes`` the
    sentences printed under it."""

    ablation: str
    factors: list[str]
    metric: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    setting: str | None = None


def ablation_factors(runs: pd.DataFrame) -> list[str]:
    """Factor names of these runs, in the order of their configs' meta.factors."""
    names: list[str] = []
    for joined in runs["factor_names"].drop_duplicates():
        for name in (joined or "").split(","):
            if name and name not in names:
                names.append(name)
    return names


def _natural(label: object) -> tuple:
    try:
        return (0, float(label), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(label))


def level_sort_key(ablation: str, factors: list[str], labels: dict) -> tuple:
    """Sort key of a combination of factor labels: the paper's level order first, then
    numbers by value, then text."""
    parts = []
    for name in factors:
        rank = level_rank(ablation, name, labels[name])
        parts.append((0 if rank is not None else 1, rank or 0, _natural(labels[name])))
    return tuple(parts)


def _row_order(ablation: str, factors: list[str], frame: pd.DataFrame) -> pd.DataFrame:
    keys = [level_sort_key(ablation, factors, frame.iloc[i]) for i in range(len(frame))]
    order = sorted(range(len(frame)), key=keys.__getitem__)
    return frame.iloc[order].reset_index(drop=True)


def _is_finished(runs: pd.DataFrame) -> pd.Series:
    return runs["state"].isin(FINISHED) | ((runs["state"] == UNKNOWN) & runs["has_summary"])


def _states_text(states: pd.Series) -> str:
    """e.g. "2 done, 1 diverged, 1 running" (diverged steps are in their own column)."""
    counts = states.value_counts()
    ordered = sorted(counts.index, key=lambda s: (
        DISPLAY_ORDER.index(s) if s in DISPLAY_ORDER else len(DISPLAY_ORDER), s))
    return ", ".join(f"{counts[state]} {state}" for state in ordered)


def choose_metric(runs: pd.DataFrame, metric: str | None) -> str:
    """``metric`` if given; else linear top-1 when any finished run has one, else kNN."""
    if metric is not None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
        return metric
    finished = runs[_is_finished(runs)]
    return "linear_top1" if finished["linear_top1"].notna().any() else "knn_top1"


def ablation_table(runs: pd.DataFrame, ablation: str, metric: str | None = None
                   ) -> AblationTable:
    """The table of ``ablation`` from the runs table of ``moco3.analysis.collect``."""
    runs = runs[runs["ablation"] == ablation]
    factors = ablation_factors(runs)
    metric = choose_metric(runs, metric)
    columns = [factor_column(n) for n in factors]
    # One group key per run: the factor labels ("—" where a run lacks a factor).
    keys = [runs[c].astype(object).where(runs[c].notna(), "—").rename(n)
            for c, n in zip(columns, factors, strict=True)]
    if not keys:
        keys = [pd.Series("baseline", index=runs.index, name="run")]
    finished = _is_finished(runs)
    trained = runs["state"].isin(TRAINED)
    diverged = runs["state"] == DIVERGED

    def agg(values: pd.Series, mask: pd.Series, how: str | list[str]):
        numbers = pd.to_numeric(values, errors="coerce").astype("float64").where(mask)
        return numbers.groupby(keys, sort=False, dropna=False).agg(how)

    grouped = runs.groupby(keys, sort=False, dropna=False)
    stats = pd.DataFrame({"runs": grouped.size()})
    for name in METRICS:
        short = name.split("_")[0]
        s = agg(runs[name], finished, ["mean", "std", "count"])
        stats[f"{short}_mean"], stats[f"{short}_std"], stats[f"{short}_n"] = (
            s["mean"], s["std"], s["count"].astype(int))
    stats["knn_dips"] = agg(runs["num_knn_dips"], trained, "mean")
    stats["max_knn_dip"] = agg(runs["max_knn_dip"], trained, "max")
    stats["spikes_first"] = agg(runs["num_spikes_first"], trained, "mean")
    stats["spikes_last"] = agg(runs["num_spikes_last"], trained, "mean")
    stats["n_diverged"] = diverged.groupby(keys, sort=False, dropna=False).sum().astype(int)
    stats["diverged_steps"] = grouped["diverged_step"].agg(
        lambda s: ", ".join(str(int(v)) for v in sorted(
            s[runs.loc[s.index, "state"] == DIVERGED].dropna())))
    stats["states"] = grouped["state"].agg(_states_text)
    stats["states"] = [
        text.replace(f"{n} diverged", f"{n} diverged at step{'s' if ',' in steps else ''} "
                                      f"{steps}") if n and steps else text
        for text, n, steps in zip(stats["states"], stats["n_diverged"], stats["diverged_steps"],
                                  strict=True)
    ]
    stats["negatives_per_query"] = real_k(runs, keys)
    frame = stats.reset_index()
    if not factors:
        frame = frame.drop(columns=["run"])

    papers = [paper_number(ablation, dict(zip(factors, (row[f] for f in factors),
                                              strict=True)))
              for _, row in frame.iterrows()]
    frame["paper"] = [p.value if p else math.nan for p in papers]
    frame["paper_tag"] = [p.tag if p else "" for p in papers]
    frame["paper_note"] = [p.note if p else "" for p in papers]
    frame["diff"] = frame[f"{metric.split('_')[0]}_mean"] - frame["paper"]
    if factors:
        frame = _row_order(ablation, factors, frame)
    _add_ranks(frame, metric)
    ref = reference_for(ablation)
    table = AblationTable(ablation, factors, metric, frame,
                          setting=ref.setting if ref else None)
    table.notes = _notes(table, runs, ref.remark if ref else "")
    return table


def real_k(runs: pd.DataFrame, keys: list[pd.Series]) -> pd.Series:
    """The negatives each query saw, per level (the real K, beside the paper's label): the
    value its runs recorded, or their values joined by "/" where seeds differ."""
    if "negatives_per_query" not in runs.columns:
        return pd.Series("", index=runs.groupby(keys, sort=False, dropna=False).size().index)
    values = pd.to_numeric(runs["negatives_per_query"], errors="coerce")
    return values.groupby(keys, sort=False, dropna=False).agg(
        lambda s: "/".join(str(int(v)) for v in sorted(set(s.dropna()))))


def _add_ranks(frame: pd.DataFrame, metric: str) -> None:
    """Rank 1 = best, among the rows that have both numbers (none if fewer than two)."""
    ours = frame[f"{metric.split('_')[0]}_mean"]
    both = ours.notna() & frame["paper"].notna()
    if both.sum() < 2:
        both[:] = False
    frame["rank_ours"] = ours.where(both).rank(ascending=False, method="min")
    frame["rank_paper"] = frame["paper"].where(both).rank(ascending=False, method="min")


def _label(table: AblationTable, row: pd.Series) -> str:
    return ", ".join(f"{n}={row[n]}" for n in table.factors) or "baseline"


def _notes(table: AblationTable, runs: pd.DataFrame, remark: str) -> list[str]:
    frame, metric = table.frame, table.metric
    notes = []
    name = METRIC_NAMES[metric]
    if table.setting is None:
        notes.append("The paper has no numbers for this ablation.")
    else:
        both = frame[frame["rank_ours"].notna()]
        if len(both) >= 2:
            # Spearman's rho = Pearson's r of the ranks (pandas' "spearman" would load scipy).
            rho = both["rank_ours"].rank().corr(both["rank_paper"].rank())
            same = (both["rank_ours"] == both["rank_paper"]).all()
            best_ours = " = ".join(_label(table, r) for _, r in
                                   both[both["rank_ours"] == 1].iterrows())
            best_paper = " = ".join(_label(table, r) for _, r in
                                    both[both["rank_paper"] == 1].iterrows())
            head = f"Rank agreement ({name}, {len(both)} factor values with both numbers): "
            if both["rank_ours"].nunique() == 1:
                notes.append(head + f"our values are all equal, so there is no ordering to "
                             f"compare; paper's best: {best_paper}.")
            else:
                verdict = "matches the paper's" if same else "differs from the paper's"
                notes.append(head + f"our ordering {verdict} (Spearman rho = {_fmt(rho, 2)}); "
                             f"best: ours {best_ours}, paper {best_paper}.")
        elif len(frame) > 1 and frame["paper"].notna().any():
            notes.append(
                f"Rank agreement: fewer than two factor values have both our {name} and the "
                "paper's number."
            )
        if remark:
            notes.append(f"Paper: {remark}.")
    scales = sorted({str(s) for s in runs["scale"].dropna()})
    if table.setting is not None and scales and scales != ["paper"]:
        notes.append(
            f"Our runs are at scale {', '.join(scales)}: absolute numbers are not comparable "
            f"with the paper's ({table.setting}); read the difference column with that in "
            "mind and compare orderings."
        )
    notes.append(
        f"Δ and ranks use {name}; accuracies are means over finished seeds (± sample std), "
        "instability columns are means over finished and diverged seeds (largest dip: max)."
    )
    return notes


# -- formatting ---------------------------------------------------------------------------

def _fmt(value: float, digits: int = 1, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _accuracy_cell(row: pd.Series, short: str) -> str:
    mean, std, n = row[f"{short}_mean"], row[f"{short}_std"], row[f"{short}_n"]
    if n == 0:
        if row["n_diverged"] and row["n_diverged"] == row["runs"]:
            steps = row["diverged_steps"]
            plural = "s" if "," in steps else ""
            return f"diverged at step{plural} {steps}" if steps else DIVERGED
        return "—"
    return _fmt(mean) if n == 1 else f"{_fmt(mean)} ± {_fmt(std)}"


def display_frame(table: AblationTable) -> pd.DataFrame:
    """The table as the strings a reader sees (Markdown and LaTeX)."""
    frame = table.frame
    short = table.metric.split("_")[0]
    out = pd.DataFrame({name: frame[name].astype(str) for name in table.factors})
    if not table.factors:
        out["run"] = ["baseline"] * len(frame)
    _insert_real_k(out, frame)
    out["linear top-1"] = [_accuracy_cell(r, "linear") for _, r in frame.iterrows()]
    out["kNN top-1"] = [_accuracy_cell(r, "knn") for _, r in frame.iterrows()]
    out["n"] = frame[f"{short}_n"].astype(int).astype(str)
    out["paper"] = [
        f"{_fmt(p)} [{t}]" if t else "—" for p, t in zip(frame["paper"], frame["paper_tag"],
                                                        strict=True)
    ]
    out["Δ"] = [_fmt(v, signed=True) for v in frame["diff"]]
    out["rank ours/paper"] = [
        f"{int(a)}/{int(b)}" if not (math.isnan(a) or math.isnan(b)) else "—"
        for a, b in zip(frame["rank_ours"], frame["rank_paper"], strict=True)
    ]
    out["kNN dips"] = [_fmt(v) for v in frame["knn_dips"]]
    out["largest dip"] = [_fmt(v) for v in frame["max_knn_dip"]]
    out["spikes first/last"] = [
        f"{_fmt(a)}/{_fmt(b)}" for a, b in zip(frame["spikes_first"], frame["spikes_last"],
                                              strict=True)
    ]
    out["runs"] = frame["states"]
    if frame["paper_note"].astype(bool).any():
        out["paper kNN curve"] = [n or "—" for n in frame["paper_note"]]
    return out


def _insert_real_k(out: pd.DataFrame, frame: pd.DataFrame) -> None:
    """A study whose levels differ in the negatives each query sees shows that number
    beside the labels (the labels are the paper's K or batch; this is what the runs had)."""
    if "negatives_per_query" not in frame.columns:
        return
    values = frame["negatives_per_query"].fillna("").astype(str)
    if values.replace("", pd.NA).dropna().nunique() > 1:
        out[REAL_K] = values.replace("", "—")


REAL_K = "negatives per query (ours)"
_TEXT_COLUMNS = ("run", "runs", "paper kNN curve")


def to_markdown(table: AblationTable) -> str:
    """A GitHub-flavoured Markdown table followed by its notes."""
    shown = display_frame(table)
    lines = [
        "| " + " | ".join(shown.columns) + " |",
        "|" + "|".join("---" if c in _TEXT_COLUMNS or c in table.factors else "---:"
                       for c in shown.columns) + "|",
    ]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    lines.append("")
    lines.extend(f"* {note}" for note in table.notes)
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "Δ": r"$\Delta$", "—": "---", "ρ": r"$\rho$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: AblationTable) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), notes as a comment."""
    shown = display_frame(table)
    align = "".join("l" if c in _TEXT_COLUMNS or c in table.factors else "r"
                    for c in shown.columns)
    lines = [f"% {table.ablation}: {table.setting or 'no paper numbers'}"]
    lines.extend(f"% {note}" for note in table.notes)
    lines += [f"\\begin{{tabular}}{{{align}}}", r"\toprule",
              " & ".join(latex_escape(c) for c in shown.columns) + r" \\", r"\midrule"]
    for _, row in shown.iterrows():
        lines.append(" & ".join(latex_escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: AblationTable) -> str:
    """The plain numbers (no formatting), one row per factor combination."""
    return table.frame.round(6).to_csv(index=False)
