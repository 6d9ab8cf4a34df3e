"""Golden, hand-made run folders -> collect, tables and the report (analysis/ package).

The folders exercise every tolerance of the run-folder contract: two seeds per factor value,
a truncated last line, steps repeated after a resume, a diverged run, a run without
summary.json, a pending and a running run, an unknown metrics key, and an ablation the
paper has no number for. The expected values below are worked out by hand from them.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from moco3.analysis import tables
from moco3.analysis.collect import collect
from moco3.analysis.report import NothingToReport, build_report
from moco3.runfolder.instability import SpikeDetector

REPO = Path(__file__).resolve().parents[1]


def write_run(
    root: Path,
    ablation: str,
    factors: dict[str, str],
    seed: int,
    *,
    state: str = "done",
    knn: list[float] = (),
    probe: list[float] = (),
    first: list[float | None] | None = None,
    last: list[float] | None = None,
    summary: dict | None = None,
    extra_rows: list[dict] = (),
    tail: bytes = b"",
    compact: bool = False,
    status_step: int | None = None,
    meta_factors: dict | None = None,
) -> Path:
    """One run folder as moco3's training job and probe write it (moco3/runlog.py: rows
    start with kind, non-finite floats as strings, probe rows stepped by probe epoch, frozen
    layers' norms as 0); knn[i] is logged after train step i."""
    label = ",".join(f"{k}={v}" for k, v in factors.items()) or "baseline"
    run_id = f"{label}/seed={seed}"
    run = root / ablation / label / f"seed={seed}"
    run.mkdir(parents=True)
    meta = {"ablation": ablation, "run_id": run_id, "factors": meta_factors or factors,
            "seed": seed,
            "scale": "tiny", "config_hash": f"h{seed}"}
    config = {"meta": meta, "train": {"epochs": 2},
              "model": {"arch": "vit_tiny", "patch_embed": "frozen"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows: list[dict] = []
    steps = max(len(knn), len(first or []))
    for i in range(steps):
        if first is not None:
            rows.append({"kind": "train", "step": i, "epoch": i / 2, "images_seen": 8 * i,
                         "loss": 5.0 - 0.1 * i, "grad_norm_patch_embed": 0.0,
                         "grad_norm_first_block": _clean(first[i]),
                         "grad_norm_last_block": _clean(last[i])})
        if i < len(knn):
            rows.append({"kind": "knn", "step": i, "epoch": i / 2, "images_seen": 8 * i,
                         "knn_top1": knn[i]})
    # The job checks every step and writes an event per spike (here every step is logged).
    for group, series in (("first_block", first), ("last_block", last)):
        detector = SpikeDetector()
        for i in [i for i, v in enumerate(series or []) if detector.check(v) is not None]:
            rows.append({"kind": "event", "step": i, "epoch": i / 2, "images_seen": 8 * i,
                         "event": "grad_spike", "group": group, "value": _clean(series[i])})
    for e, top1 in enumerate(probe, start=1):
        rows.append({"kind": "probe", "step": e, "epoch": e, "images_seen": 8 * (steps - 1),
                     "probe_epoch": e, "probe_loss": 1.0, "probe_top1": top1, "lr": 0.1})
    rows.extend(extra_rows)
    sep = (",", ":") if compact else (", ", ": ")
    text = "".join(json.dumps(r, separators=sep) + "\n" for r in rows)
    (run / "metrics.jsonl").write_bytes(text.encode() + tail)
    step = status_step if status_step is not None else steps - 1
    (run / "status.json").write_text(json.dumps(
        {"state": state, "step": step, "total_steps": 10, "job_id": "local-1", "host": "h",
         "started": "t0", "updated": "t1", "error": None,
         **({"phase": "done"} if state == "done" else {})}))
    if summary is not None:
        extra = {"total_steps": 10, "config_hash": f"h{seed}", "spikes_by_group": {},
                 "linear_top1_last": summary.get("linear_top1")}
        (run / "summary.json").write_text(json.dumps(
            {"state": state, "step": step, **summary, **extra}, sort_keys=True))
    return run


def _clean(value):
    """As moco3.runlog writes floats: JSON has no NaN/inf, so those become strings."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _summary(**values) -> dict:
    base = {"knn_top1": None, "knn_top1_max": None, "linear_top1": None, "num_knn_dips": 0,
            "max_knn_dip": 0.0, "num_spikes_first": 0, "num_spikes_last": 0,
            "diverged_step": None, "final_loss": 4.0, "train_seconds": 1.0}
    return {**base, **values}


FLAT = [1.0] * 10
SPIKY = [1.0, 1.1, 0.9, 1.0, 1.0, 1.05, 9.0, 1.0, 1.0, 1.0]  # spike at index 6


def make_golden_runs(root: Path) -> Path:
    """The golden runs root (see module docstring); returns it."""
    # batch_size: the paper has numbers for 1024 (71.5) and 4096 (72.2).
    write_run(root, "batch_size", {"batch_size": "1024"}, 0, knn=[10, 20, 30, 35],
              probe=[38.0, 40.0], first=FLAT, last=FLAT,
              summary=_summary(knn_top1=35.0, knn_top1_max=35.0, linear_top1=40.0))
    write_run(root, "batch_size", {"batch_size": "1024"}, 1, knn=[10, 20, 30, 37],
              probe=[42.0], first=FLAT, last=FLAT, compact=True,
              summary=_summary(knn_top1=37.0, knn_top1_max=37.0, linear_top1=42.0),
              tail=b'{"kind": "knn", "step": 9, "knn_')  # truncated by a kill mid-write
    # Resumed at step 2: steps 2..3 are logged twice; the second (last) rows count.
    resumed = write_run(root, "batch_size", {"batch_size": "4096"}, 0, knn=[10, 30, 25, 31],
                        first=FLAT, last=FLAT,
                        summary=_summary(knn_top1=44.0, knn_top1_max=44.0, linear_top1=45.0,
                                         num_knn_dips=1, max_knn_dip=5.0))
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "event", "step": 2, "epoch": 1.0, "images_seen": 16,
                            "event": "resumed"}) + "\n")
        for step, value in ((2, 33.0), (3, 44.0)):
            f.write(json.dumps({"kind": "knn", "step": step, "epoch": step / 2,
                                "images_seen": 8 * step, "knn_top1": value}) + "\n")
    write_run(root, "batch_size", {"batch_size": "4096"}, 1, state="diverged",
              knn=[10, 12, 5], first=SPIKY[:3] + [math.inf], last=FLAT[:4], status_step=7,
              summary=_summary(knn_top1=5.0, knn_top1_max=12.0, diverged_step=7,
                               num_spikes_first=1, num_spikes_last=0, max_knn_dip=7.0,
                               num_knn_dips=1))

    # patch_proj at lr 1.5e-4: learned diverges in both seeds; one frozen run lost its
    # summary.json (numbers come from metrics.jsonl, spike counted from the grad norms).
    for seed, step in ((0, 30), (1, 40)):
        write_run(root, "patch_proj", {"patch_embed": "learned", "lr": "1.5e-4"}, seed,
                  state="diverged", knn=[10, 4], status_step=step,
                  summary=_summary(knn_top1=4.0, knn_top1_max=10.0, diverged_step=step))
    write_run(root, "patch_proj", {"patch_embed": "frozen", "lr": "1.5e-4"}, 0,
              knn=[10, 20, 30, 25, 31, 32, 33, 34, 35, 36], probe=[52.0, 50.0],
              first=SPIKY, last=FLAT, summary=None)
    # Its config's YAML holds lr as a number (0.00015); the run_id keeps "1.5e-4".
    write_run(root, "patch_proj", {"patch_embed": "frozen", "lr": "1.5e-4"}, 1,
              meta_factors={"patch_embed": "frozen", "lr": 1.5e-4},
              knn=[10, 20, 30, 36], probe=[54.0], first=FLAT, last=FLAT,
              summary=_summary(knn_top1=36.0, knn_top1_max=36.0, linear_top1=54.0))

    # An ablation of the user's own: no paper numbers. One run in progress with an unknown
    # key, one pending (nothing logged yet).
    write_run(root, "my_idea", {"width": "a"}, 0, knn=[10, 20], probe=[30.0],
              first=FLAT[:2], last=FLAT[:2],
              summary=_summary(knn_top1=20.0, knn_top1_max=20.0, linear_top1=30.0))
    corrupt = write_run(root, "my_idea", {"width": "a"}, 1, knn=[10, 22], probe=[32.0],
                        first=FLAT[:2], last=FLAT[:2],
                        summary=_summary(knn_top1=22.0, knn_top1_max=22.0, linear_top1=32.0))
    lines = (corrupt / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines.insert(1, '{"kind": "train", "step": 0, "lo\n')  # a damaged line mid-file
    (corrupt / "metrics.jsonl").write_text("".join(lines))
    write_run(root, "my_idea", {"width": "b"}, 0, state="running", knn=[10, 15],
              first=[1.0] * 5 + [math.inf], last=FLAT[:6], summary=None,
              extra_rows=[{"kind": "knn", "step": 1, "epoch": 0.5, "images_seen": 8,
                           "knn_top1": 15.0, "knn_top5": 40.0}])
    pending = root / "my_idea" / "width=b" / "seed=1"
    pending.mkdir(parents=True)
    (pending / "config.yaml").write_text(yaml.safe_dump({"meta": {
        "ablation": "my_idea", "run_id": "width=b/seed=1", "factors": {"width": "b"},
        "seed": 1, "scale": "tiny", "config_hash": "x"}}))
    (pending / "status.json").write_text(json.dumps({"state": "pending", "step": 0}))

    # The baseline of ablation "none".
    write_run(root, "none", {}, 0, knn=[10, 50], probe=[60.0], first=FLAT[:2],
              last=FLAT[:2], summary=_summary(knn_top1=50.0, knn_top1_max=50.0,
                                              linear_top1=60.0))
    return root


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    return make_golden_runs(tmp_path_factory.mktemp("golden") / "runs")


@pytest.fixture(scope="module")
def collected(golden):
    return collect(golden, kinds=("knn", "probe", "event"))


def _run(runs: pd.DataFrame, run_id: str, ablation: str) -> pd.Series:
    rows = runs[(runs["ablation"] == ablation) & (runs["run_id"] == run_id)]
    assert len(rows) == 1
    return rows.iloc[0]


# -- collect ------------------------------------------------------------------------------

def test_runs_table_one_row_per_run_with_factor_columns(collected):
    runs = collected.runs
    assert len(runs) == 13
    assert sorted(runs["ablation"].unique()) == ["batch_size", "my_idea", "none", "patch_proj"]
    for column in ("batch_size", "patch_embed", "lr", "width", "seed", "state", "scale",
                   "config_hash", "knn_top1", "linear_top1"):
        assert column in runs.columns
    assert set(runs["state"]) == {"done", "diverged", "running", "pending"}
    base = _run(runs, "baseline/seed=0", "none")
    assert base["factor_label"] == "baseline" and base["linear_top1"] == 60.0
    frozen = _run(runs, "patch_embed=frozen,lr=1.5e-4/seed=1", "patch_proj")
    # lr is a YAML number in this run's config; the label keeps the run_id's spelling.
    assert (frozen["patch_embed"], frozen["lr"], frozen["seed"]) == ("frozen", "1.5e-4", 1)
    assert frozen["factor_names"] == "patch_embed,lr"  # the config's order


def test_missing_summary_is_derived_from_metrics(collected):
    run = _run(collected.runs, "patch_embed=frozen,lr=1.5e-4/seed=0", "patch_proj")
    assert not run["has_summary"] and run["summary_source"] == "metrics.jsonl"
    assert run["linear_top1"] == 50.0  # the probe's final epoch, never selected on val
    assert run["linear_top1_best"] == 52.0  # what the official main_lincls reports
    assert run["knn_top1"] == 36.0 and run["knn_top1_max"] == 36.0
    assert (run["num_knn_dips"], run["max_knn_dip"]) == (1, 5.0)  # 30 -> 25
    assert (run["num_spikes_first"], run["num_spikes_last"]) == (1, 0)  # SPIKY[6]
    assert any("seed=0/summary.json: missing (state done)" in w for w in collected.warnings)


def test_resumed_steps_keep_the_last_row(collected):
    steps = collected.steps
    knn = steps[(steps["run_id"] == "batch_size=4096/seed=0") & (steps["kind"] == "knn")]
    assert list(knn["step"]) == [0, 1, 2, 3]
    assert list(knn["knn_top1"]) == [10.0, 30.0, 33.0, 44.0]
    assert set(steps["kind"]) == {"knn", "probe", "event"}


def test_truncated_last_line_is_skipped_and_reported_once(collected):
    steps = collected.steps
    knn = steps[(steps["run_id"] == "batch_size=1024/seed=1") & (steps["kind"] == "knn")]
    assert list(knn["step"]) == [0, 1, 2, 3]
    truncated = [w for w in collected.warnings if "truncated" in w]
    assert len(truncated) == 1
    assert "batch_size=1024/seed=1/metrics.jsonl" in truncated[0]
    assert len(set(collected.warnings)) == len(collected.warnings)


def test_unknown_keys_are_kept_and_reported(collected):
    assert "knn_top5" in collected.steps.columns
    assert any("width=b/seed=0/metrics.jsonl: unknown keys knn_top5" in w
               for w in collected.warnings)


def test_in_progress_pending_and_diverged_runs(collected):
    runs = collected.runs
    running = _run(runs, "width=b/seed=0", "my_idea")
    assert running["state"] == "running" and running["knn_top1"] == 15.0
    # Its first block logged "inf" (moco3.runlog's spelling): a spike; the frozen patch
    # projection's zero norms are not the first layer.
    assert (running["num_spikes_first"], running["num_spikes_last"]) == (1, 0)
    pending = _run(runs, "width=b/seed=1", "my_idea")
    assert pending["state"] == "pending" and pending["num_metrics_rows"] == 0
    assert not any("width=b/seed=1" in w for w in collected.warnings)
    diverged = _run(runs, "batch_size=4096/seed=1", "batch_size")
    assert diverged["state"] == "diverged" and diverged["diverged_step"] == 7


def test_cache_gives_the_same_frames_and_sees_new_rows(golden, tmp_path):
    first = collect(golden, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "runs.parquet").exists()
    again = collect(golden, cache_dir=tmp_path / "cache")
    uncached = collect(golden, use_cache=False)
    pd.testing.assert_frame_equal(first.runs, again.runs)
    pd.testing.assert_frame_equal(first.steps, again.steps)
    pd.testing.assert_frame_equal(first.runs, uncached.runs)
    assert first.warnings == again.warnings == uncached.warnings
    train = first.steps[(first.steps["kind"] == "train")
                        & (first.steps["run_id"] == "batch_size=4096/seed=0")]
    assert list(train["step"]) == list(range(10))  # deduplicated train rows
    # A damaged train line is found when train rows are read (cached or not), once.
    damaged = [w for w in again.warnings if "corrupt train line" in w]
    assert len(damaged) == 1 and "width=a/seed=1/metrics.jsonl: skipped 1" in damaged[0]
    assert "(line 2)" in damaged[0]

    metrics = golden / "my_idea" / "width=a" / "seed=0" / "metrics.jsonl"
    original = metrics.read_bytes()
    try:
        with open(metrics, "a") as f:
            f.write(json.dumps({"kind": "knn", "step": 5, "epoch": 2.5, "images_seen": 40,
                                "knn_top1": 77.0}) + "\n")
        moved = collect(golden, cache_dir=tmp_path / "cache")
        knn = moved.steps[(moved.steps["run_id"] == "width=a/seed=0")
                          & (moved.steps["kind"] == "knn")]
        assert knn["knn_top1"].iloc[-1] == 77.0
    finally:
        metrics.write_bytes(original)


def test_runs_root_from_environment(golden, monkeypatch, tmp_path):
    monkeypatch.setenv("MOCO3_RUNS_ROOT", str(golden))
    monkeypatch.chdir(tmp_path)
    assert len(collect(kinds=(), use_cache=False).runs) == 13


# -- tables -------------------------------------------------------------------------------

def test_batch_size_table_rows_values_and_rank_agreement(collected):
    table = tables.ablation_table(collected.runs, "batch_size")
    frame = table.frame
    assert table.metric == "linear_top1"
    assert list(frame["batch_size"]) == ["1024", "4096"]
    small, large = frame.iloc[0], frame.iloc[1]
    assert small["linear_mean"] == 41.0 and small["linear_std"] == pytest.approx(2 ** 0.5)
    assert small["linear_n"] == 2 and small["knn_mean"] == 36.0
    assert large["linear_mean"] == 45.0 and large["linear_n"] == 1  # the diverged seed: none
    assert (small["paper"], large["paper"]) == (71.5, 72.2)
    assert small["diff"] == pytest.approx(41.0 - 71.5)
    assert (large["rank_ours"], large["rank_paper"]) == (1, 1)
    assert (large["n_diverged"], large["diverged_steps"]) == (1, "7")
    assert large["knn_dips"] == 1.0 and large["max_knn_dip"] == 7.0
    assert large["spikes_first"] == 0.5  # mean over the done and the diverged seed
    markdown = tables.to_markdown(table)
    assert "| 4096 | 45.0 | 44.0 | 1 | 72.2 [V] | -27.2 | 1/1 |" in markdown
    assert "1 done, 1 diverged at step 7" in markdown
    assert "our ordering matches the paper's" in markdown
    assert "not comparable" in markdown  # the tiny-scale caveat


def test_all_seeds_diverged_reads_diverged_never_a_number(collected):
    table = tables.ablation_table(collected.runs, "patch_proj")
    frame = table.frame
    assert list(frame["patch_embed"]) == ["learned", "frozen"]  # the paper's order
    learned = tables.display_frame(table).iloc[0]
    assert learned["linear top-1"] == "diverged at steps 30, 40"
    assert learned["kNN top-1"] == "diverged at steps 30, 40"
    assert learned["Δ"] == "—" and learned["paper"] == "71.7 [V]"
    frozen = frame.iloc[1]
    assert frozen["linear_mean"] == 52.0 and frozen["paper"] == 73.4  # final epochs 50, 54


def test_ablation_unknown_to_the_paper(collected):
    table = tables.ablation_table(collected.runs, "my_idea")
    assert table.setting is None
    assert table.frame["paper"].isna().all()
    shown = tables.display_frame(table)
    assert list(shown["width"]) == ["a", "b"]
    assert list(shown["runs"]) == ["2 done", "1 running, 1 pending"]
    assert shown.iloc[1]["linear top-1"] == "—"
    assert "The paper has no numbers" in tables.to_markdown(table)


def test_metric_choice_latex_and_csv(collected):
    table = tables.ablation_table(collected.runs, "batch_size", metric="knn_top1")
    assert table.frame["diff"].iloc[0] == pytest.approx(36.0 - 71.5)
    latex = tables.to_latex(table)
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"batch\_size", r"$\pm$"):
        assert token in latex
    csv = pd.read_csv(io.StringIO(tables.to_csv(table)))
    assert list(csv["batch_size"]) == [1024, 4096]
    assert {"linear_mean", "knn_std", "paper", "diff", "rank_ours"} <= set(csv.columns)
    with pytest.raises(ValueError, match="metric must be one of"):
        tables.ablation_table(collected.runs, "batch_size", metric="top5")


def test_tied_values_have_no_ordering_to_compare(collected):
    runs = collected.runs.copy()
    runs.loc[runs["ablation"] == "batch_size", "linear_top1"] = 50.0
    notes = " ".join(tables.ablation_table(runs, "batch_size").notes)
    assert "our values are all equal, so there is no ordering to compare" in notes
    assert "paper's best: batch_size=4096" in notes


# -- report -------------------------------------------------------------------------------

def test_report_builds_names_what_it_skipped_and_reuses_figures(golden, tmp_path):
    out = tmp_path / "report"
    ablations = ["patch_proj", "my_idea", "not_there"]
    result = build_report(golden, out, ablations=ablations, formats=("png",))
    readme = (out / "README.md").read_text()
    assert result.ablations == ["patch_proj", "my_idea"]
    assert "## patch_proj" in readme and "## my_idea" in readme and "## batch_size" not in readme
    assert "diverged at steps 30, 40" in readme
    assert "my_idea/width=b/seed=1: pending, nothing logged yet" in readme
    assert "my_idea/width=b/seed=0: running at step 5; not finished" in readme
    assert "Requested ablations with no run folders: not_there" in readme
    assert "unknown keys knn_top5" in readme and "summary.json`: missing" in readme
    # Written without a launcher: no study.json, so no findings, and the report says why.
    assert "patch_proj: no study.json, so no findings to judge" in readme
    assert "### Findings" not in readme
    for name in ("patch_proj_knn", "patch_proj_patch_proj", "patch_proj_grad",
                 "patch_proj_final", "my_idea_knn", "my_idea_final"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"figures/{name}.png" in readme
    for ext in ("md", "tex", "csv"):
        assert (out / "tables" / f"patch_proj.{ext}").exists()
    assert pd.read_csv(out / "runs.csv")["run_id"].nunique() == 8
    assert result.figures_drawn >= 6 and result.figures_reused == 0

    again = build_report(golden, out, ablations=ablations, formats=("png",))
    assert again.figures_drawn == 0 and again.figures_reused == result.figures_drawn


def test_the_report_flags_a_study_that_mixes_versions_hardware_or_threads(tmp_path):
    root = make_golden_runs(tmp_path / "runs")
    env = {"torch_version": "2.14.1", "cpu_capability": "AVX2", "git_commit": "a" * 40,
           "git_dirty": False}
    for seed, extra in ((0, {}), (1, {"cpu_capability": "AVX512_BF16"})):
        run = root / "my_idea" / "width=a" / f"seed={seed}"
        (run / "env.json").write_text(json.dumps([{**env, **extra}]))
        status = json.loads((run / "status.json").read_text())
        (run / "status.json").write_text(json.dumps({**status, "precision": "fp32",
                                                     "threads": 1 + seed}))
    (root / "none" / "baseline" / "seed=0" / "env.json").write_text(json.dumps([env, env]))
    build_report(root, tmp_path / "report", formats=("png",))
    readme = (tmp_path / "report" / "README.md").read_text()
    section = readme.split("## Provenance")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| my_idea "))
    assert "AVX2, AVX512_BF16" in row and "**mixes device, threads**" in row
    baseline = next(line for line in section.splitlines() if line.startswith("| none "))
    assert "2.14.1" in baseline and "aaaaaaaaaa" in baseline and "mixes" not in baseline


def test_report_with_no_matching_ablation_is_one_sentence(golden, tmp_path):
    with pytest.raises(NothingToReport, match="None of the ablations nope"):
        build_report(golden, tmp_path / "r", ablations=["nope"])


def _report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MOCO3_RUNS_ROOT"}
    return subprocess.run([sys.executable, str(REPO / "analysis" / "report.py"), *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_cli_missing_runs_root_exits_2_without_traceback(tmp_path):
    proc = _report_cli(cwd=tmp_path)  # default: ./runs, which does not exist
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "The runs root 'runs' does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_empty_runs_root_exits_2_without_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _report_cli("--runs-root", "empty", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("No run folders under 'empty'")
    assert not (tmp_path / "r").exists()


def test_analysis_never_imports_torch_or_moco3():
    """Neither torch nor moco3's job code: only the light package root moco3 comes along."""
    code = ("import sys, moco3.analysis.report, moco3.analysis.plots; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('moco3.') and "
            "m.split('.')[1] not in ('analysis', 'runfolder')]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_negatives_report_compares_the_real_k_with_the_label_beside_it(tmp_path):
    """The K a run trained (summary.json's negatives_per_query, or the same rule applied to
    config.yaml for a folder written before the field) goes into the table and the figure;
    the paper's label stays the level's name."""
    from moco3.analysis.figuredata import prepare_negatives

    for seed in (0, 1):
        write_run(tmp_path, "negatives", {"mechanism": "queue", "K": "4096"}, seed,
                  knn=[10.0, 20.0], summary={"knn_top1": 20.0 + seed,
                                             "negatives_per_query": 256})
        write_run(tmp_path, "negatives", {"mechanism": "in_batch", "K": "4096"}, seed,
                  knn=[10.0, 30.0], summary={"knn_top1": 30.0 + seed})
    for seed in (0, 1):  # an older folder: no field; its config.yaml holds the batch
        path = tmp_path / "negatives" / "mechanism=in_batch,K=4096" / f"seed={seed}"
        config = yaml.safe_load((path / "config.yaml").read_text())
        config["moco"] = {"negatives": "in_batch", "queue_size": 65536}
        config["train"]["batch_size"] = 256
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    runs = collect(tmp_path).runs
    assert sorted(runs["negatives_per_query"].tolist()) == [255, 255, 256, 256]
    table = tables.ablation_table(runs, "negatives", "knn_top1")
    shown = tables.display_frame(table)
    assert dict(zip(shown["mechanism"], shown[tables.REAL_K], strict=True)) == {
        "queue": "256", "in_batch": "255"}
    spec = prepare_negatives("negatives_negatives", runs, table.factors, "knn_top1", "t", "c")
    ours = spec.frames["ours"].set_index("mechanism")
    assert ours.loc["queue", "real_k"] == 256 and ours.loc["queue", "K"] == 4096
    assert ours.loc["in_batch", "real_k"] == 255
