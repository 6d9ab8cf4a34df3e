"""benchmarks/gpu_check: the reduced CPU version runs as a user runs it and passes, and
the branches a CPU cannot reach by itself (out of memory, overrunning a budget) work."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import correctness, harness, machinery, profiles, resume, speed
from benchmarks.gpu_check import report as reporting
from moco3.precision import FORCE_FAST_BF16_ENV, resolve_precision

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -m benchmarks.gpu_check --device cpu` in a fresh process, from the repo root,
    with the out-of-memory fallback forced above batch 8."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--out", str(out),
         "--simulate-oom-above", "8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    return done, out


def test_reduced_run_passes(reduced_run) -> None:
    done, out = reduced_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    table = (out / "gpu_check.md").read_text()
    assert report["profile"] == "cpu-reduced" and report["passed"]
    assert "| section | check | status |" in table and table in done.stdout
    for name, info in report["sections"].items():
        assert info["status"] == "done", (name, info)  # nothing stopped by its budget
    ran = [c for c in report["checks"] if not c["status"].startswith("skipped")]
    assert all(c["status"] in ("pass", "info") for c in ran), ran
    passed = {c["name"] for c in ran if c["status"] == "pass"}
    assert {"fp32 step (CPU, fused attention) vs CPU fp32",
            "gloo DDP + GlobalBatchNorm1d, 1 rank, vs plain model",
            "resume bitwise (8 steps vs 4 + resume 4)"} <= passed
    skipped = {c["name"]: c["status"] for c in report["checks"] if c["status"].startswith("skip")}
    assert all(s.startswith(profiles.NO_CUDA) for s in skipped.values()), skipped
    assert "fp16 + GradScaler step finite" in skipped
    assert report["data"]["pipeline_img_s_per_core"] > 0 and "verdict" in report["data"]


def test_reduced_run_times_the_steps(reduced_run) -> None:
    done, out = reduced_run
    report = json.loads((out / "gpu_check.json").read_text())
    rows = report["speed"]
    # Ours runs at whatever `auto` picks on this CPU (bf16 where it is fast, else fp32), and
    # the report says which: the rows are checked against that, never against one CPU kind.
    precision = report["environment"]["precision_auto"]
    assert precision == resolve_precision("auto", torch.device("cpu"))
    measured = [r for r in rows if r["status"] == "measured"]
    assert {(r["model"], r["variant"]) for r in measured} == {
        (a, v) for a in ("vit_small", "vit_base")
        for v in (f"ours {precision} eager", "official-like fp32 eager")}
    for r in measured:
        assert r["img_per_s"] > 0 and r["ms_per_step"] > 0
        # the forced out-of-memory fallback: 16 failed, 8 ran
        assert r["tried"] == [16, 8] and r["batch"] == 8
    ours = [r for r in measured if r["variant"].startswith("ours")]
    assert all(r["tflop_per_step"] > 0 and r["vs_official"] > 0 for r in ours)


def test_largest_batch_halves_on_out_of_memory() -> None:
    released = []

    def attempt(batch: int) -> str:
        if batch > 40:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at {batch}")
        return f"ran {batch}"

    batch, result, tried = machinery.largest_batch(attempt, 256, 8, lambda: released.append(1))
    assert (batch, result, tried) == (32, "ran 32", [256, 128, 64, 32])
    assert len(released) == 3


def test_largest_batch_gives_up_and_lets_other_errors_through() -> None:
    def oom(batch: int) -> None:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="every batch from 32 down to 8"):
        machinery.largest_batch(oom, 32, 8, lambda: None)

    def broken(batch: int) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        machinery.largest_batch(broken, 32, 8, lambda: None)


def test_time_limit_stops_a_section() -> None:
    start = time.perf_counter()
    with pytest.raises(machinery.SectionTimeout), machinery.time_limit(0.2):
        while True:
            sum(range(1000))
    assert time.perf_counter() - start < 2.0


def test_run_section_records_an_overrun_and_an_error(monkeypatch) -> None:
    def slow(ctx, report) -> None:
        while True:
            sum(range(1000))

    def broken(ctx, report) -> None:
        raise ValueError("boom")

    profile = profiles.CPU_PROFILE
    ctx = profiles.Context(torch.device("cpu"), profile, time.perf_counter() + 60)
    report = reporting.Report(profile.name, "cpu")
    monkeypatch.setitem(profile.section_s, "data", 0.3)
    monkeypatch.setitem(harness.SECTION_FUNCTIONS, "data", slow)
    monkeypatch.setitem(harness.SECTION_FUNCTIONS, "speed", broken)
    harness.run_section("data", ctx, report)
    harness.run_section("speed", ctx, report)
    assert report.sections["data"]["status"].startswith("stopped")
    assert report.sections["speed"]["status"] == "error"
    assert [c.status for c in report.failed()] == ["error"]
    assert "ValueError: boom" in report.failed()[0].note


def test_comparison_catches_a_wrong_gradient() -> None:
    """The tolerance check fails a step whose gradients point elsewhere."""
    g = torch.Generator().manual_seed(0)
    ref_grads = {"a": torch.randn(100, generator=g), "b": torch.randn(50, generator=g)}
    groups = {"first": ["a"], "all": ["a", "b"]}
    ref = correctness.Trace(losses=[1.0], grads=[ref_grads])
    close = correctness.Trace(losses=[1.0 + 1e-5],
                            grads=[{k: v * (1 + 1e-4) for k, v in ref_grads.items()}])
    wrong = correctness.Trace(losses=[1.0],
                            grads=[{"a": ref_grads["a"], "b": -ref_grads["b"]}])
    tol = profiles.TOLERANCES["fp32"]
    assert correctness.within(correctness.compare_traces(ref, close, groups), tol)
    c = correctness.compare_traces(ref, wrong, groups)
    assert not correctness.within(c, tol) and c["min_grad_cos_at"] == "step 1 all"


def test_bf16_bound_is_the_looser_of_fixed_and_cpu_relative() -> None:
    """relative_to widens each figure to factor x the CPU bf16 step's error, never tightens."""
    tol = profiles.TOLERANCES["bf16"]
    small = {"max_loss_rel": 1e-4, "min_grad_cos": 0.999, "max_grad_norm_rel": 1e-3}
    assert correctness.relative_to(tol, small, 2.0) == tol
    large = {"max_loss_rel": 2e-2, "min_grad_cos": 0.96, "max_grad_norm_rel": 4e-2}
    wide = correctness.relative_to(tol, large, 2.0)
    assert wide.loss_rel == pytest.approx(4e-2) and wide.grad_cos == pytest.approx(0.92)
    assert wide.grad_norm_rel == pytest.approx(8e-2)
    # A GPU step at cos 0.947 (the H200's ViT-S/16 at 224 px) passes only when the CPU's
    # own bf16 step is at most 0.9735.
    got = {"max_loss_rel": 5e-3, "min_grad_cos": 0.947, "max_grad_norm_rel": 2.5e-2,
           "max_update_rel": None}
    assert not correctness.within(got, tol)
    assert correctness.within(got, correctness.relative_to(tol, {**large, "min_grad_cos": 0.97},
                                                           2.0))
    assert not correctness.within(got, correctness.relative_to(
        tol, {**large, "min_grad_cos": 0.99}, 2.0))


@pytest.mark.parametrize("fast", ["1", "0"])
def test_bf16_bound_measures_the_cpu_bf16_step(monkeypatch, fast: str) -> None:
    """With native CPU bf16 the bound comes from the CPU's bf16 autocast of the same steps
    (reported in the note and the row's JSON); without it, the fixed bound, and the note
    says why. The CPU profile cut to one step of batch 4 keeps emulated bf16 quick."""
    monkeypatch.setenv(FORCE_FAST_BF16_ENV, fast)
    profile = dataclasses.replace(profiles.CPU_PROFILE, check_steps=1, check_batch=4)
    ctx = profiles.Context(torch.device("cpu"), profile, time.perf_counter() + 60)
    model = correctness.check_model(ctx)
    groups = correctness.param_groups_by_name(model)
    x1, x2 = correctness.check_batch(ctx)
    tol = profiles.TOLERANCES["bf16"]
    if fast == "0":  # decided before any step runs
        bound, note, extra = correctness.bf16_bound(ctx, model, correctness.Trace(), groups,
                                                    x1, x2, tol, "n")
        assert bound == tol and "emulates bf16" in note and extra == {}
        return
    ref = correctness.run_steps(correctness.copy.deepcopy(model), torch.device("cpu"), "fp32",
                                False, x1, x2, 1, profile.check_heads[1], keep_states=True)
    bound, note, extra = correctness.bf16_bound(ctx, model, ref, groups, x1, x2, tol, "n")
    c_cpu = extra["cpu_bf16"]
    assert 0.5 < c_cpu["min_grad_cos"] < 1.0 and c_cpu["max_loss_rel"] > 0
    assert bound == correctness.relative_to(tol, c_cpu, profiles.BF16_CPU_FACTOR)
    assert "CPU bf16 vs CPU fp32: loss rel" in note


def test_resume_reruns_itself_under_deterministic_algorithms(monkeypatch) -> None:
    """The branch a GPU takes when its default kernels are not bitwise run-to-run: the
    resume section runs again in a fresh process with deterministic algorithms."""
    # In this process the runs "differ" (and are not really trained); the rerun in a
    # fresh process is real.
    monkeypatch.setattr(resume, "run_train",
                        lambda cfg, run_dir, stop_at_step=None: "preempted" if stop_at_step
                        else "done")
    monkeypatch.setattr(resume, "checkpoint_tensors", lambda run_dir: {"x": torch.zeros(1)})
    monkeypatch.setattr(resume, "differing", lambda a, b: ["model.forced"])
    ctx = profiles.Context(torch.device("cpu"), profiles.CPU_PROFILE, time.perf_counter() + 90,
                            verbose=False)
    report = reporting.Report("cpu-reduced", "cpu")
    resume.section_resume(ctx, report)
    rows = {c.name: c for c in report.checks}
    assert rows["run-to-run bitwise (default settings)"].measured.startswith("no")
    row = rows[profiles.RESUME_CHECK]
    assert row.status == "pass", row
    assert "use_deterministic_algorithms" in row.note and "equal" in row.measured


def test_a_crashing_step_is_an_error_row_and_the_section_goes_on() -> None:
    def build(batch: int):
        raise ValueError(f"cannot build at {batch}")

    ctx = profiles.Context(torch.device("cpu"), profiles.CPU_PROFILE, time.perf_counter() + 60,
                            verbose=False)
    report = reporting.Report("cpu-reduced", "cpu")
    row = speed.time_variant(ctx, report, "vit_small", "ours fp32 eager", build, 16, 2, True)
    assert row.status == "error: ValueError" and row.img_per_s is None
    assert [c.name for c in report.failed()] == ["vit_small ours fp32 eager"]


@pytest.mark.parametrize("fast_bf16,expected", [("1", "bf16"), ("0", "fp32")])
def test_environment_section_under_either_cpu_answer(tmp_path, fast_bf16, expected) -> None:
    """gpu_check's CPU mode, as a user runs it, under both answers of the CPU-capability check
    (MOCO3_CPU_FAST_BF16): auto's choice and the CPU kind it reports follow the answer, on
    any machine. (The speed rows are named after the same `precision_auto`; a bf16 speed
    section on a CPU without fast bf16 would take many minutes, so only the decision runs.)
    Run as the folder (`python benchmarks/gpu_check`) with no PYTHONPATH: the entry point
    itself makes the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env[FORCE_FAST_BF16_ENV] = fast_bf16
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check", "--device", "cpu", "--out", str(tmp_path),
         "--sections", "environment", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    environment = json.loads((tmp_path / "gpu_check.json").read_text())["environment"]
    assert environment["precision_auto"] == expected
    assert environment["cpu_capability"].endswith(f"({FORCE_FAST_BF16_ENV}={fast_bf16})")
