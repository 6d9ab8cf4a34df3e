"""Section correctness: the job's step on the device against the CPU fp32 step, step by
step from the same weights (fp32, bf16, fp16 + GradScaler, the update kernels)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.gpu_check.profiles import (
    BASE_LR,
    BF16_CPU_FACTOR,
    MOMENTUM,
    NO_CUDA,
    TAU,
    TOLERANCES,
    UPDATE_REL,
    WEIGHT_DECAY,
    Context,
    Tolerance,
)
from benchmarks.gpu_check.report import Report
from benchmarks.train_step import set_fused_attention
from moco3.model import MoCo, build_model
from moco3.negatives import build_negatives
from moco3.optim import build_optimizer
from moco3.precision import autocast_dtype, cpu_has_fast_bf16
from moco3.runfolder.fields import GRAD_GROUPS
from moco3.schedules import scaled_lr
from moco3.step import MocoStep

State = dict[str, Any]  # {"model": state_dict, "optimizer": state_dict}, on the CPU


@dataclass
class Trace:
    """What a few steps produced, on the CPU in fp32: each step's loss and each parameter's
    gradient; for a reference run also the full state before every step and after the
    last (`states`)."""

    losses: list[float] = field(default_factory=list)
    grads: list[dict[str, Tensor]] = field(default_factory=list)
    replayed: list[dict[str, Tensor]] = field(default_factory=list)  # see run_steps(replay)
    states: list[State] = field(default_factory=list)
    finite_weights: bool = True
    scales: list[float] = field(default_factory=list)  # GradScaler scale after each step


def check_model(ctx: Context, global_bn: bool = False) -> MoCo:
    """The correctness checks' model, initialised from seed 0 on the CPU."""
    p = ctx.profile
    torch.manual_seed(0)
    return build_model(p.check_arch, dim=p.check_heads[1], mlp_dim=p.check_heads[0],
                       global_bn=global_bn, **p.check_model)


def check_batch(ctx: Context) -> tuple[Tensor, Tensor]:
    """Two views of the check's batch (CPU), image-like values (normalised pixels)."""
    p = ctx.profile
    g = torch.Generator().manual_seed(1)
    size = p.check_model["img_size"]
    shape = (p.check_batch, 3, size, size)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def param_groups_by_name(model: MoCo) -> dict[str, list[str]]:
    """The monitor's groups (patch_embed, first_block, last_block, heads) plus 'all', as
    parameter names, so that they apply to any copy of the model."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g: [names[id(p)] for p in ps] for g, ps in model.grad_groups().items()}
    groups["all"] = [n for n, p in model.named_parameters() if p.requires_grad]
    return groups


def to_cpu(obj: Any) -> Any:
    """A detached CPU copy of every tensor in a nested state."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def run_steps(model: MoCo, device: torch.device, precision: str, fused: bool,
              x1: Tensor, x2: Tensor, steps: int, dim: int,
              wrap: Callable[[MoCo], nn.Module] | None = None,
              reference: Trace | None = None, keep_states: bool = False,
              replay: bool = False, global_batch: int | None = None) -> Trace:
    """`steps` MocoSteps of `model` (moved to `device`) on one batch, built as the job
    builds them: AdamW at the official base lr scaled to the batch, in_batch negatives
    (keys of width `dim`), tau 0.2, the autocast dtype of `precision` (fp16 with a
    GradScaler). `wrap` makes what runs forward (DDP).

    reference: step s starts from reference.states[s] (model and optimizer state), so that
    every step is compared on the same weights (free-running runs drift apart: see
    docs/gpu-check.md). keep_states: record the state before every step and after the last.
    replay: after each step, also apply the momentum update and the optimizer step to
    reference.states[s] with the reference's own gradients (trace.replayed): the update
    kernels compared on identical inputs. global_batch: the batch the lr is scaled to when
    x1 is one rank's share of it.
    """
    model = model.to(device)
    set_fused_attention(model, fused)
    batch = global_batch or x1.shape[0]
    # Divergence: a constant lr and momentum (the official schedules warm up over 40 epochs
    # and raise m to 1); a few steps only need the step's arithmetic to be the job's.
    optimizer = build_optimizer("adamw", model.named_parameters(), lr=scaled_lr(BASE_LR, batch),
                                weight_decay=WEIGHT_DECAY)
    negatives = build_negatives("in_batch", dim=dim, tau=TAU).to(device)
    amp = autocast_dtype(precision)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    net = wrap(model) if wrap else model
    groups = {k: v for k, v in model.grad_groups().items() if k in GRAD_GROUPS}
    step = MocoStep(net, model, negatives, optimizer, amp, scaler, True, None, groups)
    x1, x2 = x1.to(device), x2.to(device)
    trace = Trace()

    def state() -> State:
        return {"model": to_cpu(model.state_dict()), "optimizer": to_cpu(optimizer.state_dict())}

    def restore(s: int) -> None:
        assert reference is not None
        model.load_state_dict(reference.states[s]["model"])
        # A copy: on the reference's own device load_state_dict keeps the tensors it is
        # given as the optimizer's state, and the next step would write into them.
        optimizer.load_state_dict(copy.deepcopy(reference.states[s]["optimizer"]))

    for s in range(steps):
        if reference is not None:
            restore(s)
        if keep_states:
            trace.states.append(state())
        loss, _ = step(x1, x2, None, MOMENTUM)
        trace.losses.append(float(loss))
        trace.grads.append({n: p.grad.detach().to("cpu", torch.float32, copy=True)
                            for n, p in model.named_parameters() if p.grad is not None})
        if scaler is not None:
            trace.scales.append(float(scaler.get_scale()))
        if replay and reference is not None:
            restore(s)
            with torch.no_grad():  # MocoStep's order: EMA (in the forward), then the step
                model.update_momentum_encoder(MOMENTUM)
            for n, p in model.named_parameters():
                grad = reference.grads[s].get(n)
                p.grad = None if grad is None else grad.to(device, copy=True)
            optimizer.step()
            trace.replayed.append({n: p.detach().to("cpu", torch.float32, copy=True)
                                   for n, p in model.named_parameters()})
    if keep_states:
        trace.states.append(state())
    trace.finite_weights = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return trace


def cosine_and_norm(ref: dict[str, Tensor], got: dict[str, Tensor],
                    names: list[str]) -> tuple[float, float] | None:
    """(cosine similarity, | ||got|| / ||ref|| - 1 |) of the concatenated tensors `names`
    (those present in `ref`); None when none is."""
    present = [n for n in names if n in ref]
    if not present:
        return None
    dot = ref_sq = got_sq = 0.0
    for n in present:
        a, b = ref[n].double().flatten(), got[n].double().flatten()
        dot += float(a @ b)
        ref_sq += float(a @ a)
        got_sq += float(b @ b)
    cos = dot / math.sqrt(ref_sq * got_sq) if ref_sq > 0 and got_sq > 0 else float("nan")
    ratio = math.sqrt(got_sq / ref_sq) - 1.0 if ref_sq > 0 else float("nan")
    return cos, abs(ratio)


def compare_grads(ref: dict[str, Tensor], got: dict[str, Tensor],
                  groups: dict[str, list[str]]) -> dict[str, tuple[float, float]]:
    """Per group: (cosine, norm error) of the gradients; groups without any gradient in the
    reference (frozen) are left out."""
    out = {}
    for group, names in groups.items():
        figures = cosine_and_norm(ref, got, names)
        if figures is not None:
            out[group] = figures
    return out


def update_errors(ref: Trace, got: Trace) -> list[float]:
    """Per replayed step: || d_got - d_ref || / || d_ref || with d the change of every
    parameter (momentum encoder included) from ref's state before the step."""
    out = []
    for s, replayed in enumerate(got.replayed):
        before, after = ref.states[s]["model"], ref.states[s + 1]["model"]
        diff_sq = ref_sq = 0.0
        for n, value in replayed.items():
            d_ref = after[n].double() - before[n].double()
            diff_sq += float((value.double() - before[n].double() - d_ref).square().sum())
            ref_sq += float(d_ref.square().sum())
        out.append(math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else float("nan"))
    return out


def _nan_low(v: float) -> float:
    return v if math.isfinite(v) else -math.inf


def _nan_high(v: float) -> float:
    return v if math.isfinite(v) else math.inf


def compare_traces(ref: Trace, got: Trace, groups: dict[str, list[str]],
                   steps: int | None = None) -> dict[str, Any]:
    """Worst case over the steps: loss relative error, lowest gradient cosine, largest
    gradient norm error (and where), lowest update cosine; plus each step's figures."""
    steps = steps or len(got.losses)
    loss_rel = [abs(g - r) / max(abs(r), 1e-12) for r, g in
                zip(ref.losses[:steps], got.losses[:steps], strict=True)]
    per_step = [compare_grads(r, g, groups) for r, g in
                zip(ref.grads[:steps], got.grads[:steps], strict=True)]
    cos = [(v[0], s, k) for s, d in enumerate(per_step) for k, v in d.items()]
    norm = [(v[1], s, k) for s, d in enumerate(per_step) for k, v in d.items()]
    worst_cos = min(cos, key=lambda t: _nan_low(t[0]))
    worst_norm = max(norm, key=lambda t: _nan_high(t[0]))
    updates = update_errors(ref, got) if ref.states else []
    return {"loss_rel": loss_rel, "max_loss_rel": max(loss_rel),
            "min_grad_cos": worst_cos[0],
            "min_grad_cos_at": f"step {worst_cos[1] + 1} {worst_cos[2]}",
            "max_grad_norm_rel": worst_norm[0],
            "max_grad_norm_rel_at": f"step {worst_norm[1] + 1} {worst_norm[2]}",
            "update_rel": updates, "max_update_rel": max(updates, key=_nan_high, default=None),
            "per_step": [{k: {"cos": v[0], "norm_rel": v[1]} for k, v in d.items()}
                         for d in per_step]}


def decay_rounding_rel(params: list[Tensor], lr: float, weight_decay: float,
                       stride: int = 1, seed: int = 0) -> float:
    """|| d_cuda - d_cpu || / || d_cpu || of one AdamW step whose two versions differ only
    in how the decoupled weight decay is rounded: p * fp32(1 - lr * wd) (torch's CPU fused
    kernel) against p - lr * wd * p (its CUDA fused kernel), both in fp32. Adam's first
    update (about lr * sign(g)) is emulated with random signs; every `stride`-th element of
    each tensor is used (the ratio is a mean over elements: a sample estimates it)."""
    g = torch.Generator().manual_seed(seed)
    diff_sq = ref_sq = 0.0
    keep = torch.tensor(1.0 - lr * weight_decay, dtype=torch.float32)
    for param in params:
        p = param.detach().to("cpu", torch.float32).flatten()[::stride]
        update = lr * (torch.randint(0, 2, p.shape, generator=g, dtype=torch.float32) * 2 - 1)
        on_cpu = p * keep - update
        on_cuda = (p - (lr * weight_decay) * p) - update
        diff_sq += float((on_cuda.double() - on_cpu.double()).square().sum())
        ref_sq += float((on_cpu.double() - p.double()).square().sum())
    return math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else float("nan")


def relative_to(tol: Tolerance, c: dict[str, Any], factor: float) -> Tolerance:
    """The looser of `tol` and `factor` times another step's errors `c` on each figure
    (for the cosine: factor times its distance from 1). Used for bf16, whose own rounding
    error grows with the image size: a GPU step no more than `factor` times farther from
    fp32 than the CPU's bf16 step rounds as bf16 must, whatever a fixed bound says."""
    return Tolerance(loss_rel=max(tol.loss_rel, factor * c["max_loss_rel"]),
                     grad_cos=min(tol.grad_cos, 1 - factor * (1 - c["min_grad_cos"])),
                     grad_norm_rel=max(tol.grad_norm_rel, factor * c["max_grad_norm_rel"]))


def within(c: dict[str, Any], tol: Tolerance) -> bool:
    """All of a comparison's figures inside the tolerance (a NaN never is)."""
    update_ok = c["max_update_rel"] is None or c["max_update_rel"] <= UPDATE_REL
    return (c["max_loss_rel"] <= tol.loss_rel and c["min_grad_cos"] >= tol.grad_cos
            and c["max_grad_norm_rel"] <= tol.grad_norm_rel and update_ok)


def cos_text(c: float) -> str:
    """A cosine near 1 as '1 - 5.0e-12' (exactly 1 as '1'), others with 6 decimals."""
    if c == 1.0:
        return "1"
    return f"1 - {1 - c:.1e}" if 0 <= 1 - c < 1e-4 else f"{c:.6f}"


def summary(c: dict[str, Any]) -> str:
    text = (f"loss rel {c['max_loss_rel']:.1e}; grad cos {cos_text(c['min_grad_cos'])} "
            f"({c['min_grad_cos_at']}); norm rel {c['max_grad_norm_rel']:.1e} "
            f"({c['max_grad_norm_rel_at']})")
    if c.get("max_update_rel") is not None:
        text += f"; update rel {c['max_update_rel']:.1e}"
    return text


def bf16_bound(ctx: Context, model: MoCo, ref: Trace, groups: dict[str, list[str]],
               x1: Tensor, x2: Tensor, tol: Tolerance,
               note: str) -> tuple[Tolerance, str, dict[str, Any]]:
    """The bf16 row's bound: the fixed one, widened to BF16_CPU_FACTOR times the error of
    the same steps under the CPU's bf16 autocast (explicit attention, the CPU job's path)
    where this CPU computes bf16 natively. bf16's own error depends on the model size and
    the image size, so a bound calibrated at one size is a guess at another; the CPU's bf16
    step is an independent rounding of the same arithmetic, measured here at this size.
    A CPU that only emulates bf16 (10-70x slower) keeps the fixed bound, and the note says
    so."""
    if not cpu_has_fast_bf16():
        return tol, note + "; fixed bound (this CPU emulates bf16: no CPU bf16 reference)", {}
    cpu = run_steps(copy.deepcopy(model), torch.device("cpu"), "bf16", False, x1, x2,
                    ctx.profile.check_steps, ctx.profile.check_heads[1], reference=ref)
    c_cpu = compare_traces(ref, cpu, groups)
    wide = relative_to(tol, c_cpu, BF16_CPU_FACTOR)
    note += (f"; bound: the fixed one or {BF16_CPU_FACTOR:g}x the CPU bf16 step's errors, "
             f"whichever is looser; CPU bf16 vs CPU fp32: {summary(c_cpu)}")
    return wide, note, {"cpu_bf16": {k: v for k, v in c_cpu.items() if k != "per_step"}}


def section_correctness(ctx: Context, report: Report) -> None:
    """fp32 and bf16 steps on the device vs the CPU fp32 step; fp16 + GradScaler finite."""
    sec, device, p = "correctness", ctx.device, ctx.profile
    x1, x2 = check_batch(ctx)
    model = check_model(ctx)
    groups = param_groups_by_name(model)
    # The reference: the CPU fp32 step, explicit attention (what the job uses on CPU).
    dim = p.check_heads[1]
    ref = run_steps(copy.deepcopy(model), torch.device("cpu"), "fp32", False, x1, x2,
                    p.check_steps, dim, keep_states=True)
    report.data["check_losses_cpu_fp32"] = ref.losses
    cuda = device.type == "cuda"
    # On CUDA the device steps use fused SDPA attention, as the job does there. Without
    # CUDA the same comparison runs CPU vs CPU with fused attention on the "device" side:
    # the two attention implementations, the one pair that differs between the job's
    # CPU and GPU paths.
    where = "GPU" if cuda else "CPU, fused attention"
    for precision in ("fp32", "bf16"):
        name = f"{precision} step ({where}) vs CPU fp32"
        tol = TOLERANCES[precision]
        if precision == "bf16" and not cuda:
            report.add(sec, name, f"{NO_CUDA} (bf16 on this CPU is emulated, 10-70x slower)",
                       tolerance=tol.text())
            continue
        with report.check(sec, name):
            # The update kernels do not depend on the autocast dtype: replayed once, in fp32.
            got = run_steps(copy.deepcopy(model), device, precision, True, x1, x2,
                            p.check_steps, dim, reference=ref, replay=precision == "fp32")
            c = compare_traces(ref, got, groups)
            note = f"{p.check_steps} steps from the reference's states, batch {p.check_batch}"
            extra: dict[str, Any] = {}
            if precision == "bf16":
                tol, note, extra = bf16_bound(ctx, model, ref, groups, x1, x2, tol, note)
            ok = within(c, tol) and got.finite_weights
            bounds = tol.text() + (f", update rel <= {UPDATE_REL:g}" if c["update_rel"] else "")
            report.add(sec, name, "pass" if ok else "fail", summary(c), bounds, note, **c,
                       losses=got.losses, **extra)
            del got
    name = "fp16 + GradScaler step finite"
    if not cuda:
        report.add(sec, name, NO_CUDA)
        return
    with report.check(sec, name):
        got = run_steps(copy.deepcopy(model), device, "fp16", True, x1, x2, p.check_steps,
                        dim)
        finite_losses = all(math.isfinite(v) for v in got.losses)
        scales = [65536.0, *got.scales]  # GradScaler's initial scale, then after each step
        skipped = sum(1 for a, b in zip(scales, scales[1:], strict=False) if b < a)
        scale_ok = all(math.isfinite(s) and s > 0 for s in got.scales)
        ok = finite_losses and got.finite_weights and scale_ok and skipped < p.check_steps
        first = compare_traces(ref, got, groups, steps=1)
        report.add(sec, name, "pass" if ok else "fail",
                   f"losses {', '.join(f'{v:.4f}' for v in got.losses)}; {skipped} step(s) "
                   f"skipped for overflow; final scale {got.scales[-1]:g}",
                   "finite losses, weights, scale; >= 1 step taken",
                   f"step 1 vs CPU fp32 (info): {summary(first)}", **first,
                   losses=got.losses, scales=got.scales)
