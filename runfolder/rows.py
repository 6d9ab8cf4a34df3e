"""The rows of metrics.jsonl: kinds, keys, and which rows a resumed run writes again.

Every row has `kind`, `step`, `epoch` and `images_seen`, then the values of its kind:

    train  every train.log_every steps: loss, lr, wd, momentum, tau, grad_norm (total),
           grad_norm_<group> (patch_embed, first_block, last_block, heads), and the timing
           fields sec_per_step, img_per_sec, peak_mem_mb
    knn    at step 0 and every train.knn_every steps: knn_top1
    probe  per linear-probe epoch (step = probe epoch): probe_epoch, probe_loss, probe_top1,
           lr
    event  event = grad_spike (group, value, reference, threshold), knn_dip (value,
           reference, threshold), diverged, skipped_step (an fp16 step the GradScaler
           skipped: overflowed gradients, not a spike), resumed, preempted, failed

Exactly once: a run resumed from the checkpoint of step S first removes the rows that the
steps after S wrote (STEP rows: train and knn rows and the spike / dip / divergence events,
all functions of the step, recomputed bit for bit by the resumed run). It keeps the rows
that are not a function of the training step: probe rows (the probe rewinds its own rows to
its own checkpoint) and the interruption events (resumed, preempted, failed), which record
what happened to the job. So the file holds every step's rows exactly once, in order, and
equals an uninterrupted run's line for line apart from TIMING_KEYS and those events.

JSON has no NaN or infinity: non-finite floats are written as the strings "nan", "inf",
"-inf" and read back by `decode_value`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moco3.runfolder.fields import GRAD_GROUPS

COMMON_KEYS = frozenset({"kind", "step", "epoch", "images_seen"})
TIMING_KEYS = frozenset({"sec_per_step", "img_per_sec", "peak_mem_mb"})
KEYS: dict[str, frozenset[str]] = {
    "train": COMMON_KEYS | TIMING_KEYS | {
        "loss", "lr", "wd", "momentum", "tau", "grad_norm",
        *(f"grad_norm_{group}" for group in GRAD_GROUPS),
    },
    "knn": COMMON_KEYS | {"knn_top1"},
    "probe": COMMON_KEYS | {"probe_epoch", "probe_loss", "probe_top1", "lr"},
    "event": COMMON_KEYS | {"event", "group", "value", "reference", "threshold", "error"},
}
KINDS = tuple(KEYS)
STEP_EVENTS = ("grad_spike", "knn_dip", "diverged", "skipped_step")  # a resumed run redoes them
JOB_EVENTS = ("resumed", "preempted", "failed")  # what happened to the job: always kept
EVENTS = (*STEP_EVENTS, *JOB_EVENTS)

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "NaN": math.nan,
               "Infinity": math.inf, "-Infinity": -math.inf}


def is_step_row(row: dict[str, Any]) -> bool:
    """Whether `row` is a function of the training step (a resumed run writes it again)."""
    kind = row.get("kind")
    return kind in ("train", "knn") or (kind == "event" and row.get("event") in STEP_EVENTS)


def dedup_key(row: dict[str, Any]) -> tuple:
    """Rows with the same key describe the same measurement (readers of folders written
    before rows were exactly-once keep the last one)."""
    kind = row.get("kind")
    if kind == "probe":
        return (kind, row.get("step"), row.get("probe_epoch"))
    if kind == "event":
        return (kind, row.get("step"), row.get("event"), row.get("group"))
    return (kind, row.get("step"))


def _finite_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value


def encode(obj: Any, **dumps: Any) -> str:
    """JSON text of `obj` with non-finite floats as strings (standard JSON)."""
    return json.dumps(_finite_json(obj), **dumps)


def decode_value(key: str, value: Any) -> Any:
    """A value read from a row: the non-finite strings back to floats."""
    if isinstance(value, str) and key != "kind" and value in _NON_FINITE:
        return _NON_FINITE[value]
    return value


def encode_row(row: dict[str, Any]) -> str:
    """One metrics line (with its newline); `kind` first, as readers' fast path expects."""
    return encode(row) + "\n"


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a metrics.jsonl by the rules above, and what was skipped, in words: a
    truncated last line (a writer killed mid-line) and lines that are not rows with kind and
    step are skipped; of rows with the same `dedup_key` (a folder written before rows were
    exactly once) the last is kept, in its place. Values are decoded (`decode_value`)."""
    lines = Path(path).read_bytes().split(b"\n")
    warnings = []
    tail = lines.pop()  # after the last newline: b"" unless a writer stopped mid-line
    try:
        if isinstance(json.loads(tail), dict):
            lines.append(tail)  # a whole row, only its newline is missing
    except ValueError:
        if tail.strip():
            warnings.append(f"skipped a truncated last line ({len(tail)} bytes)")
    rows: dict[tuple, dict[str, Any]] = {}
    bad = repeated = 0
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            bad += bool(line.strip())
            continue
        if not isinstance(row, dict) or "kind" not in row or "step" not in row:
            bad += 1
            continue
        row = {key: decode_value(key, value) for key, value in row.items()}
        key = dedup_key(row)
        repeated += rows.pop(key, None) is not None
        rows[key] = row
    if bad:
        warnings.append(f"skipped {bad} line(s) that are not rows with kind and step")
    if repeated:
        warnings.append(f"{repeated} repeated row(s) of an earlier version's resume; kept the "
                        "last of each")
    return list(rows.values()), warnings
