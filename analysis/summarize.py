"""Summary numbers of one run derived from its metrics rows.

Used when summary.json is missing (a run in progress, killed, or from an older writer) or
leaves a number null. Same field names and the same instability definitions
(``analysis.instability``) as the training job's summary.json, so a derived number and a
written one mean the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from analysis.instability import DIP_POINTS, find_dips, find_spikes, max_dip

FIRST_LAYER_KEYS = ("grad_norm_patch_embed", "grad_norm_first_block")
LAST_LAYER_KEY = "grad_norm_last_block"


def _finite_values(values: Sequence) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def from_eval_rows(eval_rows: list[dict], dip_points: float = DIP_POINTS) -> dict:
    """knn_top1 (last), knn_top1_max, linear_top1 (best probe epoch, as moco3/probe.py
    reports it), dips, diverged_step."""
    knn = [r.get("knn_top1") for r in eval_rows if r.get("kind") == "knn"]
    knn = [v if isinstance(v, int | float) else None for v in knn]
    finite = _finite_values(knn)
    probes = _finite_values([r.get("probe_top1") for r in eval_rows if r.get("kind") == "probe"])
    diverged = [r.get("step") for r in eval_rows
                if r.get("kind") == "event" and r.get("event") == "diverged"]
    return {
        "knn_top1": finite[-1] if finite else None,
        "knn_top1_max": max(finite) if finite else None,
        "linear_top1": max(probes) if probes else None,
        "num_knn_dips": len(find_dips(knn, dip_points)) if finite else None,
        "max_knn_dip": max_dip(knn) if finite else None,
        "diverged_step": diverged[0] if diverged else None,
    }


def first_layer_key(train: pd.DataFrame) -> str | None:
    """The first layer that learns: the patch projection, unless it is frozen (its norm is
    then logged as 0, or not at all), else the first block -- as the training job counts."""
    for key in FIRST_LAYER_KEYS:
        if key in train.columns and (pd.to_numeric(train[key], errors="coerce") > 0).any():
            return key
    return None


def spike_counts(train: pd.DataFrame, **thresholds: float) -> dict:
    """num_spikes_first / num_spikes_last from the gradient-norm columns of train rows."""
    out: dict = {"num_spikes_first": None, "num_spikes_last": None}
    first = first_layer_key(train)
    if first is not None:
        out["num_spikes_first"] = len(find_spikes(_series(train[first]), **thresholds))
    if LAST_LAYER_KEY in train.columns and train[LAST_LAYER_KEY].notna().any():
        out["num_spikes_last"] = len(find_spikes(_series(train[LAST_LAYER_KEY]), **thresholds))
    return out


def _series(column: pd.Series) -> list[float]:
    """Column values for find_spikes. moco3 logs every group's norm at every train row, so
    a NaN here is a logged non-finite norm ("nan"), which is a spike, as in the job."""
    return pd.to_numeric(column, errors="coerce").astype("float64").tolist()
