"""Every run folder under a runs root, as two tidy pandas DataFrames.

``collect()`` returns a :class:`Collection`:

* ``runs``  -- one row per run folder: ablation, run_id, one column per factor (from
  config.yaml ``meta.factors``; labels as strings), seed, state (status.json), the summary
  numbers (summary.json, or derived from metrics.jsonl when it is missing or null), scale,
  config_hash, and bookkeeping (run_dir relative to the root, factor_names, factor_label).
* ``steps`` -- the metrics rows of the requested kinds, deduplicated per run by (kind, step)
  keeping the last (see ``moco3.runfolder.rows.dedup_key``), with ablation/run_id/run_dir.
* ``warnings`` -- one line per problem found, each naming its file: runs in progress, a
  truncated last line, a missing summary, unknown keys, an unwritable cache.

Parsed results are cached as parquet under ``<runs_root>/.cache/`` (``moco3.analysis.cache``) keyed
by each file's size and mtime, so a rebuild re-reads only the runs that changed. Train rows
(the bulk of every metrics file) are parsed only when asked for: ``kinds`` including
"train", or ``Collection.train_steps`` for a few runs.

The runs root is, in order: the ``runs_root`` argument, the ``MOCO3_RUNS_ROOT`` environment
variable, ``runs`` in the current directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from moco3.analysis.cache import ParseCache, file_key
from moco3.analysis.rundata import RUN_FILES, RunData, load_train_rows, read_run
from moco3.runfolder.layout import ENV_RUNS_ROOT
from moco3.runfolder.layout import runs_root as layout_runs_root

ENV_VAR = ENV_RUNS_ROOT
ALL_KINDS = ("train", "knn", "probe", "event")
EVAL_KINDS = ("knn", "probe", "event")
MAX_READERS = 8  # threads reading run folders (at most one per CPU this process may use)
MAX_DEPTH = 6  # <root>/<ablation>/<factors>/<seed=N> is 3; leave room for nesting

ID_COLUMNS = ["ablation", "run_id"]
RUN_COLUMNS = [
    "seed", "state", "step", "total_steps", "epoch", "images_seen",
    "knn_top1", "knn_top1_max", "knn_top1_pixels", "linear_top1", "linear_top1_best",
    "num_knn_dips", "max_knn_dip", "precision", "threads", "negatives_per_query",
    "num_spikes_first", "num_spikes_last", "diverged_step", "final_loss", "train_seconds",
    "has_summary", "summary_source", "scale", "config_hash", "cfg.epochs", "cfg.dataset",
    "cfg.arch", "job_id", "error", "phase", "updated", "num_metrics_rows",
    "env.torch", "env.device", "env.commit", "env.starts",
    "factor_names", "factor_label", "run_dir",
]
_INT_COLUMNS = ["seed", "step", "total_steps", "images_seen", "num_knn_dips",
                "negatives_per_query", "num_spikes_first", "num_spikes_last", "diverged_step",
                "num_metrics_rows"]
_FLOAT_COLUMNS = ["epoch", "knn_top1", "knn_top1_max", "linear_top1", "linear_top1_best",
                  "max_knn_dip",
                  "final_loss", "train_seconds"]
_RESERVED = set(ID_COLUMNS) | set(RUN_COLUMNS) | {"factors"}


class RunsRootError(ValueError):
    """The runs root does not exist or is not a folder (message: one sentence)."""


def resolve_runs_root(runs_root: str | os.PathLike | None = None) -> Path:
    """The argument, else $MOCO3_RUNS_ROOT, else ./runs (one rule for every command)."""
    return layout_runs_root(runs_root)


def factor_column(name: str) -> str:
    """Column of the runs table holding factor ``name`` (prefixed if it would clash)."""
    return f"factor.{name}" if name in _RESERVED else name


@dataclass(frozen=True)
class FoundRun:
    run_dir: str  # relative to the runs root, "/"-separated
    path: Path
    key: str  # (size, mtime) of the four run files
    metrics_key: str


def discover(root: Path, ablations: Iterable[str] | None = None) -> list[FoundRun]:
    """Run folders below ``root``: folders holding any of the four run files (sorted)."""
    wanted = set(ablations) if ablations else None
    found: list[FoundRun] = []
    stack: list[tuple[Path, str, int]] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith(".") and (
                wanted is None or entry.name in wanted
            ):
                stack.append((Path(entry.path), entry.name, 1))
    while stack:
        path, rel, depth = stack.pop()
        files: dict[str, str] = {}
        subdirs = []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.name in RUN_FILES and entry.is_file():
                        st = entry.stat()
                        files[entry.name] = file_key(st.st_size, st.st_mtime_ns)
                    elif entry.is_dir() and not entry.name.startswith("."):
                        subdirs.append(entry)
        except OSError:
            continue
        if files:
            key = "|".join(f"{name}={files.get(name, '-')}" for name in RUN_FILES)
            found.append(FoundRun(rel, path, key, files.get("metrics.jsonl", "-")))
        elif depth < MAX_DEPTH:
            stack.extend((Path(e.path), f"{rel}/{e.name}", depth + 1) for e in subdirs)
    found.sort(key=lambda f: f.run_dir)
    return found


@dataclass
class Collection:
    """What ``collect`` found; ``train_steps`` loads train rows of chosen runs on demand."""

    root: Path
    runs: pd.DataFrame
    steps: pd.DataFrame
    warnings: list[str]
    cache: ParseCache = field(repr=False)
    found: dict[str, FoundRun] = field(repr=False, default_factory=dict)

    def train_steps(self, run_dirs: Sequence[str], columns: Sequence[str] | None = None
                    ) -> pd.DataFrame:
        """Train rows of ``run_dirs`` (all columns, or ``columns`` plus step), deduplicated."""
        frames = []
        wanted = None if columns is None else ["step", "epoch", "images_seen", *columns]
        for run_dir in run_dirs:
            run = self.found.get(run_dir)
            if run is None:
                continue
            # The cache holds what was parsed: all keys, or the columns asked for.
            key = run.metrics_key if wanted is None else f"{run.metrics_key}|{wanted}"
            cached = self.cache.load_train(run_dir, key, wanted)
            if cached is None:
                frame, warnings = load_train_rows(run.path / "metrics.jsonl", columns=wanted)
                self.cache.save_train(run_dir, key, frame, warnings)
            else:
                frame, warnings = cached
            for warning in warnings:  # each problem once, however often rows are loaded
                line = f"{(self.root / run_dir).as_posix()}/{warning}"
                if line not in self.warnings:
                    self.warnings.append(line)
            frames.append(frame.assign(run_dir=run_dir))
        if not frames:
            return pd.DataFrame(columns=["run_dir", "step"])
        out = pd.concat(frames, ignore_index=True)
        return _with_identity(out, self.runs)


def _with_identity(steps: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Prepend ablation and run_id (looked up by run_dir) to a steps frame."""
    lookup = runs.set_index("run_dir")
    steps.insert(0, "run_id", steps["run_dir"].map(lookup["run_id"]))
    steps.insert(0, "ablation", steps["run_dir"].map(lookup["ablation"]))
    return steps


def collect(
    runs_root: str | os.PathLike | None = None,
    *,
    ablations: Iterable[str] | None = None,
    kinds: Sequence[str] = ALL_KINDS,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Collection:
    """Read every run folder under the runs root (see module docstring).

    Raises RunsRootError when the runs root does not exist; an empty root gives empty frames.
    """
    root = resolve_runs_root(runs_root)
    if not root.is_dir():
        raise RunsRootError(
            f"The runs root {str(root)!r} does not exist"
            if not root.exists() else f"The runs root {str(root)!r} is not a folder"
        )
    ablations = list(ablations) if ablations else None
    found = discover(root, ablations)
    cache = ParseCache(root, Path(cache_dir) if cache_dir else None, enabled=use_cache)
    cached = cache.load_runs()
    cached_evals = cache.load_evals() if cached else None
    if cached_evals is None:
        cached = {}  # records without their rows are of no use

    entries: dict[str, tuple[str, dict]] = {}  # run_dir -> (key, record with _warnings)
    fresh_rows: list[dict] = []
    fresh_dirs: set[str] = set()
    stale = []
    for run in found:
        hit = cached.get(run.run_dir)
        if hit is not None and hit[0] == run.key:
            entries[run.run_dir] = hit
        else:
            stale.append(run)
    for run, data in zip(stale, _read_runs(stale), strict=True):
        record = dict(data.record, run_dir=run.run_dir, _warnings=data.warnings)
        entries[run.run_dir] = (run.key, record)
        fresh_dirs.add(run.run_dir)
        fresh_rows.extend(dict(row, run_dir=run.run_dir) for row in data.eval_rows)

    # Keep cache entries of ablations this call did not scan; drop vanished runs.
    scanned = (lambda d: d.split("/", 1)[0] in ablations) if ablations else (lambda d: True)
    kept = {d: v for d, v in cached.items()
            if not scanned(d) or (d in entries and d not in fresh_dirs)}
    evals = _merge_evals(cached_evals, set(kept), fresh_rows)
    to_save = {**kept, **{d: entries[d] for d in fresh_dirs}}
    if fresh_dirs or set(to_save) != set(cached):
        cache.save(to_save, evals)

    records = [entries[run.run_dir][1] for run in found]
    warnings = [f"{(root / r['run_dir']).as_posix()}/{w}" for r in records
                for w in r.get("_warnings", ())]
    runs = _runs_frame(records)
    warnings.extend(_duplicate_warnings(runs))
    if cache.problem:
        warnings.append(cache.problem)

    present = set(entries)
    steps = evals[evals["run_dir"].isin(present)] if len(evals) else evals
    steps = steps[steps["kind"].isin(kinds)] if "kind" in steps.columns else steps
    steps = steps.dropna(axis=1, how="all").reset_index(drop=True)
    collection = Collection(root, runs, pd.DataFrame(), warnings, cache,
                            {run.run_dir: run for run in found})
    if "run_dir" in steps.columns and len(steps):
        steps = _with_identity(steps.copy(), runs)
    if "train" in kinds and len(runs):
        train = collection.train_steps(list(runs["run_dir"])).assign(kind="train")
        steps = pd.concat([steps, train], ignore_index=True) if len(steps) else train
    if len(steps):
        steps = steps.sort_values(["run_dir", "kind", "step"], kind="stable",
                                  ignore_index=True)
        steps = _order_columns(steps)
    collection.steps = steps
    return collection


def _read_runs(runs: list[FoundRun]) -> Iterator[RunData]:
    """``read_run`` of each run, in order, on as many threads as this process may use: the
    file reads and the line scan (numpy) release the GIL, so two cores read two runs."""
    workers = min(len(runs), cpus(), MAX_READERS)
    if workers <= 1:
        yield from (read_run(run.path, run.run_dir) for run in runs)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="read-run") as pool:
        yield from pool.map(lambda run: read_run(run.path, run.run_dir), runs)


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _merge_evals(cached: pd.DataFrame | None, keep: set[str], fresh: list[dict]
                 ) -> pd.DataFrame:
    parts = []
    if cached is not None and len(cached):
        parts.append(cached[cached["run_dir"].isin(keep)])
    if fresh:
        parts.append(pd.DataFrame.from_records(fresh))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({"run_dir": pd.Series(dtype=object),
                             "kind": pd.Series(dtype=object),
                             "step": pd.Series(dtype="int64")})
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _order_columns(steps: pd.DataFrame) -> pd.DataFrame:
    first = ["ablation", "run_id", "run_dir", "kind", "step", "epoch", "images_seen"]
    head = [c for c in first if c in steps.columns]
    return steps[head + [c for c in steps.columns if c not in head]]


def _runs_frame(records: list[dict]) -> pd.DataFrame:
    factor_order: list[str] = []
    rows = []
    for record in records:
        factors = record.get("factors") or {}
        for name in factors:
            if name not in factor_order:
                factor_order.append(name)
        row = {k: v for k, v in record.items() if k not in ("factors", "_warnings")}
        row.update({factor_column(k): v for k, v in factors.items()})
        row["factor_names"] = ",".join(factors)
        row["factor_label"] = ",".join(f"{k}={v}" for k, v in factors.items()) or "baseline"
        rows.append(row)
    columns = ID_COLUMNS + [factor_column(n) for n in factor_order] + RUN_COLUMNS
    frame = pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame(
        columns=columns)
    for column in _FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in _INT_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        whole = values.dropna()
        frame[column] = (values.astype("Int64") if (whole == np.floor(whole)).all()
                         else values)
    frame["has_summary"] = frame["has_summary"].astype(bool)
    return frame


def _duplicate_warnings(runs: pd.DataFrame) -> list[str]:
    if not len(runs):
        return []
    dup = runs[runs.duplicated(ID_COLUMNS, keep=False)]
    return [
        f"{ablation}/{run_id}: the same run in several folders "
        f"({', '.join(group['run_dir'])}); all kept"
        for (ablation, run_id), group in dup.groupby(ID_COLUMNS, sort=True)
    ]
