"""Section speed: the MoCo v3 step (eager, compiled) beside the official-like step, at the
largest batch that fits."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.gpu_check.correctness import (
    compare_traces,
    param_groups_by_name,
    run_steps,
    summary,
    within,
)
from benchmarks.gpu_check.machinery import (
    free_memory,
    largest_batch,
    sync,
    tf32,
)
from benchmarks.gpu_check.profiles import (
    BASE_LR,
    MOMENTUM,
    NO_CUDA,
    TAU,
    TOLERANCES,
    WEIGHT_DECAY,
    Context,
)
from benchmarks.gpu_check.report import (
    Report,
    SpeedRow,
)
from benchmarks.train_step import (
    measure,
    official_like_step,
    peak_memory_mb,
    set_fused_attention,
    step_flops,
)
from moco3.build import (
    fused_attention_is_faster,
    use_fastest_step,
)
from moco3.model import build_model
from moco3.negatives import build_negatives
from moco3.optim import build_optimizer
from moco3.precision import (
    autocast_dtype,
    resolve_precision,
)
from moco3.runfolder.fields import GRAD_GROUPS
from moco3.schedules import scaled_lr
from moco3.step import MocoStep


@dataclass
class Bench:
    """A built step ready to time: `step()` runs one optimizer step."""

    step: Callable[[], Tensor]
    keep: list[Any]  # model, optimizer, inputs: released together


def build_ours(ctx: Context, arch: str, batch: int, compiled: bool) -> Bench:
    """The job's step: MocoStep, precision auto, fused attention on CUDA, fused AdamW,
    the monitor's gradient norms; torch.compile as train.compile does it."""
    device, p = ctx.device, ctx.profile
    torch.manual_seed(0)
    model = build_model(arch, dim=p.speed_heads[1], mlp_dim=p.speed_heads[0],
                        **p.speed_model).to(device)
    use_fastest_step(model, device, resolve_precision("auto", device))
    optimizer = build_optimizer("adamw", model.named_parameters(),
                                lr=scaled_lr(BASE_LR, batch), weight_decay=WEIGHT_DECAY)
    negatives = build_negatives("in_batch", dim=p.speed_heads[1], tau=TAU).to(device)
    amp = autocast_dtype(resolve_precision("auto", device))
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    net: nn.Module = torch.compile(model) if compiled else model
    groups = {k: v for k, v in model.grad_groups().items() if k in GRAD_GROUPS}
    step_fn = MocoStep(net, model, negatives, optimizer, amp, scaler, True, None, groups)
    # Divergence: random views on the device rather than the loader's (the data section
    # measures the input pipeline apart), and one process: no gradient all-reduce and no
    # key all-gather across the 16 GPUs of the official run.
    size = p.speed_model["img_size"]
    x1 = torch.randn(batch, 3, size, size, device=device)
    x2 = torch.randn_like(x1)
    return Bench(lambda: step_fn(x1, x2, None, MOMENTUM)[0],
                 [model, optimizer, negatives, net, step_fn, x1, x2])


def build_official(ctx: Context, arch: str, batch: int) -> Bench:
    """benchmarks/train_step.py's baseline on the same model: per-view backbone, fp32,
    current timm's fused attention, Python-loop EMA, torch's default AdamW (foreach on
    CUDA), as the official code runs in a current environment."""
    device, p = ctx.device, ctx.profile
    torch.manual_seed(0)
    model = build_model(arch, dim=p.speed_heads[1], mlp_dim=p.speed_heads[0],
                        **p.speed_model).to(device)
    set_fused_attention(model, True)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad],
                                  lr=1e-4, weight_decay=WEIGHT_DECAY,
                                  foreach=device.type == "cuda")
    negatives = build_negatives("in_batch", dim=p.speed_heads[1], tau=TAU).to(device)
    size = p.speed_model["img_size"]
    x1 = torch.randn(batch, 3, size, size, device=device)
    x2 = torch.randn_like(x1)
    return Bench(lambda: official_like_step(model, optimizer, negatives, x1, x2, MOMENTUM),
                 [model, optimizer, negatives, x1, x2])


def first_step(ctx: Context, bench: Bench, batch: int) -> float:
    """Run and time the first step (compilation, cuBLAS/cuDNN autotuning happen here);
    `--simulate-oom-above` makes it fail as a real out-of-memory would, after allocating."""
    if ctx.simulate_oom_above is not None and batch > ctx.simulate_oom_above:
        raise torch.cuda.OutOfMemoryError(
            f"simulated: batch {batch} > --simulate-oom-above {ctx.simulate_oom_above}")
    sync(ctx.device)
    start = time.perf_counter()
    bench.step()
    sync(ctx.device)
    return time.perf_counter() - start


def time_variant(ctx: Context, report: Report, arch: str, variant: str,
                 build: Callable[[int], Bench], start_batch: int, iters: int,
                 count_flops: bool) -> SpeedRow:
    """Find the batch, warm up (timed apart), time `iters` steps, count FLOPs, peak memory."""
    device = ctx.device
    row = SpeedRow(arch, variant, "skipped: stopped by the section's time budget")
    report.speed.append(row)  # listed even if the section's alarm stops it midway
    holder: dict[str, Bench] = {}

    def attempt(batch: int) -> float:
        holder["bench"] = build(batch)
        return first_step(ctx, holder["bench"], batch)

    def release() -> None:
        holder.clear()
        free_memory(device)

    try:
        batch, first, tried = largest_batch(attempt, start_batch, ctx.profile.min_batch,
                                            release)
        row.batch, row.tried, row.warmup_s = batch, tried, first
        bench = holder["bench"]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sec = measure(bench.step, max(0, ctx.profile.warmup - 1), iters, device)
        if device.type == "cuda":  # on a CPU it would be the process's peak RSS so far
            row.peak_mem_mib = peak_memory_mb(device)
        row.ms_per_step, row.img_per_s = sec * 1e3, batch / sec
        if count_flops:
            flops = step_flops(bench.step)
            row.tflop_per_step = flops / 1e12
            row.tflops = flops / sec / 1e12
            peak = report.environment.get("peak_bf16_tflops")
            row.mfu = row.tflops / peak if peak and device.type == "cuda" else None
        row.status = "measured"
    except Exception as err:  # noqa: BLE001 - a step that crashes is a finding; go on
        row.status = f"error: {type(err).__name__}"
        report.add("speed", f"{arch} {variant}", "error",
                   note=f"{type(err).__name__}: {err}"[:300],
                   traceback=traceback.format_exc(limit=8))
    finally:
        holder.clear()
        free_memory(device)
    return row


def section_speed(ctx: Context, report: Report) -> None:
    """Per model: ours (precision auto) eager, the official-like fp32 step (and, on CUDA,
    the same with TF32 matmuls); then ours compiled, while the budget lasts."""
    device, p = ctx.device, ctx.profile
    precision = resolve_precision("auto", device)
    cuda = device.type == "cuda"
    # ViT-B first: its figures are the targets; the compiled runs (slowest) last.
    archs = sorted(p.speed_archs, key=lambda a: a != "vit_base")
    ours: dict[str, SpeedRow] = {}
    for arch in archs:
        if ctx.remaining() < p.eager_estimate_s:
            report.speed.append(SpeedRow(arch, f"ours {precision} eager",
                                         "skipped: over the time budget"))
            continue
        row = time_variant(ctx, report, arch, f"ours {precision} eager",
                           lambda b, a=arch: build_ours(ctx, a, b, False), p.max_batch,
                           p.iters, True)
        ours[arch] = row
        base = time_variant(ctx, report, arch, "official-like fp32 eager",
                            lambda b, a=arch: build_official(ctx, a, b), p.max_batch,
                            p.baseline_iters, False)
        # Divergence: the official code ran torch 1.9, whose fp32 matmuls used TF32 on
        # Ampere and later by default; torch's default now is true fp32. Both are shown.
        if cuda and base.batch and ctx.remaining() > p.eager_estimate_s:
            with tf32(True):
                tf = time_variant(ctx, report, arch, "official-like fp32 eager, TF32 matmuls",
                                  lambda b, a=arch: build_official(ctx, a, b), base.batch,
                                  p.baseline_iters, False)
            tf.note = "torch <= 1.11's default (the official code's torch 1.9)"
        if base.img_per_s and row.img_per_s:
            row.vs_official = row.img_per_s / base.img_per_s
            if row.batch != base.batch:
                row.note = f"official-like batch {base.batch}"
    for arch in archs:
        variant = f"ours {precision} + torch.compile"
        if not p.compile:
            report.speed.append(SpeedRow(arch, variant, "skipped: compile off in this "
                                         "profile (no gain on CPU, ~50 s to compile)"))
            continue
        if arch not in ours or ctx.remaining() < p.compile_estimate_s:
            report.speed.append(SpeedRow(arch, variant, "skipped: over the time budget"))
            continue
        start = ours[arch].batch or p.max_batch
        row = time_variant(ctx, report, arch, variant,
                           lambda b, a=arch: build_ours(ctx, a, b, True), start, p.iters,
                           False)
        row.note = "warm-up = compilation, excluded from the timing"
        eager = ours[arch]
        if eager.tflop_per_step and row.ms_per_step and row.batch == eager.batch:
            row.tflop_per_step = eager.tflop_per_step  # the same math as eager
            row.tflops = eager.tflop_per_step / (row.ms_per_step / 1e3)
            peak = report.environment.get("peak_bf16_tflops")
            row.mfu = row.tflops / peak if peak and cuda else None
        base_row = next((r for r in report.speed if r.model == arch
                         and r.variant == "official-like fp32 eager"), None)
        if base_row and base_row.img_per_s and row.img_per_s:
            row.vs_official = row.img_per_s / base_row.img_per_s
        if row.ms_per_step and eager.ms_per_step and row.batch == eager.batch:
            row.note += f"; {eager.ms_per_step / row.ms_per_step:.2f}x the eager step"
        if row.status == "measured":
            check_compiled(ctx, report, arch, row.batch or p.min_batch)
        torch._dynamo.reset()  # free the compiled graphs before the next model
        free_memory(device)
    if not p.compile:
        report.add("speed", "torch.compile step vs eager", f"{NO_CUDA} (compile is off in "
                   "the CPU profile)")


def compiled_vs_eager(ctx: Context, arch: str, batch: int,
                      compile_fn: Callable[[nn.Module], nn.Module] = torch.compile
                      ) -> dict[str, Any]:
    """One MocoStep of `arch` (the speed section's size, precision auto) run eagerly and
    through `compile_fn`, from the same initial weights on the same batch: the comparison
    of compare_traces (loss, per-group gradient cosine and norm)."""
    device, p = ctx.device, ctx.profile
    precision = resolve_precision("auto", device)
    fused = fused_attention_is_faster(device, precision)
    g = torch.Generator().manual_seed(3)
    size = p.speed_model["img_size"]
    x1 = torch.randn(batch, 3, size, size, generator=g)
    x2 = torch.randn(batch, 3, size, size, generator=g)
    traces, groups = [], {}
    for wrap in (None, compile_fn):
        torch.manual_seed(0)
        model = build_model(arch, dim=p.speed_heads[1], mlp_dim=p.speed_heads[0],
                            **p.speed_model)
        groups = param_groups_by_name(model)
        traces.append(run_steps(model, device, precision, fused, x1, x2, 1,
                                p.speed_heads[1], wrap=wrap))
        del model
        free_memory(device)
    c = compare_traces(traces[0], traces[1], groups)
    c["precision"] = precision
    return c


def check_compiled(ctx: Context, report: Report, arch: str, batch: int) -> None:
    """The compiled step computes what the eager one does (within the precision's bounds:
    the compiler fuses and reorders the same roundings)."""
    name = f"torch.compile step vs eager ({arch})"
    if ctx.remaining() < ctx.profile.compile_estimate_s / 2:
        report.add("speed", name, "skipped: over the time budget")
        return
    with report.check("speed", name):
        c = compiled_vs_eager(ctx, arch, batch)
        tol = TOLERANCES["fp32" if c["precision"] == "fp32" else "bf16"]
        report.add("speed", name, "pass" if within(c, tol) else "fail", summary(c),
                   tol.text(), f"1 step, batch {batch}, precision {c['precision']}, same "
                   "weights and views", **c)
