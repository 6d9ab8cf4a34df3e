"""A study's declared findings and paper-scale cost, from its study.json (moco3.runfolder.study).

The report judges whatever a study declares: the paper's findings for the studies shipped in
experiments/conf/ablation, a user's own for theirs. An ablation folder without study.json (a
study launched by an older launcher) has no findings until it is launched again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from moco3.analysis.reference import normalize_label
from moco3.runfolder.study import Finding, FindingError, parse_findings, read_study

__all__ = ["Finding", "Study", "load_study"]


@dataclass
class Study:
    ablation: str
    findings: list[Finding] = field(default_factory=list)
    paper_cells: list[dict] = field(default_factory=list)  # factors, gpu_hours (one run)
    problem: str = ""  # why the findings could not be read, for the report
    recorded: bool = True  # False: the ablation folder has no study.json
    design: str = ""  # the ablation file's description: what else moves with the factor

    def paper_gpu_hours(self, finding: Finding) -> float:
        """GPU-hours of one seed of groups A and B at the study's paper scale: NaN when the
        cost is unknown or a group has no cell at that scale (a level of a smaller scale)."""
        total = 0.0
        for group in (finding.a, finding.b):
            hours = [c["gpu_hours"] for c in self.paper_cells
                     if all(normalize_label(str(c["factors"].get(k))) == normalize_label(v)
                            for k, v in group.items())]
            if not hours:
                return math.nan
            total += sum(hours)
        return total


def load_study(ablation_dir: Path) -> Study:
    """The study of one ablation folder (no findings when study.json is missing)."""
    name = Path(ablation_dir).name
    data = read_study(ablation_dir)
    if data is None:
        return Study(name, recorded=False)
    design = str(data.get("design") or "")
    raw = data.get("findings") or []
    # Recorded after the launcher checked them against the grid; checked here again for
    # shape only (a hand-edited file), against the levels the records name.
    levels: dict[str, list[str]] = {}
    for entry in raw if isinstance(raw, list) else []:
        for side in ("a", "b"):
            for k, v in (entry.get(side) or {}).items() if isinstance(entry, dict) else ():
                levels.setdefault(str(k), []).append(str(v))
    try:
        findings = parse_findings(raw, levels, f"{name}/study.json")
    except FindingError as err:
        return Study(name, problem=str(err), design=design)
    cells = [c for c in data.get("paper_cells") or []
             if isinstance(c, dict) and isinstance(c.get("factors"), dict)
             and isinstance(c.get("gpu_hours"), int | float)]
    return Study(name, findings, cells, design=design)
