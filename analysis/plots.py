"""Draw the figures described by ``moco3.analysis.figuredata`` (seaborn style, Agg backend).

One consistent style (``apply_style``): seaborn's whitegrid theme and colorblind palette,
labelled axes, legends titled with the factor names, PNG (150 dpi) and PDF. Figures are
``matplotlib.figure.Figure`` objects drawn straight onto the Agg canvas -- no pyplot state,
so drawing works headless and in worker processes (``render_to_files``), and importing this
module does not switch the backend of a notebook that already uses pyplot.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # do not switch a notebook's backend under it
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from moco3.analysis.figuredata import FORMATS, FigureSpec  # noqa: E402
from moco3.analysis.tables import METRIC_NAMES  # noqa: E402
from moco3.runfolder.states import DIVERGED

DPI = 150
X_LABELS = {"epoch": "epoch", "images_seen": "images seen", "step": "step"}


def apply_style() -> None:
    """The one style of every figure."""
    sns.set_theme(style="whitegrid", context="paper", palette="colorblind", font_scale=1.15,
                  rc={"axes.titleweight": "bold", "legend.frameon": False,
                      "figure.dpi": 100})


def _palette(names: list[str]) -> dict[str, tuple]:
    colors = sns.color_palette("colorblind", max(len(names), 1))
    if len(names) > len(set(colors)):
        colors = sns.color_palette("husl", len(names))
    return dict(zip(names, colors, strict=False))


def _grid(n: int, width: float = 4.6, height: float = 3.4, ncols_max: int = 3,
          share: bool = True) -> tuple[Figure, list]:
    ncols = max(1, min(n, ncols_max))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(width * ncols + 1.6, height * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=share, sharey=share)
    axes = axes.ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


# -- kNN curves ----------------------------------------------------------------------------

def _draw_knn(spec: FigureSpec) -> Figure:
    p = spec.params
    agg, ends = spec.frames["agg"], spec.frames["ends"]
    fig, axes = _grid(len(p["panels"]))
    colors = _palette(p["hues"])
    for ax, panel in zip(axes, p["panels"], strict=True):
        for hue in p["hues"]:
            line = agg[(agg["panel"] == panel) & (agg["hue"] == hue)]
            if line.empty:
                continue
            color = colors[hue]
            ax.plot(line["x"], line["mean"], color=color, lw=1.6)
            # The band only where several seeds were evaluated at that x (no fake zeros).
            band = line["std"].where(line["count"] > 1)
            if band.notna().any():
                ax.fill_between(line["x"], line["mean"] - band, line["mean"] + band,
                                color=color, alpha=0.2, lw=0)
            end = ends[(ends["panel"] == panel) & (ends["hue"] == hue)]
            if not end.empty:
                ax.scatter(end["x"], end["knn_top1"], marker="x", s=45, color=color, zorder=3)
        if panel:
            ax.set_title(panel)
        ax.set_xlabel(X_LABELS.get(p["x"], p["x"]))
        ax.set_ylabel("kNN top-1 (%)")
    handles = [Line2D([], [], color=colors[h], lw=2) for h in p["hues"]]
    labels = list(p["hues"])
    if not spec.frames["ends"].empty:
        handles.append(Line2D([], [], color="0.3", marker="x", ls="", markersize=7))
        labels.append(DIVERGED)
    fig.legend(handles, labels, title=p["hue_title"], loc="outside right center")
    fig.suptitle(spec.title)
    return fig


# -- gradient norms, first vs last layer --------------------------------------------------

def _draw_grad(spec: FigureSpec) -> Figure:
    lines, spikes, panels = spec.frames["lines"], spec.frames["spikes"], spec.frames["panels"]
    # Runs of different lengths (a diverged one) each get their own x range.
    fig, axes = _grid(len(panels), width=4.8, ncols_max=2, share=False)
    series = list(dict.fromkeys(lines["series"]))
    colors = dict(zip(series, sns.color_palette("colorblind", len(series)), strict=True))
    for ax, (_, panel) in zip(axes, panels.iterrows(), strict=True):
        for label in series:
            line = lines[(lines["panel"] == panel["panel"]) & (lines["series"] == label)]
            ax.plot(line["x"], line["y"], color=colors[label], lw=0.9, alpha=0.9)
            hit = spikes[(spikes["panel"] == panel["panel"]) & (spikes["series"] == label)]
            finite = hit["y"].notna()
            ax.scatter(hit.loc[finite, "x"], hit.loc[finite, "y"], marker="^", s=42,
                       color=colors[label], edgecolor="black", linewidth=0.5, zorder=3)
            # A non-finite norm cannot be placed on the log axis: mark it on the top edge.
            ax.scatter(hit.loc[~finite, "x"], [0.97] * int((~finite).sum()), marker="^", s=42,
                       color=colors[label], edgecolor="crimson", linewidth=1.0, zorder=3,
                       transform=ax.get_xaxis_transform(), clip_on=False)
        if not math.isnan(panel["diverged"]):
            ax.axvline(panel["diverged"], color="crimson", ls=":", lw=1.2)
        # Log scale when the norms span a decade or more (spikes of 10x and more); within a
        # narrower range a log axis would have no labelled tick at all.
        shown = lines.loc[lines["panel"] == panel["panel"], "y"]
        if len(shown) and shown.max() >= 10 * shown.min():
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(NullLocator())  # dozens of unlabelled ticks cost time
        ax.set_title(f"{panel['heading']}\n{panel['spikes']}", fontsize="medium")
        ax.set_xlabel("step")
        ax.set_ylabel("gradient norm")
    handles = [Line2D([], [], color=colors[s], lw=2) for s in series]
    handles.append(Line2D([], [], color="0.4", marker="^", ls="", markeredgecolor="black"))
    labels = [*series, "spike"]
    if panels["diverged"].notna().any():
        handles.append(Line2D([], [], color="crimson", ls=":"))
        labels.append(DIVERGED)
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    fig.suptitle(spec.title)
    return fig


# -- accuracy against K per mechanism -----------------------------------------------------

def _draw_negatives(spec: FigureSpec) -> Figure:
    ours, paper, p = spec.frames["ours"], spec.frames["paper"], spec.params
    fig = Figure(figsize=(11.5, 4.2), layout="constrained")
    ax_ours, ax_paper = fig.subplots(1, 2)
    colors = _palette(p["order"])
    real = "real_k" if "real_k" in ours.columns else "K"
    for mech in p["order"]:
        line = ours[ours["mechanism"] == mech].sort_values(real)
        if not line.empty:
            ax_ours.errorbar(line[real], line["mean"], yerr=line["std"].fillna(0.0),
                             color=colors[mech], marker="o", capsize=3, lw=1.6)
            for _, pt in line.iterrows():  # the paper's label beside the real K
                ax_ours.annotate(f"[{int(pt['K'])}]", (pt[real], pt["mean"]),
                                 textcoords="offset points", xytext=(4, -10),
                                 fontsize="x-small", color=colors[mech])
        pts = paper[paper["mechanism"] == mech] if len(paper) else paper
        for _, pt in pts.iterrows():
            ax_paper.scatter(pt["K"], pt["value"], color=colors[mech], s=70, marker="D",
                             facecolor="none", linewidth=1.8, zorder=3)
            ax_paper.annotate(f"{pt['value']:.1f} [{pt['tag']}]", (pt["K"], pt["value"]),
                              textcoords="offset points", xytext=(6, 4), fontsize="small")
    # Ours at powers of two: real Ks such as 15 (a batch of 16) and 16 (a queue) sit a
    # hair apart and their own ticks would print over each other.
    reals = [float(k) for k in ours[real] if k > 0]
    powers = ([2.0 ** e for e in range(math.floor(math.log2(min(reals))),
                                       math.ceil(math.log2(max(reals))) + 1)]
              if reals else [])
    for ax, ks in ((ax_ours, powers),
                   (ax_paper, sorted(set(paper["K"] if len(paper) else [])))):
        ax.set_xscale("log", base=2)
        if ks:
            ax.xaxis.set_major_locator(FixedLocator(ks))
            ax.set_xticks(ks, [f"{int(k)}" for k in ks], rotation=30)
        ax.xaxis.set_minor_locator(NullLocator())
    ax_ours.set_xlabel("negatives per query, as trained ([the paper's label K])")
    ax_paper.set_xlabel(f"{p['k_name']} (number of negatives, paper scale)")
    ax_ours.set_ylabel(f"ours: {METRIC_NAMES[p['metric']]} (%)")
    ax_ours.set_title("ours (mean ± std over seeds)")
    ax_paper.set_ylabel("paper: ImageNet linear top-1 (%)")
    ax_paper.set_title("MoCo v1, R-50 (published)")
    handles = [Line2D([], [], color=colors[m], marker="o", lw=1.6) for m in p["order"]]
    fig.legend(handles, [p["mechanism_names"].get(m, m) for m in p["order"]], title="mechanism",
               loc="outside right center")
    fig.suptitle(spec.title)
    return fig


# -- final accuracy per factor value ------------------------------------------------------

def _draw_final(spec: FigureSpec) -> Figure:
    """Factor values as rows (top to bottom in the table's order), accuracy along x: long
    labels stay horizontal and two dozen values still read."""
    summary, dots, p = spec.frames["summary"], spec.frames["dots"], spec.params
    has_paper = summary["paper"].notna().any()
    n = len(summary)
    height = 2.0 + 0.36 * max(n, 3)
    fig = Figure(figsize=(10.5 if has_paper else 6.5, height), layout="constrained")
    if has_paper:
        axes = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2]).ravel()
    else:
        axes = [fig.subplots(1, 1)]
    ax = axes[0]
    ys = np.arange(n)
    position = dict(zip(summary["label"], ys, strict=True))
    rng = np.random.default_rng(0)  # fixed jitter: the same data draws the same picture
    palette = sns.color_palette("colorblind")
    if len(dots):
        jitter = rng.uniform(-0.15, 0.15, len(dots))
        ax.scatter(dots["value"], dots["label"].map(position) + jitter, s=14, alpha=0.5,
                   color=palette[0], label="seed", zorder=2)
    ax.errorbar(summary["mean"], ys, xerr=summary["std"].fillna(0.0), fmt="o", color="black",
                capsize=3, markersize=6, label="mean ± std", zorder=3)
    for ypos, mean, diverged in zip(ys, summary["mean"], summary["diverged"], strict=True):
        if pd.isna(mean):
            text = f"{int(diverged)} diverged" if diverged else "no finished run"
            ax.text(0.02, ypos, text, transform=ax.get_yaxis_transform(), va="center",
                    fontsize="small", color="crimson" if diverged else "0.35")
    labels = [f"{lab} ({int(d)} diverged)" if d and not pd.isna(m) else lab
              for lab, d, m in zip(summary["label"], summary["diverged"], summary["mean"],
                                   strict=True)]
    ax.set_yticks(ys)
    ax.set_yticklabels(labels)
    ax.set_ylim(n - 0.5, -0.5)  # first factor value on top, as in the table
    ax.set_ylabel(p["xlabel"])
    ax.set_xlabel(f"ours: {METRIC_NAMES[p['metric']]} (%)")
    ax.set_title("ours")
    if has_paper:
        pax = axes[1]
        known = summary[summary["paper"].notna()]
        pax.scatter(known["paper"], known["label"].map(position), marker="D", s=50,
                    color=palette[3], zorder=3)
        for _, row in known.iterrows():
            pax.annotate(f"{row['paper']:.1f} [{row['tag']}]",
                         (row["paper"], position[row["label"]]), textcoords="offset points",
                         xytext=(7, 0), va="center", fontsize="small")
        lo, hi = known["paper"].min(), known["paper"].max()
        pax.set_xlim(lo - 1.0 - 0.1 * (hi - lo), hi + 2.5 + 0.35 * (hi - lo))
        pax.set_xlabel("paper: ImageNet linear top-1 (%)")
        pax.set_title("paper")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    fig.suptitle(spec.title)
    return fig


# -- dispatch -----------------------------------------------------------------------------

_DRAW = {"knn": _draw_knn, "patch_proj": _draw_knn, "grad": _draw_grad,
         "negatives": _draw_negatives, "final": _draw_final}


def render(spec: FigureSpec) -> Figure:
    """Draw ``spec`` (its frames loaded; call ``apply_style`` once first)."""
    return _DRAW[spec.kind](spec)


def save(fig: Figure, stem: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write ``fig`` in each format. The constrained layout is solved by the first save
    only: it is in figure fractions, the same for every format, and solving it again cost
    about a third of each further save."""
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=DPI)
        fig.set_layout_engine("none")
        paths.append(path)
    return paths


def render_to_files(spec: FigureSpec, stem: Path, formats: tuple[str, ...] = FORMATS
                    ) -> list[Path]:
    """Style, draw and save one figure (the unit of work of a drawing process)."""
    apply_style()
    return save(render(spec), stem, formats)
