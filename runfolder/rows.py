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
from collections.abc import Callable, Iterable
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
# Bytes that mark a line holding a non-finite value: our strings, or the bare NaN / Infinity
# literals Python's json writes (a reader that cannot decode those must not read the line).
NON_FINITE_TOKENS = (b'"nan"', b'"inf"', b'"-inf"', b"NaN", b"Infinity")
# How encode_row spells the start of a train row (json.dumps), and how a compact writer does:
# a reader may take a line with one of these prefixes as a train row without parsing it.
TRAIN_PREFIXES = (b'{"kind": "train"', b'{"kind":"train"')
ROW_FIELDS = ("kind", "step")  # a JSON object is a row when it has these
# Rows of one kind with equal values of these fields are the same measurement (dedup_key).
DEDUP_FIELDS: dict[str, tuple[str, ...]] = {"probe": ("step", "probe_epoch"),
                                            "event": ("step", "event", "group")}


def is_step_row(row: dict[str, Any]) -> bool:
    """Whether `row` is a function of the training step (a resumed run writes it again)."""
    kind = row.get("kind")
    return kind in ("train", "knn") or (kind == "event" and row.get("event") in STEP_EVENTS)


def dedup_fields(kind: Any) -> tuple[str, ...]:
    """The fields besides `kind` that name one measurement of `kind` (train, knn: the step)."""
    return DEDUP_FIELDS.get(kind, ("step",))


def dedup_key(row: dict[str, Any]) -> tuple:
    """Rows with the same key describe the same measurement (readers of folders written
    before rows were exactly-once keep the last one)."""
    kind = row.get("kind")
    return (kind, *(row.get(name) for name in dedup_fields(kind)))


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
    """One metrics line (with its newline); `kind` first, as TRAIN_PREFIXES expects."""
    return encode(row) + "\n"


# ---------------------------------------------------------------- reading
# The one definition of how a metrics.jsonl is read; analysis' fast readers call these
# functions (with a faster JSON parser) and fall back to them for any line they refuse.


def split_complete(data: bytes) -> tuple[bytes, str | None]:
    """`data` cut to whole lines (empty, or ending with a newline), and a warning when a
    torn last line was dropped. A last line without its newline that is a whole JSON
    object is kept (the writer stopped between the row and its newline)."""
    if not data or data.endswith(b"\n"):
        return data, None
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        if isinstance(json.loads(tail), dict):
            return data + b"\n", None
    except ValueError:  # UnicodeDecodeError is one
        pass
    if not tail.strip():
        return data[:cut], None
    return data[:cut], f"skipped a truncated last line ({len(tail)} bytes; run still writing?)"


def parse_row(line: bytes, loads: Callable[[bytes], Any] = json.loads) -> dict[str, Any] | None:
    """The row on one line, values decoded (`decode_value`); None when the line is not a
    JSON object with ROW_FIELDS. `loads`: a faster parser that raises ValueError for what
    it refuses."""
    try:
        row = loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or any(name not in row for name in ROW_FIELDS):
        return None
    return {key: decode_value(key, value) for key, value in row.items()}


def keep_last(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Of rows with the same `dedup_key` the last, in its place; and how many were dropped."""
    kept: dict[tuple, dict[str, Any]] = {}
    repeated = 0
    for row in rows:
        key = dedup_key(row)
        repeated += kept.pop(key, None) is not None
        kept[key] = row
    return list(kept.values()), repeated


def bad_lines_warning(numbers: list[int]) -> str:
    """The warning for lines that are not rows (`numbers`: their 1-based line numbers)."""
    shown = ", ".join(str(n) for n in numbers[:5]) + (" ..." if len(numbers) > 5 else "")
    return (f"skipped {len(numbers)} line(s) that are not JSON rows with kind and step "
            f"(line {shown})")


def repeated_warning(count: int, kind: str = "") -> str:
    """The warning for rows a writer from before the exactly-once rule repeated."""
    return (f"{count} repeated {kind + ' ' if kind else ''}row(s) of an earlier writer's "
            "resume; kept the last of each")


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a metrics.jsonl by the rules above, and what was skipped, in words: a
    truncated last line (a writer killed mid-line) and lines that are not rows with kind and
    step are skipped; of rows with the same `dedup_key` (a folder written before rows were
    exactly once) the last is kept, in its place. Values are decoded (`decode_value`)."""
    body, torn = split_complete(Path(path).read_bytes())
    warnings = [torn] if torn else []
    rows, bad = [], []
    for number, line in enumerate(body.split(b"\n")[:-1], start=1):
        row = parse_row(line)
        if row is not None:
            rows.append(row)
        elif line.strip():
            bad.append(number)
    if bad:
        warnings.append(bad_lines_warning(bad))
    rows, repeated = keep_last(rows)
    if repeated:
        warnings.append(repeated_warning(repeated))
    return rows, warnings
