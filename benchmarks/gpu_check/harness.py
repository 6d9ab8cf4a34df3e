"""The harness: runs the sections in order under their budgets and writes the report."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_check.correctness import section_correctness
from benchmarks.gpu_check.data import (
    input_bound_verdict,
    section_data,
)
from benchmarks.gpu_check.distributed import section_distributed
from benchmarks.gpu_check.environment import section_environment
from benchmarks.gpu_check.machinery import (
    SectionTimeout,
    free_memory,
    time_limit,
)
from benchmarks.gpu_check.profiles import (
    CPU_PROFILE,
    CUDA_PROFILE,
    SECTIONS,
    Context,
)
from benchmarks.gpu_check.report import (
    Report,
    write,
)
from benchmarks.gpu_check.resume import section_resume
from benchmarks.gpu_check.speed import section_speed

SECTION_FUNCTIONS: dict[str, Callable[[Context, Report], None]] = {
    "environment": section_environment, "correctness": section_correctness,
    "distributed": section_distributed, "resume": section_resume, "data": section_data,
    "speed": section_speed,
}


def run_section(name: str, ctx: Context, report: Report) -> None:
    """One section under its own budget (capped by what is left of the run's); skipped
    with a note when too little is left to start it."""
    budget = min(ctx.profile.section_s[name], ctx.remaining())
    info: dict[str, Any] = {"budget_s": round(budget, 1)}
    report.sections[name] = info
    if budget < 0.25 * ctx.profile.section_s[name]:
        info["status"] = f"skipped: {ctx.remaining():.0f} s left of the run's budget"
        report.add(name, f"section {name}", info["status"])
        return
    if ctx.verbose:
        print(f"[gpu_check] {name} (budget {budget:.0f} s) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    ctx.section_deadline = start + budget
    try:
        with time_limit(budget):
            SECTION_FUNCTIONS[name](ctx, report)
        info["status"] = "done"
    except SectionTimeout as err:
        info["status"] = f"stopped: {err}"
        report.add(name, f"section {name}", f"skipped: stopped, {err}",
                   note="the checks before this row finished")
    except Exception as err:  # noqa: BLE001 - a section's failure is a result
        info["status"] = "error"
        report.add(name, f"section {name}", "error", note=f"{type(err).__name__}: {err}"[:300],
                   traceback=traceback.format_exc(limit=8))
    finally:
        ctx.section_deadline = math.inf
        free_memory(ctx.device)
    info["seconds"] = round(time.perf_counter() - start, 2)
    if ctx.verbose:
        print(f"[gpu_check] {name}: {info['status']} in {info['seconds']:.0f} s",
              file=sys.stderr, flush=True)




def nvidia_device_nodes() -> list[str]:
    """The GPU device nodes of NVIDIA's driver (/dev/nvidia0, /dev/nvidia1, ...)."""
    return sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver's version, from /proc (None if unreadable)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    words = text.split()
    for i, word in enumerate(words):  # "... Kernel Module  580.65.06  Sun Jul ..."
        if word == "Module" and i + 1 < len(words):
            return words[i + 1]
    return None


def cuda_unusable_reason() -> str:
    """Why torch cannot use CUDA here, in one sentence: torch's own error when it gives one
    (e.g. "The NVIDIA driver on your system is too old"), the driver and CUDA versions."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    detail = ""
    try:
        torch.cuda.init()
    except Exception as err:  # noqa: BLE001 - the reason is the message
        detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    driver = nvidia_driver_version()
    versions = (f"driver {driver}" if driver else "driver version unknown") + \
        f", torch {torch.__version__} built for CUDA {torch.version.cuda}"
    return f"{detail} ({versions})" if detail else f"no usable CUDA device ({versions})"


def apply_deterministic() -> None:
    """The settings under which CUDA kernels are bitwise run-to-run (strict: an op without
    a deterministic kernel raises, and that is reported)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """The command line; `started` (perf_counter) is when the run's budget began."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description="Check the CUDA path of the MoCo v3 step and measure it, in <= 8 minutes "
                    "(docs/gpu-check.md).")
    parser.add_argument("--out", default="gpu_check", help="folder for the JSON and Markdown")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="cpu: the reduced version even where CUDA is present")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (480 on CUDA, 110 on CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms(True) and friends")
    parser.add_argument("--simulate-oom-above", type=int, default=None, metavar="BATCH",
                        help="testing: batches above BATCH fail as if out of memory")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)
    start = time.perf_counter() if started is None else started
    if args.deterministic:
        apply_deterministic()  # before any CUDA work in this process
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device cuda but torch cannot use a CUDA device: {cuda_unusable_reason()}")
    if args.device == "auto" and not cuda and nvidia_device_nodes():
        # A GPU is there but torch cannot use it (most often a driver older than the CUDA
        # of this torch wheel): a CPU run now would pass and be mistaken for a GPU result.
        parser.error(f"this machine has NVIDIA devices ({', '.join(nvidia_device_nodes()[:3])}) "
                     f"but torch cannot use them: {cuda_unusable_reason()}. Fix that, or run "
                     "the reduced CPU version on purpose with --device cpu.")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    profile = CUDA_PROFILE if cuda else CPU_PROFILE
    if profile.threads:
        torch.set_num_threads(profile.threads)
    budget = args.budget if args.budget is not None else profile.budget_s
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    ctx = Context(device, profile, start + budget, deterministic=args.deterministic,
                  allow_subprocess=not args.deterministic,
                  simulate_oom_above=args.simulate_oom_above, verbose=not args.quiet)
    report = Report(profile.name, str(device))
    report.started = time.time() - (time.perf_counter() - start)
    if "environment" not in sections:
        sections.insert(0, "environment")  # every report says what it ran on
    out = Path(args.out)
    for name in SECTIONS:
        if name in sections:
            run_section(name, ctx, report)
            write(report, out)  # a run killed from outside still leaves what it found
    with report.check("data", "ViT-B step input-bound?"):
        input_bound_verdict(ctx, report)
    table = write(report, out)
    if not args.quiet:
        print(table, end="")
        print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 1 if report.failed() else 0
