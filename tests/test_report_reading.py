"""The fast metrics reading of the report (analysis/linescan.py, the column projection of
rundata.load_train_rows) against the plain reading of the contract, and the report
benchmark at a small size (benchmarks/report_cache.py), so that it keeps running."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from moco3.analysis.linescan import scan_lines
from moco3.analysis.rundata import load_train_rows, scan_metrics
from moco3.runfolder.rows import TRAIN_PREFIXES, read_rows

REPO = Path(__file__).resolve().parents[1]


def naive_scan(body: bytes) -> tuple[list[tuple[int, bytes]], int, bytes | None]:
    lines = body.split(b"\n")[:-1]
    prefixes = TRAIN_PREFIXES
    other = [(n, line) for n, line in enumerate(lines, start=1)
             if not line.startswith(prefixes) and line.strip()]
    train = [line for line in lines if line.startswith(prefixes)]
    return other, len(train), (train[-1] if train else None)


def test_scan_lines_matches_a_line_by_line_reading():
    rng = random.Random(0)
    pieces = [b'{"kind": "train", "step": 1, "loss": 2.0}', b'{"kind":"train","step":2}',
              b'{"kind": "knn", "step": 3, "knn_top1": 4.5}', b'{"step": 4, "kind": "train"}',
              b'{"kind": "trainee", "step": 5}', b'{"kind": "train"', b'{"kind":"train"',
              b'{"kind": "tra', b"", b"   ", b"x", b'{"kind": "event", "event": "resumed"}',
              b'{"kind": "train"}', b'  {"kind": "train", "step": 6}']
    for _ in range(300):
        body = b"".join(rng.choice(pieces) + b"\n" for _ in range(rng.randrange(0, 12)))
        got = scan_lines(body)
        assert (got.other, got.num_train, got.last_train) == naive_scan(body), body


def test_scan_lines_needs_whole_lines():
    assert scan_lines(b"").num_train == 0
    with pytest.raises(ValueError, match="newline"):
        scan_lines(b'{"kind": "train"}')


def _write(path: Path, rows: list[dict], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)


def test_scan_metrics_keeps_the_contract(tmp_path):
    """Eval rows parsed, train rows counted, last row per key kept, a cut line skipped."""
    path = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": s, "loss": 1.0 / (s + 1)} for s in range(5)]
    rows += [{"kind": "knn", "step": 4, "knn_top1": 10.0},
             {"kind": "event", "step": 4, "event": "grad_spike", "group": "first_block",
              "value": "nan"},
             {"step": 5, "kind": "train", "loss": 0.1},  # another key order: parsed
             {"kind": "knn", "step": 4, "knn_top1": 12.0}]  # repeated: the last is kept
    _write(path, rows, tail=b'{"kind": "train", "st')
    scan = scan_metrics(path)
    assert scan.num_train_rows == 6
    assert scan.last_train == {"step": 5, "kind": "train", "loss": 0.1}
    knn = [r for r in scan.eval_rows if r["kind"] == "knn"]
    assert [r["knn_top1"] for r in knn] == [12.0]
    spike = next(r for r in scan.eval_rows if r["kind"] == "event")
    assert math.isnan(spike["value"])
    assert any("truncated last line" in w for w in scan.warnings)
    assert any("repeated row" in w for w in scan.warnings)


def test_train_columns_read_by_projection_equal_the_full_reading(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = []
    for step in range(40):
        rows.append({"kind": "train", "step": step, "epoch": step / 10, "loss": 2.0,
                     "grad_norm_first_block": 1.0 + step, "grad_norm_last_block": 0.5,
                     "extra": [1, 2]})
        if step % 10 == 9:
            rows.append({"kind": "knn", "step": step, "knn_top1": 3.0})
    rows[5]["grad_norm_first_block"] = "nan"  # non-finite norms are written as strings
    rows[6]["grad_norm_first_block"] = "inf"
    step30 = next(r for r in rows if r["kind"] == "train" and r["step"] == 30)
    rows.append(dict(step30, grad_norm_last_block=9.0))  # a repeated step: last kept
    _write(path, rows)
    columns = ["grad_norm_first_block", "grad_norm_last_block", "grad_norm_patch_embed"]
    fast, fast_warnings = load_train_rows(path, columns=columns)
    slow, _ = load_train_rows(path, force_slow=True)
    assert list(fast.columns) == ["step", *columns]
    assert list(fast["step"]) == list(range(40))
    for column in columns[:2]:
        assert fast[column].astype(float).tolist() == pytest.approx(
            slow[column].astype(float).tolist(), nan_ok=True)
    assert fast.loc[6, "grad_norm_first_block"] == math.inf
    assert fast.loc[30, "grad_norm_last_block"] == 9.0
    assert fast["grad_norm_patch_embed"].isna().all()  # never logged (a frozen projection)
    assert any("repeated train row" in w for w in fast_warnings)


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                      and math.isnan(b))


def test_the_fast_readers_keep_runfolders_rules(tmp_path):
    """The report's readers (orjson, numpy line scan, polars, pyarrow) and moco3.runfolder.rows'
    reader, on damaged files: the same rows, the same repeats dropped, the same lines
    refused, the same torn last line; non-finite values decoded alike. (The scan counts the
    lines that are plainly train rows without parsing them; the train reader checks them.)"""
    lines = [
        b'{"kind": "train", "step": 0, "loss": 2.0, "grad_norm": "nan"}',
        b'{"kind": "knn", "step": 0, "knn_top1": 1.0}',
        b'{"kind": "train", "loss": 1.0}',  # no step: not a row
        b'[1, 2]', b'not json',  # polars refuses the file for these: the json-module path
        b'{"step": 1, "kind": "train", "loss": 1.5}',
        b'{"kind": "train", "step": 1, "loss": 1.25, "grad_norm": "inf"}',  # repeat: kept
        b'{"kind": "knn", "step": 0, "knn_top1": 2.0}',  # repeat: kept
        b'{"kind": "probe", "step": 1, "probe_epoch": 0, "probe_top1": "-inf"}',
        b'{"kind": "train", "step": 2, "lo',  # torn by a kill
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"\n".join(lines))
    rows, warnings = read_rows(path)
    scan = scan_metrics(path)
    expected_eval = [r for r in rows if r["kind"] != "train"]
    assert len(scan.eval_rows) == len(expected_eval) == 2
    for got, want in zip(sorted(scan.eval_rows, key=str), sorted(expected_eval, key=str),
                         strict=True):
        assert got.keys() == want.keys() and all(_same(got[k], want[k]) for k in got)
    assert scan.last_train["loss"] == 1.25  # the file's last train row, whatever its spelling
    assert any("skipped 3 line(s) that are not JSON rows" in w for w in warnings)
    assert any("skipped 2 line(s) that are not JSON rows" in w for w in scan.warnings)
    assert any("1 repeated row(s)" in w for w in warnings + scan.warnings)
    for found in (warnings, scan.warnings):
        assert any("truncated last line" in w for w in found), found

    expected_train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in expected_train] == [0, 1]
    readable = tmp_path / "readable.jsonl"  # what polars accepts
    readable.write_bytes(b"\n".join(x for x in lines if x not in (b"[1, 2]", b"not json")))
    finite = tmp_path / "finite.jsonl"  # pyarrow's, unless a train row is in another order
    finite.write_bytes(readable.read_bytes().replace(b'"nan"', b"1.0").replace(b'"inf"', b"2.0")
                       .replace(b'"-inf"', b"3.0"))
    plain = tmp_path / "plain.jsonl"  # pyarrow's
    plain.write_bytes(finite.read_bytes().replace(lines[5] + b"\n", b""))
    for source, norms, repeats in ((path, (math.nan, math.inf), 1),
                                   (readable, (math.nan, math.inf), 1), (finite, (1.0, 2.0), 1),
                                   (plain, (1.0, 2.0), 0)):
        for frame, train_warnings in (load_train_rows(source, columns=["loss", "grad_norm"]),
                                      load_train_rows(source),
                                      load_train_rows(source, force_slow=True)):
            assert frame["step"].tolist() == [0, 1]
            assert frame["loss"].tolist() == [r["loss"] for r in expected_train]
            assert all(_same(a, b) for a, b in zip(frame["grad_norm"], norms, strict=True))
            assert sum("1 repeated train row" in w for w in train_warnings) == repeats
            assert any("1 corrupt train line" in w for w in train_warnings), train_warnings
            assert any("truncated last line" in w for w in train_warnings), train_warnings


@pytest.mark.slow  # three report builds through the real command: ~25 s of CPU
def test_report_benchmark_runs_at_a_small_size(tmp_path):
    """benchmarks/report_cache.py as documented, at 20 runs x 500 rows: it generates the
    study (diverged, running, truncated and resumed runs among them), builds the report
    cold, cached and incremental, and prints each time, the CPU and the peak memory."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "report_cache.py"), "--runs", "20",
         "--rows", "500", "--repeats", "1", "--no-pdf", "--dir", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for label in ("cold", "cached", "incremental", "peak memory", "CPU"):
        assert label in out, out
    assert not (tmp_path / "bench").exists()  # removed unless --keep
