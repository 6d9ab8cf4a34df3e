"""Summary numbers of one run derived from its metrics rows.

Used when summary.json is missing (a run in progress, killed, or from an older writer) or
leaves a number null. Same field names and the same instability rules
(``moco3.runfolder.instability``) as the training job's summary.json: the spike counts are the
job's own ``grad_spike`` events (it checks every step; the logged train rows hold only
every ``log_every``-th norm, so recounting them would disagree), the dips are recomputed
from the kNN rows, which the job writes at every evaluation it checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from moco3.runfolder.fields import LAST_LAYER_GROUP
from moco3.runfolder.instability import DIP_POINTS, find_dips, max_dip


def _finite_values(values: Sequence) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def from_eval_rows(eval_rows: list[dict], first_group: str = "patch_embed",
                   dip_points: float = DIP_POINTS) -> dict:
    """knn_top1 (last), knn_top1_max, linear_top1 (the probe's final epoch),
    linear_top1_best (its best epoch on the evaluation set, what the official main_lincls
    reports), dips, spike counts from the spike events, diverged_step."""
    knn = [r.get("knn_top1") for r in eval_rows if r.get("kind") == "knn"]
    knn = [v if isinstance(v, int | float) else None for v in knn]
    finite = _finite_values(knn)
    probes = _finite_values([r.get("probe_top1") for r in eval_rows if r.get("kind") == "probe"])
    events = [r for r in eval_rows if r.get("kind") == "event"]
    diverged = [r.get("step") for r in events if r.get("event") == "diverged"]
    spikes = [r.get("group") for r in events if r.get("event") == "grad_spike"]
    return {
        "knn_top1": finite[-1] if finite else None,
        "knn_top1_max": max(finite) if finite else None,
        "linear_top1": probes[-1] if probes else None,
        "linear_top1_best": max(probes) if probes else None,
        "num_knn_dips": len(find_dips(knn, dip_points)) if finite else None,
        "max_knn_dip": max_dip(knn) if finite else None,
        "num_spikes_first": spikes.count(first_group) if eval_rows else None,
        "num_spikes_last": spikes.count(LAST_LAYER_GROUP) if eval_rows else None,
        "diverged_step": diverged[0] if diverged else None,
    }
