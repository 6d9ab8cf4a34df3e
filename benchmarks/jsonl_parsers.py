"""Which parser reads a metrics.jsonl fastest, for the two reads the report makes.

    python benchmarks/jsonl_parsers.py [--rows 10000] [--repeats 5]

Writes one run of the report benchmark's study (benchmarks/report_cache.py) and times, best
of ``--repeats``, on one core's worth of work:

* finding the non-train lines (the report's every-run read): Python's split and
  startswith against the numpy scan of analysis/linescan.py;
* reading the gradient columns of the train rows (the gradient figure): json and orjson
  row by row, pyarrow's JSON reader (all keys, and an explicit schema), polars (all keys,
  and only the wanted columns), DuckDB's read_json with the columns selected.

Libraries that are not installed are skipped (DuckDB is not a dependency of moco3).
"""

from __future__ import annotations

import moco3

# ruff: noqa: E402 - run as a file, the path must be fixed before anything else is imported
moco3.run_as_script(__file__)

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.report_cache import write_runs
from moco3.analysis.linescan import scan_lines
from moco3.runfolder.rows import TRAIN_PREFIXES

COLUMNS = ["step", "grad_norm_patch_embed", "grad_norm_first_block", "grad_norm_last_block"]


def candidates(path: Path, body: bytes) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {
        "scan: split + startswith": lambda: [line for line in body.split(b"\n")
                                             if not line.startswith(TRAIN_PREFIXES)],
        "scan: numpy (linescan)": lambda: scan_lines(body),
        "columns: json row by row": lambda: [json.loads(line) for line in body.splitlines()],
    }
    try:
        import orjson

        out["columns: orjson row by row"] = lambda: [orjson.loads(line)
                                                     for line in body.splitlines()]
    except ImportError:
        pass
    import pyarrow as pa
    import pyarrow.json as pj

    def arrow(schema: pa.Schema | None) -> object:
        parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore") \
            if schema is not None else None
        return pj.read_json(io.BytesIO(body), parse_options=parse, read_options=pj.ReadOptions(
            use_threads=False, block_size=len(body)))

    out["columns: pyarrow, all keys"] = lambda: arrow(None)
    out["columns: pyarrow, schema"] = lambda: arrow(pa.schema([(c, pa.float64())
                                                              for c in COLUMNS]))
    try:
        import polars as pl

        out["columns: polars, all keys"] = lambda: pl.read_ndjson(io.BytesIO(body))
        out["columns: polars, wanted only"] = lambda: pl.read_ndjson(
            io.BytesIO(body), schema={"kind": pl.String, **dict.fromkeys(COLUMNS, pl.String)})
    except ImportError:
        pass
    try:
        import duckdb

        con = duckdb.connect()
        con.execute("SET threads=1")
        query = (f"select {', '.join(COLUMNS)} from read_json('{path}', "
                 "format='newline_delimited')")
        out["columns: duckdb, selected"] = lambda: con.sql(query).fetchall()
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/jsonl_parsers.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moco3-parsers-") as tmp:
        write_runs(Path(tmp), 1, args.rows)
        path = next(Path(tmp).glob("*/*/seed=*/metrics.jsonl"))
        body = path.read_bytes()
        body = body[: body.rfind(b"\n") + 1]
        lines = body.count(b"\n")
        print(f"{path.name}: {len(body) / 2**20:.1f} MiB, {lines} lines")
        for name, run in candidates(path, body).items():
            best = min(_timed(run) for _ in range(max(1, args.repeats)))
            print(f"{name:32s} {best * 1e3:8.1f} ms")
    return 0


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
