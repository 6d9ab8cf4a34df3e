"""The report: the rows the sections add, and its strict JSON and Markdown forms."""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.machinery import fmt
from benchmarks.gpu_check.profiles import (
    TARGET_MFU,
    TARGET_SPEEDUP,
    TARGET_VIT_B_IMG_S,
    TOLERANCES,
)


@dataclass
class Check:
    """One row of the checks table. status: pass | fail | error | info | skipped: why."""

    section: str
    name: str
    status: str
    measured: str = ""
    tolerance: str = ""
    note: str = ""
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpeedRow:
    """One measured step variant of one model."""

    model: str
    variant: str
    status: str = "measured"  # measured | skipped: why | error: why
    batch: int | None = None
    tried: list[int] = field(default_factory=list)
    ms_per_step: float | None = None
    img_per_s: float | None = None
    tflop_per_step: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    peak_mem_mib: float | None = None
    warmup_s: float | None = None  # the first step (compilation, autotuning) alone
    vs_official: float | None = None
    note: str = ""


@dataclass
class Report:
    """Everything the run found; written as JSON and Markdown."""

    profile: str
    device: str
    started: float = field(default_factory=time.time)
    environment: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    speed: list[SpeedRow] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, section: str, name: str, status: str, measured: str = "",
            tolerance: str = "", note: str = "", **values: Any) -> Check:
        check = Check(section, name, status, measured, tolerance, note, values)
        self.checks.append(check)
        return check

    @contextlib.contextmanager
    def check(self, section: str, name: str) -> Iterator[None]:
        """Record an exception inside the block as an 'error' row and carry on."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - every failure of a check is a result
            self.add(section, name, "error", note=f"{type(err).__name__}: {err}"[:300],
                     traceback=traceback.format_exc(limit=8))

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status in ("fail", "error")]

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "device": self.device,
                "gpu_used": self.profile == "cuda", "passed": not self.failed(),
                "environment": self.environment,
                "checks": [asdict(c) for c in self.checks],
                "speed": [asdict(r) for r in self.speed], "data": self.data,
                "sections": self.sections,
                "targets": {"vit_base_mfu": TARGET_MFU, "vit_base_vs_official": TARGET_SPEEDUP,
                            "vit_base_img_s_quoted": TARGET_VIT_B_IMG_S},
                "tolerances": {k: asdict(v) for k, v in TOLERANCES.items()}}




def markdown(report: Report) -> str:
    """The report as Markdown tables: environment, checks, speed, data, section times."""
    env = report.environment
    lines = [f"# gpu_check ({report.profile}) on {env.get('device', report.device)}", ""]
    if report.profile != "cuda":
        lines += ["**CPU run: no GPU was used.** The reduced version on the CPU; nothing "
                  "below is a GPU result.", ""]
    elif env.get("peak_bf16_tflops") is None:
        lines += [f"No MFU: {env.get('device')!r} is not in benchmarks/train_step.py's "
                  "PEAK_BF16_TFLOPS (matched by exact name).", ""]
    keys = ("torch", "cuda", "cudnn", "nccl", "torchvision", "timm", "gpus", "gpu_memory_gib",
            "capability", "cores", "cpu_capability", "precision_auto", "tf32_matmul",
            "tf32_cudnn", "deterministic", "peak_bf16_tflops")
    lines += ["| " + " | ".join(k for k in keys if k in env) + " |",
              "|" + "---|" * sum(k in env for k in keys),
              "| " + " | ".join(str(env[k]) for k in keys if k in env) + " |", ""]
    lines += ["| section | check | status | measured | tolerance / target | note |",
              "|---|---|---|---|---|---|"]
    for c in report.checks:
        lines.append(f"| {c.section} | {c.name} | {c.status} | {c.measured} | {c.tolerance} "
                     f"| {c.note} |")
    if report.speed:
        lines += ["", "| model | step | batch | ms/step | img/s | MFU | TFLOP/s | peak MiB "
                  "| vs official-like | warm-up s | target | note |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in report.speed:
        target = ""
        if r.model == "vit_base" and r.variant.startswith("ours") and report.profile == "cuda":
            target = target_text(r, env.get("peak_bf16_tflops"))
        status = "" if r.status == "measured" else r.status
        lines.append(
            f"| {r.model} | {r.variant} | {r.batch or ''} | {fmt(r.ms_per_step, '.1f')} | "
            f"{fmt(r.img_per_s, '.1f')} | {fmt(r.mfu and 100 * r.mfu, '.1f')}"
            f"{'%' if r.mfu else ''} | {fmt(r.tflops, '.3g')} | {fmt(r.peak_mem_mib, '.0f')} "
            f"| {fmt(r.vs_official, '.2f')}{'x' if r.vs_official else ''} | "
            f"{fmt(r.warmup_s, '.1f')} | {target} | {' '.join(x for x in (status, r.note) if x)}"
            f"{' (tried ' + ', '.join(map(str, r.tried)) + ')' if len(r.tried) > 1 else ''} |")
    lines += ["", "| section | seconds | budget s | status |", "|---|---:|---:|---|"]
    for name, info in report.sections.items():
        lines.append(f"| {name} | {info.get('seconds', '')} | {info.get('budget_s', '')} | "
                     f"{info.get('status', '')} |")
    total = time.time() - report.started
    failed = report.failed()
    lines += ["", f"{len(report.checks)} rows, {len(failed)} failed; {total:.0f} s in all."]
    return "\n".join(lines) + "\n"


def write(report: Report, out: Path) -> str:
    """Write out/gpu_check.json and out/gpu_check.md; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(strict_json(report.to_json()), indent=1, allow_nan=False)
    (out / "gpu_check.json").write_text(text)
    table = markdown(report)
    (out / "gpu_check.md").write_text(table)
    return table


def strict_json(obj: Any) -> Any:
    """`obj` with what strict JSON cannot hold replaced: a NaN or infinite float by the
    string "NaN", "Infinity" or "-Infinity" (JSON has no such numbers; Python's json writes
    them bare, and strict parsers reject the file), anything else unknown by its str()."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def target_text(r: SpeedRow, peak: float | None) -> str:
    """The ViT-B targets beside a row, each with whether the row meets it (never asserted)."""
    def met(ok: bool | None) -> str:
        return "" if ok is None else (" (met)" if ok else " (not met)")

    mfu = met(None if r.mfu is None else r.mfu >= TARGET_MFU)
    ratio = met(None if r.vs_official is None else r.vs_official >= TARGET_SPEEDUP)
    text = f"MFU >= {TARGET_MFU:.0%}{mfu}; >= {TARGET_SPEEDUP:g}x official-like{ratio}"
    if r.tflop_per_step and r.batch and peak:
        text += f"; 40 % = {TARGET_MFU * peak / r.tflop_per_step * r.batch:.0f} img/s here"
    return text
