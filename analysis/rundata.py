"""Read one run folder (config.yaml, status.json, summary.json, metrics.jsonl) tolerantly.

Everything here takes the path of one run folder and returns plain Python data plus a list
of warning strings; nothing raises on bad content. Rules of the run-folder contract
(the ``runfolder`` package):

* metrics.jsonl is read by ``moco3.runfolder.rows``' rules, not re-spelled here: what a row is
  (``parse_row``: a JSON object with ``kind`` and ``step``, non-finite strings decoded), a
  torn last line (``split_complete``: skipped and reported), and which rows are repeats
  (``dedup_key``, ``keep_last``: folders written before rows were exactly once may repeat
  steps after a resume; the last row is kept and the run says so). What this module adds
  is speed: orjson for the rows it parses, and polars / pyarrow for the train columns, each
  falling back to ``parse_row`` for what it refuses.
* train rows are by far the most numerous (one per logged step) and most reports only need
  the evaluation rows, so ``scan_metrics`` parses the knn/probe/event rows and only counts
  the train rows; ``load_train_rows`` parses those when they are wanted.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import yaml

from moco3.analysis.linescan import scan_lines
from moco3.analysis.reference import normalize_label
from moco3.analysis.summarize import from_eval_rows
from moco3.runfolder import layout
from moco3.runfolder.atomic import read_json_list
from moco3.runfolder.fields import (
    STATUS_KEYS,
    SUMMARY_EXTRA_KEYS,
    SUMMARY_KEYS,
    first_layer_group,
    patch_embed_trains,
)
from moco3.runfolder.negatives import NEGATIVES_PER_QUERY
from moco3.runfolder.negatives import from_config as negatives_from_config
from moco3.runfolder.rows import (
    KEYS,
    NON_FINITE_TOKENS,
    TRAIN_PREFIXES,
    bad_lines_warning,
    dedup_fields,
    keep_last,
    parse_row,
    repeated_warning,
    split_complete,
)
from moco3.runfolder.states import DIVERGED, IN_PROGRESS, NO_METRICS_YET, STATES, UNKNOWN

RUN_FILES = (layout.CONFIG, layout.STATUS, layout.SUMMARY, layout.METRICS, layout.ENV)

KNOWN_KEYS = KEYS


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # same safe subset, in C


def load_yaml(path: Path) -> Any:
    """yaml.safe_load with the C loader when PyYAML has it (same safety, ~10x faster)."""
    with open(path, "rb") as f:
        return yaml.load(f, Loader=_SafeLoader)  # noqa: S506 -- a SafeLoader


def read_json_file(path: Path, warnings: list[str]) -> dict | None:
    """A JSON object from ``path``; None (and a warning) when missing or unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        warnings.append(f"{path.name}: cannot be read ({exc.strerror}); ignored")
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        warnings.append(f"{path.name}: not valid JSON (written while being read?); ignored")
        return None
    if not isinstance(value, dict):
        warnings.append(f"{path.name}: not a JSON object; ignored")
        return None
    return value


@dataclass
class MetricsScan:
    """The evaluation rows of a metrics.jsonl and what is known of its train rows."""

    eval_rows: list[dict] = field(default_factory=list)  # knn/probe/event/other, deduplicated
    num_train_rows: int = 0  # train lines (before deduplication)
    last_train: dict | None = None  # the last train row in the file
    train_needs_slow_parse: bool = False  # some train line is not in the fast-path format
    warnings: list[str] = field(default_factory=list)


def loads(line: bytes) -> Any:
    """One JSON value: orjson (about 5x faster than json), or json for what only json
    reads (NaN / Infinity literals, integers beyond 64 bits)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def _whole_lines(data: bytes, path: Path, warnings: list[str]) -> bytes:
    """``data`` cut to whole lines by runfolder's torn-last-line rule, the warning kept."""
    body, torn = split_complete(data)
    if torn:
        warnings.append(f"{path.name}: {torn}")
    return body


def scan_metrics(path: Path) -> MetricsScan:
    """Parse the non-train rows of ``path`` and count its train rows (see module doc)."""
    scan = MetricsScan()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return scan
    except OSError as exc:
        scan.warnings.append(f"{path.name}: cannot be read ({exc.strerror}); ignored")
        return scan
    lines = scan_lines(_whole_lines(data, path, scan.warnings))
    other, scan.num_train_rows = lines.other, lines.num_train
    last_train_line, last_train_at = lines.last_train, lines.last_train_at

    rows: list[dict] = []
    bad: list[int] = []
    for number, line in other:
        row = parse_row(line, loads)
        if row is None:
            bad.append(number)
        elif row["kind"] == "train":  # a train row in another spelling than json.dumps'
            scan.num_train_rows += 1
            scan.train_needs_slow_parse = True
            if number > last_train_at:  # the file's last train row, whichever its spelling
                last_train_line, last_train_at = line, number
        else:
            rows.append(row)
    if last_train_line is not None:
        scan.last_train = parse_row(last_train_line, loads)
    if bad:
        scan.warnings.append(f"{path.name}: {bad_lines_warning(bad)}")
    kept, repeated = keep_last(rows)
    if repeated:
        scan.warnings.append(f"{path.name}: {repeated_warning(repeated)}")
    scan.eval_rows = sorted(kept, key=_step_order)
    unknown_kinds = sorted({str(r["kind"]) for r in scan.eval_rows} - set(KNOWN_KEYS))
    if unknown_kinds:
        scan.warnings.append(f"{path.name}: rows of unknown kind {', '.join(unknown_kinds)}; kept")
    extra = _unknown_keys(scan.eval_rows + ([scan.last_train] if scan.last_train else []))
    if extra:
        scan.warnings.append(f"{path.name}: unknown keys {extra}; kept as columns")
    return scan


def _step_order(row: dict) -> tuple:
    step = row.get("step")
    return (step if isinstance(step, int | float) else math.inf, str(row.get("kind")))


def _unknown_keys(rows: list[dict]) -> str:
    """Describe keys outside the contract, per kind, e.g. "knn_top5 (knn)"."""
    found: dict[str, set[str]] = {}
    for row in rows:
        known = KNOWN_KEYS.get(str(row.get("kind")))
        if known is None:
            continue
        for key in row.keys() - known:
            found.setdefault(key, set()).add(str(row["kind"]))
    return ", ".join(f"{k} ({'/'.join(sorted(v))})" for k, v in sorted(found.items()))


def load_train_rows(path: Path, force_slow: bool = False, columns: list[str] | None = None
                    ) -> tuple[pd.DataFrame, list[str]]:
    """The train rows of ``path`` (all keys, or ``columns`` and step) as a DataFrame sorted
    by step, last row per step kept.

    With ``columns`` (what a figure needs), polars reads just those keys of every line
    (~4x faster than pyarrow's reader, which parses every key); values are read as text
    and cast, so the non-finite strings ("nan", "inf") come back as floats. Without, the
    train lines go to pyarrow's JSON reader. Files either reader refuses (NaN / Infinity
    literals, type changes between rows, corrupt lines) take the json-module path.
    """
    warnings: list[str] = []
    try:
        data = path.read_bytes()
    except OSError:
        return pd.DataFrame({"step": pd.Series(dtype="int64")}), warnings
    body = _whole_lines(data, path, warnings)
    frame = None
    if columns is not None and not force_slow:
        frame = _polars_frame(body, columns)
    if frame is None and not force_slow and not any(token in body
                                                     for token in NON_FINITE_TOKENS):
        plain, other = [], False
        for line in body.split(b"\n"):
            if line.startswith(TRAIN_PREFIXES):
                plain.append(line)
            else:  # a train row in another key order: pyarrow would not see it
                other = other or b'"train"' in line
        frame = None if other else _arrow_frame(b"\n".join(plain))
    if frame is None:
        frame = _python_frame(body, path, warnings)
    if columns is not None:
        frame = frame[[c for c in dict.fromkeys(["step", *columns]) if c in frame.columns]]
    if "step" not in frame.columns:
        frame["step"] = pd.Series(dtype="int64")
    stepless = frame["step"].isna()  # not rows (moco3.runfolder.rows.ROW_FIELDS); the fast
    if stepless.any():  # readers keep them, the json-module one refuses them itself
        warnings.append(f"{path.name}: skipped {int(stepless.sum())} corrupt train line(s) "
                        "(no step)")
        frame = frame[~stepless]
    frame = frame.drop(columns=["kind"], errors="ignore")
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].isna().all():
            frame[column] = frame[column].astype("float64")  # never logged, e.g. frozen layer
    before = len(frame)
    frame = frame.drop_duplicates(subset=list(dedup_fields("train")), keep="last")
    frame = frame.sort_values("step", kind="stable")
    if len(frame) < before:
        warnings.append(f"{path.name}: {repeated_warning(before - len(frame), 'train')}")
    return frame.reset_index(drop=True), warnings


_INT_KEYS = frozenset({"step", "images_seen", "probe_epoch"})  # the integer keys of rows


def _polars_frame(body: bytes, columns: list[str]) -> pd.DataFrame | None:
    """Train rows, only ``step`` and ``columns``, read by polars; None if it refuses."""
    import polars as pl

    keys = ["step", *dict.fromkeys(c for c in columns if c not in ("step", "kind"))]
    schema = {"kind": pl.String, **dict.fromkeys(keys, pl.String)}
    try:
        table = pl.read_ndjson(io.BytesIO(body), schema=schema) if body else None
    except pl.exceptions.PolarsError:
        return None
    if table is None:
        return pd.DataFrame({k: pd.Series(dtype="int64" if k in _INT_KEYS else "float64")
                             for k in keys})
    table = table.filter(pl.col("kind") == "train").select(
        pl.col(k).cast(pl.Int64 if k in _INT_KEYS else pl.Float64, strict=False)
        for k in keys)
    return table.to_pandas()


def _arrow_frame(train: bytes) -> pd.DataFrame | None:
    import pyarrow as pa
    import pyarrow.json as pj

    if not train:
        return pd.DataFrame()
    try:
        table = pj.read_json(
            io.BytesIO(train),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(1 << 20, len(train))),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # Nested values (an unknown key holding a list/dict) do not fit the cache's flat columns.
    if any(pa.types.is_nested(t) for t in table.schema.types):
        return None
    # A column that is null in every row (a frozen patch projection has no gradient norm)
    # is read as Arrow's null type; make it a float column like the others.
    for i, column in enumerate(table.schema):
        if pa.types.is_null(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(pa.float64()))
    return table.to_pandas()


def _python_frame(body: bytes, path: Path, warnings: list[str]) -> pd.DataFrame:
    rows = []
    bad: list[int] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        if b"train" not in line:  # cheap pre-filter; the parsed kind decides
            continue
        row = parse_row(line, loads)
        if row is None:
            bad.append(number)
        elif row["kind"] == "train":
            rows.append({k: _flat(v) for k, v in row.items()})
    if bad:
        shown = ", ".join(str(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        warnings.append(f"{path.name}: skipped {len(bad)} corrupt train line(s) (line {shown})")
    return pd.DataFrame.from_records(rows)


def _flat(value: Any) -> Any:
    """Scalars as they are; lists/dicts (unknown keys) as JSON text so columns stay flat."""
    return json.dumps(value) if isinstance(value, list | dict) else value


@dataclass
class RunData:
    """One run folder, read: its runs-table record, evaluation rows and warnings."""

    record: dict
    eval_rows: list[dict]
    warnings: list[str]  # "<file>: <message>", relative to the run folder


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _identity_from_path(relpath: str) -> tuple[str, str, dict[str, str], int | None]:
    """(ablation, run_id, factors, seed) from "<ablation>/<k=v,...>/seed=N"."""
    parts = relpath.split("/")
    ablation, run_id = parts[0], "/".join(parts[1:])
    factors: dict[str, str] = {}
    seed = None
    for part in parts[1:]:
        if part.startswith("seed=") and part[5:].lstrip("-").isdigit():
            seed = int(part[5:])
        elif part != "baseline":
            for item in part.split(","):
                name, sep, label = item.partition("=")
                if sep:
                    factors[name] = label
    return ablation, run_id, factors, seed


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def provenance(records: list[dict]) -> dict[str, Any]:
    """What produced a run, from its env.json (one record per start): the values of every
    start joined with " / " when they changed (a run resumed elsewhere shows both)."""
    def values(*keys: str) -> str | None:
        seen: list[str] = []
        for r in records:
            value = next((r.get(k) for k in keys if r.get(k)), None)
            if value is not None and str(value) not in seen:
                seen.append(str(value))
        return " / ".join(seen) or None

    for r in records:
        if r.get("git_commit"):
            r["_commit"] = r["git_commit"][:10] + ("+dirty" if r.get("git_dirty") else "")
        elif r.get("code_hash"):  # a copy built without git: its sources' hash
            r["_commit"] = f"sources {r['code_hash'][:10]}"
    return {"env.torch": values("torch_version"), "env.device": values("gpu_model",
                                                                       "cpu_capability"),
            "env.commit": values("_commit"), "env.starts": len(records) or None}


def read_run(run_dir: Path, relpath: str) -> RunData:
    """Read the run folder ``run_dir`` (``relpath`` = its path below the runs root):
    its identity (config.yaml or the folder path), then its status, then its numbers."""
    warnings: list[str] = []
    config, record = _read_identity(run_dir, relpath, warnings)
    record.update(provenance(read_json_list(run_dir / layout.ENV)))
    status = read_json_file(run_dir / "status.json", warnings)
    summary = read_json_file(run_dir / "summary.json", warnings)
    for name, content, known in (("status.json", status, STATUS_KEYS),
                                 ("summary.json", summary,
                                  SUMMARY_KEYS | SUMMARY_EXTRA_KEYS)):
        extra = sorted(set(content or {}) - known)
        if extra:
            warnings.append(f"{name}: unknown keys {', '.join(extra)}; ignored")

    scan = scan_metrics(run_dir / "metrics.jsonl")
    warnings.extend(scan.warnings)
    state = _read_status(record, status, summary, scan, warnings)
    _read_summary(record, state, config, status, summary, scan, warnings)
    return RunData(record=record, eval_rows=scan.eval_rows, warnings=warnings)


def _read_identity(run_dir: Path, relpath: str, warnings: list[str]
                   ) -> tuple[dict | None, dict[str, Any]]:
    """The run's config.yaml (None if missing or unusable) and its identity record:
    ablation, run_id, factors, seed, scale, config hash and the configured basics."""
    config = None
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        try:
            config = load_yaml(config_path)
        except (yaml.YAMLError, OSError) as exc:
            warnings.append(f"config.yaml: unreadable ({type(exc).__name__}); ignored")
        if config is not None and not isinstance(config, dict):
            warnings.append("config.yaml: not a mapping; ignored")
            config = None
    meta = _get(config, "meta") or {}
    ablation, run_id, path_factors, path_seed = _identity_from_path(relpath)
    if not meta:
        warnings.append(
            "config.yaml: no meta section; ablation, factors and seed taken from the folder path"
            if config is not None
            else "config.yaml: missing; ablation, factors and seed taken from the folder path"
        )
    factors = meta.get("factors")
    if isinstance(factors, dict):
        # YAML may have turned a label into a number or bool (lr: 1.5e-4 -> 0.00015); the
        # run_id keeps the launcher's spelling, so use it when it means the same value.
        id_factors = _identity_from_path(f"{ablation}/{meta.get('run_id') or run_id}")[2]
        factors = {
            str(k): id_factors[str(k)] if not isinstance(v, str) and str(k) in id_factors
            and normalize_label(id_factors[str(k)]) == normalize_label(v) else str(v)
            for k, v in factors.items()
        }
    else:
        factors = path_factors
    if meta.get("ablation") not in (None, ablation):
        warnings.append(
            f"config.yaml: meta.ablation {meta['ablation']!r} differs from the folder "
            f"{ablation!r}; using meta"
        )
    seed = _as_int(meta.get("seed"))
    record: dict[str, Any] = {
        "ablation": str(meta.get("ablation") or ablation),
        "run_id": str(meta.get("run_id") or run_id),
        "factors": factors,
        "seed": seed if seed is not None else path_seed,
        "scale": meta.get("scale"),
        "config_hash": meta.get("config_hash"),
        "cfg.epochs": _get(config, "train", "epochs"),
        "cfg.dataset": _get(config, "data", "name"),
        "cfg.arch": _get(config, "model", "arch"),
    }

    return config, record


def _read_status(record: dict[str, Any], status: dict | None, summary: dict | None,
                 scan: MetricsScan, warnings: list[str]) -> str:
    """Fill ``record``'s state and progress from status.json (else summary.json, else the
    last metrics row); returns the state."""
    last_row = scan.last_train or (scan.eval_rows[-1] if scan.eval_rows else {})
    state = _get(status, "state") or _get(summary, "state") or UNKNOWN
    if state not in STATES:
        warnings.append(f"status.json: unknown state {state!r}")
    if status is None:
        warnings.append(
            "status.json: missing; state taken from summary.json"
            if summary is not None and summary.get("state")
            else "status.json: missing; state unknown"
        )
    steps = [_as_int(_get(status, "step")), _as_int(_get(summary, "step")),
             _as_int(last_row.get("step"))]
    record.update(
        state=str(state),
        step=next((s for s in steps if s is not None), None),
        total_steps=_as_int(_get(status, "total_steps")),
        epoch=last_row.get("epoch"),
        images_seen=last_row.get("images_seen"),
        job_id=None if _get(status, "job_id") is None else str(status["job_id"]),
        error=_get(status, "error"),
        phase=_get(status, "phase"),
        updated=_get(status, "updated"),
        has_summary=summary is not None,
        num_metrics_rows=scan.num_train_rows + len(scan.eval_rows),
    )

    return str(state)


def _read_summary(record: dict[str, Any], state: str, config: dict | None, status: dict | None,
                  summary: dict | None, scan: MetricsScan, warnings: list[str]) -> None:
    """Fill ``record``'s numbers from summary.json, the missing ones derived from the
    metrics rows."""
    derived = from_eval_rows(scan.eval_rows, first_layer_group(patch_embed_trains(config)))
    derived["final_loss"] = (scan.last_train or {}).get("loss")
    values = {key: _get(summary, key) for key in SUMMARY_KEYS - {"state", "step"}}
    filled = []
    for key, value in values.items():
        if value is None and derived.get(key) is not None:
            values[key] = derived[key]
            filled.append(key)
    for key in ("precision", "threads", NEGATIVES_PER_QUERY):  # written when the job starts
        if values.get(key) is None:
            values[key] = _get(status, key)
    if values.get(NEGATIVES_PER_QUERY) is None and config is not None:
        # A run folder from before the field: the same rule, from its config.yaml.
        values[NEGATIVES_PER_QUERY] = negatives_from_config(config)
    if values.get("diverged_step") is None and state == DIVERGED:
        values["diverged_step"] = record["step"]
    # The primary linear top-1 is the probe's final epoch: the best epoch is selected on the
    # evaluation set itself. moco3's summary.json calls the best linear_top1 and the final
    # linear_top1_last; here they become linear_top1_best and linear_top1.
    best = _get(summary, "linear_top1")
    best = best if best is not None else derived["linear_top1_best"]
    last = _get(summary, "linear_top1_last")
    values["linear_top1"] = last if last is not None else derived["linear_top1"]
    values["linear_top1_best"] = best
    record.update(values)
    record["summary_source"] = (
        "metrics.jsonl" if summary is None else
        ("summary.json+metrics.jsonl" if filled else "summary.json")
    )
    if summary is None and scan.num_train_rows + len(scan.eval_rows):
        reason = "run in progress" if state in IN_PROGRESS else f"state {state}"
        warnings.append(f"summary.json: missing ({reason}); numbers derived from metrics.jsonl")
    elif summary is None and state not in NO_METRICS_YET:
        warnings.append(f"metrics.jsonl: missing or empty (state {state}); no numbers")
