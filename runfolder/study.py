"""study.json: what a study set out to show, beside its run folders.

    <runs_root>/<ablation>/study.json
      ablation, scale, reproduces
      findings         the ablation YAML's `findings:` block, checked (Finding below)
      paper_cells      [{"factors": {factor: label}, "gpu_hours": per run}] of every cell at the
                       study's paper scale (the dry run's cost model); [] when unknown

The launcher writes it at every launch (the findings are a statement about the runs, not part
of any run's configuration, so editing them changes no run); the report reads it and judges
each finding. A finding is group A against group B, each a selection of factor levels, on one
metric of the runs table, with the sign the paper found A - B to have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moco3.runfolder.atomic import write_text

STUDY = "study.json"
# The numbers of a run a finding may compare (columns of the report's runs table).
METRICS = {
    "linear_top1": "linear-probe top-1 at the probe's final epoch",
    "linear_top1_best": "best linear-probe top-1 over the epochs, on the evaluation set "
                        "(what the official main_lincls reports)",
    "knn_top1": "kNN top-1 at the end of pre-training",
    "knn_top1_max": "best kNN top-1 over pre-training",
    "max_knn_dip": "the deepest kNN dip",
    "num_knn_dips": "the number of kNN dips",
    "num_spikes_first": "gradient spikes in the first layer",
    "num_spikes_last": "gradient spikes in the last block",
}
KEYS = ("claim", "a", "b", "sign", "metric", "paper_diff", "in_paper")


class FindingError(ValueError):
    """A finding that cannot be judged; the message is one sentence."""


@dataclass(frozen=True)
class Finding:
    """Group A against group B on `metric`; the paper found A - B of sign `sign`."""

    claim: str
    a: dict[str, str]
    b: dict[str, str]
    sign: int  # +1: A > B; -1: A < B
    metric: str
    paper_diff: float | None = None  # the paper's A - B on its metric, in points
    in_paper: bool = True


def parse_findings(raw: Any, levels: Mapping[str, list[str]], where: str,
                   cells: list[dict[str, str]] | None = None) -> list[Finding]:
    """Findings from a `findings:` block; `levels`: factor -> every label the study has (at
    any scale), `cells`: the grid's cells (factor -> label). Raises FindingError naming the
    finding and what is wrong."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise FindingError(f"{where}: findings must be a list of mappings, got {raw!r}.")
    out = []
    for i, entry in enumerate(raw):
        name = f"{where}: finding {i + 1}"
        if not isinstance(entry, Mapping):
            raise FindingError(f"{name} must be a mapping with keys {', '.join(KEYS)}.")
        if isinstance(entry.get("claim"), str) and entry["claim"]:
            name += f" ({entry['claim']!r})"
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise FindingError(f"{name}: unknown key(s) {', '.join(map(str, unknown))}; valid: "
                               f"{', '.join(KEYS)}.")
        missing = [k for k in ("claim", "a", "b", "sign", "metric") if entry.get(k) is None]
        if missing:
            raise FindingError(f"{name} needs {', '.join(missing)}.")
        if entry["metric"] not in METRICS:
            raise FindingError(f"{name}: metric {entry['metric']!r} is not one of "
                               f"{', '.join(METRICS)}.")
        if entry["sign"] not in (1, -1) or isinstance(entry["sign"], bool):
            raise FindingError(f"{name}: sign must be +1 (the paper found A > B) or -1 "
                               f"(A < B), got {entry['sign']!r}.")
        paper_diff = entry.get("paper_diff")
        if paper_diff is not None and (isinstance(paper_diff, bool) or not isinstance(
                paper_diff, int | float) or not math.isfinite(paper_diff)):
            raise FindingError(f"{name}: paper_diff must be a number of points, got "
                               f"{paper_diff!r}.")
        if paper_diff is not None and paper_diff * entry["sign"] <= 0:
            raise FindingError(f"{name}: paper_diff {paper_diff} disagrees with sign "
                               f"{entry['sign']:+d}.")
        groups = {}
        for side in ("a", "b"):
            group = entry[side]
            if not isinstance(group, Mapping) or not group:
                raise FindingError(f"{name}: group {side.upper()} must map factors to level "
                                   f"labels, e.g. {{lr: \"1.5e-4\"}}, got {group!r}.")
            group = {str(k): str(v) for k, v in group.items()}
            for factor, label in group.items():
                if factor not in levels:
                    raise FindingError(f"{name}: group {side.upper()} names factor {factor!r}, "
                                       f"which the study does not have (factors: "
                                       f"{', '.join(levels) or 'none'}).")
                if label not in levels[factor]:
                    raise FindingError(f"{name}: group {side.upper()} selects {factor}="
                                       f"{label}, which is not a level of {factor} (levels: "
                                       f"{', '.join(levels[factor])}).")
            if cells is not None and not any(all(c.get(f) == v for f, v in group.items())
                                             for c in cells):
                raise FindingError(f"{name}: group {side.upper()} selects "
                                   f"{_text(group)}, a combination no cell of the grid has.")
            groups[side] = group
        if groups["a"] == groups["b"]:
            raise FindingError(f"{name}: groups A and B select the same runs.")
        out.append(Finding(str(entry["claim"]), groups["a"], groups["b"], int(entry["sign"]),
                           str(entry["metric"]),
                           None if paper_diff is None else float(paper_diff),
                           bool(entry.get("in_paper", True))))
    return out


def _text(group: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in group.items())


def write_study(folder: Path, ablation: str, scale: str, reproduces: str,
                findings: list[Finding], paper_cells: list[dict[str, Any]],
                design: str = "") -> Path:
    """design: the ablation file's `description`, what varies with the factor besides it,
    which the report prints under the study's heading."""
    path = Path(folder) / STUDY
    write_text(path, json.dumps({"ablation": ablation, "scale": scale, "reproduces": reproduces,
                                 "design": design, "findings": [asdict(f) for f in findings],
                                 "paper_cells": paper_cells}, indent=1) + "\n")
    return path


def read_study(folder: Path) -> dict[str, Any] | None:
    """The study record of an ablation folder, or None when it has none (a study launched
    before the launcher wrote one) or it cannot be read."""
    try:
        data = json.loads((Path(folder) / STUDY).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
