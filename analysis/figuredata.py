"""What each figure of an ablation shows: small, aggregated data, without drawing anything.

A :class:`FigureSpec` holds the few hundred to few thousand points a figure draws (means and
stds per factor value and x, downsampled gradient norms), so drawing costs the same for 2
runs or 1,000, and ``digest()`` lets the report skip redrawing a figure whose data did not
change. This module imports no plotting library; ``moco3.analysis.plots`` draws the specs.

Figures of an ablation (``figure_specs``):

* ``knn``         kNN top-1 against epochs (or images seen), one line per factor value,
                  mean and ±std band over seeds; where a run diverged is marked;
* ``patch_proj``  learned vs frozen patch projection kNN curves (ablations with a
                  ``patch_embed`` factor), one panel per other factor value;
* ``grad``        first- vs last-layer gradient norm over steps for one run per factor value,
                  the job's spike events marked -- the paper's spike figure. Its
                  data (train rows) are loaded only when the figure is drawn;
* ``negatives``   accuracy against the number of negatives K per mechanism, log x, beside
                  MoCo v1's published points (ablations with ``mechanism`` and ``K``);
* ``final``       final accuracy per factor value (seeds, mean ± std) beside the paper's.

Caps: MAX_PANELS panels and MAX_LINES lines per panel; what is left out is named in the
spec's notes (and so in the report).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from moco3.analysis.collect import Collection, factor_column
from moco3.analysis.reference import reference_for
from moco3.analysis.tables import METRIC_NAMES, AblationTable, level_sort_key
from moco3.runfolder.instability import SPIKE_FACTOR, SPIKE_MIN_HISTORY, SPIKE_WINDOW
from moco3.runfolder.states import DIVERGED, DONE, TRAINED

FORMATS = ("png", "pdf")  # every figure is written in each
MAX_PANELS = 6
MAX_LINES = 8
MAX_CATEGORIES = 24  # factor values on the x axis of the final-accuracy figure
MAX_POINTS = 800  # per gradient-norm line; bins keep their maximum so spikes stay visible
STYLE_VERSION = "3"  # part of every digest: bump to redraw all figures after a style change
MECHANISM_NAMES = {"end_to_end": "end-to-end", "memory_bank": "memory bank",
                   "queue": "MoCo queue", "in_batch": "in-batch (v3)"}
K_FACTORS = ("K", "k", "num_negatives", "negatives")
LAST_LAYER_COLUMN = "grad_norm_last_block"


@dataclass
class FigureSpec:
    """Everything needed to draw one figure. ``frames`` may be filled late by ``loader``
    (then ``key`` stands for the inputs in the digest, so an unchanged figure is never
    loaded)."""

    name: str  # file stem, e.g. "batch_size_knn"
    kind: str  # knn | patch_proj | grad | negatives | final
    title: str
    caption: str
    frames: dict[str, pd.DataFrame] | None = None
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    key: str | None = None
    loader: Callable[[], dict[str, pd.DataFrame] | None] | None = field(default=None,
                                                                       repr=False)

    def digest(self) -> str:
        h = hashlib.sha1(f"{STYLE_VERSION}|{self.kind}|{self.title}|{self.params}".encode())
        if self.key is not None:
            h.update(self.key.encode())
            return h.hexdigest()
        for name in sorted(self.frames or {}):
            frame = self.frames[name]
            h.update(name.encode())
            h.update(",".join(map(str, frame.columns)).encode())
            h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
        return h.hexdigest()

    def load(self) -> bool:
        """Fill ``frames`` if a loader is pending; False when there is nothing to draw."""
        if self.frames is None and self.loader is not None:
            self.frames = self.loader()
            self.loader = None  # what is sent to a drawing process must pickle
        return self.frames is not None


# -- labels and order ---------------------------------------------------------------------

def combo_labels(runs: pd.DataFrame, names: list[str], with_names: bool) -> pd.Series:
    """One text label per run for the combination of factors ``names``."""
    if not names:
        return pd.Series("baseline", index=runs.index, dtype=object)
    parts = []
    for name in names:
        values = runs[factor_column(name)].astype(object).where(
            runs[factor_column(name)].notna(), "—").astype(str)
        parts.append(f"{name}=" + values if with_names else values)
    out = parts[0]
    for part in parts[1:]:
        out = out + ", " + part
    return out.astype(object)


def _ordered(runs: pd.DataFrame, column: str, ablation: str, names: list[str]) -> list[str]:
    """The distinct labels of ``column`` in the paper's order of their factor levels."""
    firsts = runs.drop_duplicates(column)
    keyed = []
    for _, row in firsts.iterrows():
        labels = {n: row[factor_column(n)] if pd.notna(row[factor_column(n)]) else "—"
                  for n in names}
        keyed.append((level_sort_key(ablation, names, labels), row[column]))
    return [label for _, label in sorted(keyed, key=lambda item: item[0])]


def label_runs(runs: pd.DataFrame, ablation: str, panel_names: list[str],
               hue_names: list[str]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """runs + "panel" and "hue" label columns; the panel and hue labels in order."""
    runs = runs.assign(
        panel=combo_labels(runs, panel_names, True) if panel_names else "",
        hue=combo_labels(runs, hue_names, False),
    )
    return (runs, _ordered(runs, "panel", ablation, panel_names),
            _ordered(runs, "hue", ablation, hue_names))


def _cap(values: list[str], limit: int, what: str, notes: list[str]) -> list[str]:
    if len(values) > limit:
        rest = values[limit:]
        notes.append(f"{len(rest)} {what} left out (cap {limit}): "
                     + ", ".join(rest[:5]) + (" ..." if len(rest) > 5 else ""))
    return values[:limit]


# -- kNN curves ---------------------------------------------------------------------------

def prepare_knn(name: str, kind: str, ablation: str, runs: pd.DataFrame, knn: pd.DataFrame,
                panel_names: list[str], hue_names: list[str], x: str, title: str,
                caption: str) -> FigureSpec | None:
    """Mean, std and count of kNN top-1 per (panel, hue, x) over seeds, and the last
    evaluation of each diverged run."""
    if knn.empty or "knn_top1" not in knn.columns or x not in knn.columns:
        return None
    notes: list[str] = []
    runs, panels, hues = label_runs(runs, ablation, panel_names, hue_names)
    panels = _cap(panels, MAX_PANELS, "panels", notes)
    hues = _cap(hues, MAX_LINES, "lines per panel", notes)
    # Average finished (and diverged) seeds; a factor value with none of those yet shows
    # its runs in progress. Mixing half-trained seeds into a mean bends the curve, and this
    # way a run that moves on does not redraw a figure whose finished seeds have not changed.
    runs = runs.assign(_trained=runs["state"].isin(TRAINED))
    has_trained = runs.groupby(["panel", "hue"])["_trained"].transform("any")
    runs = runs[runs["_trained"] | ~has_trained]
    rows = knn[["run_dir", x, "knn_top1"]].dropna()
    rows = rows.merge(runs[["run_dir", "panel", "hue", "state"]], on="run_dir")
    rows = rows[rows["panel"].isin(panels) & rows["hue"].isin(hues)]
    if rows.empty:
        return None
    rows = rows.assign(x=rows[x].astype(float).round(6))
    agg = (rows.groupby(["panel", "hue", "x"], sort=True)["knn_top1"]
           .agg(["mean", "std", "count"]).reset_index())
    ends = rows[rows["state"] == DIVERGED].sort_values("x").groupby("run_dir").tail(1)
    ends = ends[["panel", "hue", "x", "knn_top1"]].sort_values(["panel", "hue", "x"])
    return FigureSpec(
        name=name, kind=kind, title=title, caption=caption,
        frames={"agg": agg, "ends": ends.reset_index(drop=True)},
        params={"panels": panels, "hues": hues, "x": x,
                "hue_title": ", ".join(hue_names) or "run"},
        notes=notes,
    )


# -- gradient norms, first vs last layer --------------------------------------------------

def downsample_max(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS
                   ) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points, each bin keeping its largest value (spikes survive)."""
    n = len(y)
    if n <= max_points:
        return x, y
    size = math.ceil(n / max_points)
    pad = (-n) % size
    yy = np.concatenate([y, np.full(pad, -np.inf)]).reshape(-1, size)
    xx = np.concatenate([x, np.full(pad, np.nan)]).reshape(-1, size)
    peak = np.argmax(yy, axis=1)
    rows = np.arange(len(yy))
    return xx[rows, peak], yy[rows, peak]


def choose_runs_for_gradients(runs: pd.DataFrame, ablation: str, factors: list[str],
                              notes: list[str]) -> list[tuple[str, str]]:
    """(panel label, run_dir): per factor value, the trained run with the most first-layer
    spikes (lowest seed on ties) -- the paper shows a run that has spikes."""
    runs = runs[runs["num_metrics_rows"].fillna(0) > 0]
    if runs.empty:
        return []
    runs, panels, _ = label_runs(runs, ablation, factors, [])
    runs = runs.assign(
        _trained=runs["state"].isin(TRAINED),
        _spikes=runs["num_spikes_first"].astype("float64").fillna(-1.0),
        _seed=runs["seed"].astype("float64").fillna(float(1 << 30)),
    ).sort_values(["_trained", "_spikes", "_seed"], ascending=[False, False, True])
    best = runs.drop_duplicates("panel").set_index("panel")
    if len(panels) > MAX_PANELS:
        # Show the factor values whose chosen run spikes most, in the table's order.
        spikiest = best.loc[panels].sort_values(["_trained", "_spikes"], ascending=False,
                                                kind="stable").index[:MAX_PANELS]
        left_out = [p for p in panels if p not in set(spikiest)]
        panels = [p for p in panels if p in set(spikiest)]
        notes.append(f"{len(left_out)} factor values with fewer first-layer spikes left out "
                     f"(cap {MAX_PANELS}): " + ", ".join(left_out[:5])
                     + (" ..." if len(left_out) > 5 else ""))
    return [(panel, best.loc[panel, "run_dir"]) for panel in panels]


def _first_layer_column(rows: pd.DataFrame) -> str:
    """The first layer that learns: the patch projection, unless it is frozen (its norm is
    then logged as 0 or not at all), else the first block -- as the job counts it."""
    norms = pd.to_numeric(rows.get("grad_norm_patch_embed", pd.Series(dtype="float64")),
                          errors="coerce")
    return "grad_norm_patch_embed" if (norms > 0).any() else "grad_norm_first_block"


def _spike_table(collection: Collection, run_dirs: list[str]) -> pd.DataFrame:
    """The job's grad_spike events of ``run_dirs`` (run_dir, group, step, value): one pass
    over the evaluation rows, which hold ~100,000 rows for a 1,000-run study."""
    steps = collection.steps
    if steps.empty or "event" not in steps.columns or "group" not in steps.columns:
        return pd.DataFrame({"run_dir": [], "group": [], "step": [], "value": []})
    events = steps[steps["kind"] == "event"]
    hit = events[(events["event"] == "grad_spike") & events["run_dir"].isin(run_dirs)]
    # A spike whose norm was NaN or inf is written with "value": null, so a study whose only
    # spikes are non-finite has no "value" column at all; such a spike is still a spike.
    value = hit["value"] if "value" in hit.columns else pd.Series(math.nan, index=hit.index)
    return pd.DataFrame({"run_dir": hit["run_dir"].astype(object),
                         "group": hit["group"].astype(object),
                         "step": pd.to_numeric(hit["step"], errors="coerce"),
                         "value": pd.to_numeric(value, errors="coerce")})


def _spike_events(spikes: pd.DataFrame, run_dir: str, group: str) -> pd.DataFrame:
    """The grad_spike events of one run and group (the job checks every step; the logged
    norms are every log_every-th only): step and the norm that spiked."""
    hit = spikes[(spikes["run_dir"] == run_dir) & (spikes["group"] == group)]
    return hit[["step", "value"]]


def _grad_frames(chosen: list[tuple[str, str]], runs: pd.DataFrame, collection: Collection,
                 notes: list[str]) -> dict[str, pd.DataFrame] | None:
    columns = ["grad_norm_patch_embed", "grad_norm_first_block", LAST_LAYER_COLUMN]
    train = collection.train_steps([d for _, d in chosen], columns=columns)
    info = runs.set_index("run_dir")
    spike_table = _spike_table(collection, [d for _, d in chosen])
    lines, spikes, panels = [], [], []
    for panel, run_dir in chosen:
        rows = train[train["run_dir"] == run_dir].sort_values("step")
        first = _first_layer_column(rows)
        where = "patch projection" if first == "grad_norm_patch_embed" else "first block"
        counts = []
        for key, label in ((first, f"first layer ({where})"),
                           (LAST_LAYER_COLUMN, "last layer (last block)")):
            if key not in rows.columns or not rows[key].notna().any():
                continue
            values = pd.to_numeric(rows[key], errors="coerce").astype("float64").to_numpy()
            steps = rows["step"].astype("float64").to_numpy()
            drawable = np.isfinite(values) & (values > 0)  # log axis
            xs, ys = downsample_max(steps[drawable], values[drawable])
            lines.append(pd.DataFrame({"panel": panel, "series": label, "x": xs, "y": ys}))
            found = _spike_events(spike_table, run_dir, key[len("grad_norm_"):])
            counts.append(f"{len(found)} {label.split(' ')[0]}")
            # Non-finite norms (overflow) are spikes too; y is NaN and they are drawn at
            # the top edge.
            value = found["value"].to_numpy(dtype="float64")
            spikes.append(pd.DataFrame({
                "panel": panel, "series": label, "x": found["step"].to_numpy(dtype="float64"),
                "y": np.where(np.isfinite(value) & (value > 0), value, np.nan)}))
        if not counts:
            notes.append(f"{panel or 'baseline'}: no gradient norms logged ({run_dir})")
            continue
        diverged = info.loc[run_dir, "diverged_step"]
        panels.append({"panel": panel,
                       "heading": f"{panel or 'baseline'} · seed {info.loc[run_dir, 'seed']}",
                       "spikes": ", ".join(counts) + " spikes",
                       "diverged": float(diverged) if pd.notna(diverged) else math.nan})
    if not lines:
        return None
    return {"lines": pd.concat(lines, ignore_index=True),
            "spikes": pd.concat(spikes, ignore_index=True), "panels": pd.DataFrame(panels)}


def prepare_grad(name: str, ablation: str, runs: pd.DataFrame, collection: Collection,
                 factors: list[str], title: str, caption: str) -> FigureSpec | None:
    """The gradient-norm figure, its train rows loaded only if it has to be drawn."""
    notes: list[str] = []
    chosen = choose_runs_for_gradients(runs, ablation, factors, notes)
    if not chosen:
        return None
    info = runs.set_index("run_dir")
    thresholds = (SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_MIN_HISTORY, MAX_POINTS)
    key = "|".join(
        f"{panel}={run_dir}@{collection.found[run_dir].metrics_key}"
        f"@{info.loc[run_dir, 'seed']}@{info.loc[run_dir, 'diverged_step']}"
        for panel, run_dir in chosen if run_dir in collection.found
    ) + f"|{thresholds}"
    return FigureSpec(name=name, kind="grad", title=title, caption=caption, notes=notes,
                      key=key, loader=lambda: _grad_frames(chosen, runs, collection, notes))


# -- accuracy against K per mechanism -----------------------------------------------------

def k_factor(factors: list[str]) -> str | None:
    return next((f for f in factors if f in K_FACTORS), None)


def prepare_negatives(name: str, runs: pd.DataFrame, factors: list[str], metric: str,
                      title: str, caption: str) -> FigureSpec | None:
    k_name = k_factor(factors)
    if k_name is None or "mechanism" not in factors:
        return None
    done = runs[runs["state"] == DONE]
    ours = _ours_against_real_k(done, k_name, metric)
    ref = reference_for("negatives")
    paper = pd.DataFrame(
        [{"mechanism": n.factor_dict["mechanism"], "K": float(n.factor_dict["K"]),
          "value": n.value, "tag": n.tag} for n in (ref.numbers if ref else ())],
        columns=["mechanism", "K", "value", "tag"],
    )
    if ours.empty and paper.empty:
        return None
    present = set(ours["mechanism"]) | set(paper["mechanism"])
    order = [m for m in MECHANISM_NAMES if m in present] + sorted(present - set(
        MECHANISM_NAMES))
    return FigureSpec(name=name, kind="negatives", title=title, caption=caption,
                      frames={"ours": ours, "paper": paper},
                      params={"metric": metric, "order": order, "k_name": k_name,
                              "mechanism_names": MECHANISM_NAMES})


def _ours_against_real_k(done: pd.DataFrame, k_name: str, metric: str) -> pd.DataFrame:
    """Per (mechanism, paper label K): the mean, std and count of ``metric`` and the real
    K, the negatives each query saw (``real_k``; the label where a run lacks the number)."""
    label = pd.to_numeric(done[factor_column(k_name)], errors="coerce")
    real = (pd.to_numeric(done["negatives_per_query"], errors="coerce")
            if "negatives_per_query" in done.columns else label)
    frame = pd.DataFrame({"mechanism": done[factor_column("mechanism")].astype(str),
                          "K": label, "real_k": real.fillna(label),
                          "value": done[metric]}).dropna()
    grouped = frame.groupby(["mechanism", "K"])
    ours = grouped["value"].agg(["mean", "std", "count"])
    ours["real_k"] = grouped["real_k"].median()
    return ours.reset_index()


# -- final accuracy per factor value ------------------------------------------------------

def prepare_final(name: str, runs: pd.DataFrame, table: AblationTable, title: str,
                  caption: str) -> FigureSpec | None:
    metric, factors, frame = table.metric, table.factors, table.frame
    notes: list[str] = []
    short = metric.split("_")[0]
    labels = (frame[factors].astype(str).agg(", ".join, axis=1) if factors
              else pd.Series(["baseline"] * len(frame)))
    summary = pd.DataFrame({
        "label": labels.to_numpy(), "mean": frame[f"{short}_mean"].to_numpy(),
        "std": frame[f"{short}_std"].to_numpy(), "n": frame[f"{short}_n"].to_numpy(),
        "diverged": frame["n_diverged"].to_numpy(), "paper": frame["paper"].to_numpy(),
        "tag": frame["paper_tag"].to_numpy(),
    })
    keep = _cap(list(summary["label"]), MAX_CATEGORIES, "factor values", notes)
    summary = summary[summary["label"].isin(keep)].reset_index(drop=True)
    done = runs[runs["state"] == DONE]
    dots = pd.DataFrame({"label": combo_labels(done, factors, False).to_numpy(),
                         "value": done[metric].to_numpy(dtype="float64")}).dropna()
    dots = dots[dots["label"].isin(keep)].reset_index(drop=True)
    if summary["mean"].isna().all() and summary["paper"].isna().all():
        return None
    return FigureSpec(name=name, kind="final", title=title, caption=caption,
                      frames={"summary": summary, "dots": dots},
                      params={"metric": metric, "xlabel": ", ".join(factors) or "run"},
                      notes=notes)


# -- the figures of one ablation ----------------------------------------------------------

def figure_specs(ablation: str, runs: pd.DataFrame, knn: pd.DataFrame,
                 collection: Collection | None, table: AblationTable, x: str = "epoch"
                 ) -> list[FigureSpec]:
    """The figures of one ablation (``runs`` and ``knn`` rows of that ablation only)."""
    factors = table.factors
    metric_name = METRIC_NAMES[table.metric]
    specs: list[FigureSpec | None] = []
    panel_names, hue_names = (factors[:1], factors[1:]) if len(factors) > 1 else ([], factors)
    specs.append(prepare_knn(
        f"{ablation}_knn", "knn", ablation, runs, knn, panel_names, hue_names, x,
        f"{ablation}: kNN accuracy during pre-training",
        "kNN top-1 during pre-training, one line per factor value: mean over finished and "
        "diverged seeds (runs in progress only where no seed has finished), band ±1 std "
        "where several seeds were evaluated; × the last evaluation of a diverged run.",
    ))
    if "patch_embed" in factors and runs[factor_column("patch_embed")].nunique() > 1:
        specs.append(prepare_knn(
            f"{ablation}_patch_proj", "patch_proj", ablation, runs, knn,
            [f for f in factors if f != "patch_embed"], ["patch_embed"], x,
            f"{ablation}: learned vs frozen (random) patch projection",
            "kNN top-1 with a learned vs a frozen (random) patch projection, one panel per "
            "value of the other factors -- the paper's random-patch-projection comparison.",
        ))
    if collection is not None:
        specs.append(prepare_grad(
            f"{ablation}_grad", ablation, runs, collection, factors,
            f"{ablation}: first- vs last-layer gradient norm",
            "Gradient norm of the first layer (the patch projection, or the first block "
            "when the projection is frozen) and of the last block over training steps, for "
            "one run per factor value (the one with the most first-layer spikes); "
            "triangles mark the spikes the training job found at every step, as defined in "
            "runfolder/instability.py.",
        ))
    specs.append(prepare_negatives(
        f"{ablation}_negatives", runs, factors, table.metric,
        f"{ablation}: {metric_name} vs number of negatives K",
        "Accuracy against the number of negatives each query saw (the real K, log scale; "
        "the paper's label K in brackets) per mechanism, beside MoCo v1's published points "
        "in a separate panel (other scale and model).",
    ))
    specs.append(prepare_final(
        f"{ablation}_final", runs, table, f"{ablation}: final {metric_name} per factor value",
        "Final accuracy per factor value (dots: seeds; black: mean ± std over finished "
        "seeds) and the paper's numbers with their tags in a separate panel.",
    ))
    return [s for s in specs if s is not None]
