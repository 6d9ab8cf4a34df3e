"""Parquet cache of parsed run folders, so rebuilding a report re-reads only what changed.

Layout under ``<runs_root>/.cache/analysis-v<N>/`` (the runs root's ``.cache`` is ignored by
git and skipped by discovery):

    runs.parquet      one row per run folder: run_dir, key, record (JSON: the runs-table
                      record and the run's warnings)
    evals.parquet     the knn/probe/event rows of every cached run, with a run_dir column
    train/<h>.parquet the train rows of one run, parsed on first use; <h> hashes the run
                      folder and its metrics.jsonl key

A run's key is the (size, mtime_ns) of each of its four files, so any write to a run folder
(a new metrics line, a status change) re-parses that run and only that run. Writes go to a
temporary file then os.replace, so a reader never sees a half-written cache and two reports
building at once cannot corrupt it. A cache that cannot be written (read-only copy of the
logs) is simply not used; the report says so once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CACHE_VERSION = 2  # bump when what is parsed or how changes
_WARNINGS_KEY = b"moco3_warnings"  # parquet metadata: what parsing these rows reported
_FLAT_TYPES = {"string", "empty", "boolean", "integer", "floating", "mixed-integer-float"}


def file_key(size: int, mtime_ns: int) -> str:
    return f"{size}:{mtime_ns}"


def parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding mixed or nested values (unknown metric keys) become JSON text,
    so that every column has one Arrow type."""
    out = frame
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        if pd.api.types.infer_dtype(frame[column], skipna=True) in _FLAT_TYPES:
            continue
        if out is frame:
            out = frame.copy()
        out[column] = frame[column].map(
            lambda v: v if v is None or isinstance(v, str) or (isinstance(v, float) and v != v)
            else json.dumps(v)
        )
    return out


class ParseCache:
    """The cache of one runs root; every method is a no-op when disabled."""

    def __init__(self, runs_root: Path, cache_dir: Path | None = None, enabled: bool = True):
        default = runs_root / ".cache" / f"analysis-v{CACHE_VERSION}"
        self.dir = Path(cache_dir) if cache_dir else default
        self.enabled = enabled
        self.problem: str | None = None  # why writing failed, reported once by the caller

    # -- reading -------------------------------------------------------------------------
    def load_runs(self) -> dict[str, tuple[str, dict]]:
        """run_dir -> (key, record) of every cached run."""
        if not self.enabled:
            return {}
        table = self._read(self.dir / "runs.parquet")
        if table is None:
            return {}
        columns = table.to_pydict()
        return {
            run_dir: (key, json.loads(record))
            for run_dir, key, record in zip(
                columns["run_dir"], columns["key"], columns["record"], strict=True
            )
        }

    def load_evals(self) -> pd.DataFrame | None:
        if not self.enabled:
            return None
        table = self._read(self.dir / "evals.parquet")
        return None if table is None else table.to_pandas()

    def load_train(self, run_dir: str, metrics_key: str, columns=None
                   ) -> tuple[pd.DataFrame, list[str]] | None:
        """(train rows, the warnings of their parse), or None when not cached."""
        if not self.enabled:
            return None
        path = self._train_path(run_dir, metrics_key)
        table = self._read(path, columns=columns)
        if table is None:
            return None
        meta = table.schema.metadata or {}
        return table.to_pandas(), json.loads(meta.get(_WARNINGS_KEY, b"[]"))

    def _read(self, path: Path, columns=None) -> pa.Table | None:
        try:
            if columns is not None:
                available = set(pq.read_schema(path).names)
                columns = [c for c in columns if c in available]
            return pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowException, ValueError):
            return None  # absent or unreadable: parse the run folder again

    # -- writing -------------------------------------------------------------------------
    def save(self, runs: dict[str, tuple[str, dict]], evals: pd.DataFrame) -> None:
        if not self.enabled:
            return
        run_dirs = list(runs)
        table = pa.table({
            "run_dir": run_dirs,
            "key": [runs[r][0] for r in run_dirs],
            "record": [json.dumps(runs[r][1]) for r in run_dirs],
        })
        self._write(table, self.dir / "runs.parquet")
        self._write(pa.Table.from_pandas(parquet_safe(evals), preserve_index=False),
                    self.dir / "evals.parquet")

    def save_train(self, run_dir: str, metrics_key: str, train: pd.DataFrame,
                   warnings: list[str]) -> None:
        if not self.enabled:
            return
        path = self._train_path(run_dir, metrics_key)
        for stale in path.parent.glob(path.name.split("-")[0] + "-*.parquet"):
            if stale != path:
                stale.unlink(missing_ok=True)
        table = pa.Table.from_pandas(parquet_safe(train), preserve_index=False)
        meta = {**(table.schema.metadata or {}), _WARNINGS_KEY: json.dumps(warnings).encode()}
        self._write(table.replace_schema_metadata(meta), path)

    def _train_path(self, run_dir: str, metrics_key: str) -> Path:
        run_hash = hashlib.sha1(run_dir.encode()).hexdigest()[:16]
        key_hash = hashlib.sha1(metrics_key.encode()).hexdigest()[:10]
        return self.dir / "train" / f"{run_hash}-{key_hash}.parquet"

    def _write(self, table: pa.Table, path: Path) -> None:
        if not self.enabled:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parquet")
            os.close(fd)
            try:
                pq.write_table(table, tmp, compression="snappy")
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except (OSError, pa.ArrowException) as exc:
            # A read-only runs root (copied logs) still gets its report, just uncached.
            self.enabled = False
            self.problem = f"{self.dir}: cache not written ({exc}); every build parses again"
