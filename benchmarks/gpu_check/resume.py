"""Section resume: train() stopped and resumed ends bitwise where an uninterrupted run does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from benchmarks.gpu_check.machinery import free_memory
from benchmarks.gpu_check.profiles import (
    BASE_LR,
    REPO,
    RESUME_CHECK,
    Context,
)
from benchmarks.gpu_check.report import Report
from moco3 import checkpoint as ckpt
from moco3.config import to_run_config
from moco3.precision import resolve_precision
from moco3.train import train


def resume_config(ctx: Context) -> dict[str, Any]:
    """A train() config of 8 steps (256 synthetic images, batch 32, one epoch)."""
    p = ctx.profile
    return {
        "seed": 0, "model": dict(p.resume_model), "moco": {"negatives": "in_batch"},
        "data": {"name": "synthetic", "num_train": 8 * p.resume_batch, "num_val": 32},
        "optim": {"base_lr": BASE_LR, "warmup_epochs": 0.5},
        "train": {"epochs": 1, "batch_size": p.resume_batch, "precision": "auto",
                  "device": ctx.device.type, "log_every": 2, "knn_every": 0,
                  "knn_memory": 64, "knn_queries": 32, "ckpt_every_steps": 1000},
        "probe": {"enabled": False},
    }


def run_train(cfg: dict[str, Any], run_dir: Path, stop_at_step: int | None = None) -> str:
    """train() as the launcher runs it: the run config written to the run folder first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        OmegaConf.save(to_run_config(cfg), config_path)
    return train(cfg, run_dir, stop_at_step=stop_at_step, log=lambda _: None)


def checkpoint_tensors(run_dir: Path) -> dict[str, Tensor]:
    """Every tensor of the run's last checkpoint (model, negatives, optimizer state, RNG),
    by path; plus the step, as a tensor."""
    state = ckpt.load(ckpt.last_path(run_dir))
    out: dict[str, Tensor] = {"step": torch.tensor(state["step"])}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)

    for key in ("model", "negatives", "optimizer", "scaler", "rng"):
        walk(key, state.get(key))
    return out


def differing(a: dict[str, Tensor], b: dict[str, Tensor]) -> list[str]:
    """Keys whose tensors are not torch.equal (or present in one only)."""
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in a or k not in b or not torch.equal(a[k], b[k])]


def section_resume(ctx: Context, report: Report) -> None:
    """Uninterrupted vs stopped and resumed: bitwise equal checkpoints."""
    sec, name = "resume", RESUME_CHECK
    cfg = resume_config(ctx)
    precision = resolve_precision("auto", ctx.device)
    settings = "deterministic algorithms" if ctx.deterministic else "default settings"
    with report.check(sec, name), tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        assert run_train(cfg, root / "full") == "done"
        assert run_train(cfg, root / "resumed", stop_at_step=4) == "preempted"
        assert run_train(cfg, root / "resumed") == "done"
        full = checkpoint_tensors(root / "full")
        resumed = differing(full, checkpoint_tensors(root / "resumed"))
        assert run_train(cfg, root / "again") == "done"
        repeat = differing(full, checkpoint_tensors(root / "again"))
        report.add(sec, f"run-to-run bitwise ({settings})", "info",
                   "yes" if not repeat else f"no: {len(repeat)} tensors differ",
                   note=", ".join(repeat[:3]), differing=repeat)
        measured = (f"{len(full)} tensors equal" if not resumed
                    else f"{len(resumed)} of {len(full)} tensors differ")
        note = f"precision {precision}, {settings}"
        if not resumed:
            flags = "" if ctx.deterministic else " (no determinism flags needed)"
            report.add(sec, name, "pass", measured, "torch.equal on every tensor",
                       note + flags)
        elif not repeat:
            report.add(sec, name, "fail", measured, "torch.equal on every tensor",
                       f"{note}; the kernels are bitwise run-to-run, so resume itself "
                       f"differs: {', '.join(resumed[:3])}", differing=resumed)
        elif ctx.deterministic or not ctx.allow_subprocess:
            report.add(sec, name, "fail", measured, "torch.equal on every tensor",
                       f"{note}; the kernels differ run-to-run too", differing=resumed)
        else:
            rerun_deterministic(ctx, report, name, measured, note)


def rerun_deterministic(ctx: Context, report: Report, name: str, measured: str,
                        note: str) -> None:
    """The default kernels are not bitwise run-to-run: run the resume section again in a
    fresh process with deterministic algorithms (cuBLAS reads CUBLAS_WORKSPACE_CONFIG when
    it creates its handle, hence a new process) and report what it found."""
    free_memory(ctx.device)  # the child needs the card too
    left = ctx.remaining() - 5  # the section's alarm must not fire before the child ends
    if left < 30:
        report.add("resume", name, "fail", measured, "torch.equal on every tensor",
                   f"{note}; kernels differ run-to-run; no time left to retry with "
                   "deterministic algorithms")
        return
    with tempfile.TemporaryDirectory(prefix="gpu-check-det-") as out:
        env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--sections", "resume",
               "--deterministic", "--device", ctx.device.type, "--out", out,
               "--budget", str(int(left)), "--quiet"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=left)
        path = Path(out) / "gpu_check.json"
        child = json.loads(path.read_text()) if path.exists() else {"checks": []}
    rows = {c["name"]: c for c in child["checks"]}
    det = rows.get(name)
    if det is None:
        report.add("resume", name, "fail", measured, "torch.equal on every tensor",
                   f"{note}; the deterministic rerun gave no result (exit {proc.returncode})",
                   stderr=proc.stderr[-2000:])
        return
    ok = det["status"] == "pass"
    report.add("resume", name, "pass" if ok else "fail", det["measured"],
               "torch.equal on every tensor",
               f"bitwise only with torch.use_deterministic_algorithms(True), "
               f"cudnn.deterministic, CUBLAS_WORKSPACE_CONFIG=:4096:8 (default settings: "
               f"{measured}, and the kernels differ run-to-run)" if ok else
               f"deterministic rerun: {det['status']}: {det['measured']} {det['note']}")
